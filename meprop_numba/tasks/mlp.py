"""Image classification with a meProp MLP (the meProp paper's MNIST experiment).

A ``784-hidden-...-hidden-classes`` MLP whose hidden layers back-propagate
with meProp; data: the Fashion-MNIST subset shipped with the package, the
downloadable Fashion-MNIST/MNIST, or any directory of IDX files. The dev
split is the last ``dev_size`` training images (default one twelfth: 5,000
of 60,000; the released meProp code holds out the first 5,000 instead).

Command line::

    meprop-numba train --task mlp --k 20 --selection unified --batch-size 50
    meprop-numba predict --checkpoint-dir RUN images.npy

Python::

    >>> from meprop_numba.tasks.mlp import MLPConfig, MLPTask
    >>> from meprop_numba.training import fit
    >>> task = MLPTask()
    >>> config = MLPConfig(hidden=32, k=4, epochs=1, batch_size=20, max_train=200)
    >>> results = fit(task, config, progress=False)
    >>> results["finished"], 0 <= results["best_dev_accuracy"] <= 1
    (True, True)
"""
import dataclasses
from typing import ClassVar

import numpy as np

from ..data import load_dataset, read_idx
from ..nn import MLP, softmax_cross_entropy
from ..nn.layers import SELECTIONS
from ..training.config import RunConfig, check_k, check_positive_int, k_list_arg, probability_arg
from .base import Task

__all__ = ["MLPConfig", "MLPTask", "read_images"]

_EVAL_BATCH = 1000
#: Dropout after each hidden layer when meProp is on and ``dropout`` is not given.
MEPROP_DROPOUT = 0.2
#: Error-feedback memory decay of the meProp layers when ``error_feedback`` is not given.
MEPROP_ERROR_FEEDBACK = 0.8


