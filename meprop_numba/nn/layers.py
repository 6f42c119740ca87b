"""Layers following the module convention of :mod:`meprop_numba.nn`."""
import time

import numpy as np

from .. import linear_backward, random_indices
from .._validation import integer_k, unit_interval

__all__ = ["Dropout", "Linear", "Module", "ReLU", "Sequential", "array_module"]

MODES = ("topk", "unified", "random")


def array_module(x):
    """The array namespace (``numpy`` or ``cupy``) that `x` belongs to.

    Every layer creates arrays through the namespace of its inputs or
    parameters, so one code path serves host and device arrays.
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Module:
    """Base class of the layers; see :mod:`meprop_numba.nn` for the convention."""

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def params(self):
        """Parameter arrays, updated in place by the optimizers."""
        return []

    def grads(self):
        """Gradients from the last :meth:`backward`, aligned with :meth:`params`."""
        return []

    def __call__(self, x, train=False):
        return self.forward(x, train)


class Linear(Module):
    """Fully connected layer ``y = x @ W.T + b`` with meProp back propagation.

    The forward pass is one BLAS product. The backward pass keeps only `k`
    entries of the output gradient per example (``mode='topk'``), `k`
    columns shared by the minibatch (``'unified'``) or `k` random entries
    per example (``'random'``, the paper's baseline), so only those rows of
    `W` receive a gradient (a :class:`~meprop_numba.RowSparse`). The bias
    gradient stays dense, as in the paper.

    Parameters
    ----------
    in_features, out_features : int
    k : int or None, optional
        Entries kept in back propagation; None (default) or
        ``k >= out_features`` gives exact dense back propagation.
    mode : {'topk', 'unified', 'random'}, optional
    dtype : {numpy.float32, numpy.float64}, optional
    rng : numpy.random.Generator or int, optional
        Initialises the weights uniformly in ``±1/sqrt(in_features)`` (the
        ``torch.nn.Linear`` default) and draws the random-k selections.
    input_grad : bool, optional
        Whether :meth:`backward` returns the input gradient. The first layer
        of a network does not need it; the dense path then skips that
        product (as autograd frameworks do).

    Attributes
    ----------
    weight : numpy.ndarray
        ``(out_features, in_features)``.
    bias : numpy.ndarray
        ``(out_features,)``.
    backward_seconds : float
        Wall time spent in the weight/input gradient computation (including
        the top-k selection) since creation; the training loop reads it.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Linear
    >>> layer = Linear(4, 6, k=2, rng=0)
    >>> x = np.ones((3, 4), dtype=np.float32)
    >>> layer.forward(x, train=True).shape
    (3, 6)
    >>> dx = layer.backward(np.ones((3, 6), dtype=np.float32))
    >>> dW, db = layer.grads()
    >>> len(dW.rows) <= 6, db.shape
    (True, (6,))
    """

    def __init__(self, in_features, out_features, k=None, mode="topk", *, dtype=np.float32,
                 rng=None, input_grad=True):
        in_features = integer_k(in_features, np.iinfo(np.int64).max, "in_features")
        out_features = integer_k(out_features, np.iinfo(np.int64).max, "out_features")
        if k is not None:
            k = integer_k(k, np.iinfo(np.int64).max, "k")
            if k >= out_features:
                k = None
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dtype = _float_dtype(dtype)
        self.rng = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = self.rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        self.bias = self.rng.uniform(-bound, bound, out_features).astype(dtype)
        self.k, self.mode, self.input_grad = k, mode, bool(input_grad)
        self.backward_seconds = 0.0
        self._x = None
        self._grads = [None, None]

    @property
    def in_features(self):
        return self.weight.shape[1]

    @property
    def out_features(self):
        return self.weight.shape[0]

    def forward(self, x, train=False):
        if train:
            self._x = x
        y = x @ self.weight.T
        y += self.bias
        return y

    def backward(self, grad_out):
        if self._x is None:
            raise RuntimeError("backward called before forward(x, train=True)")
        x, W = self._x, self.weight
        start = time.perf_counter()
        if self.mode == "random" and self.k is not None:
            indices = random_indices(W.shape[0], self.k, batch=x.shape[0], rng=self.rng)
            dx, dW, db = linear_backward(x, W, grad_out, indices=indices, need_dx=self.input_grad)
        else:
            dx, dW, db = linear_backward(x, W, grad_out, self.k, unified=self.mode == "unified",
                                         need_dx=self.input_grad)
        self.backward_seconds += time.perf_counter() - start
        self._x = None
        self._grads = [dW, db]
        return dx if self.input_grad else None

    def params(self):
        return [self.weight, self.bias]

    def grads(self):
        return list(self._grads)

    def __repr__(self):
        sparsity = "dense" if self.k is None else f"k={self.k}, mode={self.mode!r}"
        return f"Linear({self.in_features}, {self.out_features}, {sparsity})"


class ReLU(Module):
    """Rectified linear unit ``max(x, 0)``."""

    def __init__(self):
        self._mask = None

    def forward(self, x, train=False):
        if train:
            self._mask = x > 0
        return array_module(x).maximum(x, x.dtype.type(0))

    def backward(self, grad_out):
        if self._mask is None:
            raise RuntimeError("backward called before forward(x, train=True)")
        grad = grad_out * self._mask
        self._mask = None
        return grad

    def __repr__(self):
        return "ReLU()"


class Dropout(Module):
    """Inverted dropout: in training, zero each entry with probability `p`
    and scale the rest by ``1 / (1 - p)``; identity at evaluation.

    Parameters
    ----------
    p : float
        Drop probability in ``[0, 1)``.
    rng : numpy.random.Generator or int, optional
        Source of the masks (shared with the model so that one state
        captures all of its randomness).
    """

    def __init__(self, p, rng=None):
        self.p = unit_interval(p, "p")
        self.rng = np.random.default_rng(rng)
        self._scale = None

    def forward(self, x, train=False):
        if not train or self.p == 0.0:
            self._scale = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        self._scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, grad_out):
        if self._scale is None:
            return grad_out
        grad = grad_out * self._scale
        self._scale = None
        return grad

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x, train=False):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
            if grad_out is None:  # a layer whose input needs no gradient
                break
        return grad_out

    def params(self):
        return [p for layer in self.layers for p in layer.params()]

    def grads(self):
        return [g for layer in self.layers for g in layer.grads()]

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n)"
