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
* :func:`check_gradient` (NaN/Inf, and the rows of a row-sparse gradient:
  sorted, distinct, in range), :func:`check_indices` (explicit device
  selections), :func:`check_finite`, :func:`zeros_like`,
  :func:`cuda_available`;
* :class:`Workspace` -- device buffers reused between calls: every entry
  point of a training step takes ``workspace=`` (its outputs and scratch
  come from it, allocated once per shape and dtype), the forward kernels
  and :func:`topk_indices` also ``out=`` (checked by :func:`check_out`
  before any launch).

Inputs are numba device arrays or any object exposing
``__cuda_array_interface__`` (wrapped without a copy); outputs are numba
device arrays.  Kernels go to the stream the inputs come from (PyTorch's
current stream, the stream of a CuPy array's interface, a numba array's
stream) or to an explicit ``stream=``.  Data never goes to the host; one
small status array does, once per call, at its end: the NaN/Inf flags of
``g`` and ``x`` (inputs are only read, so raising then leaves everything the
caller owns unchanged) and, for per-example selection, the number of
distinct rows of ``dW`` (it sizes ``values``).  ``check_finite=False``
skips the flags and the wait.

All arithmetic stays in the input's dtype: scalars are cast on the host,
accumulators start from typed zeros, so float32 work never falls onto the
slow FP64 units.
"""
from .device import (Workspace, as_device, check_finite, check_out, copy_in, cuda_available, device_name, is_simulator,
                     require_cuda, stream_handle, synchronize, to_device, zeros, zeros_like)
from .linear import check_indices, linear_backward
from .optim import adagrad_step, adam_step, check_gradient, sgd_step
from .topk import topk_indices

__all__ = ["Workspace", "adagrad_step", "adam_step", "as_device", "check_finite", "check_gradient", "check_indices", "check_out", "copy_in",
           "cuda_available", "device_name", "is_simulator", "linear_backward", "require_cuda", "sgd_step",
           "stream_handle", "synchronize", "to_device", "topk_indices", "zeros", "zeros_like"]
