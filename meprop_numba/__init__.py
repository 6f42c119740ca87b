"""meprop_numba: sparsified back propagation (meProp) with Numba kernels.

In back propagation meProp keeps only the k largest-magnitude entries of
each matrix product's output gradient, so only k rows of each weight matrix
are read and updated.  This package provides the compiled kernels (top-k
selection, the sparse linear backward, sparse optimizer updates) for CPU
(``@njit``) and NVIDIA GPUs (``@cuda.jit``), and the training primitives
built on them.
"""
from ._config import get_num_threads, set_num_threads
from .backward import linear_backward
from .optim import SGD, AdaGrad, Adam
from .sparse import RowSparse
from .topk import balanced_indices, random_indices, topk_indices

__version__ = "0.1.0"

__all__ = [
    "AdaGrad",
    "Adam",
    "RowSparse",
    "SGD",
    "balanced_indices",
    "get_num_threads",
    "linear_backward",
    "random_indices",
    "set_num_threads",
    "topk_indices",
]