@dataclasses.dataclass
class MLPConfig(RunConfig):
    """Options of an MLP run: the shared :class:`~meprop_numba.training.RunConfig` fields and these.

    Parameters
    ----------
    data_dir, optimizer, lr, lazy, epochs, batch_size, seed, dtype, threads, device, evals_per_epoch : see RunConfig
        The shared fields of :class:`~meprop_numba.training.RunConfig`
        (same defaults).
    eval_test : bool
        Default True here: the test accuracy at the best dev epoch is
        reported, as in the paper.
    simplify, simplify_cycle, simplify_parts : see RunConfig
        Model simplification (meSimp); same defaults (off).
    dataset : str
        ``'embedded'`` (shipped with the package), ``'fashion-mnist'``,
        ``'mnist'`` or a directory of IDX files (see
        :func:`~meprop_numba.data.load_dataset`); ``data_dir`` is where the
        named datasets are looked for.
    hidden : int
        Hidden-layer width (the paper: 500).
    layers : int
        Number of hidden layers (the paper: 2).
    k : int, None or tuple
        meProp k of the hidden layers: one value for all, or one per layer
        (None entries dense); None trains dense. At most `hidden`.
    selection : {'topk', 'unified', 'random'}
        Per-example top-k, one top-k set shared by the minibatch, or k
        random entries per example.
    dropout : float or None
        Dropout probability after each hidden layer; None (default) is
        :data:`MEPROP_DROPOUT` when a hidden layer uses meProp and 0 for a
        dense network (see :attr:`hidden_dropout`).
    error_feedback : float
        Error-feedback memory decay of the meProp hidden layers (default
        :data:`MEPROP_ERROR_FEEDBACK`; 0 turns it off; see
        :class:`~meprop_numba.nn.Linear`). With dropout this closes meProp's
        accuracy gap to dense under Adam (``docs/results_mlp.md``); 0 with
        ``dropout=0`` is the paper's meProp.
    output_k : int or None
        meProp k of the output layer (None, the paper: dense).
    dev_size : int or None
        Training images held out as the dev set, taken from the end of the
        training file (None: one twelfth).
    max_train : int or None
        Train on the first `max_train` training images only (quick runs).

    Raises
    ------
    ValueError
        From :meth:`validate`, naming the bad field.

    Examples
    --------
    >>> from meprop_numba.tasks.mlp import MLPConfig
    >>> config = MLPConfig(k=(20, 40), selection="unified", optimizer="adagrad").validate()
    >>> config.learning_rate, config.k, config.eval_test
    (0.1, (20, 40), True)
    """

    DEFAULT_LR: ClassVar[dict] = {"adam": 1e-3, "adagrad": 0.1, "sgd": 0.1}

    dataset: str = "embedded"
    hidden: int = 500
    layers: int = 2
    k: object = 20
    selection: str = "topk"
    dropout: float = None
    error_feedback: float = None
    output_k: int = None
    dev_size: int = None
    max_train: int = None
    eval_test: bool = True

    def __post_init__(self):
        if isinstance(self.k, list):
            self.k = tuple(self.k)

    def check(self):
        """Check the MLP's fields; raise ValueError naming the bad one."""
        check_positive_int("hidden", self.hidden)
        check_positive_int("layers", self.layers)
        check_k("k", self.k, self.hidden, layers=self.layers)
        check_positive_int("output_k", self.output_k, allow_none=True)
        check_positive_int("dev_size", self.dev_size, allow_none=True, minimum=0)
        check_positive_int("max_train", self.max_train, allow_none=True)
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.dropout is not None and not (isinstance(self.dropout, (int, float))
                                             and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be None or in [0, 1), got {self.dropout!r}")
        if self.error_feedback is not None and not (isinstance(self.error_feedback, (int, float))
                                                    and 0.0 <= self.error_feedback < 1.0):
            raise ValueError(f"error_feedback must be None or in [0, 1), got {self.error_feedback!r}")

    @property
    def uses_meprop(self):
        """Whether any hidden layer back-propagates with meProp (a k below `hidden`)."""
        ks = self.k if isinstance(self.k, (list, tuple)) else (self.k,)
        return any(k is not None and k < self.hidden for k in ks)

    @property
    def hidden_dropout(self):
        """The dropout used: `dropout`, or by default :data:`MEPROP_DROPOUT` with meProp, 0 dense."""
        if self.dropout is not None:
            return float(self.dropout)
        return MEPROP_DROPOUT if self.uses_meprop else 0.0

    @property
    def hidden_error_feedback(self):
        """The error feedback used: `error_feedback`, or by default :data:`MEPROP_ERROR_FEEDBACK`."""
        return MEPROP_ERROR_FEEDBACK if self.error_feedback is None else float(self.error_feedback)


def _k_text(k):
    if isinstance(k, (list, tuple)):
        return ",".join("none" if v is None else str(v) for v in k)
    return "none" if k is None else str(k)


def _remedy_text(config):
    """', dropout 0.2, error feedback 0.8' (what is on), or ''."""
    parts = [f"dropout {config.hidden_dropout:g}"] if config.hidden_dropout else []
    if config.uses_meprop and config.hidden_error_feedback:
        parts.append(f"meProp error feedback {config.hidden_error_feedback:g}")
    return "".join(", " + p for p in parts)


def read_images(path, n_features):
    """Images to classify from an IDX file (``.gz`` too) or a ``.npy`` array.

    Parameters
    ----------
    path : str or os.PathLike
        ``(N, rows, cols)`` or ``(N, features)`` images; uint8 pixels are
        scaled to [0, 1], float pixels are taken as they are.
    n_features : int
        Features per image the model takes (784 for 28x28).

    Returns
    -------
    ndarray of float64, shape (N, n_features)
        The images, one per row.

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError
        A file that is neither IDX nor ``.npy``, images of another size, or
        NaN/Inf pixels; the message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from meprop_numba.tasks.mlp import read_images
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(os.path.join(tmp, "x.npy"), np.full((2, 28, 28), 255, np.uint8))
    ...     read_images(os.path.join(tmp, "x.npy"), 784).max(axis=1)
    array([1., 1.])
    """
    import os

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no input file at {path}")
    try:
        if path.endswith(".npy"):
            images = np.load(path, allow_pickle=False)
        else:
            images = read_idx(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable IDX or .npy image file ({exc})") from exc
    if images.ndim < 2 or int(np.prod(images.shape[1:])) != n_features:
        raise ValueError(f"{path}: images of shape {images.shape[1:]} do not give the model's "
                         f"{n_features} features")
    if images.dtype == np.uint8:
        flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    elif np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer):
        flat = images.reshape(len(images), -1).astype(np.float64)
    else:
        raise ValueError(f"{path}: images of dtype {images.dtype} (expected uint8 or float)")
    if not np.isfinite(flat).all():
        raise ValueError(f"{path}: the images hold NaN or Inf")
    return flat


class MLPTask(Task):
    """The ``mlp`` task: image classification with a meProp MLP.

    The methods implement :mod:`meprop_numba.tasks.base`'s protocol.
    Construction never raises.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> task = TASKS["mlp"]
    >>> task.label(task.config_class(k=20, selection="unified")), task.metric
    ('meProp k=20 unified', 'accuracy')
    """

    name = "mlp"
    help = "MLP image classification (MNIST / Fashion-MNIST / any IDX directory)"
    config_class = MLPConfig
    metric = "accuracy"
    component_timers = ("backward_linear",)

    def add_arguments(self, parser):
        group = parser.add_argument_group("MLP task")
        group.add_argument("--dataset", default="embedded",
                           help="'embedded' (default: a Fashion-MNIST subset shipped with the "
                                "package, no download), 'fashion-mnist', 'mnist', or a directory "
                                "of IDX files")
        group.add_argument("--data-dir", default=None,
                           help="where the fashion-mnist/mnist files are (or are downloaded to); "
                                "default $MEPROP_NUMBA_DATA_DIR, the system location, then the "
                                "cache")
        group.add_argument("--dev-size", type=int, default=None,
                           help="training images held out as the dev set, from the end of the "
                                "training file (default one twelfth: 5,000 of 60,000)")
        group.add_argument("--max-train", type=int, default=None,
                           help="train on the first N training images only")
        group.add_argument("--hidden", type=int, default=500, help="hidden width (default 500)")
        group.add_argument("--layers", type=int, default=2, help="hidden layers (default 2)")
        group.add_argument("--k", type=k_list_arg, default=20,
                           help="meProp k of the hidden layers: one value, or one per layer "
                                "(e.g. 20,40); 'none' for dense back propagation (default 20)")
        group.add_argument("--selection", choices=SELECTIONS, default="topk",
                           help="topk: k per example; unified: k shared by the minibatch; "
                                "random: k random entries per example (default topk)")
        group.add_argument("--dropout", type=probability_arg, default=None,
                           help=f"dropout probability after each hidden layer (default "
                                f"{MEPROP_DROPOUT} with meProp, 0 for a dense network)")
        group.add_argument("--error-feedback", type=probability_arg, default=None, metavar="BETA",
                           help=f"error-feedback memory decay of the meProp layers, in [0, 1) "
                                f"(default {MEPROP_ERROR_FEEDBACK}; 0: off)")
        group.add_argument("--plain-meprop", action="store_true",
                           help="the paper's meProp: no error feedback and, unless --dropout "
                                "says otherwise, no dropout")

    def config_from_args(self, args, shared):
        return MLPConfig(**shared, dataset=args.dataset, data_dir=args.data_dir,
                         dev_size=args.dev_size, max_train=args.max_train, hidden=args.hidden,
                         layers=args.layers, k=args.k, selection=args.selection,
                         dropout=0.0 if args.plain_meprop and args.dropout is None else args.dropout,
                         error_feedback=0.0 if args.plain_meprop else args.error_feedback)

    def load_data(self, config, extra_state=None):
        data = load_dataset(config.dataset, config.data_dir, dev_size=config.dev_size,
                            dtype=np.dtype(config.dtype))
        if config.max_train is not None and config.max_train < len(data.y_train):
            data = dataclasses.replace(data, x_train=data.x_train[:config.max_train],
                                       y_train=data.y_train[:config.max_train])
        return data

    def extra_state(self, data):
        return {"n_features": int(data.n_features), "n_classes": int(data.n_classes)}

    def check_data(self, config, data):
        n_train = len(data.y_train)
        if config.batch_size > n_train:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {n_train} training "
                             "images")
        if config.output_k is not None and config.output_k > data.n_classes:
            raise ValueError(f"output_k must be at most {data.n_classes} (the classes), "
                             f"got {config.output_k}")

    def build_model(self, config, extra_state, rng):
        return MLP(extra_state["n_features"], config.hidden, extra_state["n_classes"],
                   layers=config.layers, k=config.k, selection=config.selection,
                   dropout=config.hidden_dropout, output_k=config.output_k,
                   error_feedback=config.hidden_error_feedback,
                   dtype=np.dtype(config.dtype), rng=rng)

    def n_batches(self, config, data):
        return len(data.y_train) // config.batch_size  # the last partial batch is dropped

    def batches(self, config, data, rng):
        order = rng.permutation(len(data.y_train))
        x = data.x_train.astype(np.dtype(config.dtype), copy=False)
        b = config.batch_size
        for step in range(self.n_batches(config, data)):
            rows = order[step * b:(step + 1) * b]
            yield x[rows], data.y_train[rows]

    def start_epoch(self, model):
        model.reset_error_feedback()

    def loss(self, model, batch):
        x, y = batch
        return softmax_cross_entropy(model.forward(x, train=True), y, workspace=model.workspace)

    def component_seconds(self, model):
        return {"backward_linear": model.backward_linear_seconds}

    def evaluate(self, model, data, split):
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        x, y = (data.x_dev, data.y_dev) if split == "dev" else (data.x_test, data.y_test)
        if len(y) == 0:
            return {"accuracy": None}
        return {"accuracy": model.accuracy(x, y, _EVAL_BATCH)}

    def predict(self, model, config, extra_state, input_path, out):
        images = read_images(input_path, extra_state["n_features"])
        labels = model.predict(images.astype(np.dtype(config.dtype)), _EVAL_BATCH)
        for label in labels:
            out.write(f"{int(label)}\n")
        return len(labels)

    def dense_config(self, config):
        return dataclasses.replace(config, k=None, output_k=None)

    def label(self, config):
        ks = config.k if isinstance(config.k, (list, tuple)) else (config.k,)
        if all(k is None for k in ks) and config.output_k is None:
            return "dense"
        return f"meProp k={_k_text(config.k)} {config.selection}"

    def describe(self, config, data):
        update = "lazy" if config.lazy else "dense"
        return (f"{data.summary()}\nmodel {data.n_features}-"
                + "-".join([str(config.hidden)] * config.layers)
                + f"-{data.n_classes}, {config.optimizer} lr {config.learning_rate:g} "
                f"({update} updates), batch {config.batch_size}, {config.dtype}, "
                f"seed {config.seed}" + _remedy_text(config))

    def data_summary(self, data):
        return data.summary()
