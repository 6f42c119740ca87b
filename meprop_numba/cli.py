"""The ``meprop-numba`` command (also ``python -m meprop_numba``), built from the task registry.

``meprop-numba train --task NAME [options]``
    Train a task's model through the one loop; prints a table of the
    per-epoch metric and forward / backward / optimizer times and the best
    dev result. ``--compare`` trains dense and meProp with the same seed
    and prints the speed-ups, for every task.
``meprop-numba evaluate --checkpoint-dir DIR [--split dev|test]``
    The metric of a saved model (the best-dev checkpoint by default).
``meprop-numba predict --checkpoint-dir DIR INPUT [--out FILE]``
    Predictions of a saved model for the task's input format.

Every task in :data:`meprop_numba.tasks.TASKS` gets the same shared options
(added here with the task's own defaults), its own options (from its
plugin) and the same commands; nothing in this module names a task.

Under ``torchrun`` (its ``RANK`` and ``WORLD_SIZE`` set) ``train`` runs
data-parallel over a gloo process group
(:mod:`meprop_numba.training.distributed`): ``--batch-size`` is per rank,
the run's config records the global batch, rank 0 prints and writes.

Exit status: 0 success, 1 a file could not be written, 2 unusable input
(checked before any training), 3 training diverged, 4 data-parallel: another
rank stopped or a collective timed out, 130 interrupted.
"""
import argparse
import dataclasses
import os
import sys
import time

from .tasks import TASKS
from .training.config import positive_int_arg

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_WRITE, EXIT_USAGE, EXIT_DIVERGED, EXIT_PEER, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def _add_shared_arguments(parser, task):
    """The options every task shares, with `task`'s defaults in their help."""
    from .training.config import OPTIMIZERS, positive_float_arg, probability_arg

    defaults = task.config_class()
    lrs = ", ".join(f"{name} {defaults.DEFAULT_LR[name]:g}" for name in OPTIMIZERS)
    group = parser.add_argument_group("optimization")
    group.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=defaults.optimizer,
                       help=f"optimizer (default {defaults.optimizer})")
    group.add_argument("--lr", type=positive_float_arg, default=None,
                       help=f"learning rate (default for --task {task.name}: {lrs})")
    group.add_argument("--dense-update", action="store_true",
                       help="update every row of a sparse gradient as a dense optimizer would "
                            "(default: lazy updates touch only the selected rows)")
    group.add_argument("--epochs", type=positive_int_arg, default=None,
                       help=f"training epochs (default {defaults.epochs}; with --resume: the "
                            "checkpoint's)")
    group.add_argument("--batch-size", type=positive_int_arg, default=defaults.batch_size,
                       help=f"minibatch size (default {defaults.batch_size})")
    group.add_argument("--seed", type=int, default=defaults.seed,
                       help=f"random seed (default {defaults.seed})")
    group.add_argument("--dtype", choices=("float32", "float64"), default=defaults.dtype)

    group = parser.add_argument_group("evaluation")
    group.add_argument("--evals-per-epoch", type=positive_int_arg,
                       default=defaults.evals_per_epoch,
                       help=f"dev evaluations per epoch (default {defaults.evals_per_epoch})")
    group.add_argument("--eval-test", action=argparse.BooleanOptionalAction,
                       default=defaults.eval_test,
                       help="evaluate the test split at each new best dev result and report it "
                            f"(default {'on' if defaults.eval_test else 'off'} for --task "
                            f"{task.name})")

    group = parser.add_argument_group("model simplification (meSimp)")
    group.add_argument("--simplify", metavar="P", type=probability_arg, default=None,
                       help="remove, at every prune, the hidden neurons that back propagation "
                            "kept for fewer than a fraction P of the examples since the last "
                            "prune (the authors: 0.1); default off")
    group.add_argument("--simplify-cycle", metavar="EPOCHS", type=positive_int_arg,
                       default=defaults.simplify_cycle,
                       help="epochs per cycle; prunes happen in even cycles (0, 2, ...) only "
                            f"(default {defaults.simplify_cycle})")
    group.add_argument("--simplify-parts", metavar="N", type=positive_int_arg,
                       default=defaults.simplify_parts,
                       help="prunes per epoch in a pruning cycle, after each N-th part "
                            f"(default {defaults.simplify_parts})")

    group = parser.add_argument_group("run control")
    group.add_argument("--threads", type=positive_int_arg, default=None,
                       help="threads for the compiled kernels and BLAS; on a busy machine "
                            "--threads 1 is much faster for small minibatches (default: leave "
                            "both as they are)")
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    group.add_argument("--compare", action="store_true",
                       help="train dense and meProp with the same seed and print the speed-ups")
    group.add_argument("--out", metavar="FILE.json", default=None,
                       help="write the results as JSON (updated after every epoch)")
    group.add_argument("--checkpoint-dir", metavar="DIR", default=None,
                       help="write DIR/last.npz after every epoch and DIR/best.npz at the best "
                            "dev result")
    group.add_argument("--resume", action="store_true",
                       help="continue the run checkpointed in --checkpoint-dir")
    group.add_argument("--overwrite", action="store_true",
                       help="let a new run replace the checkpoints in --checkpoint-dir")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--dist-timeout", metavar="SECONDS", type=positive_float_arg, default=300.0,
                       help="under torchrun: seconds a rank waits for the others in a collective "
                            "before it stops with an error (default 300)")


