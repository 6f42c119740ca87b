"""Softmax cross-entropy loss for classification."""
import numpy as np

from .._validation import float_array, is_cuda_array, shape_dtype
from .._cpu import mlp as _kernels
from .layers import array_module

__all__ = ["log_softmax", "softmax_cross_entropy"]


def log_softmax(logits):
    """Row-wise log-softmax, computed stably (the row maximum is subtracted first).

    Parameters
    ----------
    logits : numpy.ndarray
        ``(B, C)`` float32 or float64.

    Returns
    -------
    numpy.ndarray
        ``(B, C)`` of the same dtype; ``exp`` of each row sums to one.

    Raises
    ------
    ValueError
        If `logits` is not 2-D (NumPy's error from the row reduction).

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import log_softmax
    >>> np.exp(log_softmax(np.array([[1000.0, 1000.0]])))
    array([[0.5, 0.5]])
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, workspace=None):
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(B, C)`` float32 or float64 scores.
    labels : numpy.ndarray
        ``(B,)`` integer classes in ``[0, C)``.
    workspace : meprop_numba._cuda.Workspace, optional
        Device logits only: where the gradient and the device scratch come
        from (reused between calls, e.g. a model's :attr:`Module.workspace`);
        the gradient then stays valid until the next call with it.

    Returns
    -------
    loss : float
        ``-mean_b log softmax(logits)[b, labels[b]]``; NaN or Inf when the
        logits are not finite (the caller decides what to do).
    grad : numpy.ndarray
        ``(B, C)`` gradient of `loss`, ``(softmax(logits) - onehot) / B``,
        in the dtype of `logits`.

    Raises
    ------
    TypeError
        If `logits` is not float32/float64 or `labels` not integer.
    ValueError
        If the shapes disagree or `B` is zero.
    IndexError
        If a label is outside ``[0, C)``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import softmax_cross_entropy
    >>> loss, grad = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(loss, 6)
    1.386294
    >>> grad[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """
    logits = float_array(logits, "logits", 2)
    xp = array_module(logits)
    on_device = is_cuda_array(logits) and xp is np
    if on_device and is_cuda_array(labels):
        return _device_loss(logits, labels, workspace)
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    B, C = logits.shape
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},) to match logits {logits.shape}, "
                         f"got {labels.shape}")
    if B == 0:
        raise ValueError("logits must hold at least one example")
    if int(labels.min()) < 0 or int(labels.max()) >= C:
        raise IndexError(f"labels must be in [0, {C}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if on_device:
        return _device_loss(logits, labels, workspace)
    if xp is np:
        return _kernels.softmax_cross_entropy(np.ascontiguousarray(logits),
                                              labels.astype(np.int64, copy=False))
    logp = log_softmax(logits)
    rows = xp.arange(B)
    loss = -float(logp[rows, labels].sum()) / B
    grad = xp.exp(logp)
    grad[rows, labels] -= 1
    grad *= logits.dtype.type(1.0 / B)
    return loss, grad


def _device_loss(logits, labels, workspace):
    """The loss on the device (numba device logits); device labels are range-checked there."""
    from .._cuda import mlp

    (B, _), _ = shape_dtype(logits)
    (label_shape, label_dtype) = shape_dtype(labels)
    if np.dtype(label_dtype).kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {label_dtype}")
    if tuple(label_shape) != (B,):
        raise ValueError(f"labels must have shape ({B},) to match logits, got {tuple(label_shape)}")
    if B == 0:
        raise ValueError("logits must hold at least one example")
    return mlp.softmax_cross_entropy(logits, labels, workspace=workspace)
