"""Settings shared by every compiled kernel, kept in one place.

The threading layer is chosen here, at import, before any parallel kernel
runs.  A training step alternates BLAS products (forward) with numba
parallel kernels (backward); under numba's default OpenMP layer the idle
OpenMP workers spin and starve OpenBLAS's threads (measured: a 100x500 @
500x500 product went from 0.5 ms to 8.4 ms per step).  The ``workqueue``
layer parks its workers and does not interfere.

This is a process-wide numba setting: importing the package selects
``workqueue`` for the user's own ``parallel=True`` functions too, unless
the user chose a layer first (``NUMBA_THREADING_LAYER``, or
``numba.config.THREADING_LAYER`` set before the import); setting
``numba.config.THREADING_LAYER`` after the import and before the first
parallel kernel runs also wins.  ``workqueue`` aborts the process when two
threads launch parallel kernels at once, so the package's own threaded
kernels go through :func:`launch`; see ``docs/howto/threads.md``.
"""
import os
import threading

import numba

if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"

#: LLVM fast-math flags for the kernels: reassociation and contraction let
#: reductions vectorise and use FMA, while NaN/Inf semantics are kept
#: (no ``nnan``/``ninf``), so a non-finite value is never silently dropped.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Options common to every ``@njit`` kernel of the package.
JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

#: Entries of g below which top-k runs on one thread (measured on 2 cores:
#: 100x500 is 2.3x slower threaded, 1024x8192 is 1.4x faster).
PARALLEL_MIN_TOPK = 1 << 20
#: Multiply-adds below which the per-example backward runs on one thread
#: (measured: no gain at 32x40x2000, memory-bound; 1.5x at 256x32x4096).
PARALLEL_MIN_BACKWARD = 1 << 24


_PARALLEL_LAUNCH = threading.Lock()


def launch(parallel, serial, *args):
    """Run ``parallel(*args)``, or ``serial(*args)`` while another thread runs a threaded kernel.

    Numba's ``workqueue`` layer aborts the process when two threads launch
    parallel kernels at once; the other layers queue or oversubscribe.  The
    package's threaded kernels go through this one lock, taken without
    waiting: a call that finds it held runs the serial twin (the same
    arithmetic, the same result) on its own thread instead, so concurrent
    callers still overlap (every kernel releases the GIL).
    """
    if _PARALLEL_LAUNCH.acquire(blocking=False):
        try:
            return parallel(*args)
        finally:
            _PARALLEL_LAUNCH.release()
    return serial(*args)


def set_num_threads(n):
    """Set the number of threads the parallel kernels use.

    Parameters
    ----------
    n : int
        Number of threads, between 1 and ``numba.config.NUMBA_NUM_THREADS``
        (the pool size fixed at start-up by ``NUMBA_NUM_THREADS``).

    Returns
    -------
    None
        The setting applies to the following kernel calls.

    Raises
    ------
    TypeError
        If `n` is not an integer.
    ValueError
        If `n` is outside ``[1, NUMBA_NUM_THREADS]``.

    Notes
    -----
    BLAS, used for the forward products and the dense baselines, keeps its
    own thread count: set ``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``)
    before starting Python.

    Examples
    --------
    >>> import meprop_numba as mp
    >>> mp.set_num_threads(1)
    >>> mp.get_num_threads()
    1
    """
    import numpy as np

    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer number of threads, got {type(n).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must be in [1, {limit}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))


def get_num_threads():
    """Return the number of threads the parallel kernels use.

    Takes no arguments and never raises.

    Returns
    -------
    int
        The current thread count (see :func:`set_num_threads`).

    Examples
    --------
    >>> import meprop_numba as mp
    >>> mp.get_num_threads() >= 1
    True
    """
    return numba.get_num_threads()