def build_parser(task="mlp"):
    """The argument parser of ``meprop-numba`` with `task`'s ``train`` options.

    Parameters
    ----------
    task : str, optional
        A key of :data:`meprop_numba.tasks.TASKS` (default ``"mlp"``).

    Returns
    -------
    argparse.ArgumentParser
        With the ``train``, ``evaluate`` and ``predict`` commands.

    Raises
    ------
    KeyError
        If `task` is not registered.

    Examples
    --------
    >>> from meprop_numba.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--k", "20,40", "--selection", "unified"])
    >>> args.command, args.task, args.k, args.selection, args.batch_size
    ('train', 'mlp', (20, 40), 'unified', 10)
    >>> build_parser("pos").parse_args(["train", "--task", "pos"]).batch_size
    1
    """
    plugin = TASKS[task]
    parser = argparse.ArgumentParser(
        prog="meprop-numba",
        description="Sparsified back propagation (meProp) with Numba kernels.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a model",
        description="Train a model with meProp (or dense) back propagation. Tasks: "
                    + "; ".join(f"{name}: {t.help}" for name, t in TASKS.items())
                    + f". The options below are those of --task {task}; see "
                      "'meprop-numba train --task NAME --help' for another task's.")
    train.add_argument("--task", choices=tuple(TASKS), default="mlp",
                       help="what to train (default mlp)")
    plugin.add_arguments(train)
    _add_shared_arguments(train, plugin)

    for name, text in (("evaluate", "the metric of a saved model on its dev or test split"),
                       ("predict", "predictions of a saved model for an input file")):
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--checkpoint-dir", metavar="DIR", required=True,
                         help="a directory written by 'meprop-numba train --checkpoint-dir'")
        sub.add_argument("--which", choices=("best", "last"), default="best",
                         help="the best-dev checkpoint (default) or the last epoch's")
        sub.add_argument("--threads", type=positive_int_arg, default=None,
                         help="threads for the compiled kernels and BLAS")
        if name == "evaluate":
            sub.add_argument("--split", choices=("dev", "test"), default="dev")
            sub.add_argument("--data-dir", metavar="DIR", default=None,
                             help="read the data from DIR instead of where it was trained")
        else:
            sub.add_argument("input", metavar="INPUT",
                             help="MLP: an IDX or .npy file of images; POS: a CoNLL-U file or "
                                  "plain tokenised text, one sentence per line")
            sub.add_argument("--out", metavar="FILE", default=None,
                             help="write the predictions here (default standard output)")
    return parser


