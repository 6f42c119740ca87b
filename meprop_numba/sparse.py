"""Row-sparse matrices: the weight gradients meProp produces."""
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
    values : ndarray, shape (r, shape[1])
        The stored rows, float32 or float64.
    shape : tuple of int
        ``(n, m)``, the shape of the full matrix.

    Attributes
    ----------
    rows : ndarray of int64, shape (r,)
    values : ndarray, shape (r, m)
    shape : tuple of int
    dtype : numpy.dtype
        The dtype of `values`.

    Raises
    ------
    TypeError
        If `rows` is not integer or `values` not float32/float64.
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

    __slots__ = ("rows", "values", "shape")

    def __init__(self, rows, values, shape):
        if len(shape) != 2:
            raise ValueError(f"shape must be (n, m), got {tuple(shape)}")
        shape = (int(shape[0]), int(shape[1]))
        if not is_cuda_array(values):
            values = np.asarray(values)
        if not is_cuda_array(rows):
            rows = np.asarray(rows)
        rshape, rdt = shape_dtype(rows)
        if len(rshape) != 1:
            raise ValueError(f"rows must be 1-D, got shape {tuple(rshape)}")
        r = rshape[0]
        if rdt.kind not in "iu":
            raise TypeError(f"rows must have an integer dtype, got {rdt}")
        vshape, vdt = shape_dtype(values)
        if vdt not in (np.float32, np.float64):
            raise TypeError(f"values must have dtype float32 or float64, got {vdt}")
        if tuple(vshape) != (r, shape[1]):
            raise ValueError(f"values must have shape ({r}, {shape[1]}), got {tuple(vshape)}")
        if not is_cuda_array(rows) and r:
            if rows[0] < 0 or rows[-1] >= shape[0]:
                raise IndexError(f"rows must lie in [0, {shape[0]}), got values from {rows.min()} to {rows.max()}")
            if r > 1 and not (np.diff(rows) > 0).all():
                raise ValueError("rows must be sorted in increasing order without repeats")
            rows = rows.astype(np.int64, copy=False)
        self.rows = rows
        self.values = values
        self.shape = shape

    @classmethod
    def _trusted(cls, rows, values, shape):
        """Build without checks (kernel output, already valid)."""
        self = object.__new__(cls)
        self.rows = rows
        self.values = values
        self.shape = shape
        return self

    @property
    def dtype(self):
        return shape_dtype(self.values)[1]

    @property
    def nnz_rows(self):
        """Number of stored rows."""
        return shape_dtype(self.rows)[0][0]

    def to_dense(self):
        """Return the full ``(n, m)`` matrix (zeros outside the stored rows).

        Returns
        -------
        ndarray
            A new host array; for CUDA data use ``copy_to_host`` on the parts first.
        """
        if is_cuda_array(self.values):
            raise TypeError("to_dense() builds a host array; copy rows and values to the host first")
        out = np.zeros(self.shape, dtype=self.values.dtype)
        out[self.rows] = self.values
        return out

    def __repr__(self):
        return f"RowSparse(shape={self.shape}, nnz_rows={self.nnz_rows}, dtype={self.dtype})"
