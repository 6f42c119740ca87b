"""CUDA kernels (``@cuda.jit``) for meProp: top-k, sparse backward, sparse updates.

This is the only module of the package that imports ``numba.cuda``, so a
switch to another CUDA back end touches one file.  The public functions
(:func:`meprop_numba.topk_indices`, :func:`meprop_numba.linear_backward`
and the optimizers) validate shapes, dtypes and ``k`` and then call the
entry points below when given CUDA arrays:

* :func:`topk_indices` -- row-wise or unified top-k by magnitude;
* :func:`linear_backward` -- ``(dx, rows, values, db)`` of the sparse (or,
  with ``k=None``, dense) backward of a linear layer;
* :func:`sgd_step`, :func:`adam_step`, :func:`adagrad_step` -- in-place
  updates from a dense gradient or a row-sparse ``(rows, values)`` pair,
  lazy (only the listed rows) or dense;
* :func:`zeros_like`, :func:`check_finite`, :func:`cuda_available`.

Inputs are numba device arrays or any object exposing
``__cuda_array_interface__`` (wrapped without a copy); outputs are numba
device arrays.  Data never goes to the host; one small status array does,
once per call: the non-finite flag of ``g`` (the error must be raised
before anything the caller owns changes) and, for per-example selection,
the number of distinct rows of ``dW`` (it sizes ``values``).

Launch settings are module attributes read at every call, so tests can make
blocks small enough that tiny inputs span several of them:

``THREADS_PER_BLOCK``
    Threads of every 1-D block (at most ``MAX_THREADS``).
``GEMM_TILE``
    Side of the square thread block of the tiled products (at most
    ``GEMM_MAX_TILE``); each thread computes ``GEMM_MICRO`` x ``GEMM_MICRO``
    outputs.
``MAX_GRID_ROWS``
    Cap on the grid's row dimension; kernels loop over the rows beyond it.
``COLUMN_CHUNK``
    Rows per chunk of the reductions over the batch (column sums, the
    membership ranks), combined in a fixed order.

Algorithms
----------
Top-k (one block per row): a most-significant-digit radix select on the
bit pattern of ``|g|`` (for non-negative IEEE floats the bit pattern, read
as an integer, orders like the value) finds the k-th largest key ``T`` with
a 256-bin histogram in shared memory, 8 bits per pass.  Keys above ``T``
are then compacted with a shared atomic counter and keys equal to ``T`` in
index order with a block scan (the lower index wins a tie), and the k
candidates are sorted by (key descending, index ascending) with a bitonic
sort in shared memory (in global scratch when k exceeds
``SORT_CAPACITY``).

Backward: per-example ``dx`` gathers the selected rows of ``W`` through
shared-memory tiles of (index, gradient) pairs; per-example ``dW`` builds,
without atomics, a column-major list of the (example, gradient) pairs of
each selected row (a membership matrix ranked by a column scan, a block
scan of the row counts) and reduces each list in example order, so the
result is deterministic.  Unified selection and the dense case (``k=None``)
use tiled gather-products: shared-memory tiles filled by gathering the
selected columns of ``g`` and rows of ``W``, and a ``GEMM_MICRO`` x
``GEMM_MICRO`` register tile of outputs per thread.

All arithmetic stays in the input's dtype: scalars are cast on the host,
accumulators start from typed zeros, so float32 work never falls onto the
slow FP64 units.
"""
import math

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - numba always ships a cuda module today
    cuda = None
    _CUDA_IMPORT_ERROR = exc
else:
    _CUDA_IMPORT_ERROR = None

from numba import config as _numba_config
from numba import float32, float64, int32, int64

#: Threads per block of the 1-D launches (top-k, backward, updates).
THREADS_PER_BLOCK = 256
#: Upper bound of ``THREADS_PER_BLOCK``; sizes the block-wide shared scratch.
MAX_THREADS = 1024
#: Side of the square thread block of the tiled products.
GEMM_TILE = 16
#: Upper bound of ``GEMM_TILE``; sizes the shared tiles.
GEMM_MAX_TILE = 16
#: Each thread of a tiled product computes GEMM_MICRO x GEMM_MICRO outputs (compile-time).
GEMM_MICRO = 4
_GEMM_MAX_SPAN = GEMM_MICRO * GEMM_MAX_TILE
#: Largest k whose candidates are sorted in shared memory (a power of two).
SORT_CAPACITY = 2048
#: Cap on the number of blocks along a grid's row dimension.
MAX_GRID_ROWS = 65535
#: Rows per chunk of the column reductions (sums over the batch).
COLUMN_CHUNK = 32