def _selected_task(argv):
    """The --task value in `argv` (before full parsing, which needs the task's options)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="mlp")
    known, _ = pre.parse_known_args(argv)
    return known.task if known.task in TASKS else "mlp"


def _error(message):
    print(f"error: {message}", file=sys.stderr)


def _shared_fields(args):
    shared = dict(optimizer=args.optimizer, lr=args.lr, lazy=not args.dense_update,
                  batch_size=args.batch_size, seed=args.seed, dtype=args.dtype,
                  threads=args.threads, device=args.device,
                  evals_per_epoch=args.evals_per_epoch, eval_test=args.eval_test,
                  simplify=args.simplify, simplify_cycle=args.simplify_cycle,
                  simplify_parts=args.simplify_parts)
    if args.epochs is not None:
        shared["epochs"] = args.epochs
    return shared


def _resumed_config(task, args):
    """The checkpoint's config with the options a resume may change."""
    from .training.checkpoint import checkpoint_path, load_checkpoint

    path = checkpoint_path(args.checkpoint_dir, "last")
    saved = load_checkpoint(path, task=task.name)
    config = task.config_class.from_dict(saved["config"])
    changes = {"threads": args.threads, "eval_test": args.eval_test}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if getattr(args, "data_dir", None) is not None:
        changes["data_dir"] = args.data_dir
    return dataclasses.replace(config, **changes), saved


