"""A small parsing study through the one training loop: dense vs meProp, dev UAS/LAS and times.

Every run trains ``--task parse`` with :func:`meprop_numba.training.fit` on
the same data (the first ``--sentences`` training sentences, the first
``--dev-sentences`` dev sentences), one after the other in one process, and
prints one Markdown row per run: best dev UAS/LAS, the hidden layer's
backward time per epoch and the whole epoch time. ``--out`` also writes the
results as JSON.

Arms are ``dense``, ``k=N`` (per-example top-k), ``random=N``,
``unified=N`` and ``hidden=N`` (a dense parser of hidden size N).
``--dropout`` applies to every arm, ``--error-feedback`` to the meProp arms.

Usage::

    python scripts/parse_study.py --data-dir ../shared/data/ud-english-ewt \\
        --sentences 2000 --epochs 2 --arms dense k=20 --seeds 0
"""
import argparse
import json
import os
import sys


def _arm(text, base):
    if text == "dense":
        return {"k": None}
    kind, _, value = text.partition("=")
    value = int(value)
    if kind == "k":
        return {"k": value, "selection": "topk"}
    if kind in ("random", "unified"):
        return {"k": value, "selection": kind}
    if kind == "hidden":
        return {"k": None, "hidden": value}
    raise SystemExit(f"unknown arm {text!r} (dense, k=N, random=N, unified=N, hidden=N)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("MEPROP_NUMBA_PARSE_DIR"))
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--dev-sentences", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--activation", default="cube")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0, help="on the hidden activations, every arm")
    p.add_argument("--error-feedback", type=float, default=0.0,
                   help="error-feedback decay of the meProp hidden layer (meProp arms)")
    p.add_argument("--arms", nargs="+", default=["dense", "k=20"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=None, help="JSON file for all results")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("error: --data-dir DIR (a UD treebank folder) is required", file=sys.stderr)
        return 2

    from meprop_numba.tasks.parse.task import ParseConfig, ParseTask
    from meprop_numba.training import fit

    task = ParseTask()
    shared = dict(data_dir=args.data_dir, max_train_sentences=args.sentences,
                  max_dev_sentences=args.dev_sentences, epochs=args.epochs,
                  batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  activation=args.activation, threads=args.threads, dropout=args.dropout)
    data = task.load_data(ParseConfig(**shared).validate())
    print(task.describe(ParseConfig(**shared), data))
    print("\n| run | seed | best dev UAS | best dev LAS | hidden backward / epoch (s) "
          "| epoch (s) |\n| --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            arm_options = _arm(arm, shared)
            if arm_options["k"] is not None:
                arm_options["error_feedback"] = args.error_feedback
            config = ParseConfig(**{**shared, **arm_options, "seed": seed}).validate()
            results = fit(task, config, data, progress=False)
            results.pop("model", None)
            best = results["epochs"][results["best_epoch"] - 1]
            row = {"arm": arm, "seed": seed, "label": task.label(config),
                   "dev_uas": best.get("dev_uas"), "dev_las": best.get("dev_las"),
                   "backward_hidden_s": results.get("mean_backward_hidden_s"),
                   "train_s": results.get("mean_train_s"), "results": results}
            rows.append(row)
            print(f"| {row['label']} | {seed} | {100 * row['dev_uas']:.2f} | "
                  f"{100 * row['dev_las']:.2f} | {row['backward_hidden_s']:.2f} | "
                  f"{row['train_s']:.1f} |", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "data": task.data_summary(data), "runs": rows}, fh,
                      indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
