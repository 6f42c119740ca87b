"""Checks run at the public boundary, before any compiled code.

Every public function validates its arguments here first, so bad input
raises a clear ``TypeError``/``ValueError``/``IndexError`` naming the
argument and nothing (no array, no optimizer state) has been touched yet.
The helpers accept host NumPy arrays and CUDA arrays (anything exposing
``__cuda_array_interface__``); CUDA arrays are inspected through that
interface only, so nothing is copied to the host.
"""
import numbers

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INF = float("inf")
#: Largest finite value per float dtype: the compiled NaN/Inf checks test ``abs(x) <= LARGEST[dtype]``,
#: false exactly for NaN and +-Inf.
LARGEST = {dt: np.finfo(dt).max for dt in _FLOAT_DTYPES}
#: Smallest normal number per float dtype: decaying optimizer state below it is flushed to zero.
SMALLEST_NORMAL = {dt: np.finfo(dt).tiny for dt in _FLOAT_DTYPES}


def is_cuda_array(a):
    """Return True if `a` is a CUDA array.

    That is an object exposing ``__cuda_array_interface__``, or a device
    array of Numba's CUDA simulator (which exposes no interface).
    """
    if hasattr(a, "__cuda_array_interface__"):
        return True
    cls = type(a)
    return cls.__name__ == "FakeCUDAArray" and ".simulator." in cls.__module__


def shape_dtype(a):
    """Return ``(shape, dtype)`` of a NumPy or CUDA array without copying it."""
    if hasattr(a, "__cuda_array_interface__"):
        iface = a.__cuda_array_interface__
        return tuple(iface["shape"]), np.dtype(iface["typestr"])
    return tuple(a.shape), np.dtype(a.dtype)


def _describe_dtype(dtype):
    return f"{dtype} ({'integer' if dtype.kind in 'iub' else 'complex' if dtype.kind == 'c' else dtype.kind})"


def float_array(a, name, ndim):
    """Return `a` as a C-contiguous float32/float64 array of `ndim` dimensions.

    Host inputs are converted with ``np.asarray`` (lists work) and made
    C-contiguous (a copy only for non-contiguous views); CUDA arrays are
    checked through their interface and returned unchanged.

    Raises
    ------
    TypeError
        If the dtype is not float32 or float64.
    ValueError
        If the number of dimensions is not `ndim`.
    """
    host = type(a) is np.ndarray  # the common case, decided without probing for a CUDA interface
    if not host and is_cuda_array(a):
        shape, dtype = shape_dtype(a)
    else:
        if not host:
            a = np.asarray(a)
            host = True
        shape, dtype = a.shape, a.dtype
    if dtype != _FLOAT_DTYPES[0] and dtype != _FLOAT_DTYPES[1]:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {_describe_dtype(np.dtype(dtype))}"
        )
    if len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got an array of shape {tuple(shape)}")
    if host and not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def same_dtype(arrays, names):
    """Raise ``TypeError`` unless every array has the dtype of the first."""
    first = shape_dtype(arrays[0])[1]
    for a, name in zip(arrays[1:], names[1:]):
        dt = shape_dtype(a)[1]
        if dt != first:
            raise TypeError(
                f"{name} has dtype {dt} but {names[0]} has dtype {first}; "
                "pass arrays of one float dtype (cast with .astype)"
            )


def finite(a, name):
    """Raise ``ValueError`` if the C-contiguous host array `a` holds NaN or Inf.

    The sum of squares (one BLAS dot product, the cheapest full pass
    measured here) is finite whenever every element is, and NaN/Inf
    propagate into it.  It overflows only for finite values beyond ~1e19
    (float32), where the exact element-wise test decides.  ``np.vdot``
    rather than ``np.dot``: it does not turn that overflow into a NumPy
    warning, and it is cheaper than an ``np.errstate`` block.
    """
    flat = a.reshape(-1)
    if flat.size and not np.isfinite(np.vdot(flat, flat)):
        if not np.isfinite(flat).all():
            raise ValueError(f"{name} contains NaN or Inf; refusing to propagate it into the model")


