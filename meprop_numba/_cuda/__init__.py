"""CUDA kernels (``@cuda.jit``) for meProp: top-k, sparse backward, sparse updates.

GPU twins of the CPU kernels in :mod:`meprop_numba._cpu`, one module per
algorithm under the same names: :mod:`.topk`, :mod:`.linear`, :mod:`.optim`.
:mod:`.device` is the only module of the package that imports
``numba.cuda``, so a switch to another CUDA back end touches one file.  The
public functions (:func:`meprop_numba.topk_indices`,
:func:`meprop_numba.linear_backward` and the optimizers) validate shapes,
dtypes and ``k`` and then call the entry points below when given CUDA
arrays:

* :func:`topk_indices` -- row-wise or unified top-k by magnitude;
* :func:`linear_backward` -- ``(dx, rows, values, db)`` of the sparse (or,
  with ``k=None``, dense) backward of a linear layer;
* :func:`sgd_step`, :func:`adam_step`, :func:`adagrad_step` -- in-place
  updates from a dense gradient or a row-sparse ``(rows, values)`` pair,
  lazy (only the listed rows) or dense;
* :func:`zeros_like`, :func:`check_finite`, :func:`cuda_available`.

Inputs are numba device arrays or any object exposing
``__cuda_array_interface__`` (wrapped without a copy); outputs are numba
device arrays.  Data never goes to the host; one small status array does,
once per call: the non-finite flag of ``g`` (the error must be raised
before anything the caller owns changes) and, for per-example selection,
the number of distinct rows of ``dW`` (it sizes ``values``).

All arithmetic stays in the input's dtype: scalars are cast on the host,
accumulators start from typed zeros, so float32 work never falls onto the
slow FP64 units.
"""
from .device import (as_device, check_finite, cuda_available, device_name, is_simulator, require_cuda,
                     synchronize, to_device, zeros, zeros_like)
from .linear import linear_backward
from .optim import adagrad_step, adam_step, sgd_step
from .topk import topk_indices

__all__ = ["adagrad_step", "adam_step", "as_device", "check_finite", "cuda_available", "device_name",
           "is_simulator", "linear_backward", "require_cuda", "sgd_step", "synchronize", "to_device",
           "topk_indices", "zeros", "zeros_like"]
