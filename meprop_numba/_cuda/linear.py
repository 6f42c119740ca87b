"""CUDA kernels of the sparse linear backward (CPU twin: :mod:`meprop_numba._cpu.linear`).

Per-example ``dx`` gathers the selected rows of ``W`` through shared-memory
tiles of (index, gradient) pairs; per-example ``dW`` builds, without
atomics, a column-major list of the (example, gradient) pairs of each
selected row (a membership matrix ranked by a column scan, a block scan of
the row counts) and reduces each list in example order, so the result is
deterministic.  Unified selection and the dense case (``k=None``) use tiled
gather-products: shared-memory tiles filled by gathering the selected
columns of ``g`` and rows of ``W``, and a ``GEMM_MICRO`` x ``GEMM_MICRO``
register tile of outputs per thread.

``VALUES_TARGET_BLOCKS``, ``VALUES_MIN_SLICE_TILES``
    With few selected rows the ``dW`` product of a shared selection slices
    the batch (each slice at least the second setting's tiles long) until
    it has about the first setting's blocks, and sums the slices in a
    fixed order (see :func:`batch_splits`).
``GEMM_TILE``
    Side of the square thread block of the tiled products (at most
    ``GEMM_MAX_TILE``); each thread computes ``GEMM_MICRO`` x ``GEMM_MICRO``
    outputs.  The tile is a compile-time constant of the product kernels
    (built once per value and dtype), so their loops unroll and the shared
    tiles have exactly its size.

When the inputs are all PyTorch tensors or all CuPy arrays, the two dense
sub-products of a shared selection (``g[:, S] @ W[S]`` and
``g[:, S].T @ x``) go through that library's matmul (cuBLAS) on its current
stream instead of the tiled kernels.
"""
import math

import numpy as np
from numba import float32, float64, int64

from . import device as _device
from . import topk as _topk
from .device import (MAX_GRID_ROWS, MAX_THREADS, STATIC_SHARED_LIMIT, _as_2d, _cols_grid, _row_chunks, _rows_grid,
                     as_device, common_kernels, copy_in, cuda, empty, launch_1d, launch_nonfinite,
                     launch_stream, raise_if_nonfinite, read_status, require_cuda, zeros)

#: Side of the square thread block of the tiled products.
GEMM_TILE = 16
#: Upper bound of ``GEMM_TILE``.
GEMM_MAX_TILE = 16
#: Each thread of a tiled product computes GEMM_MICRO x GEMM_MICRO outputs (compile-time).
GEMM_MICRO = 4
#: ``dW`` values of a shared selection: slice the batch until the product has this many blocks.
VALUES_TARGET_BLOCKS = 1024
#: ... each slice at least this many tiles of the batch long.
VALUES_MIN_SLICE_TILES = 4

# Slots of the status array of one call: NaN/Inf in g, len(rows), number of
# (example, row) pairs, NaN/Inf in x, an index out of range, a repeated index.
_G_BAD, _N_ROWS, _N_PAIRS, _X_BAD, _OUT_OF_RANGE, _REPEATED = range(6)

_KERNELS = {}


def _tile():
    t = int(GEMM_TILE)
    if not 1 <= t <= GEMM_MAX_TILE:
        raise ValueError(f"GEMM_TILE must be in [1, {GEMM_MAX_TILE}], got {t}")
    return t


def tiled_shared_bytes(tile, itemsize):
    """Static shared memory of the largest tiled product kernel built for `tile` (two padded tiles)."""
    span = GEMM_MICRO * tile
    return itemsize * tile * 2 * (span + 1)


