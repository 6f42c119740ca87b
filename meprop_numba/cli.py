"""The ``meprop-numba`` command (also ``python -m meprop_numba``).

``meprop-numba train [--task mlp] [options]`` trains a model and prints a
table of accuracy and per-epoch forward / backward / optimizer times;
``--compare`` trains dense and meProp with the same seed and prints the
speed-ups.

Adding a task
-------------
Tasks live in the :data:`TASKS` registry: one :class:`Task` entry per
``--task`` value, holding a function that adds the task's own options to
the parser and a function that runs it. Options shared by every task
(optimizer, learning rate, epochs, batch size, seed, threads, device,
output, checkpoints, progress) are added by :func:`add_common_arguments`.
A new task (e.g. POS tagging) is one more ``TASKS["pos"] = Task(...)``
entry; nothing else in this module changes.
"""
import argparse
import dataclasses
import os
import sys

__all__ = ["TASKS", "Task", "add_common_arguments", "build_parser", "main"]


@dataclasses.dataclass(frozen=True)
class Task:
    """One ``--task`` of ``meprop-numba train``.

    Construction never raises; the fields are stored as given.

    Attributes
    ----------
    help : str
        One line shown in ``--help``.
    add_arguments : callable
        ``add_arguments(parser)``: adds the task's own options.
    run : callable
        ``run(args) -> int``: runs the task, returns the exit status.

    Examples
    --------
    >>> from meprop_numba.cli import TASKS, Task
    >>> sorted(TASKS)
    ['mlp', 'pos']
    >>> isinstance(TASKS["pos"], Task)
    True
    """

    help: str
    add_arguments: object
    run: object


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _k_value(text):
    if text.lower() in ("none", "dense", "0"):
        return None
    return _positive_int(text)


def _positive_float(text):
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def _probability(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_common_arguments(parser):
    """Options every task shares: optimization, run control and output.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Receives two argument groups, "optimization" (``--optimizer``,
        ``--lr``, ``--dense-update``, ``--epochs``, ``--batch-size``,
        ``--seed``, ``--dtype``) and "run control" (``--threads``,
        ``--device``, ``--out``, ``--checkpoint-dir``, ``--resume``,
        ``--no-progress``).

    Returns
    -------
    None
        `parser` is changed in place.

    Raises
    ------
    argparse.ArgumentError
        If `parser` already defines one of these options.

    Examples
    --------
    >>> import argparse
    >>> from meprop_numba.cli import add_common_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_common_arguments(parser)
    >>> args = parser.parse_args(["--optimizer", "adagrad", "--epochs", "3"])
    >>> args.optimizer, args.epochs, args.batch_size
    ('adagrad', 3, 10)
    """
    group = parser.add_argument_group("optimization")
    group.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default="adam",
                       help="optimizer (default adam)")
    group.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: adam 0.001, adagrad 0.1, sgd 0.1)")
    group.add_argument("--dense-update", action="store_true",
                       help="update every row of a sparse gradient as a dense optimizer would "
                            "(default: lazy updates touch only the selected rows)")
    group.add_argument("--epochs", type=_positive_int, default=None,
                       help="training epochs (default 5; with --resume: the checkpoint's)")
    group.add_argument("--batch-size", type=_positive_int, default=10,
                       help="minibatch size (default 10, the paper's CPU setting)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--dtype", choices=("float32", "float64"), default="float32")

    group = parser.add_argument_group("run control")
    group.add_argument("--threads", type=_positive_int, default=None,
                       help="threads for the compiled kernels and BLAS (BLAS needs threadpoolctl, else "
                            "set OPENBLAS_NUM_THREADS); on a busy machine --threads 1 is much "
                            "faster for small minibatches (default: leave both as they are)")
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    group.add_argument("--out", metavar="FILE.json", default=None,
                       help="write the results as JSON (updated after every epoch)")
    group.add_argument("--checkpoint-dir", metavar="DIR", default=None,
                       help="write a checkpoint after every epoch into DIR")
    group.add_argument("--resume", action="store_true",
                       help="continue the run checkpointed in --checkpoint-dir")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- the MLP task

