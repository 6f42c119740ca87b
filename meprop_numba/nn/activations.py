"""Activations beyond ReLU, following the module convention of :mod:`meprop_numba.nn`."""
from .layers import _NO_TRAINING_FORWARD, Module, array_module

__all__ = ["Cube"]


class Cube(Module):
    """The cube activation ``x ** 3`` of Chen and Manning's (2014) parser.

    Takes no parameters. Its gradient is ``3 x ** 2 * grad_out``, in the
    dtype of the input (float32 stays float32).

    Raises
    ------
    RuntimeError
        From :meth:`backward` if no training forward preceded it.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Cube
    >>> cube = Cube()
    >>> cube.forward(np.array([[-2.0, 0.5]]), train=True)
    array([[-8.   ,  0.125]])
    >>> cube.backward(np.array([[1.0, 1.0]]))
    array([[12.  ,  0.75]])
    """

    def __init__(self):
        self._x = None

    def forward(self, x, train=False):
        """``x ** 3``.

        Parameters
        ----------
        x : ndarray
            Input (any layout; float32 stays float32).
        train : bool, default False
            Keep `x` for :meth:`backward`.

        Returns
        -------
        ndarray
            The cube, C-contiguous, in the dtype of `x`.
        """
        xp = array_module(x)
        x = xp.ascontiguousarray(x)
        if train:
            self._x = x
        return x * x * x

    def backward(self, grad_out):
        """``3 x ** 2 * grad_out``.

        Parameters
        ----------
        grad_out : ndarray
            Gradient with respect to the last training forward's output.

        Returns
        -------
        ndarray
            Gradient with respect to the input.

        Raises
        ------
        RuntimeError
            If no training forward preceded it.
        """
        if self._x is None:
            raise RuntimeError(_NO_TRAINING_FORWARD)
        x, self._x = self._x, None
        return grad_out * (x.dtype.type(3) * x * x)

    def __repr__(self):
        return "Cube()"