def _kernels():
    """Build (once) the kernels of the per-example selection bookkeeping."""
    if "generic" in _KERNELS:
        return _KERNELS["generic"]
    common = common_kernels()
    block_inclusive_scan = common["block_inclusive_scan"]
    smaller = common["smaller"]

    @cuda.jit
    def count_indices(indices, n, counts, status):
        # indices (B, k): counts[b, i] = how often example b selects i; flags out-of-range
        # entries (status[4]) and repeats within a row (status[5]); out-of-range ones are not counted.
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j >= indices.shape[1]:
            return
        for b in range(cuda.blockIdx.y, indices.shape[0], cuda.gridDim.y):
            i = indices[b, j]
            if i < 0 or i >= n:
                status[4] = 1
            elif cuda.atomic.add(counts, (b, i), 1) > 0:
                status[5] = 1

    @cuda.jit
    def mark_columns(indices, counts):
        # indices (k,) distinct: counts[i] = 1 for each selected column.
        start = cuda.grid(1)
        for t in range(start, indices.shape[0], cuda.gridsize(1)):
            counts[indices[t]] = 1

    @cuda.jit
    def mark_members(indices, member):
        # indices (B, k), each row distinct: member[b, i] = 1 where i is selected by example b.
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j >= indices.shape[1]:
            return
        for b in range(cuda.blockIdx.y, indices.shape[0], cuda.gridDim.y):
            member[b, indices[b, j]] = 1

    @cuda.jit
    def count_members(member, chunk, chunk_counts):
        # chunk_counts[r, i] = number of examples of row chunk r selecting column i.
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if i >= member.shape[1]:
            return
        for r in range(cuda.blockIdx.y, chunk_counts.shape[0], cuda.gridDim.y):
            total = 0
            for b in range(r * chunk, smaller((r + 1) * chunk, member.shape[0])):
                total += member[b, i]
            chunk_counts[r, i] = total

    @cuda.jit
    def scan_chunk_counts(chunk_counts, counts):
        # Per column: chunk counts -> exclusive prefix over chunks; counts[i] = total.
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if i < chunk_counts.shape[1]:
            running = 0
            for r in range(chunk_counts.shape[0]):
                c = chunk_counts[r, i]
                chunk_counts[r, i] = running
                running += c
            counts[i] = running

    @cuda.jit
    def rank_members(member, chunk, chunk_counts):
        # member[b, i] becomes the rank of example b among the examples selecting
        # column i (example order): the chunk's offset plus a scan inside the chunk.
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if i >= member.shape[1]:
            return
        for r in range(cuda.blockIdx.y, chunk_counts.shape[0], cuda.gridDim.y):
            running = chunk_counts[r, i]
            for b in range(r * chunk, smaller((r + 1) * chunk, member.shape[0])):
                if member[b, i] != 0:
                    member[b, i] = running
                    running += 1

    @cuda.jit
    def scan_counts(counts, offsets, rows, totals):
        # One block.  offsets = exclusive prefix sum of counts (length n + 1);
        # rows = the columns with a non-zero count, increasing; totals = (len(rows), sum).
        count_buf = cuda.shared.array(MAX_THREADS, int64)
        flag_buf = cuda.shared.array(MAX_THREADS, int64)
        carry = cuda.shared.array(2, int64)
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        n = counts.shape[0]
        if tid == 0:
            carry[0] = 0
            carry[1] = 0
        cuda.syncthreads()
        for base in range(0, n, nthreads):
            i = base + tid
            c = int64(0)
            if i < n:
                c = int64(counts[i])
            count_buf[tid] = c
            flag_buf[tid] = 1 if c > 0 else 0
            cuda.syncthreads()
            block_inclusive_scan(count_buf, tid, nthreads)
            block_inclusive_scan(flag_buf, tid, nthreads)
            if i < n:
                offsets[i] = carry[0] + count_buf[tid] - c
                if c > 0:
                    rows[carry[1] + flag_buf[tid] - 1] = i
            cuda.syncthreads()
            if tid == 0:
                carry[0] += count_buf[nthreads - 1]
                carry[1] += flag_buf[nthreads - 1]
            cuda.syncthreads()
        if tid == 0:
            offsets[n] = carry[0]
            totals[0] = carry[1]
            totals[1] = carry[0]

    @cuda.jit
    def fill_segments(indices, g, member, offsets, seg_example, seg_grad):
        # Entry (b, j) goes to slot offsets[i] + rank of b in column i: lists ordered by example.
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j >= indices.shape[1]:
            return
        for b in range(cuda.blockIdx.y, indices.shape[0], cuda.gridDim.y):
            i = indices[b, j]
            slot = offsets[i] + member[b, i]
            seg_example[slot] = b
            seg_grad[slot] = g[b, i]

    ns = dict(locals())
    _KERNELS["generic"] = ns
    return ns


