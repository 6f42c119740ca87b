"""The one training loop: every task trains through :func:`fit`.

:func:`train_step` is one step (forward and loss, divergence check,
backward, optimizer), timed into a dict; :func:`fit` runs the epochs of a
task plugin (:class:`meprop_numba.tasks.base.Task`): shuffled batches,
``evals_per_epoch`` dev evaluations, the test split at each new best dev
evaluation (``eval_test``), ``best.npz`` at the best dev evaluation and
``last.npz`` after every epoch, exact resume, a clean stop on divergence
(the loss or a gradient NaN/Inf, checked at every step) or Ctrl-C, and a
JSON-ready results dictionary. :func:`compare` trains the dense and the
meProp arm with the same seed and reports the speed-ups.
"""
import contextlib
import math
import os
import time

import numpy as np

from .. import get_num_threads, set_num_threads
from .checkpoint import (BEST, LAST, CheckpointError, checkpoint_path, clean_temporary_files,
                         load_checkpoint, save_checkpoint, write_json, _json_value)
from ..simplify import PruneSchedule, Simplifier, shrink_to
from .config import build_optimizer

__all__ = [
    "TIMERS",
    "TrainingDiverged",
    "TrainingInterrupted",
    "blas_threads",
    "check_device",
    "check_outputs",
    "compare",
    "fit",
    "load_model",
    "run_generators",
    "thread_limits",
    "train_step",
    "warm_up",
]

#: The per-step timers :func:`train_step` fills (seconds).
TIMERS = ("forward", "backward", "optimizer")


class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN or Inf; training stopped.

    Parameters
    ----------
    message : str
        What diverged, where.
    results : dict, optional
        As below.

    Attributes
    ----------
    results : dict or None
        The results up to the last completed epoch, with ``stopped`` set
        (None when raised by :func:`train_step` alone).

    Examples
    --------
    >>> from meprop_numba.training import TrainingDiverged
    >>> err = TrainingDiverged("loss is nan", {"stopped": "diverged"})
    >>> isinstance(err, FloatingPointError), err.results["stopped"]
    (True, 'diverged')
    """

    def __init__(self, message, results=None):
        super().__init__(message)
        self.results = results


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; the last checkpoint and the results JSON are intact.

    Construction never raises.

    Parameters
    ----------
    message : str
        Where the run stopped and which checkpoint is kept.
    results : dict
        As below.

    Attributes
    ----------
    results : dict
        The results up to the interruption, with ``stopped`` set.

    Examples
    --------
    >>> from meprop_numba.training import TrainingInterrupted
    >>> issubclass(TrainingInterrupted, KeyboardInterrupt)
    True
    """

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results


# ---------------------------------------------------------------- models

