"""Compiled CPU kernels of the sparse linear backward (GPU twin: :mod:`meprop_numba._cuda.linear`).

Every function here trusts its arguments (C-contiguous arrays of one float
dtype, valid indices); :func:`meprop_numba.linear_backward` checks them
first.  Each kernel comes as a serial version and, where large inputs pay
for the thread pool, a ``_parallel`` twin with the same arithmetic.
"""
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS
from .optim import count_nonfinite
from .simd import row_tile_add1, row_tile_add4, row_tile_sum1, row_tile_sum4
from .topk import column_sums_and_abs_sums, select_and_gather_columns, topk_rows


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


#: Columns of one 64-byte vector per dtype itemsize; wide tiles are four vectors.
_VECTOR_BYTES = 64


@njit(**JIT_OPTIONS)
def _column_tiles(src, m):
    """Column tiles of the rows of `src` for :func:`_gather_rows` (m >= one vector).

    Returns ``(starts, wide, lo, hi)``: tile t covers columns
    ``starts[t]:starts[t] + w`` with w four vectors if ``wide[t]``, else one.
    Where every row of `src` starts at the same offset within a 64-byte
    line, the tiles after the first start on a line (so no load of a
    gathered row splits two lines: measured 1.4x faster on the parser's
    shapes); a first one-vector tile at column 0 then covers the columns
    before, and a last one ends at column m. These two may overlap their
    neighbours (the overlap is computed twice, alike); tiles ``lo:hi`` are
    disjoint.
    """
    size = src.itemsize
    lanes = _VECTOR_BYTES // size
    head = 0
    base = src.ctypes.data
    if src.strides[0] % _VECTOR_BYTES == 0 and base % size == 0:
        head = ((_VECTOR_BYTES - base % _VECTOR_BYTES) % _VECTOR_BYTES) // size
    n = 2 + (m - head) // lanes
    starts = np.empty(n, dtype=np.int64)
    wide = np.empty(n, dtype=np.bool_)
    t = 0
    if head > 0:
        starts[0] = 0
        wide[0] = False
        t = 1
    lo = t
    c = head
    while c + 4 * lanes <= m:
        starts[t] = c
        wide[t] = True
        c += 4 * lanes
        t += 1
    while c + lanes <= m:
        starts[t] = c
        wide[t] = False
        c += lanes
        t += 1
    hi = t
    if c < m:
        starts[t] = m - lanes
        wide[t] = False
        t += 1
    return starts[:t], wide[:t], lo, hi


@njit(**JIT_OPTIONS)
def _gather_tile(out, src, which, coef, lo, hi, c0, wide, add):
    """Tile `c0` of every row r of `out`: rows ``which[lo[r]:hi[r]]`` of `src`, set or (`add`) added."""
    if wide and add:
        for r in range(out.shape[0]):
            row_tile_add4(out, r, c0, src, which, coef, lo[r], hi[r])
    elif wide:
        for r in range(out.shape[0]):
            row_tile_sum4(out, r, c0, src, which, coef, lo[r], hi[r])
    elif add:
        for r in range(out.shape[0]):
            row_tile_add1(out, r, c0, src, which, coef, lo[r], hi[r])
    else:
        for r in range(out.shape[0]):
            row_tile_sum1(out, r, c0, src, which, coef, lo[r], hi[r])


#: Below this many sources per output row on average, :func:`_gather_rows` goes row by row.
_FEW_SOURCES = 8


@njit(**JIT_OPTIONS)
def _few_sources(out, offsets):
    """Whether the output rows gather fewer than :data:`_FEW_SOURCES` rows each on average.

    Then the sums go row by row (each output row written once, in order)
    rather than tile by tile: with a row or two per sum, as in the weight
    gradient of a small minibatch, a tile of the sources is hardly reused
    while the tile order writes the output rows in scattered pieces
    (measured 1.2-1.3x slower at 50 x 784, 434 rows of 2.3 sources).
    """
    R = out.shape[0]
    return offsets[R] - offsets[0] < _FEW_SOURCES * R


@njit(**JIT_OPTIONS)
def _gather_row(out, r, src, which, coef, offsets, starts, wide):
    """Every tile of output row r, in order."""
    for t in range(starts.shape[0]):
        if wide[t]:
            row_tile_sum4(out, r, starts[t], src, which, coef, offsets[r], offsets[r + 1])
        else:
            row_tile_sum1(out, r, starts[t], src, which, coef, offsets[r], offsets[r + 1])


