"""Compiled CPU kernels: top-k selection and the sparse linear backward.

Every function here trusts its arguments (C-contiguous arrays of one float
dtype, valid k and indices); the public wrappers in :mod:`meprop_numba.topk`
and :mod:`meprop_numba.backward` check them first.  Each kernel comes as a
serial version and, where large inputs pay for the thread pool, a
``_parallel`` twin with the same arithmetic.
"""
import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS

# --------------------------------------------------------------------------- top-k
#: Candidate counts up to this are placed by counting ranks (O(c^2) but
#: branch-free and vectorised); above it an exact selection and a stable
#: sort of the k winners are cheaper.
RANK_MAX_CANDIDATES = 256


def magnitude_bits(a):
    """View a finite float array as integers that order like its magnitudes.

    For IEEE floats, clearing the sign bit of the bit pattern gives an
    integer that increases with |x|, so selection can run on integer
    compares (vectorisable, no NaN semantics).  Returns ``(bits, mask)``:
    the integer view and the mask that clears the sign bit.
    """
    if a.dtype == np.float32:
        return a.view(np.int32), np.int32(0x7FFFFFFF)
    return a.view(np.int64), np.int64(0x7FFFFFFFFFFFFFFF)


@njit(**JIT_OPTIONS)
def _min_chunk_max(vals, mask, count, k, maxima):
    """Smallest of the maxima of k disjoint sets of entries of ``vals[:count] & mask``.

    Set c holds entries c, c + k, c + 2k, ... of the first ``k * (count // k)``
    (strided so that the maxima update as one vector of k lanes).  Each
    set's maximum is a distinct entry, so the result is a lower bound on the
    k-th largest entry.  Requires ``count >= k``; `maxima` is scratch of k.
    """
    for c in range(k):
        maxima[c] = vals[c] & mask
    for r in range(1, count // k):
        # A slice, not vals[r * k + c]: numba wraps negative indices, which
        # LLVM turned into gathers (1.05-1.25x slower top-k).
        seg = vals[r * k:(r + 1) * k]
        for c in range(k):
            maxima[c] = max(maxima[c], seg[c] & mask)
    thr = maxima[0]
    for c in range(1, k):
        thr = min(thr, maxima[c])
    return thr


@njit(**JIT_OPTIONS)
def topk_row(row, k, mask, out, vals, idx, ranks, maxima):
    """Write the indices of the k largest ``row & mask`` into `out`, descending.

    Ties go to the lower index.  `row` holds magnitude bits (see
    :func:`magnitude_bits`); `vals` (the row's dtype), `idx` (int64) and
    `ranks` (int32) are scratch of the row's length, `maxima` (the row's
    dtype) scratch of length k.

    A lower bound on the k-th largest entry (:func:`_min_chunk_max`) lets
    one branch-free pass keep only the entries at or above it, in index
    order.  The bound is tightened on those candidates while they number
    at least 2k, and each survivor is then placed by its rank (greater
    values first, equal values by position): O(n) plus O(k^2) vectorised.
    """
    n = row.shape[0]
    thr = _min_chunk_max(row, mask, n, k, maxima)
    count = 0
    for j in range(n):
        v = row[j] & mask
        vals[count] = v
        idx[count] = j
        count += v >= thr
    for _ in range(4):
        if count < 2 * k:
            break
        thr = _min_chunk_max(vals, mask, count, k, maxima)
        kept = 0
        for j in range(count):
            v = vals[j]
            vals[kept] = v
            idx[kept] = idx[j]
            kept += v >= thr
        if kept == count:
            break
        count = kept
    if count > RANK_MAX_CANDIDATES:
        _place_by_partition(vals, idx, count, k, out)
        return
    for i in range(count):
        ranks[i] = 0
    for j in range(count):
        vj = vals[j]
        for i in range(count):
            vi = vals[i]
            ranks[i] += (vj > vi) | ((vj == vi) & (j < i))
    for i in range(count):
        if ranks[i] < k:
            out[ranks[i]] = idx[i]


@njit(**JIT_OPTIONS)
def _place_by_partition(vals, idx, count, k, out):
    """`out` = the k largest of ``vals[:count]`` (masked bits, in index order), descending.

    The exact k-th largest value (introselect), then one pass keeping the
    entries above it and the first ties at it (index order, so ties go to the
    lower index), then a stable sort of only those k: O(count + k log k),
    which beats sorting every candidate when the bound left many (large k).
    """
    kth = np.partition(vals[:count], count - k)[count - k]
    ties = k
    for j in range(count):
        ties -= vals[j] > kth
    kept = 0
    for j in range(count):
        v = vals[j]
        tie = (v == kth) & (ties > 0)
        ties -= tie
        vals[kept] = v
        idx[kept] = idx[j]
        kept += (v > kth) | tie
    order = np.argsort(-vals[:k], kind="mergesort")
    for j in range(k):
        out[j] = idx[order[j]]


@njit(**JIT_OPTIONS)
def topk_rows(bits, k, mask, out):
    """Row-wise top-k of (B, n) magnitude bits into the int64 (B, k) array `out`."""
    n = bits.shape[1]
    vals = np.empty(n, dtype=bits.dtype)
    idx = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int32)
    maxima = np.empty(k, dtype=bits.dtype)
    for b in range(bits.shape[0]):
        topk_row(bits[b], k, mask, out[b], vals, idx, ranks, maxima)


