"""The sparse backward pass of a linear layer."""
import numpy as np

from ._config import PARALLEL_MIN_BACKWARD, PARALLEL_MIN_TOPK, get_num_threads, launch
from ._cpu import linear as _cpu_linear
from ._cpu.topk import magnitude_bits
from ._validation import (LARGEST, finite, flag, float_array, index_array, integer_k, is_cuda_array, same_dtype,
                          shape_dtype)
from .sparse import RowSparse
from .topk import _balanced_host, _topk_host

#: Above this many multiply-adds per product a shared selection goes through
#: BLAS (measured: at 50x20x500 BLAS takes 26 us, the loop kernel 90 us).
_BLAS_MIN_WORK = 1 << 14


def linear_backward(x, W, g, k=None, *, indices=None, unified=False, balanced=False, need_dx=True):
    """Back-propagate through ``y = x @ W.T + b`` with meProp.

    Only the k largest-magnitude entries of each row of the output
    gradient (or the k columns shared by the minibatch, or the given
    `indices`) take part, so only those rows of `W` are read and only those
    rows of the weight gradient are non-zero.

    Parameters
    ----------
    x : array_like, shape (B, m)
        Layer input, float32 or float64.
    W : array_like, shape (n, m)
        Weight matrix, stored (out, in) like ``torch.nn.Linear``.
    g : array_like, shape (B, n)
        Gradient of the loss with respect to the output y.
    k : int or None, optional
        Entries kept per example (or shared columns if `unified`). None, or
        ``k == n``, gives exact dense back propagation.
    indices : array_like of int, shape (B, k) or (k,), optional
        Explicit selection instead of top-k: one set per example, or one set
        shared by the minibatch (e.g. from :func:`random_indices`). Entries
        must be distinct within a set.
    unified : bool, optional
        Select the k columns with the largest ``sum_b |g[b, i]|`` for the
        whole minibatch instead of k entries per example.
    balanced : bool, optional
        Keep the ``k // 2`` largest positive and ``k - k // 2`` largest-magnitude
        negative entries of each row instead of the top-k by magnitude (see
        :func:`~meprop_numba.balanced_indices`); needs `k`, not `indices` or
        `unified`, host arrays only.
    need_dx : bool, optional
        If False, skip the input gradient (a network's first layer needs
        none) and return None for `dx`.

    Returns
    -------
    dx : ndarray, shape (B, m), or None
        Gradient with respect to x (None if not `need_dx`).
    dW : RowSparse, shape (n, m)
        Gradient with respect to W, stored by its non-zero rows.
    db : ndarray, shape (n,)
        Gradient with respect to b, from the full `g` (as in the paper).

    Raises
    ------
    TypeError
        Non-float or mixed dtypes, non-integer `k` or `indices`, `unified`
        or `need_dx` not a bool.
    ValueError
        Wrong dimensions or mismatched shapes, `k` outside ``[1, n]``,
        `k` disagreeing with `indices`, `indices` of the wrong shape or with
        repeats, `balanced` with `unified` or `indices`, NaN/Inf in `x` or `g`.
    IndexError
        An entry of `indices` outside ``[0, n)``.

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> rng = np.random.default_rng(0)
    >>> x, W, g = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=(4, 5))
    >>> dx, dW, db = mp.linear_backward(x, W, g, k=2)
    >>> dx.shape, dW.shape, db.shape
    ((4, 3), (5, 3), (5,))
    >>> dx, dW, db = mp.linear_backward(x, W, g)  # k=None: dense
    >>> bool(np.allclose(dW.to_dense(), g.T @ x))
    True
    """
    return _linear_backward(x, W, g, k, indices, unified, need_dx, balanced)[:3]


def _linear_backward(x, W, g, k, indices, unified, need_dx, balanced=False, workspace=None):
    """:func:`linear_backward` that also returns the selection it used.

    The fourth value is the kept entries: an int64 array of shape (B, k)
    (per example), of shape (k,) (shared by the minibatch), or None when
    every entry was kept (dense) or the arrays are on a GPU.  `workspace`
    (a :class:`meprop_numba._cuda.Workspace`, GPU arrays only) holds the
    device outputs and scratch between calls.
    """
    x = float_array(x, "x", 2)
    W = float_array(W, "W", 2)
    g = float_array(g, "g", 2)
    unified = flag(unified, "unified")
    need_dx = flag(need_dx, "need_dx")
    balanced = flag(balanced, "balanced")
    host = type(x) is np.ndarray and type(W) is np.ndarray and type(g) is np.ndarray  # float_array's output
    on_gpu = not host and is_cuda_array(g)
    if not host and (on_gpu != is_cuda_array(x) or on_gpu != is_cuda_array(W)):
        raise TypeError("x, W and g must be all host (NumPy) arrays or all CUDA arrays")
    if on_gpu:
        same_dtype((x, W, g), ("x", "W", "g"))
        (B, m), (n, mw), (Bg, ng) = shape_dtype(x)[0], shape_dtype(W)[0], shape_dtype(g)[0]
    else:
        if x.dtype != W.dtype or x.dtype != g.dtype:
            same_dtype((x, W, g), ("x", "W", "g"))
        (B, m), (n, mw), (Bg, ng) = x.shape, W.shape, g.shape
    if mw != m:
        raise ValueError(f"W must have shape (n, {m}) to match x of shape {(B, m)}, got {(n, mw)}")
    if (Bg, ng) != (B, n):
        raise ValueError(f"g must have shape ({B}, {n}) (batch of x, rows of W), got {(Bg, ng)}")
    if k is not None:
        k = integer_k(k, n)
    if balanced and (unified or indices is not None):
        raise ValueError("balanced selects per example: it takes neither unified=True nor indices")
    if balanced and on_gpu:
        raise TypeError("balanced=True takes host (NumPy) arrays")
    if indices is not None:
        if on_gpu and is_cuda_array(indices):
            from . import _cuda

            indices = _cuda.check_indices(indices, B, n)  # range and repeats checked on the device
        else:
            indices = index_array(indices, B, n)
        if unified and indices.ndim == 2:
            raise ValueError("indices of shape (B, k) are per-example; pass shape (k,) with unified=True")
        per_set = indices.shape[indices.ndim - 1]  # (simulated device arrays take no negative index)
        if k is not None and k != per_set:
            raise ValueError(f"k={k} disagrees with indices selecting {per_set} entries per row")
    if on_gpu:
        from . import _cuda

        dx, rows, values, db = _cuda.linear_backward(x, W, g, k, indices, unified, need_dx=bool(need_dx),
                                                      workspace=workspace)
        return dx, RowSparse._trusted(rows, values, (n, m)), db, None
    return _checked_backward(x, W, g, k, indices, unified, need_dx, balanced)


