"""Run options shared by every task, and their checks.

A task's config is a dataclass subclassing :class:`RunConfig`: it adds its
own fields (model shape, data options), may give a shared field another
default (the POS tagger trains on one sentence a step: ``batch_size: int =
1``) and sets the default learning rate of each optimizer in
``DEFAULT_LR``. :meth:`RunConfig.validate` checks the shared fields, then
calls the task's :meth:`RunConfig.check`.
"""
import dataclasses
import math
import numbers
from typing import ClassVar

import numpy as np

from ..optim import SGD, AdaGrad, Adam

__all__ = ["OPTIMIZERS", "RunConfig", "build_optimizer", "check_k", "check_positive_int", "k_arg",
           "k_list_arg", "positive_float_arg", "positive_int_arg",
           "probability_arg"]

#: Optimizer name -> class.
OPTIMIZERS = {"adam": Adam, "adagrad": AdaGrad, "sgd": SGD}


def check_positive_int(name, value, *, allow_none=False, minimum=1):
    """Raise ValueError unless `value` is an integer >= `minimum` (or None if allowed).

    Parameters
    ----------
    name : str
        The field named in the message.
    value : object
        The value to check.
    allow_none : bool, optional
        Accept None.
    minimum : int, optional
        The smallest accepted value (default 1).

    Returns
    -------
    None
        When `value` is acceptable.

    Raises
    ------
    ValueError
        If `value` is not an integer (bools refused) or is below `minimum`.

    Examples
    --------
    >>> from meprop_numba.training.config import check_positive_int
    >>> check_positive_int("epochs", 3)
    >>> check_positive_int("epochs", 0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got 0
    """
    if value is None and allow_none:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass
