"""Helpers for running meProp on an NVIDIA GPU.

The public functions (:func:`meprop_numba.topk_indices`,
:func:`meprop_numba.linear_backward`, the optimizers) run on the GPU when
given CUDA arrays: numba device arrays or any object exposing
``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors), which are
used in place, without a copy.  This module only adds conveniences; it
imports ``numba.cuda`` lazily, so importing it costs nothing on a machine
without CUDA.

Examples
--------
>>> import numpy as np
>>> from meprop_numba import gpu
>>> if gpu.is_available():  # doctest: +SKIP
...     g = gpu.to_device(np.random.default_rng(0).normal(size=(4, 100)).astype(np.float32))
...     import meprop_numba as mp
...     idx = mp.topk_indices(g, 5)  # a device array
...     host = idx.copy_to_host()
"""
import numpy as np


def is_cuda_array(a):
    """Return True if `a` is a CUDA array the GPU path accepts.

    True for objects exposing ``__cuda_array_interface__`` and for the
    device arrays of numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``),
    which do not expose the interface.  ``numba.cuda`` is not imported.

    Parameters
    ----------
    a : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.gpu import is_cuda_array
    >>> is_cuda_array(np.zeros(3))
    False
    """
    if hasattr(a, "__cuda_array_interface__"):
        return True
    cls = type(a)
    return cls.__name__ == "FakeCUDAArray" and ".simulator." in cls.__module__


def is_available():
    """Return True if CUDA kernels can run (a GPU and driver, or the simulator).

    Returns
    -------
    bool

    Examples
    --------
    >>> from meprop_numba import gpu
    >>> isinstance(gpu.is_available(), bool)
    True
    """
    from . import _cuda

    return _cuda.cuda_available()


def to_device(a, dtype=None):
    """Copy a host array to the GPU.

    Parameters
    ----------
    a : array_like
        Host data.
    dtype : dtype, optional
        Cast first (e.g. ``np.float32``).

    Returns
    -------
    numba device array
        C-contiguous copy on the current device.

    Raises
    ------
    RuntimeError
        If no CUDA GPU/driver (or simulator) is available; the message says
        what to install.
    """
    from . import _cuda

    a = np.asarray(a, dtype=dtype)
    return _cuda.to_device(a)


def zeros(shape, dtype=np.float32):
    """Return a zero-filled device array (filled on the device).

    Parameters
    ----------
    shape : int or tuple of int
    dtype : dtype, optional
        float32 (default) or any NumPy dtype.

    Returns
    -------
    numba device array
    """
    from . import _cuda

    return _cuda.zeros(shape, dtype)


def to_host(a):
    """Copy a CUDA array (or each array of a tuple/list) back to the host.

    Parameters
    ----------
    a : CUDA array, or tuple/list of them

    Returns
    -------
    numpy.ndarray, or a tuple of them
    """
    if isinstance(a, (tuple, list)):
        return tuple(to_host(x) for x in a)
    from . import _cuda

    return _cuda.as_device(a, "a").copy_to_host()


def synchronize():
    """Wait for every kernel launched on the current device (for timing)."""
    from . import _cuda

    _cuda.synchronize()


def device_name():
    """Name of the current CUDA device (``"simulator"`` under the CUDA simulator)."""
    from . import _cuda

    return _cuda.device_name()