@njit(parallel=True, **JIT_OPTIONS)
def topk_rows_parallel(bits, k, mask, out):
    """Parallel twin of :func:`topk_rows` (rows spread over threads)."""
    n = bits.shape[1]
    for b in prange(bits.shape[0]):
        vals = np.empty(n, dtype=bits.dtype)
        idx = np.empty(n, dtype=np.int64)
        ranks = np.empty(n, dtype=np.int32)
        maxima = np.empty(k, dtype=bits.dtype)
        topk_row(bits[b], k, mask, out[b], vals, idx, ranks, maxima)


@njit(**JIT_OPTIONS)
def column_sums_and_abs_sums(g):
    """``(sum_b g[b, i], sum_b |g[b, i]|)`` in one pass; the second in float64."""
    B, n = g.shape
    s = np.zeros(n, dtype=g.dtype)
    a = np.zeros(n, dtype=np.float64)
    for b in range(B):
        for i in range(n):
            v = g[b, i]
            s[i] += v
            a[i] += abs(v)
    return s, a


@njit(**JIT_OPTIONS)
def top_columns(abs_sums, k):
    """Indices of the k largest non-negative float64 scores, descending (ties to the lower index)."""
    n = abs_sums.shape[0]
    out = np.empty(k, dtype=np.int64)
    topk_row(abs_sums.view(np.int64), k, np.int64(0x7FFFFFFFFFFFFFFF), out,
             np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64),
             np.empty(n, dtype=np.int32), np.empty(k, dtype=np.int64))
    return out


@njit(**JIT_OPTIONS)
def select_and_gather_columns(g, abs_sums, k):
    """The k top-scoring columns, sorted, and ``g[:, cols]`` as a new (B, k) array."""
    cols = np.sort(top_columns(abs_sums, k))
    B = g.shape[0]
    g_sel = np.empty((B, k), dtype=g.dtype)
    for b in range(B):
        for j in range(k):
            g_sel[b, j] = g[b, cols[j]]
    return cols, g_sel


# ------------------------------------------------------------------- backward
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
def _dx_example(W, g, idx, dx, b):
    """dx[b] += sum_j g[b, idx[b, j]] W[idx[b, j]], four rows of W per pass over dx[b]."""
    k = idx.shape[1]
    m = W.shape[1]
    d = dx[b]
    j = 0
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
    """values[p] = sum over the examples that selected rows[p] of g[b, rows[p]] x[b], four at a time."""
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
    passes that add four contributions at once, so every output row is
    loaded and stored once per four inputs.
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