def load_model(task, checkpoint, which="best"):
    """Rebuild the model saved in a checkpoint (for evaluation or prediction).

    Parameters
    ----------
    task : meprop_numba.tasks.base.Task
        The plugin of the checkpoint's task.
    checkpoint : str or os.PathLike
        A checkpoint directory (its `which` file is read) or a ``.npz`` file.
    which : {'best', 'last'}, optional

    Returns
    -------
    model : meprop_numba.nn.Module
        The model, holding the saved parameters.
    config : RunConfig
        The task's config as saved.
    state : dict
        The whole checkpoint (``extra_state``, ``epoch``, ``history``...).

    Raises
    ------
    FileNotFoundError
        No checkpoint there.
    CheckpointError
        Unreadable, damaged or foreign checkpoint, or parameters that do not
        fit the model the config describes.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import load_model
    >>> model, config, state = load_model(TASKS["mlp"], "run/")  # doctest: +SKIP
    """
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = checkpoint_path(path, which)
    state = load_checkpoint(path, task=task.name)
    try:
        config = task.config_class.from_dict(state["config"]).validate()
        model = task.build_model(config, state["extra_state"], np.random.default_rng(0))
        _shrink_to_saved(model, state)
        model.load_state_dict(state["params"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint does not describe a usable "
                              f"{task.name} model ({exc})") from exc
    return model, config, state


def _shrink_to_saved(model, state):
    """A simplified model's checkpoint records its widths: shrink the fresh model to them."""
    saved = state.get("simplify")
    if saved is not None:
        shrink_to(model, saved["hidden_sizes"])


def _simplifier(config, model, optimizer, state):
    """The run's :class:`~meprop_numba.simplify.Simplifier` (None without ``simplify``)."""
    if config.simplify is None:
        return None
    try:
        simplifier = Simplifier(model, optimizer, config.simplify,
                                schedule=PruneSchedule(config.simplify_cycle,
                                                       config.simplify_parts))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"simplify: this task's model cannot be simplified ({exc})") from exc
    if state is not None and state.get("simplify") is not None:
        try:
            simplifier.load_state_dict(state["simplify"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's simplify state does not match the model "
                                  f"({exc})") from exc
    return simplifier


# ---------------------------------------------------------------- one step

def _all_finite(arrays):
    for a in arrays:
        if a is None:
            continue
        values = getattr(a, "values", a)
        if not isinstance(values, np.ndarray) and hasattr(values, "copy_to_host"):  # a numba device array
            values = values.copy_to_host()
        if isinstance(values, np.ndarray) and not np.isfinite(values).all():
            return False
    return True


# ---------------------------------------------------------------- the GPU

def check_device(task, config, data, parallel=None):
    """Refuse a ``device='cuda'`` run that cannot train on the GPU (nothing for ``'cpu'``).

    :func:`fit` calls it before it touches any file; the CLI before it
    prints anything.

    Parameters
    ----------
    task : meprop_numba.tasks.base.Task
        The task plugin.
    config : RunConfig
        The run's config.
    data : object
        The task's data (a throwaway model is built from it).
    parallel : meprop_numba.training.distributed.DataParallel, optional
        Refused with ``device='cuda'``.

    Returns
    -------
    None
        When the run can go ahead.

    Raises
    ------
    ValueError
        No usable GPU (nor the CUDA simulator); a model that cannot move to
        the GPU (the LSTM); error feedback or ``selection='balanced'`` (host
        only); ``simplify``; `parallel`.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import check_device
    >>> task = TASKS["mlp"]
    >>> config = task.config_class(hidden=16, k=4, max_train=100)
    >>> check_device(task, config, task.load_data(config)) is None  # device='cpu'
    True
    """
    if config.device != "cuda":
        return
    from .. import _cuda
    from ..nn import Linear

    try:
        _cuda.require_cuda()
    except RuntimeError as exc:
        raise ValueError(f"device='cuda': {exc}") from exc
    if parallel is not None:
        raise ValueError("device='cuda' trains in one process: it takes no parallel")
    if config.simplify is not None:
        raise ValueError("device='cuda': simplify prunes host (NumPy) models; train on the CPU")
    model = task.build_model(config, task.extra_state(data), np.random.default_rng(0))
    try:
        modules = model.movable_modules()
    except TypeError as exc:
        raise ValueError(f"device='cuda': the {task.name} task's model cannot run on the GPU ({exc})") from exc
    for m in modules:
        if isinstance(m, Linear) and m.k is not None and (m.selection == "balanced" or m.error_feedback
                                                         or m.score_memory):
            raise ValueError("device='cuda': error feedback and selection='balanced' run on the host only; "
                             "train with error_feedback=0 (--error-feedback 0) and another selection, "
                             "or on the CPU")


def _to_device(model, config):
    """Move `model` to the GPU for ``device='cuda'`` (each layer reusing its device buffers)."""
    if config.device == "cuda":
        model.to("cuda", reuse_buffers=True)
    return model


def _device_batch(batch, workspace):
    """A host minibatch with each NumPy array copied into `workspace`'s device buffers (the rest as it is).

    The copies go through pinned host buffers, also kept in `workspace`, so
    a step of a shape seen before allocates nothing.
    """
    from .. import _cuda

    if isinstance(batch, np.ndarray):
        return _cuda.copy_in(batch, 0, workspace, "batch")
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cuda.copy_in(a, 0, workspace, f"batch.{j}") if isinstance(a, np.ndarray) else a
                           for j, a in enumerate(batch))
    return batch