@njit(**JIT_OPTIONS)
def _gather_narrow(out, src, which, coef, offsets):
    """:func:`_gather_rows` for rows narrower than one vector."""
    for r in range(out.shape[0]):
        for t in range(out.shape[1]):
            acc = coef.dtype.type(0)
            for e in range(offsets[r], offsets[r + 1]):
                acc += coef[e] * src[which[e], t]
            out[r, t] = acc


#: Source rows per block of :func:`_source_blocks`: a four-vector tile of 1,024 rows is
#: 256 KB (float32), within a core's L2 (on the parser's 10,000 x 2,400 inputs 512-1,024
#: rows measured 2.3x faster than one block, 4,096 rows 1.5x).
_BLOCK_ROWS = 1024


@njit(**JIT_OPTIONS)
def _source_blocks(which, offsets, n_src, ordered):
    """Bounds that split each row's sources into blocks of :data:`_BLOCK_ROWS` source rows.

    Returns ``bounds`` of shape (blocks + 1, R): row r's sources in block j
    are ``which[bounds[j, r]:bounds[j + 1, r]]``. One block (the offsets
    themselves) unless `ordered` (every row's ``which`` increasing) and
    `src` has more rows than a block.
    """
    R = offsets.shape[0] - 1
    blocks = (n_src + _BLOCK_ROWS - 1) // _BLOCK_ROWS if ordered else 1
    blocks = max(blocks, 1)
    bounds = np.empty((blocks + 1, R), dtype=np.int64)
    for r in range(R):
        e = offsets[r]
        bounds[0, r] = e
        for j in range(1, blocks):
            while e < offsets[r + 1] and which[e] < j * _BLOCK_ROWS:
                e += 1
            bounds[j, r] = e
        bounds[blocks, r] = offsets[r + 1]
    return bounds


@njit(**JIT_OPTIONS)
def _gather_edges(out, src, which, coef, bounds, starts, wide, lo, hi):
    """The tiles outside ``lo:hi`` (which overlap their neighbours), each over all its sources at once.

    Setting the overlap again with the whole sum (rather than adding a block
    twice) gives it the value the inner tiles gave it, to the last bit.
    """
    for t in range(starts.shape[0]):
        if t < lo or t >= hi:
            _gather_tile(out, src, which, coef, bounds[0], bounds[bounds.shape[0] - 1], starts[t], wide[t], False)


@njit(**JIT_OPTIONS)
def _gather_rows(out, src, which, coef, offsets, ordered):
    """out[r] = sum over e in [offsets[r], offsets[r + 1]) of coef[e] src[which[e]], for every row r.

    Tile by tile of columns (:func:`_column_tiles`), every output row's
    tile in turn, so that the tile's part of the gathered rows stays in L1
    while all rows use it (row by row where rows gather few sources,
    :func:`_few_sources`); within a tile the sum is held in vector
    registers (:func:`meprop_numba._cpu.simd.row_tile_sum4`). Where each
    row's sources are `ordered` (increasing) and `src` is taller than
    :data:`_BLOCK_ROWS`, the sources go block by block of rows
    (:func:`_source_blocks`), so that a tile of the block stays in L2; the
    sums come out the same to the last bit.
    """
    if out.shape[1] < _VECTOR_BYTES // src.itemsize:
        _gather_narrow(out, src, which, coef, offsets)
        return
    starts, wide, lo, hi = _column_tiles(src, out.shape[1])
    if _few_sources(out, offsets):
        for r in range(out.shape[0]):
            _gather_row(out, r, src, which, coef, offsets, starts, wide)
        return
    bounds = _source_blocks(which, offsets, src.shape[0], ordered)
    for j in range(bounds.shape[0] - 1):
        for t in range(lo, hi):
            _gather_tile(out, src, which, coef, bounds[j], bounds[j + 1], starts[t], wide[t], j > 0)
    _gather_edges(out, src, which, coef, bounds, starts, wide, lo, hi)


