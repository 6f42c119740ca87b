"""Training loop for the MLP: minibatches, timing, evaluation, checkpoints, resume.

:func:`train` runs a :class:`TrainConfig` on a
:class:`~meprop_numba.data.Dataset` and returns a JSON-ready results
dictionary. Every epoch it records the time spent in the forward pass
(including the loss), the backward pass (and, within it, the linear
layers' backward, the figure the meProp paper reports) and the optimizer,
then the dev and test accuracy. After each epoch it writes a checkpoint
(model, optimizer and random-generator state, and the history so far)
atomically, so :func:`train` with ``resume=True`` continues a run and, on
CPU, ends with exactly the weights of a run that was never interrupted.
"""
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time

import numpy as np

from . import AdaGrad, Adam, SGD, get_num_threads, set_num_threads
from .nn import MLP, softmax_cross_entropy
from .nn.layers import SELECTIONS as MODES

__all__ = [
    "CHECKPOINT_NAME",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "build_optimizer",
    "compare",
    "load_checkpoint",
    "train",
]

#: Optimizer name -> (class, default learning rate). The AdaGrad rate is
#: the paper's MNIST setting.
OPTIMIZERS = {"adam": (Adam, 1e-3), "adagrad": (AdaGrad, 0.1), "sgd": (SGD, 0.1)}
#: File name of the checkpoint that :func:`train` writes in its ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.npz"
_EVAL_BATCH = 1000

# Fields that may differ between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = {"epochs", "threads", "data_dir"}


class TrainingDiverged(FloatingPointError):
    """Raised when the training loss becomes NaN or Inf.

    Attributes
    ----------
    results : dict
        The results up to the last completed epoch, with ``stopped`` set.

    Examples
    --------
    >>> from meprop_numba.train import TrainingDiverged
    >>> err = TrainingDiverged("loss is nan at epoch 2, step 17", {"stopped": "diverged"})
    >>> isinstance(err, FloatingPointError), err.results["stopped"]
    (True, 'diverged')
    """

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of an MLP training run.

    Parameters
    ----------
    dataset : str
        Name or directory given to :func:`~meprop_numba.data.load_dataset`
        (recorded so that a checkpoint says what it was trained on).
    data_dir : str or None
        Where the dataset files are looked for.
    hidden : int
        Hidden-layer width (the paper: 500).
    layers : int
        Number of hidden layers (the paper: 2).
    k : int or None
        meProp k of the hidden layers; None trains with dense back
        propagation.
    mode : {'topk', 'unified', 'random'}
        Per-example top-k, minibatch-shared top-k, or random-k.
    optimizer : {'adam', 'adagrad', 'sgd'}
    lr : float or None
        Learning rate; None takes the optimizer's default in
        :data:`OPTIMIZERS`.
    lazy : bool
        Sparse (lazy) optimizer updates of row-sparse gradients; False
        updates every row as a dense optimizer would.
    epochs : int
    batch_size : int
    dropout : float
        Dropout probability after each hidden layer.
    seed : int
        Seeds initialisation, shuffling, dropout and random-k.
    dtype : {'float32', 'float64'}
    threads : int or None
        Threads for the compiled kernels and, when ``threadpoolctl`` is
        installed, for BLAS (None leaves both as they are).
    device : {'cpu', 'cuda'}
    output_k : int or None
        meProp k of the output layer; None (the paper) keeps it dense.

    Raises
    ------
    ValueError
        From :meth:`validate` (called by :func:`train`), naming a bad field.

    Examples
    --------
    >>> from meprop_numba.train import TrainConfig
    >>> config = TrainConfig(k=20, mode="unified", batch_size=50, epochs=10)
    >>> config.validate().label(), config.learning_rate
    ('meProp k=20 unified', 0.001)
    >>> TrainConfig(k=None).label()
    'dense'
    """

    dataset: str = "embedded"
    data_dir: str = None
    hidden: int = 500
    layers: int = 2
    k: int = 20
    mode: str = "topk"
    optimizer: str = "adam"
    lr: float = None
    lazy: bool = True
    epochs: int = 5
    batch_size: int = 10
    dropout: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    threads: int = None
    device: str = "cpu"
    output_k: int = None

    def validate(self):
        """Check every field; raise ValueError/TypeError naming the bad one."""
        def positive_int(name, value, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_int("hidden", self.hidden)
        positive_int("layers", self.layers)
        positive_int("k", self.k, allow_none=True)
        positive_int("output_k", self.output_k, allow_none=True)
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("threads", self.threads, allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_lr(self.lr)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        return self

    @property
    def learning_rate(self):
        """`lr`, or the optimizer's default."""
        return float(self.lr) if self.lr is not None else OPTIMIZERS[self.optimizer][1]

    def label(self):
        """Short description, e.g. ``'meProp k=20 topk'`` or ``'dense'``."""
        return "dense" if self.k is None or self.k >= self.hidden else f"meProp k={self.k} {self.mode}"