def train_step(model, optimizer, loss, batch, timers=None, reduce_grads=None):
    """One training step: forward and loss, divergence check, backward, update.

    Parameters
    ----------
    model : meprop_numba.nn.Module
        The model being trained.
    optimizer : meprop_numba.optim.Optimizer
        Over the model's parameters.
    loss : callable
        ``loss(model, batch) -> (loss, grad)``: the training forward pass
        and the loss (a task's :meth:`~meprop_numba.tasks.base.Task.loss`).
    batch : object
        What `loss` takes.
    timers : dict, optional
        Seconds are added to its ``"forward"``, ``"backward"`` and
        ``"optimizer"`` entries.
    reduce_grads : callable, optional
        Applied to ``model.grads()`` before the optimizer (data-parallel
        training averages them over the ranks:
        :meth:`~meprop_numba.training.distributed.DataParallel.reduce_grads`);
        its time counts as backward.

    Returns
    -------
    float
        The loss.

    Raises
    ------
    TrainingDiverged
        The loss is NaN or Inf, or the backward pass or the optimizer met a
        NaN/Inf gradient; nothing has been updated by this step.

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> from meprop_numba.nn import MLP, softmax_cross_entropy
    >>> from meprop_numba.training import train_step
    >>> model = MLP(8, 16, 3, k=4, rng=0)
    >>> opt = mp.Adam(model.params(), lr=1e-2)
    >>> def loss(model, batch):
    ...     x, y = batch
    ...     return softmax_cross_entropy(model.forward(x, train=True), y)
    >>> rng = np.random.default_rng(0)
    >>> batch = rng.random((5, 8), dtype=np.float32), rng.integers(0, 3, 5)
    >>> timers = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
    >>> value = train_step(model, opt, loss, batch, timers)
    >>> value > 0, all(t > 0 for t in timers.values())
    (True, True)
    """
    t0 = time.perf_counter()
    value, grad = loss(model, batch)
    value = float(value)
    t1 = time.perf_counter()
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss is {value}")
    try:
        model.backward(grad)
        grads = model.grads() if reduce_grads is None else reduce_grads(model.grads())
        t2 = time.perf_counter()
        optimizer.step(grads)
    except ValueError as exc:
        if ("NaN or Inf" in str(exc) or not _all_finite([grad])
                or not _all_finite(model.parameters())):
            raise TrainingDiverged(f"the gradient holds NaN or Inf ({exc})") from exc
        raise
    t3 = time.perf_counter()
    if timers is not None:
        timers["forward"] += t1 - t0
        timers["backward"] += t2 - t1
        timers["optimizer"] += t3 - t2
    return value


# ---------------------------------------------------------------- threads

def blas_threads(n):
    """Context manager limiting the BLAS thread pool to `n` threads.

    Never raises. Uses ``threadpoolctl`` when it is installed; otherwise (or with
    ``n=None``) it changes nothing and BLAS follows
    ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``. On a busy machine a
    multi-threaded BLAS is many times slower on the small products of a
    minibatch of 10, so ``--threads`` limits both pools.

    Parameters
    ----------
    n : int or None
        Thread limit; None changes nothing.

    Returns
    -------
    context manager
        Limits BLAS inside the ``with`` block.

    Examples
    --------
    >>> from meprop_numba.training import blas_threads
    >>> with blas_threads(1):
    ...     pass
    """
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _blas_thread_count():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"))
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return counts[0] if counts else None


@contextlib.contextmanager
def thread_limits(n):
    """Run the block with `n` kernel threads and `n` BLAS threads (None: unchanged).

    The kernel thread count is restored afterwards.

    Parameters
    ----------
    n : int or None
        Threads; None changes nothing.

    Yields
    ------
    None

    Raises
    ------
    ValueError
        If `n` exceeds ``NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import meprop_numba as mp
    >>> from meprop_numba.training import thread_limits
    >>> before = mp.get_num_threads()
    >>> with thread_limits(1):
    ...     inside = mp.get_num_threads()
    >>> inside, mp.get_num_threads() == before
    (1, True)
    """
    if n is None:
        yield
        return
    before = get_num_threads()
    set_num_threads(n)
    try:
        with blas_threads(n):
            yield
    finally:
        set_num_threads(before)


