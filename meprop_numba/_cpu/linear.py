"""Compiled CPU kernels of the sparse linear backward (GPU twin: :mod:`meprop_numba._cuda.linear`).

Every function here trusts its arguments (C-contiguous arrays of one float
dtype, valid indices); :func:`meprop_numba.linear_backward` checks them
first.  Each kernel comes as a serial version and, where large inputs pay
for the thread pool, a ``_parallel`` twin with the same arithmetic.
"""
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _column_sums(g):
    B, n = g.shape
    db = np.zeros(n, dtype=g.dtype)
    for b in range(B):
        for i in range(n):
            db[i] += g[b, i]
    return db


@njit(**JIT_OPTIONS)
def _transpose_selection(idx, n):
    """Group the (example, slot) pairs of a per-example selection by weight row.

    Returns the sorted distinct rows, CSR offsets into `examples`, and for
    each row the examples that selected it (in increasing order).
    """
    B, k = idx.shape
    count = np.zeros(n, dtype=np.int64)
    for b in range(B):
        for j in range(k):
            count[idx[b, j]] += 1
    nnz = 0
    for i in range(n):
        if count[i] > 0:
            nnz += 1
    rows = np.empty(nnz, dtype=np.int64)
    offsets = np.empty(nnz + 1, dtype=np.int64)
    slot = np.empty(n, dtype=np.int64)  # next free position per row
    p = 0
    total = 0
    for i in range(n):
        if count[i] > 0:
            rows[p] = i
            offsets[p] = total
            slot[i] = total
            total += count[i]
            p += 1
    offsets[nnz] = total
    examples = np.empty(total, dtype=np.int64)
    for b in range(B):
        for j in range(k):
            i = idx[b, j]
            examples[slot[i]] = b
            slot[i] += 1
    return rows, offsets, examples


@njit(**JIT_OPTIONS)
def _gather8(out, r, src, which, coef, e, assign):
    """out[r] (=, or += unless `assign`) sum_{q < 8} coef[e + q] src[which[e + q]].

    Whole rows by 2-D index: no row views to build per pass, and a column
    index that starts at 0 (numba's wrap-around test of negative indices
    would otherwise keep LLVM from vectorising).
    """
    i0, i1, i2, i3 = which[e], which[e + 1], which[e + 2], which[e + 3]
    i4, i5, i6, i7 = which[e + 4], which[e + 5], which[e + 6], which[e + 7]
    c0, c1, c2, c3 = coef[e], coef[e + 1], coef[e + 2], coef[e + 3]
    c4, c5, c6, c7 = coef[e + 4], coef[e + 5], coef[e + 6], coef[e + 7]
    if assign:
        for t in range(out.shape[1]):
            out[r, t] = ((c0 * src[i0, t] + c1 * src[i1, t]) + (c2 * src[i2, t] + c3 * src[i3, t])
                         + ((c4 * src[i4, t] + c5 * src[i5, t]) + (c6 * src[i6, t] + c7 * src[i7, t])))
    else:
        for t in range(out.shape[1]):
            out[r, t] += ((c0 * src[i0, t] + c1 * src[i1, t]) + (c2 * src[i2, t] + c3 * src[i3, t])
                          + ((c4 * src[i4, t] + c5 * src[i5, t]) + (c6 * src[i6, t] + c7 * src[i7, t])))


@njit(**JIT_OPTIONS)
def _gather4(out, r, src, which, coef, e, assign):
    """:func:`_gather8` with four rows."""
    i0, i1, i2, i3 = which[e], which[e + 1], which[e + 2], which[e + 3]
    c0, c1, c2, c3 = coef[e], coef[e + 1], coef[e + 2], coef[e + 3]
    if assign:
        for t in range(out.shape[1]):
            out[r, t] = (c0 * src[i0, t] + c1 * src[i1, t]) + (c2 * src[i2, t] + c3 * src[i3, t])
    else:
        for t in range(out.shape[1]):
            out[r, t] += (c0 * src[i0, t] + c1 * src[i1, t]) + (c2 * src[i2, t] + c3 * src[i3, t])


@njit(**JIT_OPTIONS)
def _gather1(out, r, src, which, coef, e, assign):
    """:func:`_gather8` with one row."""
    i0 = which[e]
    c0 = coef[e]
    if assign:
        for t in range(out.shape[1]):
            out[r, t] = c0 * src[i0, t]
    else:
        for t in range(out.shape[1]):
            out[r, t] += c0 * src[i0, t]


