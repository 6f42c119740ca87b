"""meSimp on the MLP: dense, meProp alone and meProp with simplification, several seeds.

Trains the 784-500-500-10 MLP (float32, lazy Adam, per-example top-k)
through the one training loop (:func:`meprop_numba.training.fit`) in three
arms per seed: dense back propagation, meProp alone, and meProp with
``simplify=p`` (the released schedule: prunes after each of ``parts`` parts
of an epoch in even cycles of ``cycle`` epochs). The dev split (the last
5,000 training images) is evaluated after every epoch; the test split is
read once per arm and seed, on the final model, and never used to choose
anything. Each finished run is appended to the JSON file at once, so an
interrupted study keeps its finished runs (``--resume`` skips them).

Then times, on the last seed's final models, the forward pass (inference)
and the training step in alternating blocks of CPU time, the ratios to
quote. The per-epoch times come from the loop (wall time, the arms one
after the other, so the machine's load moves them). One thread for numba
and BLAS. ``scripts/simplify_plot.py`` draws the hidden sizes and dev
accuracy over training from the JSON file.

Usage (the results in docs/results_simplify.md)::

    python scripts/simplify_study.py --data-dir ../shared/data/fashion-mnist \\
        --epochs 20 --cycle 5 --k 160 --p 0.1 --batch 100 --seeds 0 1 2 \\
        --json docs/simplify_study.json
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

from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.training import fit  # noqa: E402


ARMS = ("dense", "meprop", "mesimp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cycle", type=int, default=5, help="epochs per cycle (released: 5)")
    parser.add_argument("--parts", type=int, default=8, help="prunes per epoch in pruning cycles")
    parser.add_argument("--k", type=int, default=160)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --json")
    parser.add_argument("--max-train", type=int, default=None, help="first N training images only")
    parser.add_argument("--json", required=True, help="the results, one entry per finished run")
    return parser.parse_args(argv)


def _forward_ratio(dense, small, x, blocks=9):
    """Median CPU seconds of a forward pass over `x` (batches of 1000), alternating the models."""
    clock = time.thread_time_ns
    times = ([], [])
    for _ in range(blocks + 1):
        for t, model in zip(times, (dense, small)):
            start = clock()
            for i in range(0, len(x), 1000):
                model.forward(x[i:i + 1000])
            t.append((clock() - start) * 1e-9)
    return float(np.median(times[0][1:])), float(np.median(times[1][1:]))


def _step_ratio(dense, small, x, y, batch, blocks=7):
    """Median CPU seconds of a training step (forward, backward, lazy Adam), alternating the models."""
    from meprop_numba import Adam
    from meprop_numba.nn import softmax_cross_entropy

    opts = [Adam(m.parameters(), lr=1e-3) for m in (dense, small)]
    steps = len(y) // batch
    clock = time.thread_time_ns
    times = ([], [])
    for _ in range(blocks + 1):
        for t, model, opt in zip(times, (dense, small), opts):
            start = clock()
            for s in range(steps):
                rows = slice(s * batch, (s + 1) * batch)
                _, grad = softmax_cross_entropy(model.forward(x[rows], train=True), y[rows])
                model.backward(grad)
                opt.step(model.grads())
            t.append((clock() - start) * 1e-9 / steps)
    return float(np.median(times[0][1:])), float(np.median(times[1][1:]))


def _config(task, args, arm, seed):
    base = dict(dataset="fashion-mnist", data_dir=args.data_dir, hidden=500, layers=2,
                k=None if arm == "dense" else args.k, selection="topk", epochs=args.epochs,
                batch_size=args.batch, seed=seed, threads=1, eval_test=False,
                max_train=args.max_train)
    if arm == "mesimp":
        base.update(simplify=args.p, simplify_cycle=args.cycle, simplify_parts=args.parts)
    return task.config_class(**base)


def _mean_sd(values):
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def main():
    args = parse_args()
    task = TASKS["mlp"]
    runs = []
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            runs = json.load(f)["runs"]
    data = task.load_data(_config(task, args, "meprop", args.seeds[0]))
    models = {}
    for seed in args.seeds:
        for arm in args.arms:
            if any(r["arm"] == arm and r["seed"] == seed for r in runs):
                continue
            load = os.getloadavg()[0]
            result = fit(task, _config(task, args, arm, seed), data, progress=False)
            model = result.pop("model")
            result.update(arm=arm, seed=seed, load_average=(load + os.getloadavg()[0]) / 2,
                          final_dev_accuracy=task.evaluate(model, data, "dev")["accuracy"],
                          test_accuracy=task.evaluate(model, data, "test")["accuracy"],
                          final_hidden_sizes=list(model.hidden_sizes))
            runs.append(result)
            models[arm] = model
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "runs": runs}, f, indent=1)
            print(f"seed {seed} {arm}: dev {100 * result['final_dev_accuracy']:.2f} test "
                  f"{100 * result['test_accuracy']:.2f} sizes {result['final_hidden_sizes']}",
                  flush=True)

    print(f"\nMLP 784-500-500-10 on Fashion-MNIST ({len(data.y_train)} training images, "
          f"{len(data.y_dev)} dev, {len(data.y_test)} test), {args.epochs} epochs, k={args.k} topk, "
          f"batch {args.batch}, lazy Adam, seeds {args.seeds}, one thread; simplify p={args.p}, "
          f"cycles of {args.cycle} epochs, {args.parts} parts\n")
    print("| arm | final hidden sizes | best dev acc | final dev acc | test acc (final model) "
          "| step time, first epoch (s) | step time, last epoch (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in ARMS:
        done = [r for r in runs if r["arm"] == arm]
        if not done:
            continue
        sizes = "; ".join("-".join(map(str, r["final_hidden_sizes"])) for r in done)
        first = np.mean([r["epochs"][0]["train_s"] for r in done])
        last = np.mean([r["epochs"][-1]["train_s"] for r in done])
        print(f"| {arm} | {sizes} | {_mean_sd([r['best_dev_accuracy'] for r in done])} | "
              f"{_mean_sd([r['final_dev_accuracy'] for r in done])} | "
              f"{_mean_sd([r['test_accuracy'] for r in done])} | {first:.1f} | {last:.1f} |")
    loads = ", ".join(f"{r['load_average']:.1f}" for r in runs)
    print(f"\n(mean ± sd over {len(args.seeds)} seeds; load averages during the runs: {loads})")

    if "meprop" in models and "mesimp" in models:
        dense, small = models["meprop"], models["mesimp"]
        sizes = small.hidden_sizes
        x_dev = data.x_dev.astype(np.float32)
        t_plain, t_simp = _forward_ratio(dense, small, x_dev)
        x_train = data.x_train[:30 * args.batch].astype(np.float32)
        s_plain, s_simp = _step_ratio(dense, small, x_train, data.y_train[:30 * args.batch],
                                      args.batch)
        print(f"inference (forward over the {len(x_dev)} dev images, batches of 1000): 500-500 "
              f"{t_plain * 1e3:.1f} ms, {sizes[0]}-{sizes[1]} {t_simp * 1e3:.1f} ms: "
              f"{t_plain / t_simp:.2f}x")
        print(f"training step (forward, backward, lazy Adam; batch {args.batch}, the final models, "
              f"alternating blocks, CPU time): 500-500 {s_plain * 1e3:.2f} ms, "
              f"{sizes[0]}-{sizes[1]} {s_simp * 1e3:.2f} ms: {s_plain / s_simp:.2f}x")


if __name__ == "__main__":
    main()
