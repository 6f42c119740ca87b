"""POS study: dense vs meProp LSTM taggers on a UD treebank, Adam and AdaGrad.

Runs every configuration of the grid (dense, meProp top-k for each k,
random-k at one k) for each optimizer and seed with
:func:`meprop_numba.training.fit` (the ``pos`` task), writes one JSON per run into
``--out-dir`` (runs already there are skipped, so an interrupted study
resumes) and prints a Markdown table of dev accuracy and per-epoch times.

Examples (docs/results_pos.md: the full training set, and the reduced study)::

    python scripts/pos_study.py --pos-dir ../shared/data/ud-english-ewt \\
        --epochs 2 --seeds 0 1 --optimizers adam --ks 5 10 20 --random-k 10 --out-dir runs/pos_full
    python scripts/pos_study.py --pos-dir ../shared/data/ud-english-ewt \\
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
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="meProp k per gate")
    p.add_argument("--random-k", type=int, default=10, help="k of the random-k baseline (0: none)")
    p.add_argument("--optimizers", nargs="+", default=["adam", "adagrad"])
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--eval-test", action="store_true", help="also report the test split")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate the runs already in --out-dir")
    return p.parse_args(argv)


def _grid(args):
    for optimizer in args.optimizers:
        yield optimizer, None, "topk"
        for k in args.ks:
            yield optimizer, k, "topk"
        if args.random_k and optimizer == "adam":
            yield optimizer, args.random_k, "random"


def _name(optimizer, k, selection, seed):
    return f"{optimizer}-{'dense' if k is None else f'k{k}'}{'-random' if selection == 'random' else ''}-s{seed}"


def _table(rows, args):
    import numpy as np

    header = ("| optimizer | model | dev acc. (%) per seed | mean dev acc. (%) "
              "| LSTM backward (s/epoch) | epoch (s) |")
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    groups = {}
    for (optimizer, k, selection, seed), res in rows:
        groups.setdefault((optimizer, k, selection), []).append(res)
    for (optimizer, k, selection), runs in groups.items():
        accs = [100 * r["best_dev_accuracy"] for r in runs]
        model = "dense" if k is None else f"meProp k={k}{' random' if selection == 'random' else ''}"
        lines.append(
            f"| {optimizer} | {model} | {', '.join(f'{a:.2f}' for a in accs)} | {np.mean(accs):.2f} | "
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
    for optimizer, k, selection in _grid(args):
        for seed in args.seeds:
            path = os.path.join(args.out_dir, _name(optimizer, k, selection, seed) + ".json")
            if os.path.exists(path):
                with open(path) as fh:
                    rows.append(((optimizer, k, selection, seed), json.load(fh)))
                continue
            if args.report_only:
                continue
            config = pos.POSConfig(data_dir=args.pos_dir, hidden=args.hidden, k=k,
                                   selection=selection, optimizer=optimizer, epochs=args.epochs,
                                   batch_size=args.batch_size, seed=seed,
                                   max_train_sentences=args.train_sentences,
                                   max_dev_sentences=args.dev_sentences, eval_test=args.eval_test)
            start = time.perf_counter()
            res = fit(TASKS["pos"], config, data, progress=False, out=path)
            res.pop("model", None)
            print(f"{_name(optimizer, k, selection, seed)}: best dev "
                  f"{100 * res['best_dev_accuracy']:.2f}% in {time.perf_counter() - start:.0f}s",
                  flush=True)
            rows.append(((optimizer, k, selection, seed), res))
    print()
    print(_table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
