"""Where a meprop_numba.torch training step spends its time, phase by phase.

Trains 784-500-500-10 (``convert(model, k)`` + lazy
:class:`meprop_numba.torch.optim.Adam`, or ``nn.Linear`` +
``torch.optim.Adam`` with ``--dense``) on minibatches of the embedded
Fashion-MNIST subset (float32, shuffled once, as ``scripts/torch_speed.py``) and
reports, per step, the CPU time (``time.thread_time_ns``: one thread, so
other processes disturb it little) of each phase.  The phases are timed by
wrapping the functions that run them, so the nested ones (indented) are
parts of the one above; "rest" is what the wrapped parts leave of it:

- forward: ``model(x)`` and the cross entropy (PyTorch on both sides);
- backward: ``loss.backward()``; inside it the ``autograd.Function``
  backward of each meProp layer ("meProp layers"): the random selection, the torch wrapper
  (``Tensor`` <-> NumPy views), ``linear_backward`` (its checks, the
  top-k and the sparse products), the COO gradient; the rest of the
  backward is the autograd engine and PyTorch's own backward ops (cross
  entropy, ReLU, the dense output layer);
- optimizer: ``opt.step()``: Adam's one-call step (the checks that its
  table still holds, then one compiled call that checks every gradient and
  updates every parameter); on its first step, and whenever the table is
  refused, the general path: the per-step checks of every gradient and
  parameter, the state views, the update kernels.

Each wrapped call adds its own cost (a Python call and two clock reads,
about 1 us, more where the call is small): the nested phases read high.
``--phases`` times only the four top-level phases, with nothing wrapped
inside them, for the split of an uninstrumented step.

Usage::

    python scripts/torch_step_profile.py --selection topk --batch 10
    python scripts/torch_step_profile.py --selection unified --batch 50
    python scripts/torch_step_profile.py --batch 50 --dense
    python scripts/torch_step_profile.py --selection topk --batch 10 --phases
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import meprop_numba as mp  # noqa: E402
from meprop_numba.torch import convert, linear, optim  # noqa: E402
from torch_speed import minibatches  # noqa: E402

CLOCK = time.thread_time_ns
TOTALS = {}


def timed(name, fn):
    """`fn` wrapped so that its CPU time adds to ``TOTALS[name]``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = CLOCK()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[name] = TOTALS.get(name, 0) + CLOCK() - start
    return wrapper


def instrument():
    """Wrap the functions a meProp step runs (names are the report's phase names)."""
    sgl = linear._SparseGradLinear
    sgl.backward = staticmethod(timed("backward/meProp layers", sgl.backward))
    linear._random_indices = timed("backward/meProp layers/random selection", linear._random_indices)
    linear._host_backward = timed("backward/meProp layers/torch wrapper", linear._host_backward)
    for name in ("fused_backward", "linear_backward_checked", "linear_backward_selected"):  # one call, direct, general
        setattr(linear._backend, name, timed("backward/meProp layers/torch wrapper/linear_backward",
                                             getattr(linear._backend, name)))
    torch_module = linear.torch

    class _Timed:  # the layer module's `torch`, with sparse_coo_tensor timed
        def __getattr__(self, name):
            return getattr(torch_module, name)

        sparse_coo_tensor = staticmethod(timed("backward/meProp layers/COO gradient", torch.sparse_coo_tensor))

    linear.torch = _Timed()
    optim._AdamTable.step = timed("optimizer/one-call step", optim._AdamTable.step)
    base = optim._KernelOptimizer
    base._work = timed("optimizer/checks (gradients, parameters)", base._work)
    base._state_views = timed("optimizer/state views", base._state_views)
    kernels = optim.K
    # A proxy, not the kernel module patched: kernels compiled later (row_gradient_status
    # calls count_nonfinite) must still see the compiled functions.
    timed_kernels = {name: timed("optimizer/checks (gradients, parameters)/NaN, Inf and rows", getattr(kernels, name))
                     for name in ("row_gradient_status", "count_nonfinite")}
    timed_kernels.update({name: timed("optimizer/update kernels", getattr(kernels, name))
                          for name in ("adam_rows", "adam_flat")})
    timed_kernels["adam_table"] = timed("optimizer/one-call step/kernel (checks, updates)", kernels.adam_table)

    class _TimedKernels:
        def __getattr__(self, name):
            return timed_kernels.get(name) or getattr(kernels, name)

    optim.K = _TimedKernels()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection", default="unified", choices=("topk", "unified", "random"))
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="measured steps (after 30 warm-up steps)")
    parser.add_argument("--dense", action="store_true", help="nn.Linear + torch.optim.Adam instead")
    parser.add_argument("--phases", action="store_true",
                        help="time the top-level phases only (no wrapped calls inside them)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.k < 1:
        parser.error("--batch, --steps and --k must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    mp.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500),
                                torch.nn.ReLU(), torch.nn.Linear(500, 10))
    if args.dense:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        label = "dense nn.Linear + torch.optim.Adam"
    else:
        convert(model, k=args.k, selection=args.selection)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        label = f"{args.selection} k={args.k} + lazy Adam"
        if not args.phases:
            instrument()
    batches = minibatches(args.batch)
    step_fn = {
        "zero_grad": opt.zero_grad,
        "forward": lambda x, y: torch.nn.functional.cross_entropy(model(x), y),
        "backward": lambda loss: loss.backward(),
        "optimizer": opt.step,
    }
    for step in range(30 + args.steps):
        if step == 30:
            TOTALS.clear()
        x, y = batches[step % len(batches)]
        timed("zero_grad", step_fn["zero_grad"])()
        loss = timed("forward", step_fn["forward"])(x, y)
        timed("backward", step_fn["backward"])(loss)
        timed("optimizer", step_fn["optimizer"])()
    report(TOTALS, args.steps, f"784-500-500-10, batch {args.batch}, {label}")


def report(totals, steps, title):
    """Print every phase (us per step, % of the step) with a 'rest' line under each parent."""
    total = sum(ns for name, ns in totals.items() if "/" not in name)
    print(f"{title}: us per step over {steps} steps (thread CPU time)")
    children = {}
    for name in totals:
        parent = name.rpartition("/")[0]
        children.setdefault(parent, []).append(name)

    def show(name, depth):
        ns = totals[name]
        label = "  " * depth + name.rpartition("/")[2]
        print(f"  {label:<58} {ns / steps / 1e3:8.1f}  {100 * ns / total:5.1f}%")
        kids = children.get(name, [])
        for kid in kids:
            show(kid, depth + 1)
        if kids:
            rest = ns - sum(totals[kid] for kid in kids)
            print(f"  {'  ' * (depth + 1) + 'rest':<58} {rest / steps / 1e3:8.1f}  {100 * rest / total:5.1f}%")

    for name in children.get("", []):
        show(name, 0)
    print(f"  {'total':<58} {total / steps / 1e3:8.1f}")


if __name__ == "__main__":
    main()
