"""The package's compiled kernels as the PyTorch layer reaches them (one import place).

Everything in :mod:`meprop_numba.torch` that calls a kernel goes through
these names, so a move of a kernel module changes only this file.
"""
from .._cpu import optim as optim_kernels  # noqa: F401  (the in-place optimizer updates)
from .._validation import finite, integer_k, positive_float, unit_interval  # noqa: F401
from ..backward import linear_backward  # noqa: F401
from ..backward import _linear_backward as linear_backward_selected  # noqa: F401