_GLOBAL_SORT_MAX_BLOCKS = 1024
RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
_SENTINEL_INDEX = 2**31 - 1

_INSTALL_HINT = (
    'install the CUDA extras with pip install "meprop_numba[cuda12]" (CUDA 12) or '
    '"meprop_numba[cuda13]" (CUDA 13), i.e. numba-cuda[cu12] or numba-cuda[cu13], '
    "and make sure the NVIDIA driver is loaded (nvidia-smi)"
)


# ------------------------------------------------------------------ availability
def cuda_available():
    """Return True if CUDA kernels can run here (a GPU, or the CUDA simulator).

    Returns
    -------
    bool
        False when ``numba.cuda`` cannot be imported or finds no usable
        driver and device.

    Examples
    --------
    >>> from meprop_numba import _cuda
    >>> isinstance(_cuda.cuda_available(), bool)
    True
    """
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install raises instead of returning False
        return False


def is_simulator():
    """Return True if numba runs CUDA kernels on the CPU simulator."""
    return bool(getattr(_numba_config, "ENABLE_CUDASIM", False))


def require_cuda():
    """Raise ``RuntimeError`` naming what is missing unless CUDA can run.

    Raises
    ------
    RuntimeError
        If ``numba.cuda`` is missing or finds no GPU/driver.
    """
    if cuda is None:
        raise RuntimeError(
            f"CUDA arrays were given but numba.cuda cannot be imported ({_CUDA_IMPORT_ERROR}); {_INSTALL_HINT}"
        )
    if not cuda_available():
        reason = ""
        try:
            cuda.detect()
        except Exception as exc:  # pragma: no cover - depends on the driver
            reason = f" ({exc})"
        raise RuntimeError(f"CUDA arrays were given but no usable CUDA GPU/driver was found{reason}; {_INSTALL_HINT}")


def _device_array_type():
    if is_simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray


def as_device(a, name="array"):
    """Return `a` as a numba device array without copying its data.

    Parameters
    ----------
    a : numba device array or object with ``__cuda_array_interface__``
        The array (a CuPy array, a PyTorch CUDA tensor, ...).
    name : str
        Argument name used in the error message.

    Raises
    ------
    TypeError
        If `a` is neither.
    """
    if isinstance(a, _device_array_type()):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        if is_simulator():
            return _simulated_from_interface(a)
        return cuda.as_cuda_array(a)
    raise TypeError(
        f"{name} must be a CUDA array (numba device array or __cuda_array_interface__), got {type(a).__name__}"
    )


def _simulated_from_interface(obj):
    """Simulator twin of ``cuda.as_cuda_array``: wrap the memory an interface points at.

    Under the simulator "device" memory is host memory, so the interface's
    pointer is wrapped in place (no copy), as a real GPU wraps device memory.
    """
    import ctypes

    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    iface = obj.__cuda_array_interface__
    shape = tuple(int(s) for s in iface["shape"])
    dtype = np.dtype(iface["typestr"])
    strides = iface.get("strides")
    if strides is None:  # C-contiguous
        strides, step = [], dtype.itemsize
        for extent in reversed(shape):
            strides.insert(0, step)
            step *= extent
    if any(s < 0 for s in strides):
        raise ValueError("negative strides are not supported under the CUDA simulator")
    ptr = int(iface["data"][0])
    if ptr == 0 or 0 in shape:
        return FakeCUDAArray(np.empty(shape, dtype=dtype))
    span = dtype.itemsize + sum((n - 1) * s for n, s in zip(shape, strides))
    buffer = (ctypes.c_byte * span).from_address(ptr)
    return FakeCUDAArray(np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides))


def to_device(a):
    """Copy a host array to the GPU (a plain ``cuda.to_device``)."""
    require_cuda()
    return cuda.to_device(np.ascontiguousarray(a))


def synchronize():
    """Wait until every kernel launched on the current device has finished."""
    require_cuda()
    cuda.synchronize()


def device_name():
    """Name of the current CUDA device (``"simulator"`` under the simulator)."""
    require_cuda()
    if is_simulator():
        return "simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def _tpb():
    t = int(THREADS_PER_BLOCK)
    if not 1 <= t <= MAX_THREADS:
        raise ValueError(f"THREADS_PER_BLOCK must be in [1, {MAX_THREADS}], got {t}")
    return t