def _check_lr(lr):
    """Raise ``ValueError`` unless `lr` is None (the optimizer's default) or a finite positive number."""
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")


def _seeds(seed):
    """Independent generators for the model (init, dropout, random-k) and the shuffling."""
    model_seq, data_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(model_seq), np.random.default_rng(data_seq)


def build_model(config, n_features, n_classes, rng=None):
    """The :class:`~meprop_numba.nn.MLP` a config describes.

    Parameters
    ----------
    config : TrainConfig
        The run's settings (`hidden`, `layers`, `k`, `mode`, `dropout`,
        `output_k`, `dtype`, `seed`).
    n_features, n_classes : int
        Input width and number of classes.
    rng : numpy.random.Generator, optional
        Default: the model generator derived from ``config.seed``.

    Returns
    -------
    MLP
        A freshly initialised model.

    Raises
    ------
    ValueError, TypeError
        From :class:`~meprop_numba.nn.MLP` for invalid sizes, `k` or dtype.

    Examples
    --------
    >>> from meprop_numba.train import TrainConfig, build_model
    >>> model = build_model(TrainConfig(hidden=64, k=8), 784, 10)
    >>> [w.shape for w in model.params()[::2]]
    [(64, 784), (64, 64), (10, 64)]
    """
    if rng is None:
        rng = _seeds(config.seed)[0]
    return MLP(n_features, config.hidden, n_classes, layers=config.layers, k=config.k,
               selection=config.mode, dropout=config.dropout, output_k=config.output_k,
               dtype=np.dtype(config.dtype), rng=rng)


def build_optimizer(config, params):
    """The optimizer a config describes, over `params`.

    Parameters
    ----------
    config : TrainConfig
        Uses `optimizer`, :attr:`~TrainConfig.learning_rate` and `lazy`.
    params : list of ndarray
        The parameters to update in place (e.g. ``model.params()``).

    Returns
    -------
    SGD, Adam or AdaGrad
        The optimizer.

    Raises
    ------
    KeyError
        If ``config.optimizer`` is not a key of :data:`OPTIMIZERS`.
    TypeError, ValueError
        From the optimizer, for invalid parameters or learning rate.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.train import TrainConfig, build_optimizer
    >>> opt = build_optimizer(TrainConfig(optimizer="adagrad"), [np.zeros((4, 3), np.float32)])
    >>> type(opt).__name__, opt.lazy
    ('AdaGrad', True)
    """
    cls = OPTIMIZERS[config.optimizer][0]
    return cls(params, lr=config.learning_rate, lazy=config.lazy)


# ---------------------------------------------------------------- checkpoints

