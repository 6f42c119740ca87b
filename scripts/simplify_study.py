"""meSimp study: dense, meProp alone and meProp with simplification, several seeds, any task.

Trains one task's model through the one training loop
(:func:`meprop_numba.training.fit`) in three arms per seed: dense back
propagation, meProp alone, and meProp with ``simplify=p`` (the released
schedule: prunes after each of ``parts`` parts of an epoch in even cycles
of ``cycle`` epochs). Every model setting is passed explicitly (none is
left to a task's defaults, which may change):

- ``mlp``: 784-500-500-10 ReLU MLP on Fashion-MNIST, per-example top-k,
  the paper's plain meProp (no dropout, no error feedback: the task's
  defaults add both to meProp), dense output layer, lazy Adam; the dev
  split is the last 5,000 training images.
- ``pos``: the paper's tagger, one unidirectional LSTM layer of
  ``--hidden`` (word embedding 50 + 7 shape features x 20, no dropout, no
  word dropout, XPOS tags), one sentence a step, top-k per gate block,
  lazy Adam.
- ``parse``: the arc-standard parser, embeddings of 50, one cube hidden
  layer of ``--hidden``, per-example top-k, no dropout, lazy Adam.

The dev split is evaluated after every epoch; the test split (where the
data has one) is read once per arm and seed, on the final model, and never
used to choose anything. Each finished run is appended to the JSON file at
once, so an interrupted study keeps its finished runs (``--resume`` skips
them).

Then times, on the last seed's final meProp and meSimp models, a dev
evaluation (inference) and the training step in alternating blocks of CPU
time, the ratios to quote. The per-epoch times come from the loop (wall
time, the arms one after the other, so the machine's load moves them).
One thread for numba and BLAS. ``scripts/simplify_plot.py`` draws the
hidden sizes and dev scores over training from the JSON file.

Usage (the results in docs/results_simplify.md)::

    python scripts/simplify_study.py --task mlp --data-dir ../shared/data/fashion-mnist \\
        --epochs 20 --cycle 5 --parts 8 --k 160 --p 0.1 --batch 100 --seeds 0 1 2 \\
        --json docs/simplify_study_mlp.json
    python scripts/simplify_study.py --task pos --data-dir ../shared/data/ud-english-ewt \\
        --hidden 500 --max-train 1000 --max-dev 500 --epochs 2 --cycle 1 --parts 8 --k 5 \\
        --p 0.1 --batch 1 --seeds 0 1 2 --json docs/simplify_study_pos.json
"""
import argparse
import json
import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meprop_numba.simplify import prunable_units  # noqa: E402
from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.training import fit, run_generators, train_step  # noqa: E402

ARMS = ("dense", "meprop", "mesimp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mlp", choices=("mlp", "pos", "parse"))
    parser.add_argument("--data-dir", default=None,
                        help="Fashion-MNIST IDX files (mlp) or a UD treebank (pos, parse)")
    parser.add_argument("--hidden", type=int, default=500, help="width of every hidden layer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cycle", type=int, default=5, help="epochs per cycle (released: 5)")
    parser.add_argument("--parts", type=int, default=8, help="prunes per epoch in pruning cycles")
    parser.add_argument("--k", type=int, default=160,
                        help="meProp k (per example; pos: per gate block of the LSTM)")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=100,
                        help="examples per step (pos: sentences; parse: transitions)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --json")
    parser.add_argument("--max-train", type=int, default=None,
                        help="first N training images (mlp) or sentences (pos, parse) only")
    parser.add_argument("--max-dev", type=int, default=None,
                        help="first N dev sentences only (pos, parse)")
    parser.add_argument("--json", required=True, help="the results, one entry per finished run")
    return parser.parse_args(argv)


def _config(task, args, arm, seed):
    """The run's configuration, every model setting explicit."""
    base = dict(data_dir=args.data_dir, optimizer="adam", lr=args.lr, lazy=True,
                epochs=args.epochs, batch_size=args.batch, seed=seed, dtype="float32",
                threads=1, eval_test=False, evals_per_epoch=1, hidden=args.hidden,
                k=None if arm == "dense" else args.k, selection="topk")
    if args.task == "mlp":
        base.update(dataset="fashion-mnist", layers=2, dropout=0.0, error_feedback=0.0,
                    output_k=None, dev_size=5000, max_train=args.max_train)
    elif args.task == "pos":
        base.update(tag="xpos", layers=1, bidirectional=False, scope="per_gate", word_dim=50,
                    feature_dim=20, min_word_freq=2, word_dropout=0.0, embedding_dropout=0.0,
                    output_dropout=0.0, error_feedback=0.0, max_train_sentences=args.max_train, max_dev_sentences=args.max_dev)
    else:
        base.update(dim=50, activation="cube", dropout=0.0, min_word_freq=2,
                    max_train_sentences=args.max_train, max_dev_sentences=args.max_dev)
    if arm == "mesimp":
        base.update(simplify=args.p, simplify_cycle=args.cycle, simplify_parts=args.parts)
    return task.config_class(**base)


