"""Speed of meprop_numba.torch against plain PyTorch, on one CPU thread, in one run.

Cases (float32, timings taken in turns; times are medians of the rounds, ratios the medians of
the per-round ratios, with their range in brackets):

1. 784-500-500-10 MLP, a whole training step (zero_grad, forward, cross
   entropy, backward, optimizer step): ``convert(model, k=20)`` + lazy
   :class:`meprop_numba.torch.optim.Adam` against the same ``nn.Linear``
   model + ``torch.optim.Adam``; per example k=20 batch 10 and unified k=20
   batch 50.  Both train on the same sequence of minibatches of the
   embedded Fashion-MNIST subset (shuffled once), as a user would: on one
   fixed minibatch the loss falls to ~1e-6 within 100 steps and the
   gradients stop being those of training.
2. One layer, B=256, 4096 -> 4096, unified k=64: the backward alone (each
   starting without gradients, as after ``zero_grad()``: accumulating into
   the previous ones would time the accumulation too, and a row-sparse
   gradient summed over many backwards grows), and forward + backward + Adam
   step (inputs and output gradients cycle through 4 random sets).
3. Per-call overheads: an empty ``autograd.Function``, the NumPy round trip,
   packing the row gradient as COO, the wrapper around the kernel.

The "ceiling" column is the dense step divided by the meProp model's
forward alone (timed in the same turns): the ratio a meProp step whose
backward and update cost nothing would reach, since the forward is
PyTorch's own on both sides.

Usage::

    python scripts/torch_speed.py [--rounds 7] [--quick] [--clock wall|thread] [--only mlp|layer|overheads ...]
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import meprop_numba as mp  # noqa: E402
from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.torch import MePropLinear, convert, optim  # noqa: E402
from meprop_numba.torch.linear import _backward_tensors  # noqa: E402

F = torch.nn.functional


#: The clock of the timings: wall time, or (``--clock thread``) this thread's CPU time, which
#: leaves out the time other processes hold the cores (everything here runs on one thread).
CLOCK = time.perf_counter


def in_turns(fns, repeat, rounds):
    """Seconds per call of each function in each round, timed round-robin (load hits both alike)."""
    times = [[] for _ in fns]
    for fn in fns:
        for _ in range(max(3, repeat // 5)):
            fn()
    for _ in range(rounds):
        for j, fn in enumerate(fns):
            start = CLOCK()
            for _ in range(repeat):
                fn()
            times[j].append((CLOCK() - start) / repeat)
    return times


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500),
                               torch.nn.ReLU(), torch.nn.Linear(500, 10))


def minibatches(batch):
    """The embedded Fashion-MNIST training images in minibatches of `batch`, shuffled once (seed 0)."""
    data = load_dataset("embedded")
    order = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))
    x = torch.from_numpy(data.x_train)[order].contiguous()
    y = torch.from_numpy(data.y_train).long()[order]
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, x.shape[0] - batch + 1, batch)]


def cycle(items):
    """A function returning the next of `items` at each call, round and round."""
    position = [-1]

    def following():
        position[0] = (position[0] + 1) % len(items)
        return items[position[0]]

    return following


def training_step(meprop, selection, batches, k=20):
    """``(step, forward)``: a whole training step, and the model's forward + loss alone, on the next minibatch."""
    model = mlp()
    if meprop:
        convert(model, k=k, selection=selection)
        opt = optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    following = cycle(batches)

    def step():
        x, y = following()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def forward():
        x, y = following()
        return F.cross_entropy(model(x), y)

    return step, forward