def _mlp_arguments(parser):
    group = parser.add_argument_group("MLP task")
    group.add_argument("--dataset", default="embedded",
                       help="'embedded' (default: a Fashion-MNIST subset shipped with the package, "
                            "no download), 'fashion-mnist', 'mnist', or a directory of IDX files")
    group.add_argument("--data-dir", default=None,
                       help="where the fashion-mnist/mnist files are (or are downloaded to); "
                            "default $MEPROP_NUMBA_DATA_DIR, the system location, then the cache")
    group.add_argument("--hidden", type=_positive_int, default=500, help="hidden width (default 500)")
    group.add_argument("--layers", type=_positive_int, default=2, help="hidden layers (default 2)")
    group.add_argument("--k", type=_k_value, default=20,
                       help="meProp k per hidden layer; 'none' for dense back propagation (default 20)")
    group.add_argument("--mode", choices=("topk", "unified", "random"), default="topk",
                       help="topk: k per example; unified: k shared by the minibatch; "
                            "random: k random entries per example (default topk)")
    group.add_argument("--dropout", type=_probability, default=0.0,
                       help="dropout probability after each hidden layer (default 0)")
    group.add_argument("--compare", action="store_true",
                       help="train dense and meProp with the same seed and print the speed-ups")


def _mlp_config(args):
    from .train import TrainConfig

    return TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, hidden=args.hidden, layers=args.layers,
        k=args.k, mode=args.mode, optimizer=args.optimizer, lr=args.lr,
        lazy=not args.dense_update, epochs=args.epochs if args.epochs is not None else 5,
        batch_size=args.batch_size, dropout=args.dropout, seed=args.seed, dtype=args.dtype,
        threads=args.threads, device=args.device,
    )


def _fmt_pct(value):
    return f"{100 * value:6.2f}"


def _result_rows(label, results):
    rows = []
    for e in results["epochs"]:
        rows.append((label, str(e["epoch"]), _fmt_pct(e["dev_accuracy"]), _fmt_pct(e["test_accuracy"]),
                     f"{e['forward_s']:.3f}", f"{e['backward_s']:.3f}", f"{e['backward_linear_s']:.3f}",
                     f"{e['optimizer_s']:.3f}", f"{e['train_s']:.3f}"))
    return rows


def _table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


_HEADERS = ("run", "epoch", "dev %", "test %", "forward s", "backward s", "(linear) s",
            "optimizer s", "step total s")


def _describe(config, data):
    from . import get_num_threads
    from .train import _blas_thread_count, blas_threads

    with blas_threads(config.threads):
        blas = _blas_thread_count()
    update = "lazy" if config.lazy else "dense"
    return (f"{data.summary()}\nmodel {data.n_features}-" + "-".join([str(config.hidden)] * config.layers)
            + f"-{data.n_classes}, {config.optimizer} lr {config.learning_rate:g} ({update} updates), "
            f"batch {config.batch_size}, {config.dtype}, seed {config.seed}, "
            f"{get_num_threads()} kernel threads, BLAS threads {blas or 'default'}")


def _best_line(label, results):
    if "best_epoch" not in results:
        return f"{label}: no completed epoch"
    return (f"{label}: best dev {100 * results['best_dev_accuracy']:.2f}% at epoch "
            f"{results['best_epoch']}, test there {100 * results['test_accuracy_at_best_dev']:.2f}%")


def _write_json(path, payload):
    from .train import _atomic_json

    _atomic_json(path, payload)


