"""The CUDA back end: the only module of the package that imports ``numba.cuda``.

A switch to another CUDA back end (``numba-cuda-mlir``, say) touches this
file only; the kernel modules :mod:`.topk`, :mod:`.linear` and :mod:`.optim`
take ``cuda`` from here.  It holds availability checks, the wrapping of
``__cuda_array_interface__`` objects, the launch settings, device fills and
the NaN/Inf check shared by every entry point, and the device functions the
kernel modules share.

Launch settings are module attributes read at every call (tests make blocks
small enough that tiny inputs span several of them):

``THREADS_PER_BLOCK``
    Preferred threads of the 1-D blocks, at most ``MAX_THREADS``.  Each
    kernel launches with the smaller of this and its own limit (the compiled
    kernel's maximum threads per block, set by its registers), so no
    setting gives a launch that cannot run.
``MAX_GRID_ROWS``
    Cap on the grid's row dimension, at most 65535 (the hardware limit);
    kernels loop over the rows beyond it.
``COLUMN_CHUNK``
    Rows per chunk of the reductions over the batch (column sums, the
    membership ranks), combined in a fixed order.

Kernels run on the stream of the arrays that came in (see
:func:`launch_stream`), so they are ordered with the work of the library
that made them.
"""
import math
import sys
import threading

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - numba always ships a cuda module today
    cuda = None
    _CUDA_IMPORT_ERROR = exc
else:
    _CUDA_IMPORT_ERROR = None

from numba import config as _numba_config
from numba.core import types
from numba.np import numpy_support

#: Preferred threads per block of the 1-D launches (top-k, backward, updates).
THREADS_PER_BLOCK = 256
#: Hardware limit on threads per block; sizes the block-wide shared scratch.
MAX_THREADS = 1024
#: Cap on the number of blocks along a grid's row dimension.
MAX_GRID_ROWS = 65535
#: Hardware limit of a grid's y and z dimensions.
GRID_ROWS_LIMIT = 65535
#: Static shared memory a block may declare (bytes).
STATIC_SHARED_LIMIT = 48 * 1024
#: Rows per chunk of the column reductions (sums over the batch).
COLUMN_CHUNK = 32

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
    >>> from meprop_numba._cuda import device
    >>> isinstance(device.cuda_available(), bool)
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
        # No host wait on the producer's stream: the kernels are launched on it (launch_stream).
        return cuda.as_cuda_array(a, sync=False)
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


def _rows_grid(nrows):
    cap = int(MAX_GRID_ROWS)
    if not 1 <= cap <= GRID_ROWS_LIMIT:
        raise ValueError(f"MAX_GRID_ROWS must be in [1, {GRID_ROWS_LIMIT}], got {cap}")
    return max(1, min(int(nrows), cap))


