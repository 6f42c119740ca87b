"""POS study: dense vs meProp LSTM taggers on a UD treebank, Adam and AdaGrad.

Runs every configuration of the grid (dense, meProp top-k for each k and
error-feedback decay, random-k at one k) for each optimizer and seed with
:func:`meprop_numba.training.fit` (the ``pos`` task), writes one JSON per run into
``--out-dir`` (runs already there are skipped, so an interrupted study
resumes) and prints a Markdown table of dev accuracy and per-epoch times.
``--preset paper`` is the meProp paper's tagger (one unidirectional LSTM of
500, no dropout, no error feedback); ``--preset default`` the package's
default tagger. With ``--patience N`` each run trains epoch by epoch until
the dev accuracy has not improved for N epochs, or ``--epochs`` (the cap).

Examples (docs/results_pos.md: the study at convergence, the full training
set at 2 epochs, and the reduced study)::

    python scripts/pos_study.py --pos-dir ../shared/data/ud-english-ewt --preset default \\
        --train-sentences 3000 --epochs 12 --patience 2 --seeds 0 1 --optimizers adam \\
        --ks 10 --error-feedbacks 0.8 0 --random-k 0 --out-dir runs/pos_converge
    python scripts/pos_study.py --pos-dir ../shared/data/ud-english-ewt --preset paper \\
        --epochs 2 --seeds 0 1 --optimizers adam --ks 5 10 20 --random-k 10 --out-dir runs/pos_full
    python scripts/pos_study.py --pos-dir ../shared/data/ud-english-ewt --preset paper \\
        --train-sentences 3000 --epochs 2 --seeds 0 1 --out-dir runs/pos_study
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pos-dir", default=os.environ.get("MEPROP_NUMBA_POS_DIR"),
                   help="UD treebank directory (default $MEPROP_NUMBA_POS_DIR)")
    p.add_argument("--out-dir", default="runs/pos_study", help="one JSON per run (default runs/pos_study)")
    p.add_argument("--train-sentences", type=int, default=None,
                   help="train on the first N training sentences (default all)")
    p.add_argument("--dev-sentences", type=int, default=None, help="first N dev sentences (default all)")
    p.add_argument("--preset", choices=("paper", "default"), default="paper",
                   help="the tagger: 'paper' (unidirectional, no dropout, no error feedback; "
                        "default) or 'default' (the package's default tagger)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (with --patience: the cap)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a run once dev accuracy has not improved for this many epochs")
    p.add_argument("--error-feedbacks", type=float, nargs="+", default=None,
                   help="error-feedback decays of the meProp runs (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="meProp k per gate")
    p.add_argument("--random-k", type=int, default=10, help="k of the random-k baseline (0: none)")
    p.add_argument("--optimizers", nargs="+", default=["adam", "adagrad"])
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads of each run (default: the machine's)")
    p.add_argument("--eval-test", action="store_true", help="also report the test split")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate the runs already in --out-dir")
    return p.parse_args(argv)


def _grid(args):
    """(optimizer, k, selection, error feedback or None for the preset's)."""
    betas = args.error_feedbacks or [None]
    for optimizer in args.optimizers:
        yield optimizer, None, "topk", None
        for k in args.ks:
            for beta in betas:
                yield optimizer, k, "topk", beta
        if args.random_k and optimizer == "adam":
            yield optimizer, args.random_k, "random", betas[0]


def _name(optimizer, k, selection, beta, seed, preset="paper"):
    name = (f"{optimizer}-{'dense' if k is None else f'k{k}'}"
            f"{'-random' if selection == 'random' else ''}"
            f"{'' if beta is None or k is None else f'-ef{beta:g}'}-s{seed}")
    return name if preset == "paper" else f"{preset}-{name}"


def _model(k, selection, beta):
    if k is None:
        return "dense"
    return (f"meProp k={k}{' random' if selection == 'random' else ''}"
            f"{'' if beta is None else f' ef {beta:g}'}")


def _fit_until_dev_stops(fit, task, config, data, path, patience):
    """Train one epoch at a time (resuming the checkpoint) until `patience` epochs bring no gain.

    The checkpoint directory sits next to the JSON (``NAME.ckpt``); a study
    interrupted mid-run continues from its last epoch.
    """
    import dataclasses

    ckpt = path[:-len(".json")] + ".ckpt"
    done = 0
    if os.path.exists(path) and os.path.exists(os.path.join(ckpt, "last.npz")):
        with open(path) as fh:
            res = json.load(fh)
        done = len(res["epochs"])
        if res["best_epoch"] is not None and done - res["best_epoch"] >= patience:
            return res
    for epoch in range(done + 1, config.epochs + 1):
        res = fit(task, dataclasses.replace(config, epochs=epoch), data, checkpoint_dir=ckpt,
                  resume=epoch > 1, overwrite=epoch == 1, progress=False, out=path)
        if res["stopped"] or epoch - res["best_epoch"] >= patience:
            break
    return res


def _table(rows, args):
    import numpy as np

    header = ("| optimizer | model | dev acc. (%) per seed | mean dev acc. (%) "
              "| best epoch / epochs run, per seed | LSTM backward (s/epoch) | epoch (s) |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    groups = {}
    for (optimizer, k, selection, beta, seed), res in rows:
        groups.setdefault((optimizer, k, selection, beta), []).append(res)
    for (optimizer, k, selection, beta), runs in groups.items():
        accs = [100 * r["best_dev_accuracy"] for r in runs]
        epochs = ", ".join(f"{r['best_epoch']}/{len(r['epochs'])}" for r in runs)
        lines.append(
            f"| {optimizer} | {_model(k, selection, beta)} | {', '.join(f'{a:.2f}' for a in accs)} "
            f"| {np.mean(accs):.2f} | {epochs} | "
            f"{np.mean([r['mean_backward_lstm_s'] for r in runs]):.2f} | "
            f"{np.mean([r['mean_train_s'] for r in runs]):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if not args.pos_dir:
        print("error: give --pos-dir DIR or set $MEPROP_NUMBA_POS_DIR", file=sys.stderr)
        return 2
    from meprop_numba.tasks import TASKS, pos
    from meprop_numba.training import fit

    os.makedirs(args.out_dir, exist_ok=True)
    data = pos.load_pos_data(args.pos_dir, max_train_sentences=args.train_sentences,
                             max_dev_sentences=args.dev_sentences)
    print(json.dumps(data.summary()), flush=True)
    rows = []
    for optimizer, k, selection, beta in _grid(args):
        for seed in args.seeds:
            name = _name(optimizer, k, selection, beta, seed, args.preset)
            path = os.path.join(args.out_dir, name + ".json")
            key = (optimizer, k, selection, beta, seed)
            if os.path.exists(path):
                with open(path) as fh:
                    res = json.load(fh)
                if args.patience is None or args.report_only:  # with patience: continue it
                    rows.append((key, res))
                    continue
            if args.report_only:
                continue
            changes = {} if beta is None else {"error_feedback": beta}
            fields = dict(data_dir=args.pos_dir, hidden=args.hidden, k=k, selection=selection,
                          optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                          seed=seed, max_train_sentences=args.train_sentences,
                          max_dev_sentences=args.dev_sentences, eval_test=args.eval_test,
                          threads=args.threads, **changes)
            config = (pos.POSConfig.preset("paper", **fields) if args.preset == "paper"
                      else pos.POSConfig(**fields))
            start = time.perf_counter()
            if args.patience is None:
                res = fit(TASKS["pos"], config, data, progress=False, out=path)
            else:
                res = _fit_until_dev_stops(fit, TASKS["pos"], config, data, path, args.patience)
            res.pop("model", None)
            print(f"{name}: best dev {100 * res['best_dev_accuracy']:.2f}% (epoch "
                  f"{res['best_epoch']} of {len(res['epochs'])}) in "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            rows.append((key, res))
    print()
    print(_table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
