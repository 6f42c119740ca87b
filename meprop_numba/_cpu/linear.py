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
def _add_eight(out, c0, c1, c2, c3, c4, c5, c6, c7, a0, a1, a2, a3, a4, a5, a6, a7):
    """out += c0 a0 + ... + c7 a7 in one pass over out."""
    for t in range(out.shape[0]):
        out[t] += ((c0 * a0[t] + c1 * a1[t]) + (c2 * a2[t] + c3 * a3[t])
                   + ((c4 * a4[t] + c5 * a5[t]) + (c6 * a6[t] + c7 * a7[t])))


@njit(**JIT_OPTIONS)
def _dx_example(W, g, idx, dx, b):
    """dx[b] += sum_j g[b, idx[b, j]] W[idx[b, j]], eight rows of W per pass over dx[b].

    Eight rather than four: each pass loads and stores dx[b] once, and at
    the parser's shapes (k=20 rows of 2,400) the wider pass took 15-25 %
    less time (scripts/parse_speed.py).
    """
    k = idx.shape[1]
    m = W.shape[1]
    d = dx[b]
    j = 0
    while j + 8 <= k:
        i0, i1, i2, i3 = idx[b, j], idx[b, j + 1], idx[b, j + 2], idx[b, j + 3]
        i4, i5, i6, i7 = idx[b, j + 4], idx[b, j + 5], idx[b, j + 6], idx[b, j + 7]
        c0, c1, c2, c3 = g[b, i0], g[b, i1], g[b, i2], g[b, i3]
        c4, c5, c6, c7 = g[b, i4], g[b, i5], g[b, i6], g[b, i7]
        _add_eight(d, c0, c1, c2, c3, c4, c5, c6, c7,
                   W[i0], W[i1], W[i2], W[i3], W[i4], W[i5], W[i6], W[i7])
        j += 8
    while j + 4 <= k:
        i0, i1, i2, i3 = idx[b, j], idx[b, j + 1], idx[b, j + 2], idx[b, j + 3]
        c0, c1, c2, c3 = g[b, i0], g[b, i1], g[b, i2], g[b, i3]
        w0, w1, w2, w3 = W[i0], W[i1], W[i2], W[i3]
        for t in range(m):
            d[t] += c0 * w0[t] + c1 * w1[t] + c2 * w2[t] + c3 * w3[t]
        j += 4
    while j < k:
        i = idx[b, j]
        c = g[b, i]
        w = W[i]
        for t in range(m):
            d[t] += c * w[t]
        j += 1


@njit(**JIT_OPTIONS)
def _dw_row(x, g, rows, offsets, examples, values, p):
    """values[p] = sum over the examples that selected rows[p] of g[b, rows[p]] x[b], eight at a time."""
    m = x.shape[1]
    i = rows[p]
    v = values[p]
    e = offsets[p]
    end = offsets[p + 1]
    b = examples[e]
    c = g[b, i]
    xb = x[b]
    for t in range(m):
        v[t] = c * xb[t]
    e += 1
    while e + 8 <= end:
        b0, b1, b2, b3 = examples[e], examples[e + 1], examples[e + 2], examples[e + 3]
        b4, b5, b6, b7 = examples[e + 4], examples[e + 5], examples[e + 6], examples[e + 7]
        c0, c1, c2, c3 = g[b0, i], g[b1, i], g[b2, i], g[b3, i]
        c4, c5, c6, c7 = g[b4, i], g[b5, i], g[b6, i], g[b7, i]
        _add_eight(v, c0, c1, c2, c3, c4, c5, c6, c7,
                   x[b0], x[b1], x[b2], x[b3], x[b4], x[b5], x[b6], x[b7])
        e += 8
    while e + 4 <= end:
        b0, b1, b2, b3 = examples[e], examples[e + 1], examples[e + 2], examples[e + 3]
        c0, c1, c2, c3 = g[b0, i], g[b1, i], g[b2, i], g[b3, i]
        x0, x1, x2, x3 = x[b0], x[b1], x[b2], x[b3]
        for t in range(m):
            v[t] += c0 * x0[t] + c1 * x1[t] + c2 * x2[t] + c3 * x3[t]
        e += 4
    while e < end:
        b = examples[e]
        c = g[b, i]
        xb = x[b]
        for t in range(m):
            v[t] += c * xb[t]
        e += 1


@njit(**JIT_OPTIONS)
def per_example_backward(x, W, g, idx, need_dx):
    """Sparse backward with one selection per example.

    Returns ``(dx, rows, values, db)``: dx[b] = sum_{i in S_b} g[b, i] W[i]
    (an empty (0, m) array unless `need_dx`); values[p] = sum over the
    examples b that selected rows[p] of g[b, rows[p]] x[b]; db = sum_b g[b].
    dx is accumulated per example and values per distinct row, each in
    passes that add up to eight contributions at once, so every output row
    is loaded and stored once per eight inputs.
    """
    B, m = x.shape
    rows, offsets, examples = _transpose_selection(idx, W.shape[0])
    dx = np.zeros((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        for b in range(B):
            _dx_example(W, g, idx, dx, b)
    values = np.empty((rows.shape[0], m), dtype=x.dtype)
    for p in range(rows.shape[0]):
        _dw_row(x, g, rows, offsets, examples, values, p)
    return dx, rows, values, _column_sums(g)


@njit(parallel=True, **JIT_OPTIONS)
def per_example_backward_parallel(x, W, g, idx, need_dx):
    """Parallel twin of :func:`per_example_backward`: examples, then distinct rows, over threads."""
    B, m = x.shape
    rows, offsets, examples = _transpose_selection(idx, W.shape[0])
    dx = np.zeros((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        for b in prange(B):
            _dx_example(W, g, idx, dx, b)
    values = np.empty((rows.shape[0], m), dtype=x.dtype)
    for p in prange(rows.shape[0]):
        _dw_row(x, g, rows, offsets, examples, values, p)
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
