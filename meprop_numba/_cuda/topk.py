"""CUDA kernels of the top-k selection (CPU twin: :mod:`meprop_numba._cpu.topk`).

One block per row: a most-significant-digit radix select on the bit pattern
of ``|g|`` (for non-negative IEEE floats the bit pattern, read as an
integer, orders like the value) finds the k-th largest key ``T`` with a
256-bin histogram in shared memory, 8 bits per pass.  Keys above ``T`` are
then compacted with a shared atomic counter and keys equal to ``T`` in
index order with a block scan (the lower index wins a tie), and the k
candidates are sorted by (key descending, index ascending) with a bitonic
sort in shared memory (in global scratch when k exceeds
``SORT_CAPACITY``).  Unified selection sums ``|g|`` over the batch in
fixed-order chunks and selects on that single row.

``SORT_CAPACITY`` sizes shared arrays, so it is a compile-time constant:
the kernels are built for the value it has when they are first needed and
kept per value; the host sizes its launches from the value the kernels
were built with, and a value whose shared arrays exceed the 48 KB of static
shared memory a block may have is refused.
"""
import math

import numpy as np
from numba import int32, int64

from .device import (MAX_THREADS, STATIC_SHARED_LIMIT, _cols_grid, _fill, _row_chunks, _rows_grid, as_device,
                     check_out, common_kernels, cuda, empty, launch_1d, launch_nonfinite, launch_stream,
                     raise_if_nonfinite, read_status, require_cuda, zeros)

#: Largest k whose candidates are sorted in shared memory (a power of two).
SORT_CAPACITY = 2048
_GLOBAL_SORT_MAX_BLOCKS = 1024
RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
_SENTINEL_INDEX = 2**31 - 1

_KERNELS = {}


def sort_capacity():
    """``SORT_CAPACITY``, checked: a power of two whose shared sort buffers fit a block."""
    capacity = int(SORT_CAPACITY)
    if capacity < 1 or capacity & (capacity - 1):
        raise ValueError(f"SORT_CAPACITY must be a power of two >= 1, got {capacity}")
    shared = shared_bytes(capacity)
    if shared > STATIC_SHARED_LIMIT:
        raise ValueError(f"SORT_CAPACITY={capacity} needs {shared} bytes of static shared memory per block; "
                         f"the limit is {STATIC_SHARED_LIMIT}")
    return capacity


def shared_bytes(capacity):
    """Static shared memory of the shared-sort top-k kernel built for `capacity`."""
    return 4 * RADIX + 4 * MAX_THREADS + 8 * 8 + (8 + 4) * capacity


def _kernels(capacity=None):
    """Build (once per sort capacity) the top-k kernels and the column sums."""
    if capacity is None:
        capacity = sort_capacity()
    key = ("topk", capacity)
    if key in _KERNELS:
        return _KERNELS[key]
    common = common_kernels()
    block_inclusive_scan = common["block_inclusive_scan"]
    smaller = common["smaller"]

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
            # The k-th key's digit: the largest d with at least `remaining` keys at digit >= d (else 0).
            # Each thread sums a run of bins (threads in order from the top digit down), one block scan
            # gives the keys above each run, and the thread whose run holds that digit finds it.
            remaining = state[1]
            per = (RADIX + nthreads - 1) // nthreads
            hi = RADIX - tid * per
            lo = hi - per
            if lo < 0:
                lo = 0
            local = 0
            for d in range(lo, hi):
                local += hist[d]
            scan_buf[tid] = local
            cuda.syncthreads()
            block_inclusive_scan(scan_buf, tid, nthreads)
            beyond = scan_buf[tid] - local  # keys at digits >= hi
            for d in range(hi - 1, lo - 1, -1):
                if beyond >= remaining:
                    break
                at_least = beyond + hist[d]
                if at_least >= remaining or d == 0:
                    state[0] = prefix | (int64(d) << shift)
                    state[1] = remaining - beyond
                    break
                beyond = at_least
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
        keys_buf = cuda.shared.array(capacity, int64)
        idx_buf = cuda.shared.array(capacity, int32)
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
    def scan_columns(g, chunk, partial_sum, partial_abs, status):
        # One pass over g: per chunk r of rows, partial_sum[r, c] = sum of g[b, c] and
        # partial_abs[r, c] = sum of |g[b, c]| in row order (each when it has rows), and
        # status[0] = 1 if g holds NaN or Inf.
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= g.shape[1]:
            return
        want_sum = partial_sum.shape[0] > 0
        want_abs = partial_abs.shape[0] > 0
        n_chunks = (g.shape[0] + chunk - 1) // chunk
        for r in range(cuda.blockIdx.y, n_chunks, cuda.gridDim.y):
            start = r * chunk
            stop = smaller(start + chunk, g.shape[0])
            v = g[start, c]
            acc = v
            acc_abs = abs(v)
            bad = math.isnan(v) or math.isinf(v)
            for b in range(start + 1, stop):
                v = g[b, c]
                acc += v
                acc_abs += abs(v)
                bad = bad or math.isnan(v) or math.isinf(v)
            if want_sum:
                partial_sum[r, c] = acc
            if want_abs:
                partial_abs[r, c] = acc_abs
            if bad:
                status[0] = 1

    @cuda.jit
    def sum_partials(partial, out):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c < partial.shape[1]:
            acc = partial[0, c]
            for r in range(1, partial.shape[0]):
                acc += partial[r, c]
            out[c] = acc

    ns = dict(locals())
    _KERNELS[key] = ns
    return ns


