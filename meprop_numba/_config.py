"""Settings shared by every compiled kernel, kept in one place.

The threading layer is chosen here, at import, before any parallel kernel
runs.  A training step alternates BLAS products (forward) with numba
parallel kernels (backward); under numba's default OpenMP layer the idle
OpenMP workers spin and starve OpenBLAS's threads (measured: a 100x500 @
500x500 product went from 0.5 ms to 8.4 ms per step).  The ``workqueue``
layer parks its workers and does not interfere.  A user who sets
``NUMBA_THREADING_LAYER`` keeps their choice.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
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
