"""Multi-layer perceptron with meProp hidden layers."""
import numpy as np

from .._validation import integer_k, unit_interval
from .layers import MODES, Dropout, Linear, ReLU, Sequential, _float_dtype

__all__ = ["MLP"]


class MLP(Sequential):
    """``Linear -> ReLU [-> Dropout]`` repeated `layers` times, then a linear output layer.

    The hidden layers back-propagate with meProp (`k`, `mode`); the output
    layer is dense unless `output_k` is given, as in the paper.

    Parameters
    ----------
    in_features : int
        Input size (784 for 28x28 images).
    hidden : int
        Width of every hidden layer (the paper: 500).
    n_classes : int
        Output size.
    layers : int, optional
        Number of hidden layers (default 2, the paper's MNIST model).
    k : int or None, optional
        meProp k of the hidden layers; None for dense back propagation.
    mode : {'topk', 'unified', 'random'}, optional
    dropout : float, optional
        Dropout probability after each hidden ReLU (0 disables it).
    output_k : int or None, optional
        meProp k of the output layer (default None: dense).
    dtype : {numpy.float32, numpy.float64}, optional
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
        If a size or `k` is out of range, `mode` is unknown or `dropout` is
        outside ``[0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import MLP
    >>> model = MLP(784, 500, 10, k=20, rng=0)
    >>> model
    MLP(
      Linear(784, 500, k=20, mode='topk'),
      ReLU(),
      Linear(500, 500, k=20, mode='topk'),
      ReLU(),
      Linear(500, 10, dense)
    )
    >>> model.predict(np.zeros((2, 784), dtype=np.float32)).shape
    (2,)
    """

    def __init__(self, in_features, hidden, n_classes, layers=2, k=None, mode="topk", *,
                 dropout=0.0, output_k=None, dtype=np.float32, rng=None):
        big = np.iinfo(np.int64).max
        integer_k(hidden, big, "hidden")
        integer_k(n_classes, big, "n_classes")
        integer_k(layers, big, "layers")
        dropout = unit_interval(dropout, "dropout")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.dtype = _float_dtype(dtype)
        self.rng = np.random.default_rng(rng)
        modules = []
        width = in_features
        for i in range(layers):
            modules.append(Linear(width, hidden, k, mode, dtype=self.dtype, rng=self.rng,
                                  input_grad=i > 0))
            modules.append(ReLU())
            if dropout > 0:
                modules.append(Dropout(dropout, rng=self.rng))
            width = hidden
        modules.append(Linear(width, n_classes, output_k, mode, dtype=self.dtype, rng=self.rng,
                              input_grad=layers > 0))
        super().__init__(modules)

    @property
    def linear_layers(self):
        """The :class:`Linear` layers, input to output."""
        return [m for m in self.layers if isinstance(m, Linear)]

    @property
    def backward_linear_seconds(self):
        """Total time spent in the linear layers' backward computations."""
        return sum(layer.backward_seconds for layer in self.linear_layers)

    def predict(self, x, batch_size=1000):
        """Class with the highest score for each row of `x` (evaluation mode)."""
        x = np.asarray(x)
        out = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            out[start:stop] = self.forward(x[start:stop].astype(self.dtype, copy=False)).argmax(axis=1)
        return out

    def accuracy(self, x, y, batch_size=1000):
        """Fraction of rows of `x` whose predicted class equals `y`."""
        if len(y) == 0:
            return float("nan")
        return float(np.mean(self.predict(x, batch_size) == np.asarray(y)))