def scan_gradient(g, status, stream, want_sum, want_abs, workspace=None):
    """One pass over `g`: ``(sum_b g[b], sum_b |g[b]|)`` (each None unless wanted), NaN/Inf flag in ``status[0]``.

    Sums are in g's dtype and deterministic (fixed-order chunks); they and
    the partial sums come from `workspace` when given.
    """
    batch, n = g.shape
    ws = workspace
    sums = empty(n, g.dtype, stream, ws, "scan.sums") if want_sum else None
    abs_sums = empty(n, g.dtype, stream, ws, "scan.abs_sums") if want_abs else None
    if batch == 0:
        for out in (sums, abs_sums):
            if out is not None:
                _fill(out, 0, stream)
        return sums, abs_sums
    chunk, n_chunks = _row_chunks(batch)
    none = empty((0, n), g.dtype, stream, ws, "scan.none")
    partial_sum = empty((n_chunks, n), g.dtype, stream, ws, "scan.partial_sum") if want_sum else none
    partial_abs = empty((n_chunks, n), g.dtype, stream, ws, "scan.partial_abs") if want_abs else none
    K = _kernels()
    launch_1d(K["scan_columns"], lambda tpb: (_cols_grid(n, tpb), _rows_grid(n_chunks)),
              (g, chunk, partial_sum, partial_abs, status), stream)
    for partial, out in ((partial_sum, sums), (partial_abs, abs_sums)):
        if out is not None:
            launch_1d(K["sum_partials"], lambda tpb: _cols_grid(n, tpb), (partial, out), stream)
    return sums, abs_sums


def _key_bits(a):
    """Reinterpret float array `a` as unsigned integers; return (bits, |x| mask, key width)."""
    if a.dtype == np.float32:
        return a.view(np.uint32), np.uint32(0x7FFFFFFF), 32
    return a.view(np.uint64), np.uint64(0x7FFFFFFFFFFFFFFF), 64


def topk_rows(a, k, stream, workspace=None, out=None):
    """Top-k of each row of device array `a` (B, n) by |value|: (B, k) int64 (into `out` when given)."""
    batch = a.shape[0]
    if out is None:
        out = empty((batch, k), np.int64, stream, workspace, "topk.out")
    bits, mask, nbits = _key_bits(a)
    sort_size = 1 << max(0, int(k - 1).bit_length())
    capacity = sort_capacity()
    K = _kernels(capacity)
    blocks = _rows_grid(batch)
    if sort_size <= capacity:
        launch_1d(K["topk_rows_shared"], lambda tpb: blocks, (bits, mask, nbits, k, sort_size, out), stream)
    else:
        blocks = min(blocks, _GLOBAL_SORT_MAX_BLOCKS)  # bounds the scratch; blocks loop over rows
        keys_scratch = empty((blocks, sort_size), np.int64, stream, workspace, "topk.keys")
        idx_scratch = empty((blocks, sort_size), np.int32, stream, workspace, "topk.idx")
        launch_1d(K["topk_rows_global"], lambda tpb: blocks,
                  (bits, mask, nbits, k, sort_size, keys_scratch, idx_scratch, out), stream)
    return out


def unified_topk(abs_sums, k, stream, workspace=None, out=None):
    """The k columns of the largest scores `abs_sums` (n,), by descending score: (k,) int64."""
    n = abs_sums.shape[0]
    return topk_rows(abs_sums.reshape(1, n), k, stream, workspace,
                     None if out is None else out.reshape(1, k)).reshape(k)


# ------------------------------------------------------------------ entry points
def topk_indices(g, k, unified, stream=None, check_finite=True, out=None, workspace=None):
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
    stream : optional
        Stream for the kernels (see :func:`.device.stream_handle`); default
        the stream `g` comes from.
    check_finite : bool
        Read the NaN/Inf flag back and raise (one wait for the stream at the
        end of the call); False queues the work without waiting.
    out : CUDA array, optional
        int64, C-contiguous, of the result's shape: written instead of a new
        array (checked before any launch).
    workspace : Workspace, optional
        Where the result (without `out`) and the scratch come from.

    Returns
    -------
    numba device array
        int64 ``(B, k)``, or ``(k,)`` when `unified`; indices by descending
        magnitude, ties to the lower index.

    Raises
    ------
    ValueError
        If `g` holds NaN or Inf, or `out` has another shape.
    TypeError
        If `out` is not an int64 CUDA array.
    """
    require_cuda()
    s = launch_stream([g], stream)
    g = as_device(g, "g")
    k = int(k)
    if out is not None:
        out = check_out(out, (k,) if unified else (g.shape[0], k), np.int64)
    status = zeros(1, np.int64, s, workspace, "topk.status")
    if unified:
        _, scores = scan_gradient(g, status, s, want_sum=False, want_abs=True, workspace=workspace)
        out = unified_topk(scores, k, s, workspace, out)
    else:
        if check_finite:
            launch_nonfinite(g, status, 0, s)
        out = topk_rows(g, k, s, workspace, out)
    if check_finite:
        raise_if_nonfinite(read_status(status, s), "g")
    return out
