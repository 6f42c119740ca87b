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
        Any object; nothing is raised for non-arrays.

    Returns
    -------
    bool
        Whether the GPU path would take `a`. Never raises.

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

    Takes no arguments; never raises: a missing ``numba-cuda`` package or
    driver gives False.

    Returns
    -------
    bool
        False when ``numba.cuda`` cannot be imported or finds no usable
        driver and device.

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

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba import gpu
    >>> d = gpu.to_device(np.arange(6.0).reshape(2, 3), dtype=np.float32)  # doctest: +SKIP
    >>> d.shape, d.dtype  # doctest: +SKIP
    ((2, 3), dtype('float32'))
    """
    from . import _cuda

    a = np.asarray(a, dtype=dtype)
    return _cuda.to_device(a)


def zeros(shape, dtype=np.float32):
    """Return a zero-filled device array (filled on the device).

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the new array.
    dtype : dtype, optional
        float32 (default) or any NumPy dtype.

    Returns
    -------
    numba device array
        C-contiguous, on the current device.

    Raises
    ------
    RuntimeError
        If no CUDA GPU/driver (or simulator) is available.

    Examples
    --------
    >>> from meprop_numba import gpu
    >>> gpu.to_host(gpu.zeros((2, 3))).sum()  # doctest: +SKIP
    np.float32(0.0)
    """
    from . import _cuda

    return _cuda.zeros(shape, dtype)


def to_host(a):
    """Copy a CUDA array (or each array of a tuple/list) back to the host.

    Parameters
    ----------
    a : CUDA array, or tuple/list of them
        Numba device arrays or objects with ``__cuda_array_interface__``
        (CuPy arrays, PyTorch CUDA tensors).

    Returns
    -------
    numpy.ndarray, or a tuple of them
        Host copies, in the order given.

    Raises
    ------
    TypeError
        If an element is not a CUDA array.
    RuntimeError
        If no CUDA GPU/driver (or simulator) is available.

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> from meprop_numba import gpu
    >>> g = gpu.to_device(np.ones((4, 100), dtype=np.float32))  # doctest: +SKIP
    >>> gpu.to_host(mp.topk_indices(g, 5)).shape  # doctest: +SKIP
    (4, 5)
    """
    if isinstance(a, (tuple, list)):
        return tuple(to_host(x) for x in a)
    from . import _cuda

    return _cuda.as_device(a, "a").copy_to_host()


def synchronize():
    """Wait for every kernel launched on the current device (for timing).

    Takes no arguments.

    Returns
    -------
    None
        Once the device is idle.

    Raises
    ------
    RuntimeError
        If no CUDA GPU/driver (or simulator) is available.

    Examples
    --------
    >>> import time
    >>> from meprop_numba import gpu
    >>> t0 = time.perf_counter()  # doctest: +SKIP
    >>> # ... launch kernels ...
    >>> gpu.synchronize()  # doctest: +SKIP
    >>> elapsed = time.perf_counter() - t0  # doctest: +SKIP
    """
    from . import _cuda

    _cuda.synchronize()


def device_name():
    """Name of the current CUDA device (``"simulator"`` under the CUDA simulator).

    Takes no arguments.

    Returns
    -------
    str
        The device name, e.g. ``"NVIDIA H100 80GB HBM3"``.

    Raises
    ------
    RuntimeError
        If no CUDA GPU/driver (or simulator) is available.

    Examples
    --------
    >>> from meprop_numba import gpu
    >>> gpu.device_name() if gpu.is_available() else "no GPU"  # doctest: +SKIP
    'NVIDIA H100 80GB HBM3'
    """
    from . import _cuda

    return _cuda.device_name()
