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

``GEMM_TILE``
    Side of the square thread block of the tiled products (at most
    ``GEMM_MAX_TILE``); each thread computes ``GEMM_MICRO`` x ``GEMM_MICRO``
    outputs.
"""
import numpy as np
from numba import float32, float64, int64

from . import topk as _topk
from .device import (MAX_GRID_ROWS, MAX_THREADS, _cols_grid, _fill, _launch_nonfinite, _raise_if_nonfinite,
                     _row_chunks, _rows_grid, _tpb, as_device, common_kernels, cuda, require_cuda, zeros)

#: Side of the square thread block of the tiled products.
GEMM_TILE = 16
#: Upper bound of ``GEMM_TILE``; sizes the shared tiles.
GEMM_MAX_TILE = 16
#: Each thread of a tiled product computes GEMM_MICRO x GEMM_MICRO outputs (compile-time).
GEMM_MICRO = 4
_GEMM_MAX_SPAN = GEMM_MICRO * GEMM_MAX_TILE

_KERNELS = {}


def _tile():
    t = int(GEMM_TILE)
    if not 1 <= t <= GEMM_MAX_TILE:
        raise ValueError(f"GEMM_TILE must be in [1, {GEMM_MAX_TILE}], got {t}")
    return t




def _kernels():
    """Build (once) the kernels of the per-example selection bookkeeping."""
    if "generic" in _KERNELS:
        return _KERNELS["generic"]
    common = common_kernels()
    block_inclusive_scan = common["block_inclusive_scan"]
    smaller = common["smaller"]

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
    """Build (once per float dtype) the kernels holding float values in shared memory."""
    dtype = np.dtype(dtype)
    key = dtype.name
    if key in _KERNELS:
        return _KERNELS[key]
    ftype = float32 if dtype == np.float32 else float64
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

    @cuda.jit(device=True)
    def multiply_tiles(sh_a, sh_b, depth, tile, ty, tx, acc):
        # acc[i, j] += sum_p sh_a[p, ty + i*tile] * sh_b[p, tx + j*tile]: each thread owns a
        # GEMM_MICRO x GEMM_MICRO register tile, strided so shared reads are broadcast or consecutive.
        for p in range(depth):
            a = cuda.local.array(GEMM_MICRO, ftype)
            for i in range(GEMM_MICRO):
                a[i] = sh_a[p, ty + i * tile]
            for j in range(GEMM_MICRO):
                b = sh_b[p, tx + j * tile]
                for i in range(GEMM_MICRO):
                    acc[i, j] += a[i] * b

    @cuda.jit
    def gather_dx(g, W, rows, dx):
        # dx = g[:, rows] @ W[rows, :].  Block: tile x tile threads computing a
        # (GEMM_MICRO*tile)^2 block of dx, stepping through the selection tile rows at a time.
        sh_a = cuda.shared.array((GEMM_MAX_TILE, _GEMM_MAX_SPAN), ftype)
        sh_b = cuda.shared.array((GEMM_MAX_TILE, _GEMM_MAX_SPAN), ftype)
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), ftype)
        tile = cuda.blockDim.x
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tile + tx
        nthreads = tile * tile
        span = GEMM_MICRO * tile
        b0 = cuda.blockIdx.y * span
        c0 = cuda.blockIdx.x * span
        batch = g.shape[0]
        m = W.shape[1]
        k = rows.shape[0]
        for i in range(GEMM_MICRO):
            for j in range(GEMM_MICRO):
                acc[i, j] = ftype(0)
        for p0 in range(0, k, tile):
            for e in range(tid, span * tile, nthreads):
                # sh_a[p, r] = g[b0 + r, rows[p0 + p]]: consecutive threads, consecutive selected columns.
                p = e % tile
                r = e // tile
                b = b0 + r
                sh_a[p, r] = g[b, rows[p0 + p]] if (b < batch and p0 + p < k) else ftype(0)
                # sh_b[p, c] = W[rows[p0 + p], c0 + c]: consecutive threads, consecutive columns.
                c = e % span
                q = e // span
                sh_b[q, c] = W[rows[p0 + q], c0 + c] if (p0 + q < k and c0 + c < m) else ftype(0)
            cuda.syncthreads()
            multiply_tiles(sh_a, sh_b, tile, tile, ty, tx, acc)
            cuda.syncthreads()
        for i in range(GEMM_MICRO):
            b = b0 + ty + i * tile
            if b < batch:
                for j in range(GEMM_MICRO):
                    c = c0 + tx + j * tile
                    if c < m:
                        dx[b, c] = acc[i, j]

    @cuda.jit
    def gather_values(g, x, rows, values):
        # values = g[:, rows].T @ x, i.e. values[r, c] = sum_b g[b, rows[r]] * x[b, c]; same tiling.
        sh_a = cuda.shared.array((GEMM_MAX_TILE, _GEMM_MAX_SPAN), ftype)
        sh_b = cuda.shared.array((GEMM_MAX_TILE, _GEMM_MAX_SPAN), ftype)
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), ftype)
        tile = cuda.blockDim.x
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tile + tx
        nthreads = tile * tile
        span = GEMM_MICRO * tile
        r0 = cuda.blockIdx.y * span
        c0 = cuda.blockIdx.x * span
        batch = g.shape[0]
        m = x.shape[1]
        k = rows.shape[0]
        for i in range(GEMM_MICRO):
            for j in range(GEMM_MICRO):
                acc[i, j] = ftype(0)
        for p0 in range(0, batch, tile):
            for e in range(tid, span * tile, nthreads):
                # sh_a[p, r] = g[p0 + p, rows[r0 + r]]: consecutive threads, consecutive selected columns.
                r = e % span
                p = e // span
                b = p0 + p
                sh_a[p, r] = g[b, rows[r0 + r]] if (b < batch and r0 + r < k) else ftype(0)
                # sh_b[p, c] = x[p0 + p, c0 + c]
                c = r
                sh_b[p, c] = x[b, c0 + c] if (b < batch and c0 + c < m) else ftype(0)
            cuda.syncthreads()
            multiply_tiles(sh_a, sh_b, tile, tile, ty, tx, acc)
            cuda.syncthreads()
        for i in range(GEMM_MICRO):
            r = r0 + ty + i * tile
            if r < k:
                for j in range(GEMM_MICRO):
                    c = c0 + tx + j * tile
                    if c < m:
                        values[r, c] = acc[i, j]

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

def _sorted_unique_columns(indices, n):
    """Sorted copy of the distinct (k,) column set `indices`."""
    k = indices.shape[0]
    counts = cuda.device_array(n, dtype=np.int32)
    _fill(counts, 0)
    tpb = _tpb()
    K = _kernels()
    K["mark_columns"][_cols_grid(k, tpb), tpb](indices, counts)
    offsets = cuda.device_array(n + 1, dtype=np.int64)
    rows = cuda.device_array(k, dtype=np.int64)
    totals = cuda.device_array(2, dtype=np.int64)
    K["scan_counts"][1, tpb](counts, offsets, rows, totals)
    return rows


def _shared_backward(x, W, g, rows):
    """dx and dW values for one sorted column set `rows` shared by the batch."""
    batch, m = x.shape
    k = rows.shape[0]
    T = _tile()
    TK = _typed_kernels(g.dtype)
    dx = cuda.device_array((batch, m), dtype=g.dtype)
    span = GEMM_MICRO * T
    TK["gather_dx"][(_cols_grid(m, span), _cols_grid(batch, span)), (T, T)](g, W, rows, dx)
    values = cuda.device_array((k, m), dtype=g.dtype)
    TK["gather_values"][(_cols_grid(m, span), _cols_grid(k, span)), (T, T)](g, x, rows, values)
    return dx, values


def _per_example_backward(x, W, g, indices, status):
    """dx, rows and dW values for per-example column sets `indices` (B, k).

    ``status[0]`` holds the non-finite flag of `g` (set by the caller's
    check kernel); it comes back to the host with the number of distinct
    rows in a single transfer, and the error is raised before ``values`` is
    allocated.  Inputs are never written, so computing on a bad `g` before
    raising changes nothing the caller owns.
    """
    batch, m = x.shape
    n = W.shape[0]
    k = indices.shape[1]
    tpb = _tpb()
    K = _kernels()
    TK = _typed_kernels(g.dtype)

    dx = cuda.device_array((batch, m), dtype=g.dtype)
    TK["per_example_dx"][(_cols_grid(m, tpb), _rows_grid(batch)), tpb](g, W, indices, dx)

    member = cuda.device_array((batch, n), dtype=np.int32)
    _fill(member, 0)
    grid_bk = (_cols_grid(k, tpb), _rows_grid(batch))
    K["mark_members"][grid_bk, tpb](indices, member)
    chunk, n_chunks = _row_chunks(batch)
    chunk_counts = cuda.device_array((n_chunks, n), dtype=np.int32)
    counts = cuda.device_array(n, dtype=np.int32)
    grid_chunks = (_cols_grid(n, tpb), _rows_grid(n_chunks))
    K["count_members"][grid_chunks, tpb](member, chunk, chunk_counts)
    K["scan_chunk_counts"][_cols_grid(n, tpb), tpb](chunk_counts, counts)
    K["rank_members"][grid_chunks, tpb](member, chunk, chunk_counts)
    offsets = cuda.device_array(n + 1, dtype=np.int64)
    rows_all = cuda.device_array(min(n, batch * k), dtype=np.int64)
    K["scan_counts"][1, tpb](counts, offsets, rows_all, status[1:3])
    seg_example = cuda.device_array(batch * k, dtype=np.int64)
    seg_grad = cuda.device_array(batch * k, dtype=g.dtype)
    K["fill_segments"][grid_bk, tpb](indices, g, member, offsets, seg_example, seg_grad)

    host_status = status.copy_to_host()  # the flag and len(rows), which sizes `values`
    _raise_if_nonfinite(host_status, "g")
    n_rows = int(host_status[1])
    rows = rows_all[:n_rows]
    values = cuda.device_array((n_rows, m), dtype=g.dtype)
    if n_rows:
        TK["segment_values"][(_cols_grid(m, tpb), _rows_grid(n_rows)), tpb](
            x, rows, offsets, seg_example, seg_grad, values
        )
    return dx, rows, values


def _device_indices(indices):
    if isinstance(indices, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(indices, dtype=np.int64))
    indices = as_device(indices, "indices")
    if indices.dtype != np.int64:
        raise TypeError(f"indices on the GPU must have dtype int64, got {indices.dtype}")
    return indices


def linear_backward(x, W, g, k, indices, unified):
    """Sparse (or dense) backward of ``y = x W^T + b`` on the GPU.

    Parameters
    ----------
    x : CUDA array, (B, m)
        Layer input.
    W : CUDA array, (n, m)
        Weights, stored (out, in).
    g : CUDA array, (B, n)
        ``dL/dy``, same dtype as `x` and `W`; checked for NaN/Inf on the
        device (inputs are only read, so a refused call changes nothing).
    k : int or None
        Entries kept per example (or for the batch when `unified`); None
        (or n with no `indices`) gives the exact dense backward.
    indices : array or None
        Explicit selection overriding top-k: ``(B, k)`` per example or
        ``(k,)`` shared, int64, each set distinct (validated by the caller).
        A host array is copied to the device.
    unified : bool
        Select one column set for the whole minibatch.

    Returns
    -------
    dx : numba device array, (B, m)
    rows : numba device array, int64
        Sorted distinct rows of ``dW`` that are non-zero by selection.
    values : numba device array, (len(rows), m)
        ``dW[rows]``.
    db : numba device array, (n,)
        ``g.sum(axis=0)`` from the full gradient.

    Raises
    ------
    ValueError
        If `g` holds NaN or Inf.
    """
    require_cuda()
    x = as_device(x, "x")
    W = as_device(W, "W")
    g = as_device(g, "g")
    n = W.shape[0]
    tpb = _tpb()
    dense = indices is None and (k is None or int(k) == n)
    if indices is not None:
        per_example = indices.ndim == 2
    else:
        per_example = not dense and not unified
    status = zeros(3, np.int64)  # non-finite flag of g, len(rows), number of (example, row) pairs
    _launch_nonfinite(g, status)
    if not per_example:
        # One transfer now; the rest of the call is then queued without waiting.
        _raise_if_nonfinite(status.copy_to_host(), "g")

    db = cuda.device_array(n, dtype=g.dtype)
    _topk._column_sums(g, db, absolute=False)

    if dense:
        rows = cuda.device_array(n, dtype=np.int64)
        common_kernels()["iota"][min(_cols_grid(n, tpb), int(MAX_GRID_ROWS)), tpb](rows)
        dx, values = _shared_backward(x, W, g, rows)
        return dx, rows, values, db
    if indices is None:
        indices = _topk._unified_topk(g, int(k)) if unified else _topk._topk_rows(g, int(k))
    else:
        indices = _device_indices(indices)
    if indices.ndim == 1:
        rows = _sorted_unique_columns(indices, n)
        dx, values = _shared_backward(x, W, g, rows)
        return dx, rows, values, db
    dx, rows, values = _per_example_backward(x, W, g, indices, status)
    return dx, rows, values, db
