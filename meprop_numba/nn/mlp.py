"""Multi-layer perceptron with meProp hidden layers."""
import numbers
from collections.abc import Sequence

import numpy as np

from .._validation import choice, integer_k, unit_interval
from .layers import SELECTIONS, Dropout, Linear, ReLU, Sequential, _float_dtype, _on_device

__all__ = ["MLP"]


def _per_layer_widths(hidden, layers):
    """One checked width per hidden layer, from an int (with `layers`) or a sequence."""
    big = np.iinfo(np.int64).max
    if isinstance(hidden, (numbers.Integral, np.bool_)):
        integer_k(hidden, big, "hidden")
        layers = 2 if layers is None else integer_k(layers, big, "layers")
        return [int(hidden)] * layers
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (Sequence, np.ndarray)):
        raise TypeError(f"hidden must be an integer or a sequence of them, got {type(hidden).__name__}")
    if len(hidden) == 0:
        raise ValueError("hidden must give at least one width")
    if layers is not None and integer_k(layers, big, "layers") != len(hidden):
        raise ValueError(f"layers={layers} disagrees with the {len(hidden)} widths in hidden")
    return [integer_k(width, big, f"hidden[{i}]") for i, width in enumerate(hidden)]


def _per_layer_k(k, widths):
    """One checked k (int or None) per hidden layer, from an int, None or a sequence."""
    if k is None or isinstance(k, (numbers.Integral, np.bool_)):
        return [None if k is None else integer_k(k, width) for width in widths]
    if isinstance(k, (str, bytes)) or not isinstance(k, (Sequence, np.ndarray)):
        raise TypeError(f"k must be an integer, None or a sequence of them, got {type(k).__name__}")
    if len(k) != len(widths):
        raise ValueError(f"k must give one value per hidden layer ({len(widths)}), got {len(k)}")
    return [None if value is None else integer_k(value, width, f"k[{i}]")
            for i, (value, width) in enumerate(zip(k, widths))]