def _flatten(obj, prefix, arrays):
    """Split a nested structure of dicts/lists/arrays/scalars into JSON plus arrays."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, prefix, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, prefix, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _atomic_write(path, write):
    """Write through ``write(file_object)`` to a temporary file, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_checkpoint(path, state):
    arrays = {}
    meta = _flatten(state, "", arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path):
    """Read a checkpoint written by :func:`train`.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file, or the directory holding ``checkpoint.npz``.

    Returns
    -------
    dict
        ``config`` (dict), ``epoch`` (completed epochs), ``params`` (list of
        arrays), ``optimizer`` (state dict), ``rng`` (generator states) and
        ``history`` (per-epoch results).

    Raises
    ------
    FileNotFoundError
        If there is no checkpoint at `path`.

    Examples
    --------
    >>> import tempfile
    >>> from meprop_numba.train import TrainConfig, load_checkpoint, train
    >>> from meprop_numba.data import Dataset, load_dataset
    >>> full = load_dataset("embedded")
    >>> tiny = Dataset("tiny", full.x_train[:200], full.y_train[:200], full.x_dev[:100],
    ...                full.y_dev[:100], full.x_test[:100], full.y_test[:100])
    >>> config = TrainConfig(hidden=32, k=4, epochs=1, batch_size=20)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = train(config, tiny, checkpoint_dir=tmp, progress=False)
    ...     state = load_checkpoint(tmp)
    >>> state["epoch"], [p.shape for p in state["params"]][:2]
    (1, [(32, 784), (32,)])
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    return _unflatten(meta, arrays)


def _atomic_json(path, results):
    text = json.dumps(results, indent=2) + "\n"
    _atomic_write(path, lambda fh: fh.write(text.encode()))


# ---------------------------------------------------------------- training

def _warm_up(config, n_features, n_classes):
    """Compile the kernels this config uses, on a throwaway model, so that
    compilation does not count in the first epoch's timings."""
    start = time.perf_counter()
    dtype = np.dtype(config.dtype)
    rng = np.random.default_rng(12345)
    model = build_model(config, n_features, n_classes, rng=rng)
    optimizer = build_optimizer(config, model.params())
    x = rng.random((config.batch_size, n_features)).astype(dtype)
    y = rng.integers(0, n_classes, config.batch_size)
    _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(grad)
    optimizer.step(model.grads())
    return time.perf_counter() - start


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch", mininterval=0.5)


def _summarise(results):
    epochs = results["epochs"]
    if not epochs:
        return
    best = max(epochs, key=lambda e: (e["dev_accuracy"], -e["epoch"]))
    results["best_epoch"] = best["epoch"]
    results["best_dev_accuracy"] = best["dev_accuracy"]
    results["test_accuracy_at_best_dev"] = best["test_accuracy"]
    for key in ("forward_s", "backward_s", "backward_linear_s", "optimizer_s", "train_s"):
        results[f"mean_{key}"] = float(np.mean([e[key] for e in epochs]))