def _typed_kernels(dtype):
    """Build (once per float dtype) the per-example kernels holding float values in shared memory."""
    dtype = np.dtype(dtype)
    key = dtype.name
    if key in _KERNELS:
        return _KERNELS[key]
    ftype = float32 if dtype == np.float32 else float64
    smaller = common_kernels()["smaller"]

    @cuda.jit
    def per_example_dx(g, W, indices, dx):
        # dx[b, c] = sum_j g[b, S[b, j]] * W[S[b, j], c]; one thread per column, W rows read coalesced.
        sh_index = cuda.shared.array(MAX_THREADS, int64)
        sh_grad = cuda.shared.array(MAX_THREADS, ftype)
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        c = cuda.blockIdx.x * nthreads + tid
        m = W.shape[1]
        k = indices.shape[1]
        for b in range(cuda.blockIdx.y, g.shape[0], cuda.gridDim.y):
            acc = ftype(0)
            for j0 in range(0, k, nthreads):
                j = j0 + tid
                if j < k:
                    i = indices[b, j]
                    sh_index[tid] = i
                    sh_grad[tid] = g[b, i]
                cuda.syncthreads()
                if c < m:
                    for t in range(smaller(nthreads, k - j0)):
                        acc += sh_grad[t] * W[sh_index[t], c]
                cuda.syncthreads()
            if c < m:
                dx[b, c] = acc

    @cuda.jit
    def segment_values(x, rows, offsets, seg_example, seg_grad, values):
        # values[r, c] = sum over the list of row rows[r] of grad * x[example, c], in example order.
        sh_example = cuda.shared.array(MAX_THREADS, int64)
        sh_grad = cuda.shared.array(MAX_THREADS, ftype)
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        c = cuda.blockIdx.x * nthreads + tid
        m = x.shape[1]
        for r in range(cuda.blockIdx.y, rows.shape[0], cuda.gridDim.y):
            i = rows[r]
            start = offsets[i]
            stop = offsets[i + 1]
            acc = ftype(0)
            for s0 in range(start, stop, nthreads):
                s = s0 + tid
                if s < stop:
                    sh_example[tid] = seg_example[s]
                    sh_grad[tid] = seg_grad[s]
                cuda.syncthreads()
                if c < m:
                    for t in range(smaller(nthreads, stop - s0)):
                        acc += sh_grad[t] * x[sh_example[t], c]
                cuda.syncthreads()
            if c < m:
                values[r, c] = acc

    ns = dict(locals())
    _KERNELS[key] = ns
    return ns

