"""meSimp on the MLP: meProp with and without model simplification, same seed, same data.

Trains the 784-500-500-10 MLP (float32, lazy Adam, per-example top-k) twice
through the one training loop (:func:`meprop_numba.training.fit`): meProp
alone, and meProp with ``simplify=p`` (the released schedule: prunes after
each of ``parts`` parts of an epoch in even cycles of ``cycle`` epochs).
Model selection uses the dev split only (the last 5,000 training images);
the test split is never evaluated. Then times the forward pass (inference)
of the two final models on the dev images in alternating blocks.

Prints, as Markdown: per epoch the dev accuracy, the hidden sizes and the
whole-step training time of both arms, the final sizes, and the inference
ratio. The per-epoch times come from the loop (wall time, the arms one after
the other, so the machine's load moves them); the final models' training
step and forward pass are also timed in alternating blocks of CPU time,
the ratios to quote. One thread for numba and BLAS.

Usage (the results in docs/results_simplify.md)::

    python scripts/simplify_study.py --data-dir ../shared/data/fashion-mnist \\
        --epochs 10 --cycle 5 --k 160 --p 0.1 --batch 100 --seed 0
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cycle", type=int, default=5, help="epochs per cycle (released: 5)")
    parser.add_argument("--parts", type=int, default=8, help="prunes per epoch in pruning cycles")
    parser.add_argument("--k", type=int, default=160)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None, help="first N training images only")
    parser.add_argument("--json", default=None, help="also write the raw results here")
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


def main():
    args = parse_args()
    task = TASKS["mlp"]
    base = dict(dataset="fashion-mnist", data_dir=args.data_dir, hidden=500, layers=2, k=args.k,
                selection="topk", epochs=args.epochs, batch_size=args.batch, seed=args.seed,
                threads=1, eval_test=False, max_train=args.max_train)
    plain_config = task.config_class(**base)
    simp_config = task.config_class(**base, simplify=args.p, simplify_cycle=args.cycle,
                                    simplify_parts=args.parts)
    data = task.load_data(plain_config)
    load = os.getloadavg()[0]
    plain = fit(task, plain_config, data, progress=False)
    simp = fit(task, simp_config, data, progress=False)
    x_dev = data.x_dev.astype(np.float32)
    t_plain, t_simp = _forward_ratio(plain["model"], simp["model"], x_dev)
    x_train = data.x_train[:30 * args.batch].astype(np.float32)
    s_plain, s_simp = _step_ratio(plain["model"], simp["model"], x_train,
                                  data.y_train[:30 * args.batch], args.batch)
    load = (load + os.getloadavg()[0]) / 2

    print(f"MLP 784-500-500-10 on Fashion-MNIST ({len(data.y_train)} training images, "
          f"{len(data.y_dev)} dev), k={args.k} topk, batch {args.batch}, lazy Adam, seed {args.seed}, "
          f"one thread; simplify p={args.p}, cycles of {args.cycle} epochs, {args.parts} parts; "
          f"load average about {load:.1f} on {os.cpu_count()} CPUs\n")
    print("| epoch | meProp dev acc | meSimp dev acc | meSimp hidden sizes | meProp step time (s/epoch) "
          "| meSimp step time (s/epoch) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for a, b in zip(plain["epochs"], simp["epochs"]):
        ratio = a["train_s"] / b["train_s"]
        print(f"| {a['epoch']} | {100 * a['dev_accuracy']:.2f} | {100 * b['dev_accuracy']:.2f} | "
              f"{'-'.join(map(str, b['hidden_sizes']))} | {a['train_s']:.1f} | {b['train_s']:.1f} | "
              f"{ratio:.2f}x |")
    sizes = simp["model"].hidden_sizes
    print(f"\nbest dev accuracy: meProp {100 * plain['best_dev_accuracy']:.2f}% (epoch "
          f"{plain['best_epoch']}), meSimp {100 * simp['best_dev_accuracy']:.2f}% (epoch "
          f"{simp['best_epoch']}); final hidden sizes {sizes}")
    print(f"inference (forward over the {len(x_dev)} dev images, batches of 1000): 500-500 "
          f"{t_plain * 1e3:.1f} ms, {sizes[0]}-{sizes[1]} {t_simp * 1e3:.1f} ms: {t_plain / t_simp:.2f}x")
    print(f"training step (forward, backward, lazy Adam; batch {args.batch}, the final models, "
          f"alternating blocks, CPU time): 500-500 {s_plain * 1e3:.2f} ms, {sizes[0]}-{sizes[1]} "
          f"{s_simp * 1e3:.2f} ms: {s_plain / s_simp:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meprop": {k: v for k, v in plain.items() if k != "model"},
                       "mesimp": {k: v for k, v in simp.items() if k != "model"},
                       "forward_s": {"meprop": t_plain, "mesimp": t_simp},
                       "step_s": {"meprop": s_plain, "mesimp": s_simp}}, f, indent=2)


if __name__ == "__main__":
    main()