def _checked_backward(x, W, g, k, indices, unified, need_dx, balanced=False):
    """:func:`_linear_backward` of host arrays that passed its checks, from the NaN/Inf checks on.

    `x`, `W` and `g` are 2-D C-contiguous NumPy arrays of one float dtype
    and matching shapes, `k` an int in ``[1, n]`` or None, `indices` None or
    checked, the flags bools.  A caller that guarantees as much (the PyTorch
    layer: its forward checks the dtypes, autograd the shapes) calls this
    directly, without the Python checks.
    """
    n = W.shape[0]
    if indices is None and k is not None and _fused_case(g, k, unified, n, x.shape[1], balanced):
        dx, rows, values, db, kept = _fused_backward(x, W, g, k, unified, need_dx)
        return dx, RowSparse._trusted(rows, values, W.shape), db, kept
    finite(g, "g")
    finite(x, "x")
    if indices is None:
        if k is None or k == n:
            return _dense_backward(x, W, g, need_dx) + (None,)
        indices = _balanced_host(g, k) if balanced else _topk_host(g, k, False)
    if indices.ndim == 1:
        cols = np.sort(indices)
        return _shared_backward(x, W, g, cols, need_dx) + (cols,)
    return _per_example_backward(x, W, g, indices, need_dx)


def _fused_case(g, k, unified, n, m, balanced=False):
    """Whether :func:`_fused_backward` takes this backward: the common training cases.

    Unified selection, or per-example top-k (not balanced) small enough to run
    on one thread, with ``k < n``.
    """
    return k < n and (unified or not balanced and _serial(g, k, m))


def _fused_backward(x, W, g, k, unified, need_dx):
    """The NaN/Inf checks, the selection and both products in one compiled call.

    Takes what :func:`_checked_backward` takes, in a :func:`_fused_case`;
    returns NumPy ``(dx or None, rows, values, db, kept)``: ``dW`` is
    `values` in the sorted distinct `rows`, `kept` the selection (the
    shared columns if `unified`, else per example ``(B, k)``).

    Raises
    ------
    ValueError
        If `g` (checked first) or `x` holds NaN or Inf.
    """
    big = LARGEST[x.dtype]
    if unified:
        status, kept, dx, values, db = _cpu_linear.unified_backward(x, W, g, k, bool(need_dx), big)
        rows = kept
    else:
        status, kept, dx, rows, values, db = _cpu_linear.topk_backward(x, W, g, *magnitude_bits(g), k,
                                                                       bool(need_dx), big)
    if status:  # raises, naming the array
        finite(g, "g")
        finite(x, "x")
    return (dx if need_dx else None), rows, values, db, kept


def _serial(g, k, m):
    """Whether a per-example top-k backward of this size runs on one thread (both steps stay serial)."""
    B, n = g.shape
    return (B * n < PARALLEL_MIN_TOPK and B * k * m < PARALLEL_MIN_BACKWARD) or get_num_threads() == 1


def _per_example_backward(x, W, g, indices, need_dx):
    """Backward for validated per-example (B, k) indices; returns them as the fourth value."""
    B, m = x.shape
    n = W.shape[0]
    need_dx = bool(need_dx)
    if B * indices.shape[1] * m >= PARALLEL_MIN_BACKWARD and get_num_threads() > 1:
        dx, rows, values, db = launch(_cpu_linear.per_example_backward_parallel,
                                      _cpu_linear.per_example_backward, x, W, g, indices, need_dx)
    else:
        dx, rows, values, db = _cpu_linear.per_example_backward(x, W, g, indices, need_dx)
    return (dx if need_dx else None), RowSparse._trusted(rows, values, (n, m)), db, indices


def _dense_backward(x, W, g, need_dx):
    n = W.shape[0]
    dx = g @ W if need_dx else None
    return dx, RowSparse._trusted(np.arange(n, dtype=np.int64), g.T @ x, W.shape), g.sum(axis=0)


def _shared_backward(x, W, g, cols, need_dx):
    """Backward for one sorted column set shared by every example."""
    B, m = x.shape
    if B * cols.shape[0] * m < _BLAS_MIN_WORK:
        dx, values, db = _cpu_linear.shared_backward(x, W, g, cols)
        return (dx if need_dx else None), RowSparse._trusted(cols, values, W.shape), db
    return _shared_products(x, W, cols, np.take(g, cols, axis=1), g.sum(axis=0), need_dx)


def _shared_products(x, W, cols, g_sel, db, need_dx):
    """dx = g_sel W[cols] and dW[cols] = g_sel^T x, two small BLAS products."""
    dx = g_sel @ np.take(W, cols, axis=0) if need_dx else None
    return dx, RowSparse._trusted(cols, g_sel.T @ x, W.shape), db