def _cols_grid(ncols, tpb):
    return max(1, (int(ncols) + tpb - 1) // tpb)


# ------------------------------------------------------------------ streams
def stream_handle(arrays, stream=None):
    """The stream the kernels of one call go to: explicit, or the producer's.

    Parameters
    ----------
    arrays : sequence
        The call's CUDA inputs, in order.
    stream : optional
        A numba stream, an object with a ``cuda_stream`` (PyTorch) or
        ``ptr`` (CuPy) attribute, or a raw ``CUstream`` handle (int).

    Returns
    -------
    numba stream, int or None
        `stream` (a numba stream is kept as it is, other kinds give their
        handle); else the stream of the first input that names one: PyTorch's
        current stream for a PyTorch tensor, the ``stream`` of a version-3
        ``__cuda_array_interface__`` (CuPy), the stream a numba device array
        is bound to; else None (the legacy default stream).
    """
    if stream is not None:
        return _explicit_handle(stream)
    for a in arrays:
        if a is None:
            continue
        module = type(a).__module__.partition(".")[0]
        if module == "torch" and getattr(a, "is_cuda", False):
            torch = sys.modules["torch"]
            return int(torch.cuda.current_stream(a.device).cuda_stream)
        iface = getattr(a, "__cuda_array_interface__", None)
        if isinstance(iface, dict) and iface.get("stream") is not None:
            return int(iface["stream"])
        bound = getattr(a, "stream", 0)
        if bound not in (0, None) and not isinstance(bound, int):
            return bound
    return None


def _explicit_handle(stream):
    if isinstance(stream, (bool, np.bool_)):
        raise TypeError("stream must be a CUDA stream or a stream handle, got a bool")
    if isinstance(stream, (int, np.integer)):
        return int(stream)
    for attr in ("cuda_stream", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    if hasattr(stream, "synchronize"):  # a numba stream (or the simulator's)
        return stream
    raise TypeError(f"stream must be a CUDA stream or a stream handle, got {type(stream).__name__}")


def launch_stream(arrays, stream=None):
    """The numba stream for :func:`stream_handle`'s choice (0 for the default stream)."""
    handle = stream_handle(arrays, stream)
    if handle is None or handle == 0:
        return 0
    if not isinstance(handle, int):
        return handle
    if is_simulator():  # one simulated stream: kernels run in call order anyway
        return 0
    return cuda.external_stream(handle)


def read_status(status, stream):
    """Copy a small device status array to the host once the stream's work is done."""
    if stream == 0:
        return status.copy_to_host()
    host = status.copy_to_host(stream=stream)
    stream.synchronize()
    return host


# ------------------------------------------------------------------ launches
_LIMITS = {}


def kernel_max_threads(kernel, args):
    """The most threads per block `kernel` can launch with for `args`.

    The compiled kernel's own limit on the current device (registers and
    shared memory decide it); ``MAX_THREADS`` under the simulator.  The
    first call for a signature compiles the kernel (as its launch would).
    """
    if is_simulator():
        return MAX_THREADS
    argtypes = tuple(kernel.typeof_pyval(a) for a in args)
    key = (id(kernel), argtypes, cuda.get_current_device().id)
    limit = _LIMITS.get(key)
    if limit is None:
        limit = int(kernel.compile(argtypes).max_threads_per_block)
        _LIMITS[key] = limit
    return limit


def fit_block(preferred, limit):
    """The block size to launch with: `preferred`, or below `limit` a whole number of warps."""
    if preferred <= limit:
        return preferred
    return limit - limit % 32 if limit >= 32 else limit


def launch_1d(kernel, grid, args, stream, threads=None):
    """Launch a kernel with 1-D blocks of ``min(THREADS_PER_BLOCK, its own limit)`` threads.

    `grid` maps the block size to the grid; `threads` overrides the
    preferred size.
    """
    block = fit_block(_tpb() if threads is None else threads, kernel_max_threads(kernel, args))
    launch(kernel, grid(block), block, stream, args)


def launch(kernel, grid, block, stream, args):
    """The one place kernels are launched (``kernel[grid, block, stream](*args)``)."""
    if is_simulator():
        _simulated_shared_arrays_thread_safe()
    kernel[grid, block, stream](*args)


_SHARED_LOCK = threading.Lock()


def _simulated_shared_arrays_thread_safe():
    """Make the simulator hand every thread of a block the same shared array.

    The simulator runs a block's threads as Python threads and allocates a
    ``cuda.shared.array`` on the first call from each source line with an
    unlocked look-up-then-store: two threads that both miss the look-up each
    get a private array, and a thread writing its private copy is invisible
    to the block (its slots keep uninitialised memory).  The look-up and the
    store are put under one lock here; the key stays the caller's
    ``(file, line)``, as the simulator has it.  Real GPUs are not concerned.
    """
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_meprop_locked", False):
        return
    unlocked = shared.array

    def array(self, shape, dtype):
        if shape == 0 or not isinstance(getattr(self, "_allocations", None), dict):
            return unlocked(self, shape, dtype)  # dynamic shared memory: one buffer, nothing to race on
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _SHARED_LOCK:
            res = self._allocations.get(key)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[key] = res
        return res

    array._meprop_locked = True
    shared.array = array


# ------------------------------------------------------------------ kernels
_KERNELS = {}


def common_kernels():
    """Build (once) the device functions and kernels shared by the kernel modules."""
    if "common" in _KERNELS:
        return _KERNELS["common"]

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

    @cuda.jit
    def nonfinite_flag(a, flag, slot):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= a.shape[1]:
            return
        for r in range(cuda.blockIdx.y, a.shape[0], cuda.gridDim.y):
            v = a[r, c]
            if math.isnan(v) or math.isinf(v):
                flag[slot] = 1  # every writer stores the same value

    @cuda.jit
    def fill_1d(a, value):
        start = cuda.grid(1)
        for t in range(start, a.shape[0], cuda.gridsize(1)):
            a[t] = value

    @cuda.jit
    def cast_copy(src, dst):
        start = cuda.grid(1)
        for t in range(start, src.shape[0], cuda.gridsize(1)):
            dst[t] = src[t]

    @cuda.jit
    def iota(a):
        start = cuda.grid(1)
        for t in range(start, a.shape[0], cuda.gridsize(1)):
            a[t] = t

    ns = dict(locals())
    _KERNELS["common"] = ns
    return ns


# ------------------------------------------------------------------ helpers
def _as_2d(a):
    """View a 1-D (n,) array as (1, n) and an N-D one as (shape[0], -1)."""
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        return a.reshape(1, a.shape[0])
    return a.reshape(a.shape[0], a.size // max(a.shape[0], 1))


def _fill(a, value, stream=0):
    """Fill a C-contiguous device array with `value` (cast to its dtype)."""
    if a.size == 0:
        return a
    flat = a.reshape(a.size)
    launch_1d(common_kernels()["fill_1d"], lambda tpb: min(_cols_grid(a.size, tpb), int(MAX_GRID_ROWS)),
              (flat, a.dtype.type(value)), stream)
    return a


def zeros_like(a, stream=None):
    """Return a new zero-filled device array of `a`'s shape and dtype.

    Parameters
    ----------
    a : CUDA array
        Template (numba device array or ``__cuda_array_interface__`` object).
    stream : optional
        Where to fill it (see :func:`stream_handle`); default `a`'s stream.

    Returns
    -------
    numba device array
        C-contiguous, filled on the device.
    """
    require_cuda()
    s = launch_stream([a], stream)
    a = as_device(a, "a")
    return zeros(a.shape, a.dtype, s)


def zeros(shape, dtype, stream=0, workspace=None, name=None):
    """A C-contiguous device array of zeros (filled on the device): new, or `workspace`'s buffer `name`."""
    require_cuda()
    return _fill(empty(shape, dtype, stream, workspace, name), 0, stream)


def empty(shape, dtype, stream=0, workspace=None, name=None):
    """A C-contiguous device array: new (``cuda.device_array``), or `workspace`'s buffer `name`.

    The one place the kernel modules allocate device memory, so a
    :class:`Workspace` sees every buffer of a call made with it.
    """
    if workspace is None:
        return cuda.device_array(shape, dtype=dtype, stream=stream)
    return workspace.empty(name, shape, dtype, stream)


def copy_in(a, stream=0, workspace=None, name="copy"):
    """A device copy of host array `a`: a new array, or `workspace`'s buffer `name` overwritten.

    With a workspace on the default stream the copy goes through a pinned
    (page-locked) host buffer kept in it too; the copy is synchronous, so
    that buffer is free again when this returns.
    """
    a = np.ascontiguousarray(a)
    if workspace is None:
        return cuda.to_device(a, stream=stream)
    d = workspace.empty(name, a.shape, a.dtype, stream)
    if isinstance(stream, int) and stream == 0 and a.size:
        staged = workspace.pinned(name, a.shape, a.dtype)
        np.copyto(staged, a)
        a = staged
    d.copy_to_device(a, stream=stream)
    return d


# ------------------------------------------------------------------ workspaces
class Workspace:
    """Device buffers kept between calls and handed out again, one per (name, shape, dtype).

    An entry point given a workspace takes its outputs and scratch from it:
    the first call of a shape allocates them, later calls of the same
    shapes and dtypes reuse them and allocate nothing (no ``cudaMalloc``,
    no deferred free).  What such a call returns therefore stays valid
    only until the next call that uses the same workspace with the same
    names; a workspace serves one stream and one thread at a time, and the
    device it first allocated on.  :meth:`scope` gives a view with its own
    names (one per layer of a model) that shares the buffers' bookkeeping.

    Attributes
    ----------
    allocations : int
        Buffers allocated so far through this workspace and its scopes
        (device arrays, and the pinned host buffers :func:`copy_in` stages
        host data through).
    nbytes : int
        Their bytes.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba._cuda import Workspace
    >>> ws = Workspace()
    >>> a = ws.empty("y", (2, 3), np.float32)  # doctest: +SKIP
    >>> ws.empty("y", (2, 3), np.float32) is a, ws.allocations  # doctest: +SKIP
    (True, 1)
    """

    def __init__(self):
        self._shared = {"buffers": {}, "allocations": 0, "nbytes": 0}
        self._prefix = ""

    @property
    def allocations(self):
        return self._shared["allocations"]

    @property
    def nbytes(self):
        return self._shared["nbytes"]

    def __len__(self):
        return len(self._shared["buffers"])

    def scope(self, name):
        """A view whose buffer names are prefixed by `name` (same bookkeeping)."""
        view = Workspace.__new__(Workspace)
        view._shared = self._shared
        view._prefix = f"{self._prefix}{name}/"
        return view

    def empty(self, name, shape, dtype, stream=0):
        """The C-contiguous device buffer `name` of this shape and dtype (contents undefined), allocated once."""
        return self._take(name, shape, dtype, lambda s, d: cuda.device_array(s, dtype=d, stream=stream))

    def pinned(self, name, shape, dtype):
        """The pinned (page-locked) host buffer `name` of this shape and dtype, allocated once."""
        return self._take(("pinned", name), shape, dtype, lambda s, d: cuda.pinned_array(s, dtype=d))

    def _take(self, name, shape, dtype, allocate):
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        key = (self._prefix, name, shape, dtype)
        buffers = self._shared["buffers"]
        a = buffers.get(key)
        if a is None:
            require_cuda()
            a = buffers[key] = allocate(shape, dtype)
            self._shared["allocations"] += 1
            self._shared["nbytes"] += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return a

    def clear(self):
        """Drop every buffer (of every scope); numba frees them once nothing else holds them."""
        self._shared["buffers"].clear()

    def __repr__(self):
        return f"Workspace({len(self)} buffers, {self.nbytes} bytes, {self.allocations} allocations)"


def check_out(out, shape, dtype, name="out"):
    """Return `out` as a numba device array after checking it can hold a result of `shape` and `dtype`.

    Called by an entry point before it launches anything.

    Raises
    ------
    TypeError
        `out` is not a CUDA array, or has another dtype.
    ValueError
        Another shape, or not C-contiguous.
    """
    d = as_device(out, name)
    shape = tuple(int(s) for s in shape)
    if tuple(d.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(d.shape)}")
    if np.dtype(d.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {np.dtype(d.dtype)}")
    step, expected = np.dtype(dtype).itemsize, []
    for extent in reversed(shape):
        expected.insert(0, step)
        step *= extent
    if d.size > 1 and any(e > 1 and s != t for e, s, t in zip(shape, d.strides, expected)):
        raise ValueError(f"{name} must be C-contiguous")
    return d


def check_finite(a, name="g", stream=None, workspace=None):
    """Raise ``ValueError`` if device array `a` holds NaN or Inf.

    The test is a read-only kernel on `a`'s stream; only a one-element flag
    comes back to the host (its device slot from `workspace` when given).
    """
    require_cuda()
    s = launch_stream([a], stream)
    a = as_device(a, name)
    status = zeros(1, np.int64, s, workspace, "finite.status")
    launch_nonfinite(a, status, 0, s)
    raise_if_nonfinite(read_status(status, s), name)


def launch_nonfinite(a, status, slot, stream):
    """Set ``status[slot] = 1`` on the device if `a` holds NaN or Inf (no host transfer)."""
    a = _as_2d(a)
    if a.size == 0:
        return
    launch_1d(common_kernels()["nonfinite_flag"], lambda tpb: (_cols_grid(a.shape[1], tpb), _rows_grid(a.shape[0])),
              (a, status, slot), stream)


def raise_if_nonfinite(host_status, name, slot=0):
    if int(host_status[slot]):
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