# ---------------------------------------------------------------- checks

def check_outputs(out=None, checkpoint_dir=None, *, resume=False, overwrite=False):
    """Check the output paths of a run before anything is trained.

    Parameters
    ----------
    out : str or os.PathLike, optional
        The results JSON: must not be a directory or a checkpoint file, and
        its directory must exist and be writable.
    checkpoint_dir : str or os.PathLike, optional
        Must not be a file; created if missing (its parent must be
        writable). Without `resume` or `overwrite` it must not hold another
        run's checkpoint.
    resume : bool, optional
        The run continues the checkpoint in `checkpoint_dir`.
    overwrite : bool, optional
        Allow a new run to replace the checkpoints in `checkpoint_dir`.

    Returns
    -------
    None
        When the paths can be used.

    Raises
    ------
    ValueError
        Naming the bad path.

    Examples
    --------
    >>> import tempfile
    >>> from meprop_numba.training import check_outputs
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         check_outputs(out=tmp)
    ...     except ValueError as exc:
    ...         print(str(exc).replace(tmp, "DIR"))
    out: DIR is a directory; give a file name such as DIR/results.json
    """
    if checkpoint_dir is not None:
        directory = os.fspath(checkpoint_dir)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"checkpoint_dir: {directory} is a file, not a directory")
        parent = directory if os.path.isdir(directory) else _existing_parent(directory)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"checkpoint_dir: cannot write into {parent}")
        if not resume and not overwrite:
            found = [name for name in (LAST, BEST) if os.path.exists(os.path.join(directory, name))]
            if found:
                raise ValueError(f"checkpoint_dir: {directory} already holds a run's checkpoint "
                                 f"({', '.join(found)}); resume it, pass overwrite "
                                 "(--overwrite) to replace it, or choose another directory")
    if out is not None:
        path = os.fspath(out)
        if os.path.isdir(path):
            raise ValueError(f"out: {path} is a directory; give a file name such as "
                             f"{os.path.join(path, 'results.json')}")
        if checkpoint_dir is not None and os.path.abspath(os.path.dirname(os.path.abspath(path))) \
                == os.path.abspath(checkpoint_dir) and os.path.basename(path) in (LAST, BEST):
            raise ValueError(f"out: {path} is the run's checkpoint file; choose another name")
        if path.endswith(".npz") and os.path.isfile(path):
            raise ValueError(f"out: {path} is an existing .npz file (a checkpoint?); "
                             "the results are JSON, choose another name")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ValueError(f"out: the directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK) or (
                os.path.exists(path) and not os.access(path, os.W_OK)):
            raise ValueError(f"out: cannot write {path} (permission denied)")


