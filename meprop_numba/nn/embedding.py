"""Embedding lookup with a row-sparse gradient.

Only the rows of the words present in a minibatch receive a gradient, so
:meth:`Embedding.grads` returns a :class:`meprop_numba.RowSparse` and the
optimizers (``lazy=True``) update only those rows.
"""
import time

import numpy as np

from .._kernels import sum_rows_by_id
from .._validation import float_array, integer_k
from ..sparse import RowSparse
from .layers import Module

__all__ = ["Embedding"]


class Embedding(Module):
    """A table of `num_embeddings` vectors of size `dim`, looked up by id.

    Parameters
    ----------
    num_embeddings : int
        Rows of the table (vocabulary size).
    dim : int
        Size of each vector.
    padding_idx : int, optional
        A row kept at zero that never receives a gradient (the id used for
        padded positions).
    dtype : {numpy.float32, numpy.float64}, default float32
    rng : numpy.random.Generator or int, optional
        The table is initialised from a standard normal distribution scaled
        by ``1/sqrt(dim)``.

    Attributes
    ----------
    weight : ndarray, shape (num_embeddings, dim)
    backward_seconds : float
        Wall time spent in :meth:`backward` since creation.

    Raises
    ------
    TypeError
        If a size is not an integer or `dtype` is not float32/float64.
    ValueError
        If a size is not positive or `padding_idx` is not an id of the table.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn.embedding import Embedding
    >>> emb = Embedding(10, 4, padding_idx=0, rng=0)
    >>> y = emb.forward(np.array([[3, 5, 3], [2, 0, 0]]), train=True)
    >>> _ = emb.backward(np.ones_like(y))
    >>> emb.grads()[0].rows.tolist()
    [2, 3, 5]
    """

    _parameter_names = ("weight",)

    def __init__(self, num_embeddings, dim, *, padding_idx=None, dtype=np.float32, rng=None):
        num_embeddings = integer_k(num_embeddings, np.iinfo(np.int64).max, "num_embeddings")
        dim = integer_k(dim, np.iinfo(np.int64).max, "dim")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if padding_idx is not None:
            if not isinstance(padding_idx, (int, np.integer)) or not 0 <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be an id in [0, {num_embeddings}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx)
        rng = np.random.default_rng(rng)
        self.weight = (rng.standard_normal((num_embeddings, dim)) / np.sqrt(dim)).astype(dtype)
        if padding_idx is not None:
            self.weight[padding_idx] = 0
        self.padding_idx = padding_idx
        self.backward_seconds = 0.0
        self._ids = None
        self._grads = [None]

    @property
    def num_embeddings(self):
        """Rows of the table (the vocabulary size)."""
        return self.weight.shape[0]

    @property
    def dim(self):
        """Size of each vector."""
        return self.weight.shape[1]

    def forward(self, ids, train=False):
        """Look up `ids`.

        Parameters
        ----------
        ids : array_like of int
            Any shape.
        train : bool, default False
            Keep the ids for :meth:`backward`.

        Returns
        -------
        ndarray, shape ``ids.shape + (dim,)``
            The rows of the table, a copy.

        Raises
        ------
        TypeError
            If `ids` is not integer.
        IndexError
            If an id is outside ``[0, num_embeddings)``.
        """
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must have an integer dtype, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise IndexError(f"ids holds {bad}, outside [0, {self.num_embeddings})")
        if train:
            self._ids = ids
        return self.weight[ids]

    def backward(self, grad_out):
        """Sum `grad_out` into the rows of the looked-up ids.

        Parameters
        ----------
        grad_out : ndarray, shape ``ids.shape + (dim,)``
            Gradient with respect to the looked-up vectors.

        Returns
        -------
        None
            The ids have no gradient.

        Raises
        ------
        RuntimeError
            If no training forward preceded it.
        TypeError, ValueError
            If `grad_out` is not float or has the wrong shape.
        """
        if self._ids is None:
            raise RuntimeError("backward called before forward(ids, train=True)")
        grad_out = float_array(grad_out, "grad_out", self._ids.ndim + 1)
        if grad_out.shape != self._ids.shape + (self.dim,):
            raise ValueError(f"grad_out must have shape {self._ids.shape + (self.dim,)}, "
                             f"got {grad_out.shape}")
        start = time.perf_counter()
        ids = np.ascontiguousarray(self._ids.reshape(-1), dtype=np.int64)
        grad = grad_out.reshape(-1, self.dim).astype(self.weight.dtype, copy=False)
        skip = -1 if self.padding_idx is None else self.padding_idx
        rows, values = sum_rows_by_id(ids, grad, skip)
        self._grads = [RowSparse._trusted(rows, values, self.weight.shape)]
        self._ids = None
        self.backward_seconds += time.perf_counter() - start

    def grads(self):
        """The table's gradient from the last :meth:`backward`.

        Returns
        -------
        list
            One :class:`~meprop_numba.RowSparse` over the ids of the batch
            (the padding row left out); ``[None]`` before any backward.
        """
        return list(self._grads)

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.dim}, padding_idx={self.padding_idx})"