class MLP(Sequential):
    """``Linear -> ReLU [-> Dropout]`` repeated `layers` times, then a linear output layer.

    The hidden layers back-propagate with meProp (`k`, `selection`); the
    output layer is dense unless `output_k` is given, as in the paper. The
    layers are named by index (``"0.weight"`` is the first hidden layer's
    weight, ``"2.weight"`` the second's without dropout) in
    :meth:`state_dict`, as in a ``torch.nn.Sequential``.

    Parameters
    ----------
    in_features : int
        Input size (784 for 28x28 images).
    hidden : int or sequence of int
        Width of every hidden layer (the paper: 500), or one width per
        hidden layer (a simplified model: ``[154, 60]``).
    n_classes : int
        Output size.
    layers : int, optional
        Number of hidden layers (default 2, the paper's MNIST model, for an
        integer `hidden`; ``len(hidden)`` for a sequence).
    k : int, None or sequence of (int or None), optional
        meProp k of the hidden layers, each in ``[1, width]``: one value
        for every hidden layer, or one per hidden layer (``[20, None]``:
        meProp in the first, dense in the second). None, or ``k == hidden``,
        is exact dense back propagation.
    selection : {'topk', 'unified', 'random', 'balanced'}, optional
        Which entries of the hidden layers' output gradients are kept (see
        :class:`Linear`).
    dropout : float, optional
        Dropout probability after each hidden ReLU (0 disables it).
    output_k : int or None, optional
        meProp k of the output layer (default None: dense).
    error_feedback : float, optional
        Error-feedback memory decay of the meProp hidden layers (see
        :class:`Linear`; default 0, off).
    dtype : {numpy.float32, numpy.float64}, optional
        Parameter dtype (default float32).
    rng : numpy.random.Generator or int, optional
        Seeds the initial weights; the same generator then draws dropout
        masks and random-k selections, so :attr:`rng` holds all of the
        model's randomness.

    Raises
    ------
    TypeError
        If a size, `layers` or `k` is not an integer, or `dtype` is not
        float32/float64.
    ValueError
        If a size is not positive, a `k` is outside ``[1, width]`` of its
        layer (or `output_k` outside ``[1, n_classes]``), a sequence `k`
        or `hidden` does not hold one entry per hidden layer, `selection` is unknown, or
        `dropout` or `error_feedback` is outside ``[0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import MLP
    >>> model = MLP(784, 500, 10, k=20, rng=0)
    >>> model
    MLP(
      Linear(784, 500, k=20, selection='topk'),
      ReLU(),
      Linear(500, 500, k=20, selection='topk'),
      ReLU(),
      Linear(500, 10, dense)
    )
    >>> model.predict(np.zeros((2, 784), dtype=np.float32)).shape
    (2,)
    >>> [layer.k for layer in MLP(784, 500, 10, k=[20, None], rng=0).linear_layers]
    [20, None, None]
    >>> MLP(784, [154, 60], 10, k=20, rng=0).hidden_sizes
    [154, 60]
    """

    def __init__(self, in_features, hidden, n_classes, layers=None, k=None, selection="topk", *,
                 dropout=0.0, output_k=None, error_feedback=0.0, dtype=np.float32, rng=None):
        big = np.iinfo(np.int64).max
        widths = _per_layer_widths(hidden, layers)
        integer_k(n_classes, big, "n_classes")
        layers = len(widths)
        dropout = unit_interval(dropout, "dropout")
        error_feedback = unit_interval(error_feedback, "error_feedback")
        selection = choice(selection, SELECTIONS, "selection")
        ks = _per_layer_k(k, widths)
        if output_k is not None:
            integer_k(output_k, n_classes, "output_k")
        self.dtype = _float_dtype(dtype)
        self.rng = np.random.default_rng(rng)
        modules = []
        width = in_features
        for i in range(layers):
            modules.append(Linear(width, widths[i], ks[i], selection, dtype=self.dtype,
                                  rng=self.rng, input_grad=i > 0,
                                  error_feedback=error_feedback if ks[i] is not None else 0.0))
            modules.append(ReLU())
            if dropout > 0:
                modules.append(Dropout(dropout, rng=self.rng))
            width = widths[i]
        modules.append(Linear(width, n_classes, output_k, selection, dtype=self.dtype,
                              rng=self.rng, input_grad=layers > 0))
        super().__init__(modules)

    def reset_error_feedback(self):
        """Forget the error-feedback memory of every layer (see :meth:`Linear.reset_error_feedback`)."""
        for layer in self.linear_layers:
            layer.reset_error_feedback()

    @property
    def linear_layers(self):
        """The :class:`Linear` layers, input to output."""
        return [m for m in self.layers if isinstance(m, Linear)]

    @property
    def hidden_sizes(self):
        """Width of each hidden layer, input to output (smaller after simplification)."""
        return [layer.out_features for layer in self.linear_layers[:-1]]

    @property
    def backward_linear_seconds(self):
        """Total time spent in the linear layers' backward computations."""
        return sum(layer.backward_seconds for layer in self.linear_layers)

    def predict(self, x, batch_size=1000):
        """Class with the highest score for each row of `x` (inference).

        Parameters
        ----------
        x : array_like, shape (N, in_features)
            The inputs, cast to the model's dtype.
        batch_size : int, optional
            Rows per forward pass.

        Returns
        -------
        ndarray of int64, shape (N,)
            The predicted classes.
        """
        x = np.asarray(x)
        out = np.empty(len(x), dtype=np.int64)
        on_device = _on_device(self.linear_layers[0].weight)
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            xb = x[start:stop].astype(self.dtype, copy=False)
            if on_device:  # a model moved to the GPU (Module.to): the batch goes there, the scores come back
                from .._cuda import copy_in

                xb = copy_in(xb, 0, self.workspace, "predict.x")
                out[start:stop] = self.forward(xb).copy_to_host().argmax(axis=1)
            else:
                out[start:stop] = self.forward(xb).argmax(axis=1)
        return out

    def accuracy(self, x, y, batch_size=1000):
        """Fraction of rows of `x` whose predicted class equals `y`.

        Parameters
        ----------
        x : array_like, shape (N, in_features)
            The inputs.
        y : array_like of int, shape (N,)
            The true classes.
        batch_size : int, optional
            Rows per forward pass.

        Returns
        -------
        float
            The accuracy in ``[0, 1]``; NaN when `y` is empty.
        """
        if len(y) == 0:
            return float("nan")
        return float(np.mean(self.predict(x, batch_size) == np.asarray(y)))