@njit(**JIT_OPTIONS)
def _gather_sum(out, r, src, which, coef, start, end):
    """out[r] = sum over e in [start, end) of coef[e] src[which[e]].

    Eight source rows per pass, so each output element is loaded and
    stored once per eight contributions; the first pass assigns (no
    zeroing beforehand).
    """
    if start == end:
        for t in range(out.shape[1]):
            out[r, t] = 0
        return
    e = start
    assign = True
    while e + 8 <= end:
        _gather8(out, r, src, which, coef, e, assign)
        assign = False
        e += 8
    while e + 4 <= end:
        _gather4(out, r, src, which, coef, e, assign)
        assign = False
        e += 4
    while e < end:
        _gather1(out, r, src, which, coef, e, assign)
        assign = False
        e += 1


@njit(**JIT_OPTIONS)
def _selection_plan(g, idx):
    """The per-example selection as flat gather lists for both products.

    Returns ``(flat, cx, rows, offsets, examples, cw)``: example b's input
    gradient gathers rows ``flat[b k:(b + 1) k]`` of W with coefficients
    ``cx`` (its selected entries of g); distinct row p = ``rows[p]`` of the
    weight gradient gathers rows ``examples[offsets[p]:offsets[p + 1]]`` of
    x with coefficients ``cw``.
    """
    B, k = idx.shape
    rows, offsets, examples = _transpose_selection(idx, g.shape[1])
    flat = np.ascontiguousarray(idx).reshape(-1)
    cx = np.empty(B * k, dtype=g.dtype)
    for b in range(B):
        for j in range(k):
            cx[b * k + j] = g[b, idx[b, j]]
    cw = np.empty(examples.shape[0], dtype=g.dtype)
    for p in range(rows.shape[0]):
        i = rows[p]
        for e in range(offsets[p], offsets[p + 1]):
            cw[e] = g[examples[e], i]
    return flat, cx, rows, offsets, examples, cw


@njit(**JIT_OPTIONS)
def per_example_backward(x, W, g, idx, need_dx):
    """Sparse backward with one selection per example.

    Returns ``(dx, rows, values, db)``: dx[b] = sum_{i in S_b} g[b, i] W[i]
    (an empty (0, m) array unless `need_dx`); values[p] = sum over the
    examples b that selected rows[p] of g[b, rows[p]] x[b]; db = sum_b g[b].
    dx is gathered per example and values per distinct row, eight source
    rows a pass. (Blocking the columns so that the selected rows stay in L2
    measured slower at the parser's shapes, 100 x 500 x 2400: see
    ``docs/results_parse.md``.)
    """
    B, m = x.shape
    k = idx.shape[1]
    flat, cx, rows, offsets, examples, cw = _selection_plan(g, idx)
    R = rows.shape[0]
    dx = np.empty((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        for b in range(B):
            _gather_sum(dx, b, W, flat, cx, b * k, b * k + k)
    values = np.empty((R, m), dtype=x.dtype)
    for p in range(R):
        _gather_sum(values, p, x, examples, cw, offsets[p], offsets[p + 1])
    return dx, rows, values, _column_sums(g)


@njit(parallel=True, **JIT_OPTIONS)
def per_example_backward_parallel(x, W, g, idx, need_dx):
    """Parallel twin of :func:`per_example_backward`: examples, then distinct rows, over threads."""
    B, m = x.shape
    k = idx.shape[1]
    flat, cx, rows, offsets, examples, cw = _selection_plan(g, idx)
    R = rows.shape[0]
    dx = np.empty((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        for b in prange(B):
            _gather_sum(dx, b, W, flat, cx, b * k, b * k + k)
    values = np.empty((R, m), dtype=x.dtype)
    for p in prange(R):
        _gather_sum(values, p, x, examples, cw, offsets[p], offsets[p + 1])
    return dx, rows, values, _column_sums(g)


@njit(**JIT_OPTIONS)
def shared_backward(x, W, g, cols):
    """Sparse backward with one sorted selection `cols` shared by the minibatch.

    Returns ``(dx, values, db)`` with dx = g[:, cols] W[cols] and
    values = g[:, cols]^T x.  Used for small layers, where the two dense
    products of the gathered blocks cost less in one loop than in BLAS calls.
    """
    B, m = x.shape
    k = cols.shape[0]
    dx = np.zeros((B, m), dtype=x.dtype)
    values = np.zeros((k, m), dtype=x.dtype)
    for b in range(B):
        for j in range(k):
            i = cols[j]
            c = g[b, i]
            for t in range(m):
                dx[b, t] += c * W[i, t]
                values[j, t] += c * x[b, t]
    return dx, values, _column_sums(g)


@njit(**JIT_OPTIONS)
def count_kept_nonzero(counts, kept, g):
    """counts[j] += the rows b with j in kept[b] and g[b, j] != 0 (per-example (B, k) selections).

    Model simplification's counting (host only: a counted layer's
    gradients come back to the host anyway). `kept` holds valid, distinct
    column indices of `g` per row.
    """
    B, K = kept.shape
    zero = g.dtype.type(0)
    for b in range(B):
        for j in range(K):
            i = kept[b, j]
            if g[b, i] != zero:
                counts[i] += 1
