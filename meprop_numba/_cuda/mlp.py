"""CUDA kernels of the MLP layers and the loss (CPU twin: :mod:`meprop_numba._cpu.mlp`).

The layers of :mod:`meprop_numba.nn` call these for numba device arrays
(and other ``__cuda_array_interface__`` objects that are not CuPy arrays,
whose own operators the layers use), so a model whose parameters are on the
device (:meth:`meprop_numba.nn.Module.to`) trains there end to end: the
forward product (:func:`linear_forward`, a tiled product beside the
backward's in :mod:`.linear`), ReLU, inverted dropout's scaling, and the
softmax cross-entropy with its gradient.  Every kernel works in the input's
dtype and writes a new array, or the caller's ``out=`` (checked before any
launch); inputs are only read.  Kernels go to the stream the inputs come
from, or to an explicit ``stream=``.
"""
import math

import numpy as np
from numba import float32, float64

from . import linear as _linear
from .device import (_cols_grid, _rows_grid, as_device, check_out, copy_in, cuda, empty, launch_1d, launch_stream,
                     read_status, require_cuda, zeros)

_KERNELS = {}


def _kernels(dtype):
    """Build (once per float dtype) the element-wise kernels and the loss."""
    dtype = np.dtype(dtype)
    if dtype.name in _KERNELS:
        return _KERNELS[dtype.name]
    ftype = float32 if dtype == np.float32 else float64

    @cuda.jit
    def relu_forward(x, y):
        # y = max(x, 0); NaN stays NaN, as on the host.
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= x.shape[1]:
            return
        for r in range(cuda.blockIdx.y, x.shape[0], cuda.gridDim.y):
            v = x[r, c]
            y[r, c] = ftype(0) if v <= ftype(0) else v

    @cuda.jit
    def relu_backward(grad_out, y, out):
        # out = grad_out where the ReLU output y is positive, else 0.
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= y.shape[1]:
            return
        for r in range(cuda.blockIdx.y, y.shape[0], cuda.gridDim.y):
            out[r, c] = grad_out[r, c] if y[r, c] > ftype(0) else ftype(0)

    @cuda.jit
    def multiply(a, b, out):
        c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if c >= a.shape[1]:
            return
        for r in range(cuda.blockIdx.y, a.shape[0], cuda.gridDim.y):
            out[r, c] = a[r, c] * b[r, c]

    @cuda.jit
    def softmax_cross_entropy(logits, labels, inv_b, grad, losses, status):
        # One thread per example (the class count is small): grad[b] = (softmax - onehot) / B,
        # losses[b] = log(sum exp(l - top)) - (l[y] - top); status[0] = 1 for a label outside [0, C).
        start = cuda.grid(1)
        n_classes = logits.shape[1]
        for b in range(start, logits.shape[0], cuda.gridsize(1)):
            top = logits[b, 0]
            for c in range(1, n_classes):
                v = logits[b, c]
                if v > top:
                    top = v
            total = ftype(0)
            for c in range(n_classes):
                e = math.exp(logits[b, c] - top)
                grad[b, c] = e
                total += e
            scale = inv_b / total
            for c in range(n_classes):
                grad[b, c] *= scale
            y = labels[b]
            if y < 0 or y >= n_classes:
                status[0] = 1
                losses[b] = ftype(0)
                continue
            losses[b] = math.log(total) - (logits[b, y] - top)
            grad[b, y] -= inv_b

    ns = dict(locals())
    _KERNELS[dtype.name] = ns
    return ns


def _elementwise(name, arrays, names, stream, out):
    """Launch the element-wise kernel `name` over 2-D `arrays` of one shape and dtype; return its output."""
    require_cuda()
    s = launch_stream(arrays, stream)
    arrays = [_two_d(a, n) for a, n in zip(arrays, names)]
    for a, n in zip(arrays[1:], names[1:]):
        _alike(arrays[0], a, (names[0], n))
    B, n = arrays[0].shape
    if out is None:
        out = empty((B, n), arrays[0].dtype, s)
    else:
        out = check_out(out, (B, n), arrays[0].dtype)
    if B and n:
        launch_1d(_kernels(out.dtype)[name], lambda tpb: (_cols_grid(n, tpb), _rows_grid(B)), tuple(arrays) + (out,),
                  s)
    return out


