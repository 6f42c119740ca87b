"""Cost of meSimp's selection counting on a meProp training step, and the forward speed after shrinking.

1. Counting overhead: two copies of the MLP 784-500-500-10 (float32, lazy
   Adam), one counting its hidden layers' selections
   (:meth:`meprop_numba.nn.Linear.count_selections`), one not, train on the
   same minibatches in alternating blocks of steps; the ratio of the
   medians of the blocks' CPU times (``time.thread_time_ns``, so the other
   processes on the machine disturb it little) is the overhead. On a
   loaded machine that ratio is noisy by a few percent, so the counting
   call itself is also timed alone (on top-k selections of the step's
   shape, once per hidden layer) and reported as a share of the step.
2. Inference: the forward pass of the dense 784-500-500-10 against the same
   model shrunk to the given hidden sizes (what simplification leaves),
   again alternating, batch 1000 (evaluation) and the training batch.

One thread for numba and BLAS. Random inputs (the cost does not depend on
the data).

Usage::

    python scripts/simplify_speed.py                        # k=160 and k=20, batch 50
    python scripts/simplify_speed.py --k 20 --batch 50 --hidden 154 60
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
from meprop_numba.nn import MLP, softmax_cross_entropy  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--k", type=int, nargs="+", default=[160, 20])
    parser.add_argument("--selection", default="topk", choices=("topk", "unified", "random"))
    parser.add_argument("--blocks", type=int, default=15, help="measured blocks per side")
    parser.add_argument("--steps", type=int, default=40, help="training steps per block")
    parser.add_argument("--hidden", type=int, nargs=2, default=[154, 60],
                        help="hidden sizes of the shrunk model for the inference ratio")
    args = parser.parse_args(argv)
    if min(args.batch, args.blocks, args.steps, *args.k, *args.hidden) < 1:
        parser.error("every number must be >= 1")
    return args


def _step(model, opt, x, y):
    _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(grad)
    opt.step(model.grads())


def _alternate(sides, blocks):
    """Median CPU seconds of each side's blocks, run in turns (A B A B ...)."""
    clock = time.thread_time_ns
    times = [[] for _ in sides]
    for _ in range(blocks):
        for t, run in zip(times, sides):
            start = clock()
            run()
            t.append((clock() - start) * 1e-9)
    return [float(np.median(t)) for t in times]


def counting_overhead(k, args, rng):
    x = rng.random((args.batch * args.steps, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch * args.steps)
    models = [MLP(784, 500, 10, k=k, selection=args.selection, rng=0) for _ in range(2)]
    opts = [mp.Adam(m.parameters(), lr=1e-3) for m in models]
    for layer in models[1].linear_layers[:-1]:
        layer.count_selections()

    def block(i):
        def run():
            for s in range(args.steps):
                sl = slice(s * args.batch, (s + 1) * args.batch)
                _step(models[i], opts[i], x[sl], y[sl])
        return run

    _alternate([block(0), block(1)], 2)  # warm-up (compilation, caches)
    plain, counted = _alternate([block(0), block(1)], args.blocks)
    return plain / args.steps, counted / args.steps, _counting_call(models[1], k, args, rng)


def _counting_call(model, k, args, rng):
    """CPU seconds of the counting calls of one step (every hidden layer), timed alone."""
    reps = 2000
    total = 0.0
    for layer in model.linear_layers[:-1]:
        kept = mp.topk_indices(rng.standard_normal((args.batch, layer.out_features)).astype(np.float32), k)
        start = time.thread_time_ns()
        for _ in range(reps):
            layer._count(kept, args.batch)
        total += (time.thread_time_ns() - start) * 1e-9 / reps
    return total


def inference_ratio(batch, hidden, blocks, rng):
    dense, small = MLP(784, 500, 10, rng=0), MLP(784, hidden, 10, rng=0)
    x = rng.random((batch, 784), dtype=np.float32)
    reps = max(1, 20000 // batch)

    def fwd(model):
        def run():
            for _ in range(reps):
                model.forward(x)
        return run

    _alternate([fwd(dense), fwd(small)], 2)
    t_dense, t_small = _alternate([fwd(dense), fwd(small)], blocks)
    return t_dense / reps, t_small / reps


def main():
    args = parse_args()
    mp.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"MLP 784-500-500-10 float32, lazy Adam, batch {args.batch}, selection {args.selection}, "
          f"one thread; {args.blocks} alternating blocks of {args.steps} steps per side; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for k in args.k:
        plain, counted, call = counting_overhead(k, args, rng)
        print(f"k={k:4d}: step {plain * 1e3:.3f} ms without counting, {counted * 1e3:.3f} ms with: "
              f"overhead {100 * (counted / plain - 1):+.2f}%; the counting calls alone "
              f"{call * 1e6:.1f} us = {100 * call / plain:.2f}% of the step")
    for batch in (1000, args.batch):
        t_dense, t_small = inference_ratio(batch, args.hidden, args.blocks, rng)
        print(f"forward, batch {batch}: dense 500-500 {t_dense * 1e3:.3f} ms, "
              f"shrunk {args.hidden[0]}-{args.hidden[1]} {t_small * 1e3:.3f} ms: "
              f"{t_dense / t_small:.2f}x")


if __name__ == "__main__":
    main()