def _existing_parent(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint_dir: {path} is a file, not a directory")
    return path


def _check_resumable(config, saved, path):
    mine = config.to_dict()
    differ = sorted(key for key in mine if key not in config.RESUMABLE
                    and saved.get(key) != mine[key])
    if differ:
        details = ", ".join(f"{key}: checkpoint {saved.get(key)!r} vs {mine[key]!r}"
                            for key in differ)
        raise CheckpointError(f"{path}: trained with a different config ({details})")


# ---------------------------------------------------------------- the loop

def warm_up(task, config, data, extra_state):
    """Compile the kernels a run uses with one step on a throwaway model.

    Parameters
    ----------
    task : meprop_numba.tasks.base.Task
        The task plugin.
    config : RunConfig
        The run's config (the model is built as it says).
    data : object
        The task's data.
    extra_state : dict
        :meth:`~meprop_numba.tasks.base.Task.extra_state` of `data`.

    Returns
    -------
    float
        Seconds taken (mostly compilation on a first run).

    Raises
    ------
    TrainingDiverged, ValueError
        As :func:`train_step`, for a config that cannot train.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import warm_up
    >>> task = TASKS["mlp"]
    >>> config = task.config_class(hidden=16, k=4)
    >>> data = task.load_data(config)
    >>> warm_up(task, config, data, task.extra_state(data)) > 0
    True
    """
    start = time.perf_counter()
    rng = np.random.default_rng(12345)
    model = _to_device(task.build_model(config, extra_state, rng), config)
    optimizer = build_optimizer(config, model.parameters())
    batch = next(iter(task.batches(config, data, rng)))
    if config.device == "cuda":
        batch = _device_batch(batch, model.workspace)
    train_step(model, optimizer, task.loss, batch)
    return time.perf_counter() - start


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch", mininterval=0.5)


def run_generators(seed):
    """The two independent generators of a run: the model's and the data's.

    Never raises. The model generator draws the initial weights, dropout masks and random-k
    selections; the data generator shuffles (and draws word dropout).

    Parameters
    ----------
    seed : int
        The run's seed.

    Returns
    -------
    model_rng : numpy.random.Generator
        The model's generator.
    data_rng : numpy.random.Generator
        The data's generator.

    Examples
    --------
    >>> from meprop_numba.training import run_generators
    >>> a, b = run_generators(0)
    >>> a.random() != b.random()
    True
    """
    model_seq, data_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(model_seq), np.random.default_rng(data_seq)


def _eval_steps(n_steps, evals_per_epoch):
    """Steps (1-based) after which the dev split is evaluated; always includes the last."""
    return sorted({max(1, round(n_steps * (i + 1) / evals_per_epoch))
                   for i in range(evals_per_epoch)})


def _summarise(results, metric, timer_names):
    """Fill the best-dev and mean-timing fields; missing values are None (JSON null)."""
    best = results.get("best")
    results["best_epoch"] = best["epoch"] if best else None
    results[f"best_dev_{metric}"] = best[f"dev_{metric}"] if best else None
    results[f"test_{metric}_at_best_dev"] = best.get(f"test_{metric}") if best else None
    epochs = results["epochs"]
    for name in timer_names:
        key = f"{name}_s"
        values = [e[key] for e in epochs if e.get(key) is not None]
        results[f"mean_{key}"] = float(np.mean(values)) if values else None


def fit(task, config, data=None, *, checkpoint_dir=None, resume=False, overwrite=False,
        out=None, progress=True, log=None, parallel=None):
    """Train `task`'s model as `config` describes; the one training loop.

    Parameters
    ----------
    task : meprop_numba.tasks.base.Task
        The task plugin (e.g. ``meprop_numba.tasks.TASKS["mlp"]``).
    config : RunConfig
        The task's config (``task.config_class``).
    data : object, optional
        The task's data; default ``task.load_data(config)`` (on resume with
        the checkpoint's vocabularies).
    checkpoint_dir : str or os.PathLike, optional
        Writes ``last.npz`` after every epoch and ``best.npz`` at every new
        best dev evaluation (atomically).
    resume : bool, optional
        Continue the run in `checkpoint_dir` (its ``last.npz``); the config
        must match except for ``RunConfig.RESUMABLE`` fields (epochs,
        threads, data_dir, eval_test). Temporary files of a killed run are
        removed.
    overwrite : bool, optional
        Let a new run replace the checkpoints already in `checkpoint_dir`
        (refused otherwise).
    out : str or os.PathLike, optional
        Results JSON, rewritten atomically after every epoch and when the
        run stops (valid JSON always: missing values are ``null``).
    progress : bool, optional
        A progress bar per epoch (tqdm).
    log : callable, optional
        Called with one line of text per event (resume, epochs).
    parallel : meprop_numba.training.distributed.DataParallel, optional
        Train data-parallel: every rank calls :func:`fit` alike, takes its
        slice of each ``config.batch_size`` batch and averages the
        gradients with the others; rank 0 alone writes `checkpoint_dir`,
        `out` and the progress bar.

    Returns
    -------
    dict
        ``task``, ``config`` (with the ``lr`` used), ``data``, ``threads``,
        ``blas_threads``, ``warm_up_s``, ``epochs`` (per epoch:
        ``train_loss``, ``dev_<metric>``..., ``test_<metric>``... where
        evaluated, ``forward_s``, ``backward_s``, the task's component
        timers, ``optimizer_s``, ``train_s``, ``eval_s``), ``evaluations``
        (every dev evaluation), ``best`` and ``best_epoch``,
        ``best_dev_<metric>``, ``test_<metric>_at_best_dev``, ``mean_*_s``,
        ``stopped`` (None or why) and ``finished`` (all epochs done), and
        ``model`` (not JSON; dropped before writing).

    Raises
    ------
    ValueError
        Bad config or output path, a checkpoint directory holding another
        run (without `overwrite`), data the config cannot train on;
        ``device='cuda'`` without a usable GPU (or the CUDA simulator), or
        for a model or setting that runs on the host only (the LSTM, error
        feedback, ``selection='balanced'``, ``simplify``, ``parallel``).
    CheckpointError
        An unusable checkpoint or one of another config (`resume`).
    FileNotFoundError
        `resume` without a checkpoint.
    TrainingDiverged
        NaN/Inf loss or gradient; the last good checkpoints are kept.
    TrainingInterrupted
        Ctrl-C; the checkpoints are intact and `out` is written.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import fit
    >>> task = TASKS["mlp"]
    >>> config = task.config_class(hidden=32, k=4, epochs=2, batch_size=20, max_train=300)
    >>> results = fit(task, config, progress=False)
    >>> len(results["epochs"]), results["finished"], results["best_epoch"] in (1, 2)
    (2, True, True)
    """
    config.validate()
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    check_outputs(out, checkpoint_dir, resume=resume, overwrite=overwrite)
    state = None
    if resume:
        clean_temporary_files(checkpoint_dir)
        path = checkpoint_path(checkpoint_dir, "last")
        state = load_checkpoint(path, task=task.name)
        _check_resumable(config, state["config"], path)
    if data is None:
        data = task.load_data(config, None if state is None else state["extra_state"])
    extra_state = _json_value(task.extra_state(data))
    if state is not None and _json_value(state["extra_state"]) != extra_state:
        raise CheckpointError(f"{checkpoint_path(checkpoint_dir, 'last')}: trained on other "
                              "data (its vocabularies or shapes differ from this data's)")
    task.check_data(config, data)
    check_device(task, config, data, parallel)
    if parallel is not None:
        parallel.check(task, config, data)
    writer = parallel is None or parallel.is_writer
    if config.simplify is not None:  # refused before any earlier checkpoint is touched
        _simplifier(config, task.build_model(config, extra_state, np.random.default_rng(0)),
                    None, None)
    if checkpoint_dir is not None and writer:
        os.makedirs(checkpoint_dir, exist_ok=True)
        if not resume:
            clean_temporary_files(checkpoint_dir)
            for name in (LAST, BEST):
                if os.path.exists(os.path.join(checkpoint_dir, name)):
                    os.remove(os.path.join(checkpoint_dir, name))
    # Overflow on the way to a divergence is reported by the divergence stop,
    # not by NumPy warnings.
    with thread_limits(config.threads), np.errstate(over="ignore", invalid="ignore"):
        return _fit(task, config, data, extra_state, state, checkpoint_dir,
                    out if writer else None, progress and writer, log if writer else None, parallel)


def _fit(task, config, data, extra_state, state, checkpoint_dir, out, progress, log, parallel=None):
    metric = task.metric
    timer_names = (*TIMERS, *task.component_timers, "train", "eval")
    model_rng, data_rng = run_generators(config.seed)
    model = task.build_model(config, extra_state, model_rng)
    if state is not None:
        try:
            _shrink_to_saved(model, state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{checkpoint_path(checkpoint_dir, 'last')}: does not match "
                                  f"the model ({exc})") from exc
    if state is not None:  # the weights are loaded on the host, before the model moves
        try:
            model.load_state_dict(state["params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{checkpoint_path(checkpoint_dir, 'last')}: does not match "
                                  f"the model ({exc})") from exc
    _to_device(model, config)
    on_gpu = config.device == "cuda"
    optimizer = build_optimizer(config, model.parameters())
    simplifier = _simplifier(config, model, optimizer, state)
    results = {
        "task": task.name,
        "config": config.to_dict(),
        "label": task.label(config),
        "data": task.data_summary(data),
        "threads": get_num_threads(),
        "blas_threads": _blas_thread_count(),
        "warm_up_s": None,
        "epochs": [],
        "evaluations": [],
        "best": None,
        "stopped": None,
        "finished": False,
    }
    start_epoch = 0
    last_path = checkpoint_path(checkpoint_dir, "last") if checkpoint_dir else None
    best_path = checkpoint_path(checkpoint_dir, "best") if checkpoint_dir else None
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{last_path}: does not match the model ({exc})") from exc
        model_rng.bit_generator.state = state["rng"]["model"]
        data_rng.bit_generator.state = state["rng"]["data"]
        results["epochs"] = list(state["history"])
        results["evaluations"] = list(state.get("evaluations", []))
        results["best"] = state.get("best")
        start_epoch = int(state["epoch"])
        if log is not None:
            log(f"resuming from epoch {start_epoch} of {last_path}")
    if parallel is not None:
        parallel.attach(model)

    def save(path, epoch, **extra):
        if parallel is not None and not parallel.is_writer:
            return
        if simplifier is not None:
            extra["simplify"] = simplifier.state_dict()
        save_checkpoint(path, task=task.name, params=model.state_dict(),
                        config=config.to_dict(), epoch=epoch, extra_state=extra_state,
                        best=results["best"], **extra)

    def finish(stopped=None):
        results["stopped"] = stopped
        results["finished"] = stopped is None and len(results["epochs"]) >= config.epochs
        _summarise(results, metric, timer_names)
        if out is not None:
            write_json(out, {k: v for k, v in results.items() if k != "model"})

    if start_epoch >= config.epochs:
        finish()
        results["model"] = model.to("cpu") if on_gpu else model
        return results

    results["warm_up_s"] = warm_up(task, config, data, extra_state)
    n_steps = task.n_batches(config, data)
    eval_after = set(_eval_steps(n_steps, config.evals_per_epoch))
    label = task.label(config)
    epoch, step = start_epoch + 1, 0

    def evaluate(epoch, step):
        t0 = time.perf_counter()
        row = {"epoch": epoch, "step": step}
        row.update({f"dev_{k}": v for k, v in task.evaluate(model, data, "dev").items()})
        score = row.get(f"dev_{metric}")
        best = results["best"]
        improved = score is not None and (best is None or best[f"dev_{metric}"] is None
                                          or score > best[f"dev_{metric}"])
        if improved:
            if config.eval_test:
                row.update({f"test_{k}": v for k, v in task.evaluate(model, data, "test").items()})
            results["best"] = dict(row)
            if best_path:
                save(best_path, epoch)
        row["eval_s"] = time.perf_counter() - t0
        results["evaluations"].append(row)
        return row

    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            timers = dict.fromkeys(TIMERS, 0.0)
            components = task.component_seconds(model)
            loss_sum, eval_s, row = 0.0, 0.0, None
            bar = _progress_bar(n_steps, f"{label} epoch {epoch}/{config.epochs}", progress)
            epoch_start = time.perf_counter()
            task.start_epoch(model)
            for step, batch in enumerate(task.batches(config, data, data_rng), start=1):
                if parallel is not None:
                    batch = parallel.shard(batch)
                if on_gpu:
                    batch = _device_batch(batch, model.workspace)
                loss_sum += train_step(model, optimizer, task.loss, batch, timers,
                                       None if parallel is None else parallel.reduce_grads)
                if simplifier is not None:
                    simplifier.after_step(epoch - 1, step - 1, n_steps)
                if bar is not None:
                    bar.update(1)
                if step in eval_after:
                    row = evaluate(epoch, step)
                    eval_s += row["eval_s"]
            train_s = time.perf_counter() - epoch_start - eval_s
            if bar is not None:
                bar.close()
            if not _all_finite(model.parameters()):
                raise TrainingDiverged("a parameter became NaN or Inf")
            after = task.component_seconds(model)
            if parallel is not None:  # every rank's slices: the global batches' mean loss
                loss_sum = parallel.average(loss_sum, "the epoch's training loss")
            record = {"epoch": epoch, "train_loss": loss_sum / max(step, 1)}
            record.update({k: v for k, v in row.items() if k not in ("epoch", "step", "eval_s")})
            record.update({f"{name}_s": timers[name] for name in TIMERS})
            record.update({f"{name}_s": after[name] - components[name]
                           for name in task.component_timers})
            record["train_s"] = train_s
            if simplifier is not None:
                record["hidden_sizes"] = simplifier.hidden_sizes
            record["eval_s"] = eval_s
            results["epochs"].append(record)
            _summarise(results, metric, timer_names)
            if last_path:
                save(last_path, epoch, optimizer=optimizer.state_dict(),
                     rng={"model": model_rng.bit_generator.state,
                          "data": data_rng.bit_generator.state},
                     history=results["epochs"], evaluations=results["evaluations"],
                     finished=epoch >= config.epochs)
            if out is not None:
                finish()
            if log is not None:
                log(f"{label} epoch {epoch}/{config.epochs}: loss {record['train_loss']:.4f}, "
                    f"dev {metric} {_pct(record.get(f'dev_{metric}'))}")
    except TrainingDiverged as exc:
        if bar is not None:
            bar.close()
        kept = (f"the last good checkpoint (epoch {len(results['epochs'])}) is kept at {last_path}"
                if last_path and os.path.exists(last_path) else "no checkpoint was written")
        message = (f"training diverged: {exc} at epoch {epoch}, step {step}/{n_steps}; "
                   f"stopped ({kept}). Try a smaller --lr.")
        finish(message)
        raise TrainingDiverged(message, results) from exc
    except KeyboardInterrupt as exc:
        if bar is not None:
            bar.close()
        kept = (f"last checkpoint (epoch {len(results['epochs'])}) at {last_path}"
                if last_path and os.path.exists(last_path) else "no checkpoint written")
        message = f"interrupted at epoch {epoch}, step {step}/{n_steps}; {kept}"
        finish(message)
        raise TrainingInterrupted(message, results) from exc
    finish()
    results["model"] = model.to("cpu") if on_gpu else model  # a GPU run's weights come back to the host
    return results


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def compare(task, config, data=None, **kwargs):
    """Train the dense and the meProp arm with the same seed; report speed-ups.

    Parameters
    ----------
    task : meprop_numba.tasks.base.Task
        The task plugin.
    config : RunConfig
        The meProp arm; the dense arm is ``task.dense_config(config)``.
    data : object, optional
        Loaded once and shared by both arms (default ``task.load_data``).
    **kwargs
        Passed to :func:`fit` (``progress``, ``log``); not checkpoints.

    Returns
    -------
    dict
        ``dense`` and ``meprop`` results and ``speedup``: dense time over
        meProp time (per-epoch means) for ``forward``, ``backward``, the
        task's component timers, ``optimizer`` and the whole step
        (``train``); None where a time is missing or zero.

    Raises
    ------
    ValueError
        If the config is already dense, or as :func:`fit`.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import compare
    >>> task = TASKS["mlp"]
    >>> config = task.config_class(hidden=32, k=4, epochs=1, batch_size=20, max_train=300)
    >>> report = compare(task, config, progress=False)
    >>> sorted(report["speedup"])
    ['backward', 'backward_linear', 'forward', 'optimizer', 'train']
    """
    dense_config = task.dense_config(config)
    if dense_config == config:
        raise ValueError("compare needs a meProp config (k set); it trains the dense arm itself")
    if data is None:
        data = task.load_data(config)
    dense = fit(task, dense_config, data, **kwargs)
    meprop = fit(task, config, data, **kwargs)
    speedup = {}
    for name in (*TIMERS, *task.component_timers, "train"):
        mine, theirs = meprop.get(f"mean_{name}_s"), dense.get(f"mean_{name}_s")
        speedup[name] = theirs / mine if mine and theirs is not None else None
    return {"dense": dense, "meprop": meprop, "speedup": speedup}