def _has_test(data):
    test = getattr(data, "test", None)
    if test is None:
        test = getattr(data, "y_test", None)
    return test is not None and len(test) > 0


def _alternate(calls, blocks):
    """Median CPU seconds of each call, the calls in alternating blocks (the first block dropped)."""
    clock = time.thread_time_ns
    times = [[] for _ in calls]
    for _ in range(blocks + 1):
        for t, call in zip(times, calls):
            start = clock()
            call()
            t.append((clock() - start) * 1e-9)
    return [float(np.median(t[1:])) for t in times]


def _step_calls(task, config, data, models, steps):
    """One callable per model: up to `steps` training steps (lazy Adam) on the same first batches.

    Returns the callables and the number of steps each makes.
    """
    from meprop_numba import Adam

    batches = []
    for batch in task.batches(config, data, run_generators(0)[1]):
        batches.append(batch)
        if len(batches) == steps:
            break

    def steps_of(model):
        opt = Adam(model.parameters(), lr=1e-3)

        def call():
            task.start_epoch(model)  # the batches are an epoch's first ones
            for b in batches:
                train_step(model, opt, task.loss, b)
        return call

    return [steps_of(model) for model in models], len(batches)


def _widths(model):
    return [u.width for u in prunable_units(model)]


def _mean_sd(values):
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def main():
    args = parse_args()
    task = TASKS[args.task]
    metric = "uas" if args.task == "parse" else "accuracy"
    runs = []
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            runs = json.load(f)["runs"]
    config = _config(task, args, "meprop", args.seeds[0])
    data = task.load_data(config)
    has_test = _has_test(data)
    models = {}
    for seed in args.seeds:
        for arm in args.arms:
            if any(r["arm"] == arm and r["seed"] == seed for r in runs):
                continue
            load = os.getloadavg()[0]
            result = fit(task, _config(task, args, arm, seed), data, progress=False)
            model = result.pop("model")
            final = task.evaluate(model, data, "dev")
            result.update(arm=arm, seed=seed, load_average=(load + os.getloadavg()[0]) / 2,
                          final_dev=final, final_dev_score=final[metric],
                          test=task.evaluate(model, data, "test") if has_test else None,
                          final_hidden_sizes=_widths(model))
            runs.append(result)
            models[arm] = model
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "metric": metric, "runs": runs}, f, indent=1)
            test = result["test"]
            print(f"seed {seed} {arm}: dev {metric} {100 * final[metric]:.2f}"
                  + (f" test {100 * test[metric]:.2f}" if test else "")
                  + f" sizes {result['final_hidden_sizes']}", flush=True)

    print(f"\n{args.task}: {task.data_summary(data)}; {args.epochs} epochs, hidden {args.hidden}, "
          f"k={args.k} topk, batch {args.batch}, lazy Adam lr {args.lr}, seeds {args.seeds}, "
          f"one thread; simplify p={args.p}, cycles of {args.cycle} epochs, {args.parts} parts\n")
    print(f"| arm | final hidden sizes | best dev {metric} | final dev {metric} | test {metric} "
          "(final model) | epoch 1 train time (s) | last epoch train time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in ARMS:
        done = [r for r in runs if r["arm"] == arm]
        if not done:
            continue
        sizes = "; ".join("-".join(map(str, r["final_hidden_sizes"])) for r in done)
        best = [max(e[f"dev_{metric}"] for e in r["epochs"]) for r in done]
        test = (_mean_sd([r["test"][metric] for r in done]) if all(r["test"] for r in done)
                else "-")
        first = np.mean([r["epochs"][0]["train_s"] for r in done])
        last = np.mean([r["epochs"][-1]["train_s"] for r in done])
        print(f"| {arm} | {sizes} | {_mean_sd(best)} | "
              f"{_mean_sd([r['final_dev_score'] for r in done])} | {test} | {first:.1f} | "
              f"{last:.1f} |")
    loads = ", ".join(f"{r['load_average']:.1f}" for r in runs)
    print(f"\n(mean ± sd over {len(args.seeds)} seeds; load averages during the runs: {loads})")

    if "meprop" in models and "mesimp" in models:
        plain, small = models["meprop"], models["mesimp"]
        sizes = "-".join(map(str, _widths(small)))
        full = "-".join(map(str, _widths(plain)))
        t_plain, t_simp = _alternate([lambda m=m: task.evaluate(m, data, "dev")
                                      for m in (plain, small)], blocks=5)
        print(f"inference (one dev evaluation, CPU time, alternating blocks): {full} "
              f"{t_plain * 1e3:.1f} ms, {sizes} {t_simp * 1e3:.1f} ms: {t_plain / t_simp:.2f}x")
        calls, steps = _step_calls(task, config, data, (plain, small), 30)
        s_plain, s_simp = _alternate(calls, blocks=7)
        print(f"training step (forward, backward, lazy Adam; batch {args.batch}, the final models, "
              f"{steps} steps a block, alternating blocks, CPU time): {full} "
              f"{s_plain / steps * 1e3:.2f} ms, {sizes} {s_simp / steps * 1e3:.2f} ms: "
              f"{s_plain / s_simp:.2f}x")


if __name__ == "__main__":
    main()