@njit(parallel=True, **JIT_OPTIONS)
def _gather_rows_parallel(out, src, which, coef, offsets, ordered):
    """:func:`_gather_rows` with its disjoint tiles over threads (the overlapping ones after them, on one)."""
    if out.shape[1] < _VECTOR_BYTES // src.itemsize:
        _gather_narrow(out, src, which, coef, offsets)
        return
    starts, wide, lo, hi = _column_tiles(src, out.shape[1])
    if _few_sources(out, offsets):
        for r in prange(out.shape[0]):
            _gather_row(out, r, src, which, coef, offsets, starts, wide)
        return
    bounds = _source_blocks(which, offsets, src.shape[0], ordered)
    for j in range(bounds.shape[0] - 1):
        for t in prange(lo, hi):
            _gather_tile(out, src, which, coef, bounds[j], bounds[j + 1], starts[t], wide[t], j > 0)
    _gather_edges(out, src, which, coef, bounds, starts, wide, lo, hi)


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
    Both are sums of gathered rows (:func:`_gather_rows`): dx gathers k
    rows of W per example, values the rows of x of the examples that
    selected each distinct row.
    """
    B, m = x.shape
    k = idx.shape[1]
    flat, cx, rows, offsets, examples, cw = _selection_plan(g, idx)
    dx = np.empty((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        _gather_rows(dx, W, flat, cx, np.arange(B + 1) * k, False)
    values = np.empty((rows.shape[0], m), dtype=x.dtype)
    _gather_rows(values, x, examples, cw, offsets, True)
    return dx, rows, values, _column_sums(g)


@njit(**JIT_OPTIONS)
def topk_backward(x, W, g, bits, mask, k, need_dx, big):
    """Per-example top-k backward, its NaN/Inf checks included, in one call.

    `bits` and `mask` are ``magnitude_bits(g)``; `big` is the dtype's
    largest finite value.  Returns ``(status, idx, dx, rows, values, db)``:
    status 1 if `g` holds NaN or Inf, 2 if `x` does (then nothing is
    computed and the arrays are empty), else 0 with the top-k selection
    `idx` and :func:`per_example_backward`'s results for it.
    """
    B, m = x.shape
    status = 1 if count_nonfinite(g.reshape(-1), big) else (2 if count_nonfinite(x.reshape(-1), big) else 0)
    if status:
        empty = np.empty((0, m), dtype=x.dtype)
        return status, np.empty((0, k), dtype=np.int64), empty, np.empty(0, dtype=np.int64), empty, g[0, :0].copy()
    idx = np.empty((B, k), dtype=np.int64)
    topk_rows(bits, k, mask, idx)
    dx, rows, values, db = per_example_backward(x, W, g, idx, need_dx)
    return 0, idx, dx, rows, values, db


@njit(**JIT_OPTIONS)
def unified_backward(x, W, g, k, need_dx, big):
    """Backward of the k columns of `g` with the largest summed magnitude, its NaN/Inf checks included.

    Returns ``(status, cols, dx, values, db)``: status as
    :func:`topk_backward`; the sorted shared columns `cols`,
    ``dx = g[:, cols] W[cols]`` (empty unless `need_dx`) and
    ``values = g[:, cols]^T x`` (two BLAS products), ``db = sum_b g[b]``.
    """
    B, m = x.shape
    db, abs_sums = column_sums_and_abs_sums(g)
    # NaN/Inf in g reach its float64 magnitude sums, which finite entries overflow only
    # beyond ~1e300 (float64 g): then the exact count decides.  One pass over g fewer.
    status = 1 if not np.isfinite(abs_sums.sum()) and count_nonfinite(g.reshape(-1), big) else 0
    if status == 0 and count_nonfinite(x.reshape(-1), big):
        status = 2
    if status:
        empty = np.empty((0, m), dtype=x.dtype)
        return status, np.empty(0, dtype=np.int64), empty, empty, g[0, :0].copy()
    cols, g_sel = select_and_gather_columns(g, abs_sums, k)
    dx = np.empty((0, m), dtype=x.dtype)
    if need_dx:
        dx = np.dot(g_sel, W[cols])
    return 0, cols, dx, np.dot(g_sel.T, x), db


@njit(**JIT_OPTIONS)
def per_example_backward_parallel(x, W, g, idx, need_dx):
    """Parallel twin of :func:`per_example_backward`: the column tiles over threads."""
    B, m = x.shape
    k = idx.shape[1]
    flat, cx, rows, offsets, examples, cw = _selection_plan(g, idx)
    dx = np.empty((B, m) if need_dx else (0, m), dtype=x.dtype)
    if need_dx:
        _gather_rows_parallel(dx, W, flat, cx, np.arange(B + 1) * k, False)
    values = np.empty((rows.shape[0], m), dtype=x.dtype)
    _gather_rows_parallel(values, x, examples, cw, offsets, True)
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
