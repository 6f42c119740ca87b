"""Compiled CPU kernel of the embedding backward: gradient rows summed by id."""
import numpy as np
from numba import njit

from .._config import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def sum_rows_by_id(ids, grad, skip):
    """The distinct ids, ascending, without `skip` (-1: none), and per id the sum of its rows of `grad`.

    ``ids`` (n,) int64, ``grad`` (n, dim).  Rows are added in the order they
    come (a stable sort groups them), as ``np.add.at`` would.
    """
    n, dim = grad.shape
    order = np.argsort(ids, kind="mergesort")
    count = 0
    for j in range(n):
        i = ids[order[j]]
        if i != skip and (j == 0 or i != ids[order[j - 1]]):
            count += 1
    rows = np.empty(count, dtype=np.int64)
    values = np.zeros((count, dim), dtype=grad.dtype)
    r = -1
    for j in range(n):
        p = order[j]
        i = ids[p]
        if i == skip:
            continue
        if r < 0 or rows[r] != i:
            r += 1
            rows[r] = i
        out = values[r]
        src = grad[p]
        for c in range(dim):
            out[c] += src[c]
    return rows, values


@njit(**JIT_OPTIONS)
def sum_rows_of_ids(table, ids):
    """out[b] = sum_j table[ids[b, j]] for ``ids`` (B, J) int64 and ``table`` (V, n); out is (B, n)."""
    B, J = ids.shape
    n = table.shape[1]
    out = np.zeros((B, n), dtype=table.dtype)
    for b in range(B):
        o = out[b]
        for j in range(J):
            row = table[ids[b, j]]
            for c in range(n):
                o[c] += row[c]
    return out