def blas_threads(n):
    """Context manager limiting the BLAS thread pool to `n` threads.

    Uses ``threadpoolctl`` when it is installed; otherwise (or with
    ``n=None``) it changes nothing and BLAS follows
    ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``. On a busy machine a
    multi-threaded BLAS is many times slower on the small products of a
    minibatch of 10 (measured here: 1.2 ms vs 21 ms for a 10x784 @ 784x500
    product at load 7 on 2 cores), so ``--threads`` limits both pools.
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


def train(config, data, *, checkpoint_dir=None, resume=False, progress=True, out=None, log=None):
    """Train an MLP on `data` as `config` describes.

    Parameters
    ----------
    config : TrainConfig
    data : meprop_numba.data.Dataset
    checkpoint_dir : str or os.PathLike, optional
        Where ``checkpoint.npz`` is written after every epoch (atomically:
        a crash never leaves a partial checkpoint).
    resume : bool, optional
        Continue from the checkpoint in `checkpoint_dir`. The config must
        match the checkpoint's except for `epochs`, `threads` and
        `data_dir`.
    progress : bool, optional
        Show a progress bar (tqdm) per epoch.
    out : str or os.PathLike, optional
        Write the results as JSON here (atomically) after every epoch.
    log : callable, optional
        Called with one line of text per epoch (e.g. ``print``).

    Returns
    -------
    dict
        ``config``, ``dataset``, ``threads`` (kernel threads), ``blas_threads``, ``warm_up_s``, ``epochs`` (one
        dict per epoch: ``train_loss``, ``dev_accuracy``, ``test_accuracy``,
        ``forward_s``, ``backward_s``, ``backward_linear_s``,
        ``optimizer_s``, ``train_s``, ``eval_s``), ``best_epoch`` (by dev
        accuracy), ``best_dev_accuracy``, ``test_accuracy_at_best_dev``,
        means of the timings, and ``stopped`` (None, or why training
        stopped early).

    Raises
    ------
    ValueError
        Bad config, or a checkpoint that does not match it.
    FileNotFoundError
        `resume` without a checkpoint.
    NotImplementedError
        ``device='cuda'`` (the GPU training path is not available yet).
    TrainingDiverged
        The loss became NaN or Inf; the last good checkpoint is kept.

    Examples
    --------
    A minimal run on the first 200 training images of the embedded subset:

    >>> from meprop_numba.train import TrainConfig, train
    >>> from meprop_numba.data import Dataset, load_dataset
    >>> full = load_dataset("embedded")
    >>> tiny = Dataset("tiny", full.x_train[:200], full.y_train[:200], full.x_dev[:100],
    ...                full.y_dev[:100], full.x_test[:100], full.y_test[:100])
    >>> results = train(TrainConfig(hidden=32, k=4, epochs=2, batch_size=20), tiny,
    ...                 progress=False)
    >>> len(results["epochs"]), results["best_epoch"] in (1, 2)
    (2, True)
    >>> 0.0 <= results["test_accuracy_at_best_dev"] <= 1.0
    True
    """
    config.validate()
    if config.device == "cuda":
        raise NotImplementedError(
            "device='cuda': training the MLP on a GPU is not available yet; use device='cpu'")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if config.threads is not None:
        set_num_threads(config.threads)
    with blas_threads(config.threads):
        return _train(config, data, checkpoint_dir, resume, progress, out, log)


def _train(config, data, checkpoint_dir, resume, progress, out, log):

    dtype = np.dtype(config.dtype)
    x_train = data.x_train.astype(dtype, copy=False)
    x_dev = data.x_dev.astype(dtype, copy=False)
    x_test = data.x_test.astype(dtype, copy=False)
    n_train, n_features = x_train.shape
    if n_train < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n_train} training examples")

    model_rng, data_rng = _seeds(config.seed)
    model = build_model(config, n_features, data.n_classes, rng=model_rng)
    optimizer = build_optimizer(config, model.params())
    results = {
        "config": dataclasses.asdict(config),
        "dataset": data.summary(),
        "threads": get_num_threads(),
        "blas_threads": _blas_thread_count(),
        "warm_up_s": None,
        "epochs": [],
        "stopped": None,
    }
    checkpoint_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    start_epoch = 0
    if resume:
        if not os.path.exists(checkpoint_path):
            raise FileNotFoundError(f"resume: no checkpoint at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path)
        saved = state["config"]
        mine = dataclasses.asdict(config)
        differ = sorted(key for key in mine if key not in _RESUMABLE_CHANGES and saved.get(key) != mine[key])
        if differ:
            details = ", ".join(f"{key}: checkpoint {saved.get(key)!r} vs {mine[key]!r}" for key in differ)
            raise ValueError(f"resume: the checkpoint was trained with a different config ({details})")
        params = model.params()
        if len(state["params"]) != len(params) or any(
                a.shape != p.shape or a.dtype != p.dtype for a, p in zip(state["params"], params)):
            raise ValueError("resume: the checkpoint's parameters do not match the model")
        optimizer.load_state_dict(state["optimizer"])
        for p, saved_p in zip(params, state["params"]):
            p[...] = saved_p
        model_rng.bit_generator.state = state["rng"]["model"]
        data_rng.bit_generator.state = state["rng"]["data"]
        results["epochs"] = list(state["history"])
        start_epoch = int(state["epoch"])

    results["warm_up_s"] = _warm_up(config, n_features, data.n_classes)
    batch = config.batch_size
    n_steps = n_train // batch  # the last partial batch is dropped, as in the paper's code
    last_good = checkpoint_path if checkpoint_path and os.path.exists(checkpoint_path) else None

    for epoch in range(start_epoch + 1, config.epochs + 1):
        order = data_rng.permutation(n_train)
        linear_before = model.backward_linear_seconds
        t_forward = t_backward = t_optimizer = 0.0
        loss_sum = 0.0
        bar = _progress_bar(n_steps, f"{config.label()} epoch {epoch}/{config.epochs}", progress)
        epoch_start = time.perf_counter()
        for step in range(n_steps):
            rows = order[step * batch:(step + 1) * batch]
            x, y = x_train[rows], data.y_train[rows]
            t0 = time.perf_counter()
            loss, grad = softmax_cross_entropy(model.forward(x, train=True), y)
            t1 = time.perf_counter()
            if not math.isfinite(loss):
                if bar is not None:
                    bar.close()
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {last_good}"
                        if last_good else "no checkpoint was written")
                message = (f"training diverged: loss is {loss} at epoch {epoch}, step {step + 1}/"
                           f"{n_steps}; stopped ({kept}). Try a smaller --lr.")
                results["stopped"] = message
                _summarise(results)
                if out is not None:
                    _atomic_json(out, results)
                raise TrainingDiverged(message, results)
            model.backward(grad)
            t2 = time.perf_counter()
            optimizer.step(model.grads())
            t3 = time.perf_counter()
            t_forward += t1 - t0
            t_backward += t2 - t1
            t_optimizer += t3 - t2
            loss_sum += loss
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        train_s = time.perf_counter() - epoch_start
        if bar is not None:
            bar.close()

        eval_start = time.perf_counter()
        dev_accuracy = model.accuracy(x_dev, data.y_dev, _EVAL_BATCH)
        test_accuracy = model.accuracy(x_test, data.y_test, _EVAL_BATCH)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n_steps,
            "dev_accuracy": dev_accuracy,
            "test_accuracy": test_accuracy,
            "forward_s": t_forward,
            "backward_s": t_backward,
            "backward_linear_s": model.backward_linear_seconds - linear_before,
            "optimizer_s": t_optimizer,
            "train_s": train_s,
            "eval_s": time.perf_counter() - eval_start,
        }
        results["epochs"].append(record)
        _summarise(results)
        if checkpoint_path:
            _save_checkpoint(checkpoint_path, {
                "config": dataclasses.asdict(config),
                "epoch": epoch,
                "params": [p.copy() for p in model.params()],
                "optimizer": optimizer.state_dict(),
                "rng": {"model": model_rng.bit_generator.state, "data": data_rng.bit_generator.state},
                "history": results["epochs"],
            })
            last_good = checkpoint_path
        if out is not None:
            _atomic_json(out, results)
        if log is not None:
            log(f"{config.label()} epoch {epoch}/{config.epochs}: loss {record['train_loss']:.4f}, "
                f"dev {100 * dev_accuracy:.2f}%, test {100 * test_accuracy:.2f}%, "
                f"forward {t_forward:.2f}s, backward {t_backward:.2f}s "
                f"(linear {record['backward_linear_s']:.2f}s), optimizer {t_optimizer:.2f}s")
    results["model"] = model
    return results


def compare(config, data, **kwargs):
    """Train dense and meProp with the same seed and report speed-ups.

    Parameters
    ----------
    config : TrainConfig
        The meProp run (its `k` must be set); the dense run is the same
        config with ``k=None``.
    data : meprop_numba.data.Dataset
    **kwargs
        Passed to :func:`train` (not `checkpoint_dir`/`resume`/`out`).

    Returns
    -------
    dict
        ``dense`` and ``meprop`` results, and ``speedup``: dense time over
        meProp time for ``forward``, ``backward``, ``backward_linear``,
        ``optimizer`` and the whole training step (``train``), from the
        per-epoch means.

    Raises
    ------
    ValueError
        If ``config.k`` is None, or as :func:`train`.

    Examples
    --------
    >>> from meprop_numba.train import TrainConfig, compare
    >>> from meprop_numba.data import Dataset, load_dataset
    >>> full = load_dataset("embedded")
    >>> tiny = Dataset("tiny", full.x_train[:200], full.y_train[:200], full.x_dev[:100],
    ...                full.y_dev[:100], full.x_test[:100], full.y_test[:100])
    >>> report = compare(TrainConfig(hidden=32, k=4, epochs=1, batch_size=20), tiny,
    ...                  progress=False)
    >>> sorted(report["speedup"])
    ['backward', 'backward_linear', 'forward', 'optimizer', 'train']
    """
    if config.k is None:
        raise ValueError("compare needs a meProp config with k set")
    dense_config = dataclasses.replace(config, k=None)
    dense = train(dense_config, data, **kwargs)
    meprop = train(config, data, **kwargs)
    speedup = {}
    for key in ("forward", "backward", "backward_linear", "optimizer", "train"):
        mine = meprop[f"mean_{key}_s"]
        speedup[key] = dense[f"mean_{key}_s"] / mine if mine > 0 else float("inf")
    return {"dense": dense, "meprop": meprop, "speedup": speedup}
