"""Where a training step of the paper's MLP spends its time, layer by layer.

Trains 784-500-500-10 (ReLU, softmax cross-entropy, lazy Adam lr 0.001,
float32) on consecutive minibatches and reports, per step, the CPU time of
every layer's forward and backward, the loss and the optimizer step
(``time.thread_time_ns``, so other processes on the machine disturb it
little). One thread for numba and BLAS.

Usage::

    python scripts/mlp_step_profile.py --batch 50 --mode unified --k 20
    python scripts/mlp_step_profile.py --batch 10 --mode topk --k 20 --data-dir DIR
    python scripts/mlp_step_profile.py --batch 50 --k 0          # dense
"""
import argparse
import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import meprop_numba as mp  # noqa: E402
from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.nn import MLP, softmax_cross_entropy  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="embedded",
                        help="embedded (default), fashion-mnist, mnist or an IDX directory")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--mode", default="unified", choices=("topk", "unified", "random"))
    parser.add_argument("--k", type=int, default=20, help="meProp k of the hidden layers; 0 for dense")
    parser.add_argument("--steps", type=int, default=600, help="measured steps (after 100 warm-up steps)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.k < 0:
        parser.error("--batch and --steps must be >= 1, --k >= 0")
    return args


def main():
    args = parse_args()
    mp.set_num_threads(1)
    data = load_dataset(args.dataset, args.data_dir)
    x_all, y_all = data.x_train, data.y_train
    model = MLP(x_all.shape[1], 500, data.n_classes, k=args.k or None, selection=args.mode, rng=0)
    optimizer = mp.Adam(model.params(), lr=1e-3, lazy=True)
    names = [f"{type(layer).__name__.lower()}{i}" for i, layer in enumerate(model.layers)]
    totals = {}
    clock = time.thread_time_ns

    def add(name, start):
        totals[name] = totals.get(name, 0) + clock() - start

    n_batches = len(x_all) // args.batch
    for step in range(100 + args.steps):
        if step == 100:
            totals.clear()
        rows = slice((step % n_batches) * args.batch, (step % n_batches + 1) * args.batch)
        h, y = x_all[rows], y_all[rows]
        for name, layer in zip(names, model.layers):
            start = clock()
            h = layer.forward(h, train=True)
            add(f"forward {name}", start)
        start = clock()
        _, grad = softmax_cross_entropy(h, y)
        add("loss", start)
        for name, layer in zip(reversed(names), reversed(model.layers)):
            start = clock()
            grad = layer.backward(grad)
            add(f"backward {name}", start)
            if grad is None:
                break
        start = clock()
        optimizer.step(model.grads())
        add("optimizer", start)

    total = sum(totals.values())
    label = "dense" if not args.k else f"{args.mode} k={args.k}"
    print(f"{data.name}, batch {args.batch}, {label}: us per step over {args.steps} steps (thread CPU time)")
    for name, ns in totals.items():
        print(f"  {name:<20} {ns / args.steps / 1e3:8.1f}  {100 * ns / total:5.1f}%")
    print(f"  {'total':<20} {total / args.steps / 1e3:8.1f}")


if __name__ == "__main__":
    main()