def one_layer(meprop, B=256, n=4096, k=64, sets=4):
    torch.manual_seed(0)
    layer = MePropLinear(n, n, k=k, selection="unified") if meprop else torch.nn.Linear(n, n)
    opt = (optim.Adam if meprop else torch.optim.Adam)(layer.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    # a hidden layer: dx is needed
    following = cycle([(torch.randn(B, n, generator=gen).requires_grad_(True), torch.randn(B, n, generator=gen))
                       for _ in range(sets)])
    pending = []

    def forward():  # untimed: also clears the gradients, as opt.zero_grad() does before a training backward
        x, g = following()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        pending.append((layer(x), g))

    def backward():
        y, g = pending.pop()
        y.backward(g)

    def full():
        x, g = following()
        opt.zero_grad()
        layer(x).backward(g)
        opt.step()

    def forward_only():
        x, _ = following()
        return layer(x)

    return forward, backward, full, forward_only


def time_backward(fns_pairs, rounds):
    """Backward seconds of each pair in each round: each backward needs a fresh graph, built untimed just before."""
    times = [[] for _ in fns_pairs]
    for forward, backward in fns_pairs:  # warm-up: the first call loads the compiled kernels
        forward()
        backward()
    for _ in range(rounds):
        for j, (forward, backward) in enumerate(fns_pairs):
            forward()
            start = CLOCK()
            backward()
            times[j].append(CLOCK() - start)
    return times


def ratio(dense, ours):
    """The median of the per-round ratios dense / ours, with their range: rounds timed together
    share the machine's state, so their ratio moves less than either time does."""
    ratios = [d / o for d, o in zip(dense, ours)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


class _Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


def overheads(repeat):
    """Per-call costs in microseconds, each measured alone."""
    rows = []
    x = torch.randn(10, 500, requires_grad=True)
    t = torch.randn(10, 500)
    a = t.numpy()

    def us(fn):
        return 1e6 * statistics.median(in_turns([fn], repeat, 3)[0])

    rows.append(("autograd.Function forward + backward (empty)", us(lambda: _Empty.apply(x).backward(t))))
    rows.append(("Tensor.numpy() + torch.from_numpy()", us(lambda: torch.from_numpy(t.numpy()))))
    rows.append(("detach + reshape + numpy (one tensor)", us(lambda: t.detach().reshape(-1, 500).numpy())))
    rows_idx, values = torch.arange(0, 200, dtype=torch.int64), torch.randn(200, 784)
    rows.append(("pack 200 rows of a 500x784 gradient as COO",
                 us(lambda: torch.sparse_coo_tensor(rows_idx.unsqueeze(0), values, (500, 784), is_coalesced=True,
                                                    check_invariants=False))))
    rows.append(("scatter the same rows into a dense 500x784",
                 us(lambda: values.new_zeros((500, 784)).index_copy_(0, rows_idx, values))))
    gen = torch.Generator().manual_seed(0)
    xb, W = torch.rand(10, 500, generator=gen), torch.randn(500, 500, generator=gen)
    g = torch.randn(10, 500, generator=gen)
    xn, Wn, gn = xb.numpy(), W.numpy(), g.numpy()
    kernel = us(lambda: mp.linear_backward(xn, Wn, gn, 20))
    wrapped = us(lambda: _backward_tensors(xb, W, g, 20, False, None, True))
    rows.append(("linear_backward 10x500x500 k=20, NumPy (kernel + its checks)", kernel))
    rows.append(("the same through the torch wrapper (views, tensors back)", wrapped))
    layer = MePropLinear(500, 500, k=20)
    xl = torch.rand(10, 500, requires_grad=True)

    def fresh(module):  # each backward from cleared gradients, as after zero_grad (summing sparse ones grows)
        module.zero_grad(set_to_none=True)
        xl.grad = None
        module(xl).backward(g)

    rows.append(("MePropLinear forward + backward, same shapes", us(lambda: fresh(layer))))
    dense = torch.nn.Linear(500, 500)
    rows.append(("nn.Linear forward + backward, same shapes", us(lambda: fresh(dense))))
    p = torch.nn.Parameter(torch.zeros(500, 784))
    p.grad = torch.sparse_coo_tensor(rows_idx[:20].unsqueeze(0), values[:20], (500, 784), check_invariants=True)
    opt = optim.Adam([p])
    rows.append(("lazy Adam step, 20 rows of 500x784", us(opt.step)))
    sparse_adam = torch.optim.SparseAdam([p])
    rows.append(("torch.optim.SparseAdam step, same", us(sparse_adam.step)))
    q = torch.nn.Parameter(torch.zeros(3))
    q.grad = torch.ones(3)
    tiny = optim.Adam([q])
    rows.append(("lazy Adam step of a 3-element parameter (Python overhead)", us(tiny.step)))
    tiny_torch = torch.optim.Adam([q])
    rows.append(("torch.optim.Adam step of the same", us(tiny_torch.step)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=("mlp", "layer", "overheads"),
                        default=["mlp", "layer", "overheads"], help="the parts to run (default: all)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time (default) or this thread's CPU time (steadier on a shared machine)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.set_num_threads(1)
    mp.set_num_threads(1)
    repeat = 20 if args.quick else 100
    load = os.getloadavg()
    print(f"torch {torch.__version__}, 1 thread (torch, BLAS, numba), float32, {args.clock} clock; "
          f"load average at start {load[0]:.1f} on {os.cpu_count()} cores\n")
    print("| case | PyTorch dense | meprop_numba.torch | ratio | ceiling (dense / forward) | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    if "mlp" in args.only:
        for selection, batch in (("topk", 10), ("unified", 50)):
            batches = minibatches(batch)
            (dense, _), (ours, forward) = (training_step(False, selection, batches),
                                           training_step(True, selection, batches))
            times = in_turns([dense, ours, forward], repeat, args.rounds)
            dense, ours, fwd = map(statistics.median, times)
            print(f"| 784-500-500-10 training step, {selection} k=20, batch {batch} | {1e3 * dense:.2f} ms "
                  f"| {1e3 * ours:.2f} ms | {ratio(*times[:2])} | {ratio(times[0], times[2])} ({1e3 * fwd:.2f} ms) "
                  "| >= 3x |", flush=True)
    if "layer" in args.only:
        d_fwd, d_bwd, d_full, _ = one_layer(False)
        o_fwd, o_bwd, o_full, o_forward_only = one_layer(True)
        times = time_backward([(d_fwd, d_bwd), (o_fwd, o_bwd)], max(10, args.rounds * (2 if args.quick else 6)))
        dense, ours = map(statistics.median, times)
        print(f"| 256x4096->4096 backward, unified k=64 | {1e3 * dense:.2f} ms | {1e3 * ours:.2f} ms "
              f"| {ratio(*times)} | | >= 20x |", flush=True)
        times = in_turns([d_full, o_full, o_forward_only], max(2, repeat // 20), args.rounds)
        dense, ours, fwd = map(statistics.median, times)
        print(f"| 256x4096->4096 forward + backward + Adam step | {1e3 * dense:.2f} ms | {1e3 * ours:.2f} ms "
              f"| {ratio(*times[:2])} | {ratio(times[0], times[2])} ({1e3 * fwd:.2f} ms) | >= 5x |", flush=True)
    if "overheads" in args.only:
        print("\n| per call | us |")
        print("| --- | --- |")
        for name, value in overheads(repeat * 5):
            print(f"| {name} | {value:.1f} |", flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
