"""Speed of meprop_numba.torch against plain PyTorch, on one CPU thread, in one run.

Cases (float32, timings taken in turns, medians of the rounds):

1. 784-500-500-10 MLP, a whole training step (zero_grad, forward, cross
   entropy, backward, optimizer step): ``convert(model, k=20)`` + lazy
   :class:`meprop_numba.torch.optim.Adam` against the same ``nn.Linear``
   model + ``torch.optim.Adam``; per example k=20 batch 10 and unified k=20
   batch 50.
2. One layer, B=256, 4096 -> 4096, unified k=64: the backward alone, and
   forward + backward + Adam step.
3. Per-call overheads: an empty ``autograd.Function``, the NumPy round trip,
   packing the row gradient as COO, the wrapper around the kernel.

Usage::

    python scripts/torch_speed.py [--rounds 7] [--quick]
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
from meprop_numba.torch import MePropLinear, convert, optim  # noqa: E402
from meprop_numba.torch.linear import _backward_tensors  # noqa: E402

F = torch.nn.functional


def in_turns(fns, repeat, rounds):
    """Median seconds per call of each function, timed round-robin (load hits both alike)."""
    times = [[] for _ in fns]
    for fn in fns:
        for _ in range(max(3, repeat // 5)):
            fn()
    for _ in range(rounds):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            times[j].append((time.perf_counter() - start) / repeat)
    return [statistics.median(t) for t in times]


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500),
                               torch.nn.ReLU(), torch.nn.Linear(500, 10))


def training_step(meprop, selection, batch, k=20):
    model = mlp()
    if meprop:
        convert(model, k=k, selection=selection)
        opt = optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 784, generator=gen), torch.randint(0, 10, (batch,), generator=gen)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def one_layer(meprop, B=256, n=4096, k=64):
    torch.manual_seed(0)
    layer = MePropLinear(n, n, k=k, selection="unified") if meprop else torch.nn.Linear(n, n)
    opt = (optim.Adam if meprop else torch.optim.Adam)(layer.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, n, generator=gen).requires_grad_(True)  # a hidden layer: dx is needed
    g = torch.randn(B, n, generator=gen)
    pending = []

    def forward():
        pending.append(layer(x))

    def backward():
        pending.pop().backward(g)

    def full():
        opt.zero_grad()
        layer(x).backward(g)
        opt.step()

    return forward, backward, full


def time_backward(fns_pairs, rounds):
    """Median backward seconds: each backward needs a fresh graph, built untimed just before."""
    times = [[] for _ in fns_pairs]
    for _ in range(rounds):
        for j, (forward, backward) in enumerate(fns_pairs):
            forward()
            start = time.perf_counter()
            backward()
            times[j].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


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
        return 1e6 * in_turns([fn], repeat, 3)[0]

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
    xb, W, g = torch.rand(10, 500, generator=gen), torch.randn(500, 500, generator=gen), torch.randn(10, 500, generator=gen)
    xn, Wn, gn = xb.numpy(), W.numpy(), g.numpy()
    kernel = us(lambda: mp.linear_backward(xn, Wn, gn, 20))
    wrapped = us(lambda: _backward_tensors(xb, W, g, 20, False, None, True))
    rows.append(("linear_backward 10x500x500 k=20, NumPy (kernel + its checks)", kernel))
    rows.append(("the same through the torch wrapper (views, tensors back)", wrapped))
    layer = MePropLinear(500, 500, k=20)
    xl = torch.rand(10, 500, requires_grad=True)
    rows.append(("MePropLinear forward + backward, same shapes", us(lambda: layer(xl).backward(g))))
    dense = torch.nn.Linear(500, 500)
    rows.append(("nn.Linear forward + backward, same shapes", us(lambda: dense(xl).backward(g))))
    p = torch.nn.Parameter(torch.zeros(500, 784))
    p.grad = torch.sparse_coo_tensor(rows_idx[:20].unsqueeze(0), values[:20], (500, 784))
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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mp.set_num_threads(1)
    repeat = 20 if args.quick else 100
    load = os.getloadavg()
    print(f"torch {torch.__version__}, 1 thread (torch, BLAS, numba), float32; load average at start "
          f"{load[0]:.1f} on {os.cpu_count()} cores\n")
    print("| case | PyTorch dense | meprop_numba.torch | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for selection, batch in (("topk", 10), ("unified", 50)):
        dense, ours = in_turns([training_step(False, selection, batch), training_step(True, selection, batch)],
                               repeat, args.rounds)
        print(f"| 784-500-500-10 training step, {selection} k=20, batch {batch} | {1e3 * dense:.2f} ms "
              f"| {1e3 * ours:.2f} ms | {dense / ours:.2f}x | >= 3x |", flush=True)
    d_fwd, d_bwd, d_full = one_layer(False)
    o_fwd, o_bwd, o_full = one_layer(True)
    dense, ours = time_backward([(d_fwd, d_bwd), (o_fwd, o_bwd)], max(10, args.rounds * (2 if args.quick else 6)))
    print(f"| 256x4096->4096 backward, unified k=64 | {1e3 * dense:.2f} ms | {1e3 * ours:.2f} ms "
          f"| {dense / ours:.1f}x | >= 20x |", flush=True)
    dense, ours = in_turns([d_full, o_full], max(2, repeat // 20), args.rounds)
    print(f"| 256x4096->4096 forward + backward + Adam step | {1e3 * dense:.2f} ms | {1e3 * ours:.2f} ms "
          f"| {dense / ours:.1f}x | >= 5x |", flush=True)
    print("\n| per call | us |")
    print("| --- | --- |")
    for name, value in overheads(repeat * 5):
        print(f"| {name} | {value:.1f} |", flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
