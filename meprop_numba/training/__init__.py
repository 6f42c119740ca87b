"""The one training loop and what it shares between tasks.

- :mod:`~meprop_numba.training.config`: :class:`RunConfig`, the options
  every task shares, and :func:`build_optimizer`.
"""
from .config import OPTIMIZERS, RunConfig, build_optimizer

__all__ = ["OPTIMIZERS", "RunConfig", "build_optimizer"]
