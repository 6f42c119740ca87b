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
3. With ``--torch-epoch``: the counting overhead of the PyTorch layers
   (:mod:`meprop_numba.torch.simplify`, MePropLinear + the lazy Adam, the
   same alternating blocks), and the whole training epoch (forward, backward,
   lazy Adam) of the shrunk model against PyTorch CPU dense 784-500-500-10
   (``torch.nn.Linear`` + ``torch.optim.Adam``, the MLP speed table's
   comparison, ``scripts/compare_torch.py``), and of meProp alone at
   500-500, at ``--batch``: for each k of ``--epoch-k`` with its selection
   (``unified`` for the speed table's k=20, ``topk`` for the released
   schedule's k=160). The contenders alternate epoch by epoch; the median
   and the best CPU time of each are printed (PyTorch on one thread runs
   in the calling thread, so its thread CPU time is its whole cost).

One thread for numba, BLAS and PyTorch. Random inputs (the cost does not
depend on the data, except through the ReLUs' zeros, which random inputs
also have).

Usage::

    python scripts/simplify_speed.py                        # k=160 and k=20, batch 50
    python scripts/simplify_speed.py --k 20 --batch 50 --hidden 154 60
    python scripts/simplify_speed.py --k 160 --hidden 134 407 --torch-epoch --epoch-k 20:unified 160:topk
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
    parser.add_argument("--torch-epoch", action="store_true",
                        help="also time the whole training epoch against PyTorch CPU dense")
    parser.add_argument("--epoch-k", nargs="+", default=["20:unified", "160:topk"],
                        help="k:selection cases of the epoch comparison")
    parser.add_argument("--examples", type=int, default=11000, help="examples per timed epoch")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per contender")
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
        g = rng.standard_normal((args.batch, layer.out_features)).astype(np.float32)
        g[g < 0] = 0  # the zeros of a ReLU that was off
        kept = mp.topk_indices(g, k)
        start = time.thread_time_ns()
        for _ in range(reps):
            layer._count(kept, g)
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


def _shrunk_mlp(hidden, k, selection):
    """The MLP at the given hidden sizes; a layer of k or fewer neurons is dense (as after a prune)."""
    ks = [k if k < h else None for h in hidden]
    return MLP(784, list(hidden), 10, k=ks, selection=selection, rng=0)


def epoch_vs_torch(args, k, selection, rng):
    """Median and best CPU seconds of an epoch: shrunk meProp, meProp 500-500, PyTorch dense 500-500."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = rng.random((args.examples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.examples)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    starts = range(0, args.examples - args.batch + 1, args.batch)
    ours = []
    for model in (_shrunk_mlp(args.hidden, k, selection), _shrunk_mlp((500, 500), k, selection)):
        ours.append((model, mp.Adam(model.parameters(), lr=1e-3, lazy=True)))
    tmodel = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500),
                                 torch.nn.ReLU(), torch.nn.Linear(500, 10))
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def ours_epoch(i):
        def run():
            model, opt = ours[i]
            for s in starts:
                _step(model, opt, x[s:s + args.batch], y[s:s + args.batch])
        return run

    def torch_epoch():
        for s in starts:
            topt.zero_grad(set_to_none=True)
            loss_fn(tmodel(xt[s:s + args.batch]), yt[s:s + args.batch]).backward()
            topt.step()

    clock = time.thread_time_ns
    sides = [ours_epoch(0), ours_epoch(1), torch_epoch]
    for run in sides:  # warm-up: compilation, caches, torch's allocator
        run()
    times = [[] for _ in sides]
    for _ in range(args.epochs):
        for t, run in zip(times, sides):
            start = clock()
            run()
            t.append((clock() - start) * 1e-9)
    return [(float(np.median(t)), min(t)) for t in times]


def torch_counting_overhead(k, args, rng):
    """Median CPU seconds of a PyTorch MePropLinear training step without and with counting."""
    import torch

    from meprop_numba.torch import convert, optim
    from meprop_numba.torch.simplify import Simplifier

    torch.set_num_threads(1)
    x = torch.from_numpy(rng.random((args.batch * args.steps, 784), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, args.batch * args.steps))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(convert(torch.nn.Sequential(
            torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500), torch.nn.ReLU(),
            torch.nn.Linear(500, 10)), k=k))
    opts = [optim.Adam(m.parameters(), lr=1e-3) for m in models]
    Simplifier(models[1], opts[1])

    def block(i):
        def run():
            for s in range(args.steps):
                sl = slice(s * args.batch, (s + 1) * args.batch)
                opts[i].zero_grad()
                torch.nn.functional.cross_entropy(models[i](x[sl]), y[sl]).backward()
                opts[i].step()
        return run

    _alternate([block(0), block(1)], 2)
    plain, counted = _alternate([block(0), block(1)], args.blocks)
    return plain / args.steps, counted / args.steps


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
    if not args.torch_epoch:
        return
    for k in args.k:
        plain, counted = torch_counting_overhead(k, args, rng)
        print(f"PyTorch MePropLinear k={k}: step {plain * 1e3:.3f} ms without counting, "
              f"{counted * 1e3:.3f} ms with: overhead {100 * (counted / plain - 1):+.2f}%")
    sizes = "-".join(map(str, args.hidden))
    print(f"\nwhole training epoch ({args.examples} random examples, batch {args.batch}, {args.epochs} "
          f"alternating epochs per contender, CPU seconds median / best; load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"| k, selection | meProp {sizes} | meProp 500-500 | PyTorch dense 500-500 | "
          f"{sizes} vs PyTorch (target >= 8x) | 500-500 vs PyTorch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in args.epoch_k:
        k, selection = case.split(":")
        (small, small_best), (full, full_best), (dense, dense_best) = epoch_vs_torch(
            args, int(k), selection, rng)
        print(f"| {k} {selection} | {small:.3f} / {small_best:.3f} | {full:.3f} / {full_best:.3f} | "
              f"{dense:.3f} / {dense_best:.3f} | {dense / small:.2f}x (best {dense_best / small_best:.2f}x) | "
              f"{dense / full:.2f}x (best {dense_best / full_best:.2f}x) |")


if __name__ == "__main__":
    main()