def _two_d(a, name):
    d = as_device(a, name)
    if d.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(d.shape)}")
    if np.dtype(d.dtype) not in (np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float32 or float64, got {d.dtype}")
    return d


def _alike(a, b, names):
    """Raise unless `b` has the shape and dtype of `a` (the kernels read both at the same places)."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise ValueError(f"{names[1]} must be {a.dtype} of shape {tuple(a.shape)} like {names[0]}, "
                         f"got {b.dtype} {tuple(b.shape)}")


def linear_forward(x, W, b, stream=None, out=None):
    """``x @ W.T + b`` on the device (the forward of a linear layer), as a new array or into `out`.

    Parameters
    ----------
    x : CUDA array, (B, m)
    W : CUDA array, (n, m)
    b : CUDA array, (n,)
        Same float dtype as `x`.
    stream : optional
        Default: the stream the inputs come from.
    out : CUDA array, optional
        C-contiguous ``(B, n)`` of `x`'s dtype, not overlapping the inputs:
        the result is written there (checked before any launch).

    Returns
    -------
    numba device array, (B, n)
        C-contiguous (`out` when given).

    Raises
    ------
    ValueError
        Shapes that do not match, or an `out` of another shape.
    TypeError
        Non-CUDA arrays, or an `out` of another dtype.
    """
    require_cuda()
    s = launch_stream([x, W, b], stream)
    x, W, b = _two_d(x, "x"), _two_d(W, "W"), as_device(b, "b")
    (batch, m), n = x.shape, W.shape[0]
    if W.shape[1] != m or W.dtype != x.dtype:
        raise ValueError(f"W must be {x.dtype} of shape (n, {m}) to match x, got {W.dtype} {tuple(W.shape)}")
    if tuple(b.shape) != (n,) or b.dtype != x.dtype:
        raise ValueError(f"b must be {x.dtype} of shape ({n},), got {b.dtype} {tuple(b.shape)}")
    y = empty((batch, n), x.dtype, s) if out is None else check_out(out, (batch, n), x.dtype)
    if batch and n:
        _linear._launch_tiled("forward_product", x.dtype, _linear._grid_2d(n, batch), (x, W, b, y), s)
    return y


def relu_forward(x, stream=None, out=None):
    """``max(x, 0)`` of a 2-D device array, as a new C-contiguous array or into `out` (NaN stays NaN)."""
    return _elementwise("relu_forward", [x], ("x",), stream, out)


def relu_backward(grad_out, y, stream=None, out=None):
    """``grad_out`` where the ReLU output `y` is positive, else 0 (one shape and dtype), new or into `out`."""
    return _elementwise("relu_backward", [grad_out, y], ("grad_out", "y"), stream, out)


def multiply(a, b, stream=None, out=None):
    """``a * b`` of two 2-D device arrays of one shape and dtype, as a new array or into `out`."""
    return _elementwise("multiply", [a, b], ("a", "b"), stream, out)


def softmax_cross_entropy(logits, labels, stream=None, workspace=None):
    """Mean softmax cross-entropy and its gradient ``(softmax - onehot) / B`` on the device.

    Parameters
    ----------
    logits : CUDA array, (B, C), B >= 1
    labels : CUDA array or host array of int, (B,)
        A host array is copied to the device; device labels are checked on
        the device (one flag comes back with the per-example losses).
    stream : optional
        Default: the stream of `logits`.
    workspace : Workspace, optional
        Where the gradient, the per-example losses, the status flag and the
        device copy of host labels come from.

    Returns
    -------
    loss : float
        Mean over the examples (each example's loss in the logits' dtype,
        the mean taken on the host in float64).
    grad : numba device array, (B, C)

    Raises
    ------
    IndexError
        A device label outside ``[0, C)``.
    """
    require_cuda()
    s = launch_stream([logits], stream)
    logits = _two_d(logits, "logits")
    B, C = logits.shape
    if isinstance(labels, np.ndarray):
        labels = copy_in(labels.astype(np.int64, copy=False), s, workspace, "loss.labels")
    else:
        labels = as_device(labels, "labels")
    if labels.shape != (B,) or np.dtype(labels.dtype).kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({B},), got {labels.dtype} {tuple(labels.shape)}")
    t = logits.dtype.type
    grad = empty((B, C), logits.dtype, s, workspace, "loss.grad")
    losses = empty(B, logits.dtype, s, workspace, "loss.losses")
    status = zeros(1, np.int64, s, workspace, "loss.status")
    launch_1d(_kernels(logits.dtype)["softmax_cross_entropy"], lambda tpb: min(_cols_grid(B, tpb), 65535),
              (logits, labels, t(1.0 / B), grad, losses, status), s)
    if int(read_status(status, s)[0]):
        raise IndexError(f"labels must be in [0, {C})")
    return float(np.sum(read_status(losses, s), dtype=np.float64) / B), grad