def _run_mlp(args):
    from .data import load_dataset
    from .train import TrainConfig, TrainingDiverged, compare, load_checkpoint, train

    config = _mlp_config(args)
    if args.resume:
        if not args.checkpoint_dir:
            print("error: --resume needs --checkpoint-dir", file=sys.stderr)
            return 2
        if args.compare:
            print("error: --resume and --compare cannot be combined", file=sys.stderr)
            return 2
        path = os.path.join(args.checkpoint_dir, "checkpoint.npz")
        if not os.path.exists(path):
            print(f"error: --resume: no checkpoint at {path}", file=sys.stderr)
            return 2
        saved = load_checkpoint(path)["config"]
        overrides = {"threads": args.threads}
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.data_dir is not None:
            overrides["data_dir"] = args.data_dir
        config = TrainConfig(**{**saved, **overrides})
        print(f"resuming {config.label()} from {path} (trained with the checkpoint's settings)")
    if args.compare and config.k is None:
        print("error: --compare needs a meProp --k (it trains dense itself)", file=sys.stderr)
        return 2
    if args.compare and args.checkpoint_dir:
        print("error: --compare does not write checkpoints; drop --checkpoint-dir", file=sys.stderr)
        return 2
    try:
        config.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.device == "cuda":
        print("error: --device cuda: training the MLP on a GPU is not available yet; "
              "use --device cpu", file=sys.stderr)
        return 2

    try:
        data = load_dataset(config.dataset, config.data_dir, dtype=config.dtype)
    except (OSError, ValueError) as exc:
        print(f"error: cannot load dataset {config.dataset!r}: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if config.threads is not None:
        from . import set_num_threads

        set_num_threads(config.threads)
    print(_describe(config, data), flush=True)

    if args.compare:
        both = compare(config, data, progress=progress, log=None)
        rows = _result_rows("dense", both["dense"]) + _result_rows(config.label(), both["meprop"])
        print(_table(_HEADERS, rows))
        print(_best_line("dense", both["dense"]))
        print(_best_line(config.label(), both["meprop"]))
        s = both["speedup"]
        print(f"speed-up of {config.label()} over dense (per-epoch means): backward "
              f"{s['backward']:.1f}x (linear layers {s['backward_linear']:.1f}x), optimizer "
              f"{s['optimizer']:.1f}x, forward {s['forward']:.2f}x, whole training step {s['train']:.1f}x")
        if args.out:
            for key in ("dense", "meprop"):
                both[key].pop("model", None)
            _write_json(args.out, both)
            print(f"results written to {args.out}")
        return 0

    try:
        results = train(config, data, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                        progress=progress, out=args.out, log=None)
    except TrainingDiverged as exc:
        print(_table(_HEADERS, _result_rows(config.label(), exc.results)))
        print(f"error: {exc}", file=sys.stderr)
        return 3
    results.pop("model", None)
    print(_table(_HEADERS, _result_rows(config.label(), results)))
    print(_best_line(config.label(), results))
    if args.out:
        print(f"results written to {args.out}")
    if args.checkpoint_dir:
        print(f"checkpoint: {os.path.join(args.checkpoint_dir, 'checkpoint.npz')}")
    return 0


# ---------------------------------------------------------------- the POS task

def _pos_arguments(parser):
    from .tasks import pos

    pos.add_arguments(parser)


def _run_pos(args):
    from .tasks import pos

    return pos.run(args)


#: ``--task`` name -> Task. Add an entry to add a task.
TASKS = {
    "mlp": Task("MLP image classification (MNIST / Fashion-MNIST)", _mlp_arguments, _run_mlp),
    "pos": Task("part-of-speech tagging with a meProp LSTM (CoNLL-U treebank)", _pos_arguments, _run_pos),
}


def build_parser(task="mlp"):
    """The argument parser of ``meprop-numba`` with `task`'s options added.

    Parameters
    ----------
    task : str, optional
        A key of :data:`TASKS` (default ``"mlp"``).

    Returns
    -------
    argparse.ArgumentParser
        With the ``train`` command, ``--task``, the task's options and the
        common ones.

    Raises
    ------
    KeyError
        If `task` is not in :data:`TASKS`.

    Examples
    --------
    >>> from meprop_numba.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--k", "20", "--mode", "unified"])
    >>> args.command, args.task, args.k, args.mode
    ('train', 'mlp', 20, 'unified')
    """
    parser = argparse.ArgumentParser(
        prog="meprop-numba",
        description="Sparsified back propagation (meProp) with Numba kernels.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a model",
        description="Train a model with meProp (or dense) back propagation. Tasks: "
                    + "; ".join(f"{name}: {t.help}" for name, t in TASKS.items())
                    + ". The options below are those of --task " + task
                    + "; see 'meprop-numba train --task NAME --help' for another task's.")
    train.add_argument("--task", choices=tuple(TASKS), default="mlp", help="what to train (default mlp)")
    TASKS[task].add_arguments(train)
    add_common_arguments(train)
    return parser


def _selected_task(argv):
    """The --task value in `argv` (before full parsing, which needs the task's options)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="mlp")
    known, _ = pre.parse_known_args(argv)
    return known.task if known.task in TASKS else "mlp"


def main(argv=None):
    """Entry point of ``meprop-numba``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for unusable input (data not found, bad option
        combination), 3 when training diverged (NaN/Inf loss).

    Raises
    ------
    SystemExit
        From argparse, for ``--help`` (status 0) and for invalid options
        (status 2).

    Examples
    --------
    >>> from meprop_numba.cli import main
    >>> main(["train", "--epochs", "1", "--no-progress"])  # doctest: +SKIP
    0
    """
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_selected_task(argv))
    args = parser.parse_args(argv)
    if args.command == "train":
        return TASKS[args.task].run(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