def _tile():
    t = int(GEMM_TILE)
    if not 1 <= t <= GEMM_MAX_TILE:
        raise ValueError(f"GEMM_TILE must be in [1, {GEMM_MAX_TILE}], got {t}")
    return t


def _rows_grid(nrows):
    return max(1, min(int(nrows), int(MAX_GRID_ROWS)))


def _cols_grid(ncols, tpb):
    return max(1, (int(ncols) + tpb - 1) // tpb)


# ------------------------------------------------------------------ kernels
_KERNELS = {}


def _kernels():
    """Build (once) the kernels that do not depend on the float dtype."""
    if "generic" in _KERNELS:
        return _KERNELS["generic"]

    @cuda.jit(device=True)
    def smaller(a, b):
        # min() of two integers of possibly different signedness (thread indices are unsigned).
        return a if a < b else b

    @cuda.jit(device=True)
    def block_inclusive_scan(buf, tid, nthreads):
        # Hillis-Steele scan over buf[:nthreads]; the caller syncs after writing buf.
        offset = 1
        while offset < nthreads:
            add = 0
            if tid >= offset:
                add = buf[tid - offset]
            cuda.syncthreads()
            if tid >= offset:
                buf[tid] += add
            cuda.syncthreads()
            offset *= 2

    @cuda.jit(device=True)
    def bitonic_sort_desc(keys, idx, size, tid, nthreads):
        # Sort keys[:size] (size a power of two) by key descending, index ascending.
        half = size // 2
        block = 2
        while block <= size:
            stride = block // 2
            while stride > 0:
                for t in range(tid, half, nthreads):
                    low_bits = t & (stride - 1)
                    lo = ((t - low_bits) << 1) + low_bits
                    hi = lo + stride
                    ka = keys[lo]
                    kb = keys[hi]
                    ia = idx[lo]
                    ib = idx[hi]
                    hi_first = kb > ka or (kb == ka and ib < ia)
                    descending = (lo & block) == 0
                    if hi_first == descending:
                        keys[lo] = kb
                        keys[hi] = ka
                        idx[lo] = ib
                        idx[hi] = ia
                cuda.syncthreads()
                stride //= 2
            block *= 2

    @cuda.jit(device=True)
    def select_topk_row(bits, abs_mask, nbits, k, row, keys_buf, idx_buf, sort_size, hist, scan_buf, state, out):
        # state: 0 prefix of the k-th key, 1 keys still wanted inside the prefix,
        # 2 slots used by keys above the threshold, 3 equal keys seen, 4 equal keys in this tile.
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        n = bits.shape[1]
        if tid == 0:
            state[0] = 0
            state[1] = k
            state[2] = 0
            state[3] = 0
            state[4] = 0
        for p in range(nbits // RADIX_BITS):
            shift = nbits - RADIX_BITS * (p + 1)
            high = shift + RADIX_BITS
            for d in range(tid, RADIX, nthreads):
                hist[d] = 0
            cuda.syncthreads()
            prefix = state[0]
            for i in range(tid, n, nthreads):
                key = int64(bits[row, i] & abs_mask)
                if p == 0 or (key >> high) == (prefix >> high):
                    cuda.atomic.add(hist, int32((key >> shift) & (RADIX - 1)), 1)
            cuda.syncthreads()
            if tid == 0:
                remaining = state[1]
                above = int64(0)
                d = RADIX - 1
                while d > 0 and above + hist[d] < remaining:
                    above += hist[d]
                    d -= 1
                state[0] = prefix | (int64(d) << shift)
                state[1] = remaining - above
            cuda.syncthreads()

        threshold = state[0]
        take_equal = state[1]
        n_above = k - take_equal
        for base in range(0, n, nthreads):
            i = base + tid
            is_equal = 0
            key = int64(-1)
            if i < n:
                key = int64(bits[row, i] & abs_mask)
                if key > threshold:
                    slot = cuda.atomic.add(state, 2, 1)
                    keys_buf[slot] = key
                    idx_buf[slot] = i
                elif key == threshold:
                    is_equal = 1
                    cuda.atomic.add(state, 4, 1)
            cuda.syncthreads()
            tile_equal = state[4]
            taken = state[3]
            cuda.syncthreads()
            if tile_equal > 0 and taken < take_equal:
                # Equal keys are taken in index order: rank them with a block scan.
                scan_buf[tid] = is_equal
                cuda.syncthreads()
                block_inclusive_scan(scan_buf, tid, nthreads)
                rank = taken + scan_buf[tid] - 1
                if is_equal == 1 and rank < take_equal:
                    keys_buf[n_above + rank] = key
                    idx_buf[n_above + rank] = i
            if tid == 0:
                state[3] = taken + tile_equal
                state[4] = 0
            cuda.syncthreads()

        for s in range(k + tid, sort_size, nthreads):
            keys_buf[s] = -1
            idx_buf[s] = _SENTINEL_INDEX
        cuda.syncthreads()
        bitonic_sort_desc(keys_buf, idx_buf, sort_size, tid, nthreads)
        for s in range(tid, k, nthreads):
            out[row, s] = idx_buf[s]
        cuda.syncthreads()

    @cuda.jit
    def topk_rows_shared(bits, abs_mask, nbits, k, sort_size, out):
        hist = cuda.shared.array(RADIX, int32)
        scan_buf = cuda.shared.array(MAX_THREADS, int32)
        state = cuda.shared.array(8, int64)
        keys_buf = cuda.shared.array(SORT_CAPACITY, int64)
        idx_buf = cuda.shared.array(SORT_CAPACITY, int32)
        for row in range(cuda.blockIdx.x, bits.shape[0], cuda.gridDim.x):
            select_topk_row(bits, abs_mask, nbits, k, row, keys_buf, idx_buf, sort_size, hist, scan_buf, state, out)

    @cuda.jit
    def topk_rows_global(bits, abs_mask, nbits, k, sort_size, keys_scratch, idx_scratch, out):
        hist = cuda.shared.array(RADIX, int32)
        scan_buf = cuda.shared.array(MAX_THREADS, int32)
        state = cuda.shared.array(8, int64)
        keys_buf = keys_scratch[cuda.blockIdx.x]
        idx_buf = idx_scratch[cuda.blockIdx.x]
        for row in range(cuda.blockIdx.x, bits.shape[0], cuda.gridDim.x):
            select_topk_row(bits, abs_mask, nbits, k, row, keys_buf, idx_buf, sort_size, hist, scan_buf, state, out)

    @cuda.jit
    def nonfinite_flag(a, flag):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= a.shape[1]:
            return
        for r in range(cuda.blockIdx.y, a.shape[0], cuda.gridDim.y):
            v = a[r, c]
            if math.isnan(v) or math.isinf(v):
                flag[0] = 1  # every writer stores the same value

    @cuda.jit
    def column_partial_sums(g, absolute, chunk, partial):
        # partial[r, c] = sum of g[b, c] (or |g[b, c]|) over the rows b of chunk r, in row order.
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= g.shape[1]:
            return
        for r in range(cuda.blockIdx.y, partial.shape[0], cuda.gridDim.y):
            start = r * chunk
            stop = smaller(start + chunk, g.shape[0])
            acc = abs(g[start, c]) if absolute else g[start, c]
            for b in range(start + 1, stop):
                acc += abs(g[b, c]) if absolute else g[b, c]
            partial[r, c] = acc

    @cuda.jit
    def sum_partials(partial, out):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c < partial.shape[1]:
            acc = partial[0, c]
            for r in range(1, partial.shape[0]):
                acc += partial[r, c]
            out[c] = acc

    @cuda.jit
    def fill_1d(a, value):
        start = cuda.grid(1)
        for t in range(start, a.shape[0], cuda.gridsize(1)):
            a[t] = value

    @cuda.jit
    def iota(a):
        start = cuda.grid(1)
        for t in range(start, a.shape[0], cuda.gridsize(1)):
            a[t] = t

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

    @cuda.jit(device=True)
    def gradient_row(mode, r, rows):
        # Map launch row r to (parameter row, gradient row); gradient row -1 means a zero gradient.
        # mode 0: dense gradient; 1: lazy, r walks the listed rows; 2: every row, looked up in rows.
        if mode == 0:
            return r, r
        if mode == 1:
            return rows[r], r
        lo = 0
        hi = rows.shape[0]
        while lo < hi:
            mid = (lo + hi) // 2
            if rows[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < rows.shape[0] and rows[lo] == r:
            return r, lo
        return r, -1

    @cuda.jit
    def sgd_update(param, grad, rows, n_launch_rows, mode, velocity, use_momentum, lr, momentum, zero):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            gv = grad[grow, c] if grow >= 0 else zero
            if use_momentum:
                v = momentum * velocity[prow, c] + gv
                velocity[prow, c] = v
                param[prow, c] -= lr * v
            elif grow >= 0:
                param[prow, c] -= lr * gv

    @cuda.jit
    def adam_update(param, grad, rows, n_launch_rows, mode, m, v, step_size, b1, b2, one_minus_b1, one_minus_b2, eps_hat, zero):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            gv = grad[grow, c] if grow >= 0 else zero
            mv = b1 * m[prow, c] + one_minus_b1 * gv
            vv = b2 * v[prow, c] + one_minus_b2 * gv * gv
            m[prow, c] = mv
            v[prow, c] = vv
            param[prow, c] -= step_size * mv / (math.sqrt(vv) + eps_hat)

    @cuda.jit
    def adagrad_update(param, grad, rows, n_launch_rows, mode, accum, lr, eps):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= param.shape[1]:
            return
        for r in range(cuda.blockIdx.y, n_launch_rows, cuda.gridDim.y):
            prow, grow = gradient_row(mode, r, rows)
            if grow >= 0:  # a zero gradient changes neither the sum nor the weight
                gv = grad[grow, c]
                a = accum[prow, c] + gv * gv
                accum[prow, c] = a
                param[prow, c] -= lr * gv / (math.sqrt(a) + eps)

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
    smaller = _kernels()["smaller"]

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


# ------------------------------------------------------------------ helpers
def _as_2d(a):
    """View a 1-D (n,) array as (1, n) and an N-D one as (shape[0], -1)."""
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        return a.reshape(1, a.shape[0])
    return a.reshape(a.shape[0], a.size // max(a.shape[0], 1))


def _fill(a, value):
    """Fill a C-contiguous device array with `value` (cast to its dtype)."""
    if a.size == 0:
        return a
    flat = a.reshape(a.size)
    tpb = _tpb()
    blocks = min(_cols_grid(a.size, tpb), int(MAX_GRID_ROWS))
    _kernels()["fill_1d"][blocks, tpb](flat, a.dtype.type(value))
    return a


def zeros_like(a):
    """Return a new zero-filled device array of `a`'s shape and dtype.

    Parameters
    ----------
    a : CUDA array
        Template (numba device array or ``__cuda_array_interface__`` object).

    Returns
    -------
    numba device array
        C-contiguous, filled on the device.
    """
    require_cuda()
    a = as_device(a, "a")
    return zeros(a.shape, a.dtype)


def zeros(shape, dtype):
    """Return a new C-contiguous device array of zeros (filled on the device)."""
    require_cuda()
    return _fill(cuda.device_array(shape, dtype=dtype), 0)


def check_finite(a, name="g"):
    """Raise ``ValueError`` if device array `a` holds NaN or Inf.

    The test is a read-only kernel; only a one-element flag comes back to
    the host.
    """
    require_cuda()
    a = as_device(a, name)
    status = zeros(1, np.int64)
    _launch_nonfinite(a, status)
    _raise_if_nonfinite(status.copy_to_host(), name)


def _launch_nonfinite(a, status):
    """Set ``status[0] = 1`` on the device if `a` holds NaN or Inf (no host transfer)."""
    a = _as_2d(a)
    if a.size == 0:
        return
    tpb = _tpb()
    grid = (_cols_grid(a.shape[1], tpb), _rows_grid(a.shape[0]))
    _kernels()["nonfinite_flag"][grid, tpb](a, status)


def _raise_if_nonfinite(host_status, name):
    if int(host_status[0]):
        raise ValueError(f"{name} contains NaN or Inf; refusing to propagate it into the model")


def _row_chunks(batch):
    """Split `batch` rows into chunks so column reductions run on many blocks.

    A thread per column alone leaves most of the GPU idle when the batch is
    long and the columns few; chunks of ``COLUMN_CHUNK`` rows multiply the
    threads, and partial results are combined in a fixed order (the result
    does not depend on scheduling).
    """
    chunk = max(1, int(COLUMN_CHUNK))
    return chunk, (batch + chunk - 1) // chunk


def _column_sums(g, out, absolute):
    """out[c] = sum_b g[b, c] (or |g[b, c]|), in g's dtype, deterministic."""
    batch, n = g.shape
    if batch == 0:
        _fill(out, 0)
        return
    tpb = _tpb()
    chunk, n_chunks = _row_chunks(batch)
    partial = cuda.device_array((n_chunks, n), dtype=g.dtype)
    K = _kernels()
    K["column_partial_sums"][(_cols_grid(n, tpb), _rows_grid(n_chunks)), tpb](g, absolute, chunk, partial)
    K["sum_partials"][_cols_grid(n, tpb), tpb](partial, out)


def _key_bits(a):
    """Reinterpret float array `a` as unsigned integers; return (bits, |x| mask, key width)."""
    if a.dtype == np.float32:
        return a.view(np.uint32), np.uint32(0x7FFFFFFF), 32
    return a.view(np.uint64), np.uint64(0x7FFFFFFFFFFFFFFF), 64


def _topk_rows(a, k):
    """Top-k of each row of device array `a` (B, n) by |value|: (B, k) int64."""
    batch = a.shape[0]
    out = cuda.device_array((batch, k), dtype=np.int64)
    bits, mask, nbits = _key_bits(a)
    sort_size = 1 << max(0, int(k - 1).bit_length())
    tpb = _tpb()
    blocks = _rows_grid(batch)
    K = _kernels()
    if sort_size <= SORT_CAPACITY:
        K["topk_rows_shared"][blocks, tpb](bits, mask, nbits, k, sort_size, out)
    else:
        blocks = min(blocks, _GLOBAL_SORT_MAX_BLOCKS)  # bounds the scratch; blocks loop over rows
        keys_scratch = cuda.device_array((blocks, sort_size), dtype=np.int64)
        idx_scratch = cuda.device_array((blocks, sort_size), dtype=np.int32)
        K["topk_rows_global"][blocks, tpb](bits, mask, nbits, k, sort_size, keys_scratch, idx_scratch, out)
    return out


def _unified_topk(g, k):
    n = g.shape[1]
    scores = cuda.device_array((1, n), dtype=g.dtype)
    _column_sums(g, scores.reshape(n), absolute=True)
    return _topk_rows(scores, k).reshape(k)


# ------------------------------------------------------------------ entry points
def topk_indices(g, k, unified):
    """Top-k selection on the GPU (see :func:`meprop_numba.topk_indices`).

    Parameters
    ----------
    g : CUDA array, (B, n) float32/float64
        Output gradient; checked for NaN/Inf on the device.
    k : int
        1 <= k <= n (validated by the caller).
    unified : bool
        One set for the minibatch (largest ``sum_b |g[b, i]|``) instead of
        one set per example.

    Returns
    -------
    numba device array
        int64 ``(B, k)``, or ``(k,)`` when `unified`; indices by descending
        magnitude, ties to the lower index.

    Raises
    ------
    ValueError
        If `g` holds NaN or Inf.
    """
    require_cuda()
    g = as_device(g, "g")
    check_finite(g, "g")
    k = int(k)
    if unified:
        return _unified_topk(g, k)
    return _topk_rows(g, k)


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
    _column_sums(g, db, absolute=False)

    if dense:
        rows = cuda.device_array(n, dtype=np.int64)
        _kernels()["iota"][min(_cols_grid(n, tpb), int(MAX_GRID_ROWS)), tpb](rows)
        dx, values = _shared_backward(x, W, g, rows)
        return dx, rows, values, db
    if indices is None:
        indices = _unified_topk(g, int(k)) if unified else _topk_rows(g, int(k))
    else:
        indices = _device_indices(indices)
    if indices.ndim == 1:
        rows = _sorted_unique_columns(indices, n)
        dx, values = _shared_backward(x, W, g, rows)
        return dx, rows, values, db
    dx, rows, values = _per_example_backward(x, W, g, indices, status)
    return dx, rows, values, db


def _update_plan(param, grad, lazy):
    """Return (param2d, grad2d, rows, n_launch_rows, mode) for an update kernel."""
    param = as_device(param, "param")
    p2 = _as_2d(param)
    if isinstance(grad, tuple):
        rows = as_device(grad[0], "rows")
        values = _as_2d(as_device(grad[1], "values"))
        if lazy:
            return p2, values, rows, rows.shape[0], 1
        return p2, values, rows, p2.shape[0], 2
    grad = _as_2d(as_device(grad, "grad"))
    return p2, grad, _dummy_rows(), p2.shape[0], 0


def _dummy_rows():
    if "dummy_rows" not in _KERNELS:
        _KERNELS["dummy_rows"] = cuda.to_device(np.zeros(1, dtype=np.int64))
    return _KERNELS["dummy_rows"]


def _grad_values(grad):
    return grad[1] if isinstance(grad, tuple) else grad


def _launch_update(name, p2, n_launch_rows, args):
    if n_launch_rows == 0 or p2.shape[1] == 0:
        return
    tpb = _tpb()
    _kernels()[name][(_cols_grid(p2.shape[1], tpb), _rows_grid(n_launch_rows)), tpb](*args)


def sgd_step(param, grad, velocity, lr, momentum, lazy, check=True):
    """In-place SGD step ``v = momentum v + g; p -= lr v`` (``p -= lr g`` without momentum).

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient of `param`'s shape, or a row-sparse one (2-D params).
    velocity : CUDA array or None
        Momentum buffer of `param`'s shape (from :func:`zeros_like`); None
        or ``momentum == 0`` for plain SGD.
    lr, momentum : float
        Cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: update only its rows (True) or every row,
        decaying the velocity of the others (False).
    check : bool
        Check the gradient for NaN/Inf on the device first (skip when the
        caller already did).

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf (nothing is modified).
    """
    require_cuda()
    if check:
        check_finite(_grad_values(grad), "grad")
    p2, g2, rows, n_launch, mode = _update_plan(param, grad, lazy)
    t = p2.dtype.type
    use_momentum = velocity is not None and momentum != 0
    v2 = _as_2d(as_device(velocity, "velocity")) if use_momentum else p2
    _launch_update("sgd_update", p2, n_launch, (p2, g2, rows, n_launch, mode, v2, use_momentum, t(lr), t(momentum), t(0)))


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, lazy, check=True):
    """In-place bias-corrected Adam step (lazy: only the gradient's rows).

    ``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps sqrt(1-b2^t))``,
    the form of :class:`meprop_numba.Adam` (equal to the textbook one).

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient, or a row-sparse one for a 2-D parameter.
    m, v : CUDA arrays
        Moment buffers of `param`'s shape (from :func:`zeros_like`).
    step : int
        1-based index t of this update (the global step count).
    lr, beta1, beta2, eps : float
        Hyper-parameters, cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: update only its rows (True) or every row, the
        others with a zero gradient (False).
    check : bool
        Check the gradient for NaN/Inf on the device first.

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf (nothing is modified).
    """
    require_cuda()
    if check:
        check_finite(_grad_values(grad), "grad")
    p2, g2, rows, n_launch, mode = _update_plan(param, grad, lazy)
    t = p2.dtype.type
    c2 = math.sqrt(1.0 - beta2**step)
    step_size = lr * c2 / (1.0 - beta1**step)
    m2 = _as_2d(as_device(m, "m"))
    v2 = _as_2d(as_device(v, "v"))
    b1, b2 = t(beta1), t(beta2)
    args = (p2, g2, rows, n_launch, mode, m2, v2, t(step_size), b1, b2, t(1) - b1, t(1) - b2, t(eps * c2), t(0))
    _launch_update("adam_update", p2, n_launch, args)


def adagrad_step(param, grad, accum, lr, eps, lazy, check=True):
    """In-place AdaGrad step ``a += g^2; p -= lr g / (sqrt(a) + eps)``.

    A zero gradient changes neither `accum` nor `param`, so ``lazy=False``
    with a row-sparse gradient gives the lazy result at dense cost.

    Parameters
    ----------
    param : CUDA array
        Parameter, updated in place.
    grad : CUDA array or tuple (rows, values)
        Dense gradient, or a row-sparse one for a 2-D parameter.
    accum : CUDA array
        Sum of squared gradients, `param`'s shape (from :func:`zeros_like`).
    lr, eps : float
        Cast to `param`'s dtype.
    lazy : bool
        Row-sparse gradient: launch over its rows only (True) or all rows.
    check : bool
        Check the gradient for NaN/Inf on the device first.

    Raises
    ------
    ValueError
        If the gradient holds NaN or Inf (nothing is modified).
    """
    require_cuda()
    if check:
        check_finite(_grad_values(grad), "grad")
    p2, g2, rows, n_launch, mode = _update_plan(param, grad, lazy)
    t = p2.dtype.type
    a2 = _as_2d(as_device(accum, "accum"))
    _launch_update("adagrad_update", p2, n_launch, (p2, g2, rows, n_launch, mode, a2, t(lr), t(eps)))