def integer_k(k, n, name="k"):
    """Return `k` as an int after checking ``1 <= k <= n``.

    Raises
    ------
    TypeError
        If `k` is not an integer (bools and floats are refused).
    ValueError
        If `k` is outside ``[1, n]``.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [1, {n}], got {k!r} of type {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"{name} must be in [1, {n}], got {k}")
    return k


def flag(value, name):
    """Return `value` as a bool; only True/False (or NumPy bools) are accepted.

    ``"no"`` or an array is refused instead of being read as true.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def generator(rng, name="rng"):
    """Return a ``numpy.random.Generator`` from a Generator, a seed (int >= 0) or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None:
        if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, numbers.Integral):
            raise TypeError(f"{name} must be a numpy.random.Generator, an integer seed or None, "
                            f"got {type(rng).__name__}")
        if rng < 0:
            raise ValueError(f"{name} must be a seed >= 0, got {rng}")
    return np.random.default_rng(rng)


def positive_float(value, name, *, allow_zero=False):
    """Return `value` as a float after checking it is finite and positive."""
    if type(value) is float and 0.0 < value < _INF:
        return value  # the common case, checked without the ABC test below
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    ok = value >= 0.0 if allow_zero else value > 0.0
    if not (np.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def unit_interval(value, name):
    """Return `value` as a float after checking ``0 <= value < 1``."""
    value = positive_float(value, name, allow_zero=True)
    if not value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def index_array(indices, B, n, name="indices"):
    """Validate explicit selection indices for a (B, n) gradient.

    Accepts shape ``(B, k)`` (one set per example) or ``(k,)`` (one set
    shared by the minibatch), integer dtype, every value in ``[0, n)`` and
    no value repeated within a set.

    Returns
    -------
    numpy.ndarray
        A new C-contiguous int64 array of the same shape (a copy, so the
        caller's array may change afterwards without effect).
    """
    if type(indices) is not np.ndarray:
        indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {indices.dtype}")
    if indices.dtype.kind == "u" and indices.size and indices.max() > np.iinfo(np.int64).max:
        raise IndexError(f"{name} holds {indices.max()}, outside [0, {n})")
    # Checked and used as a private copy: another thread may change the caller's array.
    indices = np.array(indices, dtype=np.int64, order="C", copy=True)
    if indices.ndim == 2:
        if indices.shape[0] != B:
            raise ValueError(
                f"{name} of shape {indices.shape} must have one row per example: expected ({B}, k)"
            )
    elif indices.ndim != 1:
        raise ValueError(f"{name} must have shape ({B}, k) or (k,), got {indices.shape}")
    k = indices.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"{name} must select between 1 and {n} entries per row, got {k}")
    if indices.size:
        lo, hi = indices.min(), indices.max()
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} holds {bad}, outside [0, {n})")
    if k > 1:
        ordered = np.sort(indices, axis=-1)
        if (ordered[..., 1:] == ordered[..., :-1]).any():
            raise ValueError(f"{name} repeats an index within a row; each selected entry must be distinct")
    return indices


def choice(value, allowed, name):
    """Return `value` after checking it is one of `allowed`.

    Raises
    ------
    ValueError
        If `value` is not in `allowed`; the message names `name` and lists the choices.
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def kept_indices(keep, size, name="keep"):
    """Validate the indices kept along an axis of length `size`.

    They must be integer, 1-D, non-empty, strictly increasing and in range.
    Returns a private C-contiguous int64 copy.
    """
    keep = np.asarray(keep)
    if keep.ndim != 1 or keep.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {keep.shape}")
    if keep.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {keep.dtype}")
    keep = np.array(keep, dtype=np.int64, copy=True)
    if keep[0] < 0 or keep[-1] >= size or (keep.size > 1 and (np.diff(keep) <= 0).any()):
        raise ValueError(f"{name} must be strictly increasing indices in [0, {size})")
    return keep