def _run_train(args):
    from .training import CheckpointError, TrainingDiverged, TrainingInterrupted
    from .training import check_device, check_outputs, compare, fit, thread_limits
    from .training.checkpoint import checkpoint_path, write_json
    from .training.loop import _blas_thread_count
    from .training.report import epoch_table, speedup_line, summary_line
    from . import get_num_threads

    task = TASKS[args.task]
    saved, parallel = None, None
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # set by torchrun
            if args.compare:
                raise ValueError("--compare cannot run data-parallel (under torchrun)")
            from .training.distributed import init_from_env

            parallel = init_from_env(args.dist_timeout)
        config = task.config_from_args(args, _shared_fields(args))
        if parallel is not None:  # --batch-size is per rank; the run trains on the global batch
            config = dataclasses.replace(config, batch_size=config.batch_size * parallel.world_size)
        if args.resume:
            if not args.checkpoint_dir:
                raise ValueError("--resume needs --checkpoint-dir")
            if args.compare:
                raise ValueError("--resume and --compare cannot be combined")
            config, saved = _resumed_config(task, args)
        config.validate()
        if args.compare:
            if task.dense_config(config) == config:
                raise ValueError("--compare needs a meProp --k (it trains the dense arm itself)")
            if args.checkpoint_dir:
                raise ValueError("--compare does not write checkpoints; drop --checkpoint-dir")
        check_outputs(args.out, args.checkpoint_dir, resume=args.resume,
                      overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _error(exc)
        return EXIT_USAGE
    except RuntimeError as exc:  # the process group could not be formed
        _error(exc)
        return EXIT_PEER
    show = parallel is None or parallel.is_writer
    try:
        data = task.load_data(config, None if saved is None else saved["extra_state"])
        task.check_data(config, data)
        if parallel is not None:
            parallel.check(task, config, data)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        _error(f"cannot use the data: {exc}")
        return EXIT_USAGE
    try:
        check_device(task, config, data, parallel)
    except ValueError as exc:
        _error(exc)
        return EXIT_USAGE

    with thread_limits(config.threads):
        blas = _blas_thread_count()
        kernel_threads = get_num_threads()
    if show:
        ranks = "" if parallel is None else (f", {parallel.world_size} data-parallel ranks of batch "
                                             f"{config.batch_size // parallel.world_size}")
        print(f"{task.describe(config, data)}\n{kernel_threads} kernel threads, BLAS threads "
              f"{blas or 'default'}{ranks}", flush=True)
    label = task.label(config)
    progress = not args.no_progress
    try:
        if args.compare:
            both = compare(task, config, data, progress=progress)
            dense_label = task.label(task.dense_config(config))
            print(epoch_table([(dense_label, both["dense"]), (label, both["meprop"])],
                              task.metric, task.component_timers))
            print(summary_line(dense_label, both["dense"], task.metric))
            print(summary_line(label, both["meprop"], task.metric))
            print(speedup_line(label, both["speedup"], task.component_timers))
            if args.out:
                write_json(args.out, {key: ({k: v for k, v in value.items() if k != "model"}
                                            if key != "speedup" else value)
                                      for key, value in both.items()})
                print(f"results written to {args.out}")
            return EXIT_OK
        results = fit(task, config, data, checkpoint_dir=args.checkpoint_dir,
                      resume=args.resume, overwrite=args.overwrite, out=args.out,
                      progress=progress, log=_resume_log, parallel=parallel)
        if parallel is not None:
            parallel.close()
    except TrainingDiverged as exc:
        if exc.results and exc.results["epochs"]:
            print(epoch_table([(label, exc.results)], task.metric, task.component_timers))
        _error(exc)
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        print(f"\ninterrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CheckpointError, FileNotFoundError) as exc:
        _error(exc)
        return EXIT_USAGE
    except OSError as exc:
        _error(exc)
        return EXIT_WRITE
    except RuntimeError as exc:
        if parallel is None:
            raise
        _error(exc)
        return EXIT_PEER
    finally:
        if parallel is not None:  # leaving the group: a rank that exits in it can abort at exit
            parallel.close(wait=False)
    if not show:
        return EXIT_OK
    print(epoch_table([(label, results)], task.metric, task.component_timers))
    print(summary_line(label, results, task.metric))
    if parallel is not None:
        sent = ", ".join(f"{kind} {size / 1e6:.3g}" for kind, size in sorted(parallel.bytes_sent.items()))
        chosen = ", ".join(f"{n} {kind}" for kind, n in sorted(parallel.reductions.items())) or "none"
        print(f"data parallel: rank 0 handed {sum(parallel.bytes_sent.values()) / 1e6:.3g} MB to "
              f"collectives ({sent}); union reductions: {chosen}")
    if args.out:
        print(f"results written to {args.out}")
    if args.checkpoint_dir:
        print(f"checkpoints: {checkpoint_path(args.checkpoint_dir, 'best')} (best dev), "
              f"{checkpoint_path(args.checkpoint_dir, 'last')} (last epoch)")
    return EXIT_OK


def _resume_log(line):
    if line.startswith("resuming"):
        print(line, flush=True)


def _load_saved_model(args):
    from .training import load_model
    from .training.checkpoint import checkpoint_path, load_checkpoint

    path = checkpoint_path(args.checkpoint_dir, args.which)
    name = load_checkpoint(path).get("task")
    if name not in TASKS:
        raise ValueError(f"{path}: a checkpoint of task {name!r}, which is not registered "
                         f"(tasks: {', '.join(TASKS)})")
    task = TASKS[name]
    model, config, state = load_model(task, path)
    return task, model, config, state, path


def _run_evaluate(args):
    from .training import thread_limits

    try:
        task, model, config, state, path = _load_saved_model(args)
        if args.data_dir is not None:
            config = dataclasses.replace(config, data_dir=args.data_dir)
        with thread_limits(args.threads):
            data = task.load_data(config, state["extra_state"])
            start = time.perf_counter()
            metrics = task.evaluate(model, data, args.split)
            seconds = time.perf_counter() - start
    except (OSError, ValueError, ImportError) as exc:
        _error(exc)
        return EXIT_USAGE
    value = metrics.get(task.metric)
    shown = "-" if value is None else f"{100 * value:.2f}%"
    print(f"{args.split} {task.metric} {shown} ({task.name} {task.label(config)}, epoch "
          f"{state.get('epoch')} of {path}; evaluated in {seconds:.2f} s)")
    return EXIT_OK


def _run_predict(args):
    from .training import thread_limits

    try:
        task, model, config, state, _ = _load_saved_model(args)
        if args.out is not None and os.path.isdir(args.out):
            raise ValueError(f"--out: {args.out} is a directory")
        out = sys.stdout if args.out is None else open(args.out, "w", encoding="utf-8")
    except (OSError, ValueError) as exc:
        _error(exc)
        return EXIT_USAGE
    try:
        with thread_limits(args.threads):
            count = task.predict(model, config, state["extra_state"], args.input, out)
    except (OSError, ValueError, ImportError) as exc:
        _error(exc)
        return EXIT_USAGE
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out is not None:
        print(f"{count} predictions written to {args.out}", file=sys.stderr)
    return EXIT_OK


_COMMANDS = {"train": _run_train, "evaluate": _run_evaluate, "predict": _run_predict}


def main(argv=None):
    """Entry point of ``meprop-numba``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when a file could not be written, 2 for unusable
        input (checked before any training: bad options, paths, data or
        checkpoints), 3 when training diverged (NaN/Inf), 130 on Ctrl-C.

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
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
