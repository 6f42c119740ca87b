"""The one training loop and what it shares between tasks.

- :mod:`~meprop_numba.training.config`: :class:`RunConfig` (the options
  every task shares, with their checks), :func:`build_optimizer` and the
  command-line value types.
- :mod:`~meprop_numba.training.loop`: :func:`train_step`, :func:`fit`,
  :func:`compare`, :func:`load_model`.
- :mod:`~meprop_numba.training.checkpoint`: atomic checkpoints and JSON,
  clear errors on unusable files.
- :mod:`~meprop_numba.training.report`: the epoch table, summary and
  speed-up lines.

Tasks plug into :func:`fit` through :class:`meprop_numba.tasks.base.Task`.
"""
from .checkpoint import CheckpointError, load_checkpoint
from .config import OPTIMIZERS, RunConfig, build_optimizer
from .loop import (TrainingDiverged, TrainingInterrupted, blas_threads, check_device, check_outputs, compare,
                   fit, load_model, run_generators, thread_limits, train_step,
                   warm_up)

__all__ = [
    "CheckpointError",
    "OPTIMIZERS",
    "RunConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "blas_threads",
    "build_optimizer",
    "check_device",
    "check_outputs",
    "compare",
    "fit",
    "load_checkpoint",
    "load_model",
    "run_generators",
    "thread_limits",
    "train_step",
    "warm_up",
]