class RunConfig:
    """Options of a training run that every task shares.

    Parameters
    ----------
    data_dir : str or None
        Where the task's data is read from (any directory).
    optimizer : {'adam', 'adagrad', 'sgd'}
    lr : float or None
        Learning rate; None takes the task's default for the optimizer
        (``DEFAULT_LR``). :attr:`learning_rate` is the rate used, and the
        results record it.
    lazy : bool
        Lazy (row-sparse) optimizer updates; False updates every row as a
        dense optimizer would.
    epochs : int
        Passes over the training data.
    batch_size : int
        Examples (sentences) per training step.
    seed : int
        Seeds initialisation, shuffling, dropout and random selections.
    dtype : {'float32', 'float64'}
    threads : int or None
        Threads of the compiled kernels and of BLAS (None leaves both).
    device : {'cpu', 'cuda'}
    evals_per_epoch : int
        Dev evaluations per epoch (at evenly spaced steps; the last one at
        the epoch's end). Checkpoints are written at the epoch's end.
    eval_test : bool
        Also evaluate the test split (reported at the best-dev evaluation).

    Raises
    ------
    ValueError
        From :meth:`validate`, naming the bad field.

    Examples
    --------
    >>> from meprop_numba.training import RunConfig
    >>> config = RunConfig(optimizer="adagrad").validate()
    >>> config.learning_rate, config.batch_size
    (0.1, 10)
    """

    #: Default learning rate of each optimizer (a task may override it).
    DEFAULT_LR: ClassVar[dict] = {"adam": 1e-3, "adagrad": 0.1, "sgd": 0.1}

    data_dir: str = None
    optimizer: str = "adam"
    lr: float = None
    lazy: bool = True
    epochs: int = 5
    batch_size: int = 10
    seed: int = 0
    dtype: str = "float32"
    threads: int = None
    device: str = "cpu"
    evals_per_epoch: int = 1
    eval_test: bool = False

    #: Fields that may differ between a checkpoint and the run resuming it.
    RESUMABLE: ClassVar[frozenset] = frozenset({"epochs", "threads", "data_dir", "eval_test"})

    def validate(self):
        """Check every field (shared ones, then :meth:`check`); return self.

        Returns
        -------
        RunConfig
            `self`, so that calls chain.

        Raises
        ------
        ValueError
            Naming the first bad field.
        """
        for name in ("epochs", "batch_size", "evals_per_epoch"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("threads", self.threads, allow_none=True)
        if self.threads is not None:
            import numba

            limit = numba.config.NUMBA_NUM_THREADS
            if self.threads > limit:
                raise ValueError(f"threads must be at most {limit} on this machine "
                                 f"(NUMBA_NUM_THREADS), got {self.threads}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                               or not math.isfinite(lr) or lr <= 0):
            raise ValueError(f"lr must be a finite positive number, got {lr!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        self.check()
        return self

    def check(self):
        """Checks of the task's own fields (overridden by each task)."""

    @property
    def learning_rate(self):
        """`lr`, or the task's default for the optimizer."""
        return float(self.lr) if self.lr is not None else float(self.DEFAULT_LR[self.optimizer])

    def to_dict(self):
        """The fields as JSON values (tuples become lists), with ``lr`` the rate used.

        Returns
        -------
        dict
            JSON values, as stored in results and checkpoints.
        """
        d = dataclasses.asdict(self)
        d["lr"] = self.learning_rate if self.optimizer in OPTIMIZERS else self.lr
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError.

        Parameters
        ----------
        d : dict
            As :meth:`to_dict` returns it.

        Returns
        -------
        RunConfig
            An instance of this class.

        Raises
        ------
        ValueError
            A key that is not a field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config fields {unknown} for {cls.__name__}")
        return cls(**d)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def build_optimizer(config, params):
    """The optimizer `config` names, over `params`, at :attr:`RunConfig.learning_rate`.

    Parameters
    ----------
    config : RunConfig
        Gives ``optimizer``, the learning rate and ``lazy``.
    params : list of ndarray
        The parameters it updates in place (``model.parameters()``).

    Returns
    -------
    SGD, Adam or AdaGrad
        The optimizer.

    Raises
    ------
    KeyError
        Unknown ``config.optimizer`` (call ``config.validate()`` first).

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.training import RunConfig, build_optimizer
    >>> opt = build_optimizer(RunConfig(optimizer="sgd"), [np.zeros(3, np.float32)])
    >>> type(opt).__name__, opt.lr
    ('SGD', 0.1)
    """
    return OPTIMIZERS[config.optimizer](params, lr=config.learning_rate, lazy=config.lazy)


# ---------------------------------------------------------------- command-line value types
# argparse ``type=`` functions shared by every task's options; a bad value
# becomes argparse's usage error (exit status 2) naming the option.

def positive_int_arg(text):
    """``type=`` for an integer >= 1.

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    int
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        For a bad value (argparse turns it into a usage error, exit status 2).

    Examples
    --------
    >>> from meprop_numba.training.config import positive_int_arg
    >>> positive_int_arg("3")
    3
        """
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def k_arg(text):
    """``type=`` for a meProp k: a positive integer, or ``none``/``dense`` (None).

    ``0`` is refused (it used to mean dense silently).

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    int or None
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        For a bad value (argparse turns it into a usage error, exit status 2).

    Examples
    --------
    >>> from meprop_numba.training.config import k_arg
    >>> k_arg("20"), k_arg("none")
    (20, None)
        """
    if text.strip().lower() in ("none", "dense"):
        return None
    import argparse

    try:
        return positive_int_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"k must be a positive integer or 'none' (dense), got {text!r}") from None


def k_list_arg(text):
    """``type=`` for k per layer: ``20`` (every layer) or ``20,40`` (one per layer).

    Returns an int or None for one value, a tuple for several.

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    int, None or tuple
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        For a bad value (argparse turns it into a usage error, exit status 2).

    Examples
    --------
    >>> from meprop_numba.training.config import k_list_arg
    >>> k_list_arg("20"), k_list_arg("20,none")
    (20, (20, None))
        """
    parts = text.split(",")
    if len(parts) == 1:
        return k_arg(text)
    return tuple(k_arg(p) for p in parts)


def positive_float_arg(text):
    """``type=`` for a finite number > 0.

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    float
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        For a bad value (argparse turns it into a usage error, exit status 2).

    Examples
    --------
    >>> from meprop_numba.training.config import positive_float_arg
    >>> positive_float_arg("1e-3")
    0.001
        """
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def probability_arg(text):
    """``type=`` for a probability in [0, 1).

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    float
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        For a bad value (argparse turns it into a usage error, exit status 2).

    Examples
    --------
    >>> from meprop_numba.training.config import probability_arg
    >>> probability_arg("0.1")
    0.1
        """
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def check_k(name, k, width, *, layers=None):
    """Check a meProp k against a layer `width`: None, an int in [1, width], or per layer.

    Parameters
    ----------
    name : str
        The field named in messages.
    k : int, None or sequence
        A sequence (one entry per layer, None entries dense) only when
        `layers` is given.
    width : int
        The largest k (``k == width`` is exactly dense).
    layers : int, optional
        Number of layers a sequence must cover.

    Returns
    -------
    None
        When `k` is acceptable.

    Raises
    ------
    ValueError
        A k below 1 or above `width`, or a sequence of the wrong length.

    Examples
    --------
    >>> from meprop_numba.training.config import check_k
    >>> check_k("k", 600, 500)
    Traceback (most recent call last):
    ...
    ValueError: k must be at most 500 (the layer width), got 600
    """
    if isinstance(k, (list, tuple)):
        if layers is None:
            raise ValueError(f"{name} must be one integer or None, got {k!r}")
        if len(k) != layers:
            raise ValueError(f"{name} lists {len(k)} values for {layers} hidden layers")
        for entry in k:
            check_k(name, entry, width)
        return
    check_positive_int(name, k, allow_none=True)
    if k is not None and k > width:
        raise ValueError(f"{name} must be at most {width} (the layer width), got {k}")