def _tiled_kernels(dtype, tile):
    """Build (once per float dtype and tile) the tiled gather-products.

    `tile` is a compile-time constant: the shared tiles have its exact size
    (the first padded by one column so that its column-wise stores hit
    distinct banks) and the loops over it unroll.
    """
    dtype = np.dtype(dtype)
    key = ("tiled", dtype.name, tile)
    if key in _KERNELS:
        return _KERNELS[key]
    shared = tiled_shared_bytes(tile, dtype.itemsize)
    if shared > STATIC_SHARED_LIMIT:
        raise ValueError(f"GEMM_TILE={tile} needs {shared} bytes of static shared memory per block; "
                         f"the limit is {STATIC_SHARED_LIMIT}")
    ftype = float32 if dtype == np.float32 else float64
    span = GEMM_MICRO * tile
    padded = span + 1  # a closure constant: shared array shapes must be compile-time constants
    nthreads = tile * tile

    @cuda.jit(device=True)
    def multiply_tiles(sh_a, sh_b, ty, tx, acc):
        # acc[i, j] += sum_p sh_a[p, ty + i*tile] * sh_b[p, tx + j*tile]: each thread owns a
        # GEMM_MICRO x GEMM_MICRO register tile, strided so shared reads are broadcast or consecutive.
        for p in range(tile):
            a = cuda.local.array(GEMM_MICRO, ftype)
            for i in range(GEMM_MICRO):
                a[i] = sh_a[p, ty + i * tile]
            for j in range(GEMM_MICRO):
                b = sh_b[p, tx + j * tile]
                for i in range(GEMM_MICRO):
                    acc[i, j] += a[i] * b

    @cuda.jit(device=True)
    def zero_tile(acc):
        for i in range(GEMM_MICRO):
            for j in range(GEMM_MICRO):
                acc[i, j] = ftype(0)

    @cuda.jit(device=True)
    def store_tile(out, acc, r0, c0, ty, tx):
        # out[r0 + ty + i*tile, c0 + tx + j*tile] = acc[i, j], inside out.
        for i in range(GEMM_MICRO):
            r = r0 + ty + i * tile
            if r < out.shape[0]:
                for j in range(GEMM_MICRO):
                    c = c0 + tx + j * tile
                    if c < out.shape[1]:
                        out[r, c] = acc[i, j]

    @cuda.jit
    def gather_dx(g, W, rows, dx):
        # dx = g[:, rows] @ W[rows, :].  Block: tile x tile threads computing a span x span
        # block of dx, stepping through the selection tile rows at a time; the blocks of a
        # grid column loop over the row blocks beyond the grid (grid-stride in y).
        sh_a = cuda.shared.array((tile, padded), ftype)
        sh_b = cuda.shared.array((tile, span), ftype)
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), ftype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tile + tx
        c0 = cuda.blockIdx.x * span
        batch = g.shape[0]
        m = W.shape[1]
        k = rows.shape[0]
        for by in range(cuda.blockIdx.y, (batch + span - 1) // span, cuda.gridDim.y):
            b0 = by * span
            zero_tile(acc)
            for p0 in range(0, k, tile):
                for e in range(tid, span * tile, nthreads):
                    # sh_a[p, r] = g[b0 + r, rows[p0 + p]]: consecutive threads, consecutive selected columns.
                    p = e % tile
                    r = e // tile
                    b = b0 + r
                    sh_a[p, r] = g[b, rows[p0 + p]] if (b < batch and p0 + p < k) else ftype(0)
                    # sh_b[q, c] = W[rows[p0 + q], c0 + c]: consecutive threads, consecutive columns.
                    c = e % span
                    q = e // span
                    sh_b[q, c] = W[rows[p0 + q], c0 + c] if (p0 + q < k and c0 + c < m) else ftype(0)
                cuda.syncthreads()
                multiply_tiles(sh_a, sh_b, ty, tx, acc)
                cuda.syncthreads()
            store_tile(dx, acc, b0, c0, ty, tx)

    @cuda.jit
    def gather_values(g, x, rows, partial):
        # partial[z] = g[B_z, rows].T @ x[B_z], i.e. partial[z, r, c] = sum_{b in B_z} g[b, rows[r]] * x[b, c],
        # B_z the z-th of gridDim.z consecutive slices of the batch (whole tiles); same tiling.  With one
        # slice, partial[0] is dW's values; with more, a fixed-order sum over z gives them.
        sh_a = cuda.shared.array((tile, padded), ftype)
        sh_b = cuda.shared.array((tile, span), ftype)
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), ftype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tile + tx
        c0 = cuda.blockIdx.x * span
        batch = g.shape[0]
        m = x.shape[1]
        k = rows.shape[0]
        per_slice = ((batch + tile - 1) // tile + cuda.gridDim.z - 1) // cuda.gridDim.z * tile
        b_lo = cuda.blockIdx.z * per_slice
        b_hi = b_lo + per_slice
        if b_hi > batch:
            b_hi = batch
        out = partial[cuda.blockIdx.z]
        for ry in range(cuda.blockIdx.y, (k + span - 1) // span, cuda.gridDim.y):
            r0 = ry * span
            zero_tile(acc)
            for p0 in range(b_lo, b_hi, tile):
                for e in range(tid, span * tile, nthreads):
                    # sh_a[p, r] = g[p0 + p, rows[r0 + r]]: consecutive threads, consecutive selected columns.
                    r = e % span
                    p = e // span
                    b = p0 + p
                    sh_a[p, r] = g[b, rows[r0 + r]] if (b < b_hi and r0 + r < k) else ftype(0)
                    # sh_b[p, c] = x[p0 + p, c0 + c]
                    sh_b[p, r] = x[b, c0 + r] if (b < b_hi and c0 + r < m) else ftype(0)
                cuda.syncthreads()
                multiply_tiles(sh_a, sh_b, ty, tx, acc)
                cuda.syncthreads()
            store_tile(out, acc, r0, c0, ty, tx)

    @cuda.jit
    def forward_product(x, W, bias, y):
        # y = x @ W.T + bias (the forward of a linear layer); same tiling, both tiles staged
        # transposed (sh_a[p, r] = x[b0 + r, p0 + p], sh_b[p, c] = W[c0 + c, p0 + p]) so that
        # consecutive threads read consecutive inputs, and both padded against bank conflicts.
        sh_a = cuda.shared.array((tile, padded), ftype)
        sh_b = cuda.shared.array((tile, padded), ftype)
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), ftype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tile + tx
        c0 = cuda.blockIdx.x * span
        batch = x.shape[0]
        m = x.shape[1]
        n = W.shape[0]
        for by in range(cuda.blockIdx.y, (batch + span - 1) // span, cuda.gridDim.y):
            b0 = by * span
            zero_tile(acc)
            for p0 in range(0, m, tile):
                for e in range(tid, span * tile, nthreads):
                    p = e % tile
                    r = e // tile
                    b = b0 + r
                    inside = p0 + p < m
                    sh_a[p, r] = x[b, p0 + p] if (b < batch and inside) else ftype(0)
                    sh_b[p, r] = W[c0 + r, p0 + p] if (c0 + r < n and inside) else ftype(0)
                cuda.syncthreads()
                multiply_tiles(sh_a, sh_b, ty, tx, acc)
                cuda.syncthreads()
            for i in range(GEMM_MICRO):
                r = b0 + ty + i * tile
                if r < batch:
                    for j in range(GEMM_MICRO):
                        c = c0 + tx + j * tile
                        if c < n:
                            y[r, c] = acc[i, j] + bias[c]

    ns = dict(locals())
    _KERNELS[key] = ns
    return ns


def _sorted_unique_columns(indices, n, stream, workspace=None):
    """Sorted copy of the distinct (k,) column set `indices`."""
    k = indices.shape[0]
    ws = workspace
    counts = zeros(n, np.int32, stream, ws, "columns.counts")
    K = _kernels()
    launch_1d(K["mark_columns"], lambda tpb: _cols_grid(k, tpb), (indices, counts), stream)
    offsets = empty(n + 1, np.int64, stream, ws, "columns.offsets")
    rows = empty(k, np.int64, stream, ws, "rows")
    totals = empty(2, np.int64, stream, ws, "columns.totals")
    launch_1d(K["scan_counts"], lambda tpb: 1, (counts, offsets, rows, totals), stream)
    return rows


def _launch_tiled(name, dtype, grid, args, stream):
    """Launch a tiled product with (T, T) blocks, T = GEMM_TILE or less where the kernel's limit demands."""
    tile = _tile()
    while True:
        kernel = _tiled_kernels(dtype, tile)[name]
        limit = _device.kernel_max_threads(kernel, args)
        if tile == 1 or tile * tile <= limit:
            break
        tile = max(1, math.isqrt(limit))
    _device.launch(kernel, grid(GEMM_MICRO * tile), (tile, tile), stream, args)


def _grid_2d(ncols, nrows):
    # Blocks beyond MAX_GRID_ROWS along y are covered by the kernels' grid-stride loops.
    return lambda span: (_cols_grid(ncols, span), _rows_grid(_cols_grid(nrows, span)))


def _shared_backward(x, W, g, rows, need_dx, stream, workspace=None):
    """dx (None unless `need_dx`) and dW values for one sorted column set `rows` shared by the batch."""
    batch, m = x.shape
    k = rows.shape[0]
    dx = None
    if need_dx:
        dx = empty((batch, m), g.dtype, stream, workspace, "dx")
        _launch_tiled("gather_dx", g.dtype, _grid_2d(m, batch), (g, W, rows, dx), stream)
    values = empty((k, m), g.dtype, stream, workspace, "values")
    splits = batch_splits(batch, k, m)
    partial = (values.reshape(1, k, m) if splits == 1
               else empty((splits, k, m), g.dtype, stream, workspace, "values.partial"))
    grid = _grid_2d(m, k)
    _launch_tiled("gather_values", g.dtype, lambda span: grid(span) + (splits,), (g, x, rows, partial), stream)
    if splits > 1:
        launch_1d(_topk._kernels()["sum_partials"], lambda tpb: _cols_grid(k * m, tpb),
                  (partial.reshape(splits, k * m), values.reshape(k * m)), stream)
    return dx, values


def batch_splits(batch, k, m):
    """Slices of the batch that ``gather_values`` sums separately (then adds in a fixed order).

    With few selected rows (k <= 64 is one row block) the product has few
    blocks, each walking the whole batch; slicing the batch multiplies them
    up to ``VALUES_TARGET_BLOCKS``, each slice at least
    ``VALUES_MIN_SLICE_TILES`` tiles of the batch long.
    """
    tile = _tile()
    span = GEMM_MICRO * tile
    blocks = _cols_grid(m, span) * _rows_grid(_cols_grid(k, span))
    target = int(VALUES_TARGET_BLOCKS)
    if blocks >= target:
        return 1
    longest = max(1, batch // (VALUES_MIN_SLICE_TILES * tile))
    return int(max(1, min(-(-target // blocks), longest, _device.GRID_ROWS_LIMIT)))


def _library(arrays):
    """``"torch"`` or ``"cupy"`` when every array is that library's CUDA array, else None."""
    roots = {type(a).__module__.partition(".")[0] for a in arrays}
    if len(roots) == 1:
        root = roots.pop()
        if root in _LIBRARY_PRODUCTS:
            return root
    return None


def _torch_products(x, W, g, rows, need_dx, dense):
    import torch

    if dense:
        g_sel, W_sel = g, W
    else:
        sel = torch.as_tensor(rows, device=g.device)
        g_sel, W_sel = g.index_select(1, sel), W.index_select(0, sel)
    return (g_sel @ W_sel if need_dx else None), g_sel.T @ x


def _cupy_products(x, W, g, rows, need_dx, dense):
    import cupy

    if dense:
        g_sel, W_sel = g, W
    else:
        sel = cupy.asarray(rows)
        g_sel, W_sel = cupy.take(g, sel, axis=1), cupy.take(W, sel, axis=0)
    return (g_sel @ W_sel if need_dx else None), g_sel.T @ x


#: The caller library's matmul for the two dense sub-products of a shared selection.
_LIBRARY_PRODUCTS = {"torch": _torch_products, "cupy": _cupy_products}


def _per_example_backward(x, W, g, indices, status, need_dx, check_finite, stream, workspace=None):
    """dx (None unless `need_dx`), rows and dW values for per-example column sets `indices` (B, k).

    ``status`` holds the non-finite flags of `g` and `x` (set by the
    caller's check kernels); it comes back to the host with the number of
    distinct rows in a single transfer, and the error is raised before
    ``values`` is allocated.  Inputs are never written, so computing on a
    bad `g` before raising changes nothing the caller owns.  With a
    `workspace`, ``values`` is a view of a buffer of the largest possible
    row count, so every call of a shape reuses it.
    """
    batch, m = x.shape
    n = W.shape[0]
    k = indices.shape[1]
    K = _kernels()
    TK = _typed_kernels(g.dtype)

    ws = workspace
    dx = None
    if need_dx:
        dx = empty((batch, m), g.dtype, stream, ws, "dx")
        launch_1d(TK["per_example_dx"], lambda tpb: (_cols_grid(m, tpb), _rows_grid(batch)), (g, W, indices, dx),
                  stream)

    member = zeros((batch, n), np.int32, stream, ws, "members")
    grid_bk = lambda tpb: (_cols_grid(k, tpb), _rows_grid(batch))  # noqa: E731
    launch_1d(K["mark_members"], grid_bk, (indices, member), stream)
    chunk, n_chunks = _row_chunks(batch)
    chunk_counts = empty((n_chunks, n), np.int32, stream, ws, "members.chunk_counts")
    counts = empty(n, np.int32, stream, ws, "members.counts")
    grid_chunks = lambda tpb: (_cols_grid(n, tpb), _rows_grid(n_chunks))  # noqa: E731
    launch_1d(K["count_members"], grid_chunks, (member, chunk, chunk_counts), stream)
    launch_1d(K["scan_chunk_counts"], lambda tpb: _cols_grid(n, tpb), (chunk_counts, counts), stream)
    launch_1d(K["rank_members"], grid_chunks, (member, chunk, chunk_counts), stream)
    offsets = empty(n + 1, np.int64, stream, ws, "members.offsets")
    rows_all = empty(min(n, batch * k), np.int64, stream, ws, "rows")
    launch_1d(K["scan_counts"], lambda tpb: 1, (counts, offsets, rows_all, status[_N_ROWS:_N_PAIRS + 1]), stream)
    seg_example = empty(batch * k, np.int64, stream, ws, "segments.example")
    seg_grad = empty(batch * k, g.dtype, stream, ws, "segments.grad")
    launch_1d(K["fill_segments"], grid_bk, (indices, g, member, offsets, seg_example, seg_grad), stream)

    host_status = read_status(status, stream)  # the flags and len(rows), which sizes `values`
    if check_finite:
        _raise_for_status(host_status)
    n_rows = int(host_status[_N_ROWS])
    rows = rows_all[:n_rows]
    if ws is None:
        values = empty((n_rows, m), g.dtype, stream)
    else:
        values = ws.empty("values", (rows_all.shape[0], m), g.dtype, stream)[:n_rows]
    if n_rows:
        launch_1d(TK["segment_values"], lambda tpb: (_cols_grid(m, tpb), _rows_grid(n_rows)),
                  (x, rows, offsets, seg_example, seg_grad, values), stream)
    return dx, rows, values


def _raise_for_status(host_status):
    raise_if_nonfinite(host_status, "g", _G_BAD)
    raise_if_nonfinite(host_status, "x", _X_BAD)


def check_indices(indices, batch, n, name="indices", stream=None):
    """Validate device selection indices on the device; return them as a 2-D-able numba array.

    Shape and dtype are checked on the host, range and repeats by a kernel
    whose two flags come back in one transfer (before any kernel reads
    through the indices).

    Parameters
    ----------
    indices : CUDA array, (batch, k) or (k,), integer
        A numba device array, CuPy array or PyTorch CUDA tensor.
    batch, n : int
        The gradient's shape.

    Returns
    -------
    numba device array
        `indices` (int64, no copy when it already is) .

    Raises
    ------
    TypeError
        Not an integer dtype.
    ValueError
        Wrong shape, or an index repeated within a set.
    IndexError
        An index outside ``[0, n)``.
    """
    require_cuda()
    s = launch_stream([indices], stream)
    d = as_device(indices, name)
    if np.dtype(d.dtype).kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {d.dtype}")
    if d.ndim == 2:
        if d.shape[0] != batch:
            raise ValueError(f"{name} of shape {d.shape} must have one row per example: expected ({batch}, k)")
    elif d.ndim != 1:
        raise ValueError(f"{name} must have shape ({batch}, k) or (k,), got {d.shape}")
    k = d.shape[d.ndim - 1]
    if not 1 <= k <= n:
        raise ValueError(f"{name} must select between 1 and {n} entries per row, got {k}")
    two_d = _as_2d(d)
    status = zeros(6, np.int64, s)
    counts = zeros((two_d.shape[0], n), np.int32, s)
    launch_1d(_kernels()["count_indices"], lambda tpb: (_cols_grid(k, tpb), _rows_grid(two_d.shape[0])),
              (two_d, n, counts, status), s)
    host = read_status(status, s)
    if host[_OUT_OF_RANGE]:
        raise IndexError(f"{name} holds an index outside [0, {n})")
    if host[_REPEATED]:
        raise ValueError(f"{name} repeats an index within a row; each selected entry must be distinct")
    if d.dtype != np.int64:
        out = cuda.device_array(d.shape, dtype=np.int64, stream=s)
        launch_1d(common_kernels()["cast_copy"], lambda tpb: min(_cols_grid(d.size, tpb), int(MAX_GRID_ROWS)),
                  (d.reshape(d.size), out.reshape(d.size)), s)
        d = out
    return d


def _device_indices(indices, stream, workspace=None):
    if isinstance(indices, np.ndarray):
        return copy_in(indices.astype(np.int64, copy=False), stream, workspace, "indices")
    indices = as_device(indices, "indices")
    if indices.dtype != np.int64:
        raise TypeError(f"indices on the GPU must have dtype int64, got {indices.dtype}")
    return indices


def linear_backward(x, W, g, k, indices, unified, need_dx=True, stream=None, check_finite=True, workspace=None):
    """Sparse (or dense) backward of ``y = x W^T + b`` on the GPU.

    Parameters
    ----------
    x : CUDA array, (B, m)
        Layer input.
    W : CUDA array, (n, m)
        Weights, stored (out, in).
    g : CUDA array, (B, n)
        ``dL/dy``, same dtype as `x` and `W`.
    k : int or None
        Entries kept per example (or for the batch when `unified`); None
        (or n with no `indices`) gives the exact dense backward.
    indices : array or None
        Explicit selection overriding top-k: ``(B, k)`` per example or
        ``(k,)`` shared, int64, each set distinct (validated by the caller,
        on the device for device indices: :func:`check_indices`).  A host
        array is copied to the device.
    unified : bool
        Select one column set for the whole minibatch.
    need_dx : bool
        Compute ``dx``; False returns None for it and skips its kernels.
    stream : optional
        Stream for the kernels (see :func:`.device.stream_handle`); default
        the stream the inputs come from.
    check_finite : bool
        Check `g` and `x` for NaN/Inf in the pass that sums `g` and raise
        (the flags come back once, at the end; inputs are only read, so a
        refused call changes nothing).  False raises nothing for them and,
        except for per-example selection (whose row count sizes
        ``dW.values``), returns without waiting for the device.
    workspace : Workspace, optional
        Where the outputs and the scratch come from (allocated on a shape's
        first call, reused after; the outputs are valid until the next call
        with this workspace).

    Returns
    -------
    dx : device array, (B, m), or None
    rows : numba device array, int64
        Sorted distinct rows of ``dW`` that are non-zero by selection.
    values : device array, (len(rows), m)
        ``dW[rows]``.
    db : numba device array, (n,)
        ``g.sum(axis=0)`` from the full gradient.

    ``dx`` and ``values`` are arrays of the inputs' library (PyTorch or
    CuPy) when a shared selection's products went through its matmul,
    numba device arrays otherwise.

    Raises
    ------
    ValueError
        If `g` or `x` holds NaN or Inf.
    """
    require_cuda()
    s = launch_stream([g, x, W], stream)
    library = _library((x, W, g))
    originals = (x, W, g)
    x = as_device(x, "x")
    W = as_device(W, "W")
    g = as_device(g, "g")
    n = W.shape[0]
    need_dx = bool(need_dx)
    dense = indices is None and (k is None or int(k) == n)
    if indices is not None:
        per_example = indices.ndim == 2
    else:
        per_example = not dense and not unified
    ws = workspace
    status = zeros(6, np.int64, s, ws, "backward.status")
    if check_finite:
        launch_nonfinite(x, status, _X_BAD, s)
    # One pass over g: db, the unified scores and the NaN/Inf flag.
    want_scores = unified and indices is None and not dense
    db, scores = _topk.scan_gradient(g, status, s, want_sum=True, want_abs=want_scores, workspace=ws)

    if dense:
        rows = empty(n, np.int64, s, ws, "rows")
        launch_1d(common_kernels()["iota"], lambda tpb: min(_cols_grid(n, tpb), int(MAX_GRID_ROWS)), (rows,), s)
    elif indices is None:
        if unified:
            rows = _sorted_unique_columns(_topk.unified_topk(scores, int(k), s, ws), n, s, ws)
        else:
            indices = _topk.topk_rows(g, int(k), s, ws)
    else:
        indices = _device_indices(indices, s, ws)
        if indices.ndim == 1:
            rows = _sorted_unique_columns(indices, n, s, ws)
    if per_example:
        dx, rows, values = _per_example_backward(x, W, g, indices, status, need_dx, check_finite, s, ws)
        return dx, rows, values, db
    if library is not None:
        dx, values = _LIBRARY_PRODUCTS[library](*originals, rows, need_dx, dense)
    else:
        dx, values = _shared_backward(x, W, g, rows, need_dx, s, ws)
    if check_finite:
        _raise_for_status(read_status(status, s))
    return dx, rows, values, db
