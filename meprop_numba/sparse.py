"""Row-sparse matrices: the weight gradients meProp produces."""
import numbers

import numpy as np

from ._validation import is_cuda_array, shape_dtype


class RowSparse:
    """A matrix whose non-zero entries lie in a few rows.

    meProp's weight gradient ``dW`` (shape ``(n, m)``) is non-zero only in
    the rows that some example selected; those rows are stored densely.

    Parameters
    ----------
    rows : array_like of int, shape (r,)
        Indices of the stored rows, sorted, distinct, in ``[0, shape[0])``.
        Host rows are copied into a read-only int64 array, so changing the
        caller's array afterwards changes nothing; an empty list is an
        empty row set.
    values : ndarray, shape (r, shape[1])
        The stored rows, float32 or float64.
    shape : tuple of int
        ``(n, m)``, the shape of the full matrix (integers >= 0).

    Attributes
    ----------
    rows : ndarray of int64, shape (r,)
        Read-only.
    values : ndarray, shape (r, m)
        The caller's array (not copied; it may be scaled in place).
    shape : tuple of int
    dtype : numpy.dtype
        The dtype of `values`.

    Raises
    ------
    TypeError
        If `rows` is not integer, `values` not float32/float64, `shape`
        not a pair of integers, or one of rows/values is on the GPU and
        the other not.
    ValueError
        If `rows` is not sorted and distinct, or shapes disagree.
    IndexError
        If a row index is outside ``[0, shape[0])``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba import RowSparse
    >>> d = RowSparse([1, 3], np.ones((2, 2)), (4, 2))
    >>> d.to_dense()
    array([[0., 0.],
           [1., 1.],
           [0., 0.],
           [1., 1.]])
    """

    __slots__ = ("_rows", "_values", "_shape")

    def __init__(self, rows, values, shape):
        shape = _matrix_shape(shape)
        if not is_cuda_array(values):
            values = np.asarray(values)
        vshape, vdt = shape_dtype(values)
        if vdt not in (np.float32, np.float64):
            raise TypeError(f"values must have dtype float32 or float64, got {vdt}")
        if is_cuda_array(rows) != is_cuda_array(values):
            raise TypeError("rows and values must both be host (NumPy) arrays or both CUDA arrays")
        if is_cuda_array(rows):
            rshape, rdt = shape_dtype(rows)
            if len(rshape) != 1:
                raise ValueError(f"rows must be 1-D, got shape {tuple(rshape)}")
            if rdt.kind not in "iu":
                raise TypeError(f"rows must have an integer dtype, got {rdt}")
        else:
            rows = _host_rows(rows, shape[0])
            rshape = rows.shape
        r = rshape[0]
        if tuple(vshape) != (r, shape[1]):
            raise ValueError(f"values must have shape ({r}, {shape[1]}), got {tuple(vshape)}")
        self._rows = rows
        self._values = values
        self._shape = shape

    @classmethod
    def _trusted(cls, rows, values, shape):
        """Build without checks from kernel output (already valid); host rows are frozen."""
        self = object.__new__(cls)
        self._rows = rows if is_cuda_array(rows) else _frozen(rows)
        self._values = values
        self._shape = shape
        return self

    @property
    def rows(self):
        """The stored row indices (a read-only int64 array on the host)."""
        return self._rows

    @property
    def values(self):
        """The stored rows, ``(nnz_rows, m)``."""
        return self._values

    @property
    def shape(self):
        """``(n, m)``, the shape of the full matrix."""
        return self._shape

    @property
    def dtype(self):
        return shape_dtype(self._values)[1]

    @property
    def nnz_rows(self):
        """Number of stored rows."""
        return shape_dtype(self._rows)[0][0]

    def to_dense(self):
        """Return the full ``(n, m)`` matrix (zeros outside the stored rows).

        Returns
        -------
        ndarray
            A new host array; for CUDA data use ``copy_to_host`` on the parts first.
        """
        if is_cuda_array(self._values):
            raise TypeError("to_dense() builds a host array; copy rows and values to the host first")
        values = self._values
        if values.shape != (self._rows.shape[0], self._shape[1]):
            raise ValueError(f"values were reshaped to {values.shape} after construction; "
                             f"expected {(self._rows.shape[0], self._shape[1])}")
        out = np.zeros(self._shape, dtype=values.dtype)
        out[self._rows] = values
        return out

    def __repr__(self):
        return f"RowSparse(shape={self.shape}, nnz_rows={self.nnz_rows}, dtype={self.dtype})"


def _matrix_shape(shape):
    """``(n, m)`` as two Python ints >= 0; floats and bools are refused, not truncated."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a pair (n, m) of integers, got {shape!r}") from None
    if len(dims) != 2:
        raise ValueError(f"shape must be (n, m), got {dims}")
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"shape must be a pair (n, m) of integers, got {dims}")
        if d < 0:
            raise ValueError(f"shape must be non-negative, got {dims}")
    return (int(dims[0]), int(dims[1]))


def _frozen(a):
    """A read-only view of `a` whose flag cannot be turned back on (its base is read-only too)."""
    a.flags.writeable = False
    return a.view()


def _host_rows(rows, n):
    """Validated private copy of host row indices: int64, sorted, distinct, in ``[0, n)``, read-only."""
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        # An empty list arrives as float64: there is no row to be non-integer.
        return _frozen(np.empty(0, dtype=np.int64))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"rows must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise IndexError(f"rows must lie in [0, {n}), got {arr.max()}")
    # Copy first, check the copy: the caller's array may change at any time.
    own = np.array(arr, dtype=np.int64, copy=True)
    if own.min() < 0 or own.max() >= n:
        raise IndexError(f"rows must lie in [0, {n}), got values from {own.min()} to {own.max()}")
    if own.size > 1 and not (own[1:] > own[:-1]).all():
        raise ValueError("rows must be sorted in increasing order without repeats")
    return _frozen(own)
