"""meProp for PyTorch models (``pip install "meprop_numba[torch]"``).

:class:`MePropLinear` is a drop-in ``torch.nn.Linear`` whose backward runs
this package's sparse kernels; :func:`convert` swaps the ``nn.Linear``
modules of an existing model; :mod:`meprop_numba.torch.optim` holds lazy
optimizers that update only the rows of row-sparse gradients;
:class:`MePropLSTM` is a meProp ``torch.nn.LSTM``;
:mod:`meprop_numba.torch.distributed` trains them data-parallel.

>>> import torch
>>> from meprop_numba.torch import convert, optim
>>> model = convert(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)), k=2)
>>> opt = optim.Adam(model.parameters())
"""
try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        'meprop_numba.torch needs PyTorch: pip install "meprop_numba[torch]"'
    ) from err

from . import optim
from .linear import SELECTIONS, MePropLinear, convert
from .lstm import MePropLSTM

__all__ = ["MePropLSTM", "MePropLinear", "SELECTIONS", "convert", "optim"]
