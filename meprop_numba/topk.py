"""Selection of the gradient entries that meProp keeps: top-k and random-k."""
import numbers

import numpy as np

from ._config import PARALLEL_MIN_TOPK, get_num_threads, launch
from ._cpu import topk as _cpu_topk
from ._validation import finite, float_array, flag, generator, integer_k, is_cuda_array, shape_dtype


def _gpu():
    from . import _cuda

    return _cuda


def topk_indices(g, k, *, unified=False):
    """Indices of the k largest-magnitude entries of each row of a gradient.

    Parameters
    ----------
    g : array_like, shape (B, n)
        Output gradient of a matrix product, float32 or float64. A CUDA
        array (``__cuda_array_interface__``) is processed on the GPU.
    k : int
        Number of entries to keep, ``1 <= k <= n``.
    unified : bool, optional
        If True, select one set of k columns for the whole minibatch: the
        columns with the largest ``sum_b |g[b, i]|``.

    Returns
    -------
    ndarray of int64
        Shape ``(B, k)``: row b holds the indices of the k largest
        ``|g[b, :]|`` by descending magnitude, ties going to the lower
        index. With ``unified=True``, shape ``(k,)`` in the same order.

    Raises
    ------
    TypeError
        If `g` is not float32/float64, `k` is not an integer or `unified`
        is not a bool.
    ValueError
        If `g` is not 2-D, `k` is outside ``[1, n]``, or `g` holds NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> g = np.array([[0.1, -3.0, 2.0, 2.0]])
    >>> mp.topk_indices(g, 2)
    array([[1, 2]])
    >>> mp.topk_indices(np.array([[1.0, 0.0], [0.0, 2.0]]), 1, unified=True)
    array([1])
    """
    g = float_array(g, "g", 2)
    unified = flag(unified, "unified")
    B, n = _shape(g)
    k = integer_k(k, n)
    if is_cuda_array(g):
        return _gpu().topk_indices(g, k, unified)
    finite(g, "g")
    return _topk_host(g, k, unified)


def balanced_indices(g, k):
    """Sign-balanced top-k: the largest positive and negative entries of each row, half each.

    Row b keeps its ``k // 2`` largest positive entries and its
    ``k - k // 2`` largest-magnitude negative ones. Where one sign has fewer
    entries than its share the other sign fills the rest, and a row with
    fewer than k non-zero entries is padded with zero entries (which add
    nothing to the backward pass), so every row holds k distinct indices.

    Parameters
    ----------
    g : array_like, shape (B, n)
        Output gradient of a matrix product, float32 or float64 (host).
    k : int
        Entries kept per row, ``1 <= k <= n``.

    Returns
    -------
    ndarray of int64, shape (B, k)
        Per row: the positive entries by descending value, then the
        negative entries by descending magnitude, then any zero entries by
        index; equal values go to the lower index.

    Raises
    ------
    TypeError
        If `g` is not float32/float64 or `k` is not an integer.
    ValueError
        If `g` is not 2-D, `k` is outside ``[1, n]``, or `g` holds NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> g = np.array([[5.0, 4.0, 3.0, -1.0, -0.5, 0.0]])
    >>> mp.balanced_indices(g, 2)            # top-k would keep 0 and 1
    array([[0, 3]])
    >>> mp.balanced_indices(np.array([[2.0, 1.0, 0.0, 3.0]]), 3)   # no negatives
    array([[3, 0, 1]])
    """
    g = float_array(g, "g", 2)
    if is_cuda_array(g):
        raise TypeError("balanced_indices takes a host (NumPy) array")
    B, n = g.shape
    k = integer_k(k, n)
    finite(g, "g")
    return _balanced_host(g, k)


def _balanced_host(g, k):
    """Sign-balanced top-k of a validated, finite, C-contiguous host array (no checks)."""
    bits, mask = _cpu_topk.magnitude_bits(g)
    out = np.empty((g.shape[0], k), dtype=np.int64)
    _cpu_topk.balanced_topk_rows(bits, k, mask, out)
    return out


def _shape(a):
    return shape_dtype(a)[0]


def _topk_host(g, k, unified):
    """Top-k of a validated, finite, C-contiguous host array (no checks)."""
    if unified:
        return _cpu_topk.top_columns(_cpu_topk.column_sums_and_abs_sums(g)[1], k)
    B, n = g.shape
    bits, mask = _cpu_topk.magnitude_bits(g)
    out = np.empty((B, k), dtype=np.int64)
    if B > 1 and B * n >= PARALLEL_MIN_TOPK and get_num_threads() > 1:
        launch(_cpu_topk.topk_rows_parallel, _cpu_topk.topk_rows, bits, k, mask, out)
    else:
        _cpu_topk.topk_rows(bits, k, mask, out)
    return out


def random_indices(n, k, *, batch=None, rng=None):
    """Draw k distinct indices out of n at random: meProp's random-k baseline.

    Parameters
    ----------
    n : int
        Number of candidates (a layer's output size), ``n >= 1``.
    k : int
        Number of indices per set, ``1 <= k <= n``.
    batch : int, optional
        If given, draw an independent set for each of `batch` examples.
    rng : numpy.random.Generator or int or None, optional
        Source of randomness, or a seed for ``numpy.random.default_rng``.

    Returns
    -------
    ndarray of int64
        Shape ``(k,)``, or ``(batch, k)`` if `batch` is given; sorted
        within each set.

    Raises
    ------
    TypeError
        If `n`, `k` or `batch` is not an integer, or `rng` is neither a
        Generator, an integer seed nor None.
    ValueError
        If ``n < 1``, `k` is outside ``[1, n]``, ``batch < 1`` or the seed
        is negative.

    Examples
    --------
    >>> import meprop_numba as mp
    >>> idx = mp.random_indices(10, 3, batch=2, rng=0)
    >>> idx.shape
    (2, 3)
    >>> bool(((idx >= 0) & (idx < 10)).all())
    True
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = integer_k(k, int(n))
    if batch is not None:
        if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, numbers.Integral):
            raise TypeError(f"batch must be an integer or None, got {type(batch).__name__}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
    rng = generator(rng)
    rows = 1 if batch is None else int(batch)
    keys = rng.random((rows, int(n)))
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (rows, 1))
    idx = np.sort(idx, axis=1).astype(np.int64, copy=False)
    return idx[0] if batch is None else idx
