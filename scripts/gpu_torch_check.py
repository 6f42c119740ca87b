"""Check the PyTorch integration on CUDA tensors against the same training on the CPU.

A small MLP converted to :class:`~meprop_numba.torch.MePropLinear` (hidden
layers meProp, output dense) trains a few steps with this package's lazy
optimizers (:mod:`meprop_numba.torch.optim`) on CUDA tensors, the backward and
the updates running this package's CUDA kernels on PyTorch's current stream,
and the same model trains the same steps on CPU tensors (the NumPy kernels).
The weights must agree: float64 to 1e-9, float32 to 1e-4 (relative to the
largest weight).  Cases: per-example and unified selection, row-sparse and
dense weight gradients, Adam / SGD with momentum / AdaGrad, and one case on a
side stream.  One line per case (``ok`` or ``FAIL``); exit status 1 if any
fails.  Without a CUDA build of PyTorch (``--simulator``, or this project's
CPU machines) it says so and exits 0: nothing here can run on the CUDA
simulator.

Usage::

    python scripts/gpu_torch_check.py
"""
import argparse
import contextlib
import copy
import sys


def cases(torch):
    from meprop_numba.torch import optim

    optimizers = {
        "adam": lambda params: optim.Adam(params, lr=0.02),
        "sgd-momentum": lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
        "adagrad": lambda params: optim.AdaGrad(params, lr=0.05),
    }
    for dtype in (torch.float64, torch.float32):
        for selection, sparse_grad, opt, side_stream in [("topk", True, "adam", False),
                                                          ("unified", True, "sgd-momentum", False),
                                                          ("topk", False, "adagrad", False),
                                                          ("unified", True, "adam", True)]:
            yield dtype, selection, sparse_grad, opt, optimizers[opt], side_stream


def train(torch, model, make_opt, batches, device, stream=None):
    import torch.nn.functional as F

    model = copy.deepcopy(model).to(device)
    opt = make_opt(model.parameters())
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return [p.detach().cpu() for p in model.parameters()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulator", action="store_true", help="dry run: say that nothing can run, exit 0")
    args = parser.parse_args(argv)
    import torch

    if args.simulator or not torch.cuda.is_available():
        print(f"skipped: PyTorch {torch.__version__} has no CUDA device here (CUDA tensors cannot be simulated)")
        return 0
    from meprop_numba.torch import convert

    torch.backends.cuda.matmul.allow_tf32 = False
    failures = 0
    for dtype, selection, sparse_grad, opt_name, make_opt, side in cases(torch):
        label = f"{str(dtype).split('.')[1]} {selection} sparse_grad={sparse_grad} {opt_name}{' side-stream' if side else ''}"
        try:
            gen = torch.Generator().manual_seed(0)
            base = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(dtype)
            base = convert(base, k=4, selection=selection, sparse_grad=sparse_grad)
            batches = [(torch.randn(8, 20, generator=gen, dtype=dtype), torch.randint(0, 4, (8,), generator=gen))
                       for _ in range(3)]
            expected = train(torch, base, make_opt, batches, "cpu")
            stream = torch.cuda.Stream() if side else None
            got = train(torch, base, make_opt, batches, "cuda", stream)
            scale = max(float(p.abs().max()) for p in expected)
            diff = max(float((a - b).abs().max()) for a, b in zip(expected, got)) / scale
            moved = max(float((a - b.detach()).abs().max()) for a, b in zip(expected, base.parameters()))
            tol = 1e-9 if dtype == torch.float64 else 1e-4
            ok = diff <= tol and moved > 0
            failures += not ok
            print(f"{'ok' if ok else 'FAIL'} {label}: max relative difference {diff:.2e} (tolerance {tol:g}), "
                  f"weights moved by up to {moved:.2e}", flush=True)
        except Exception as exc:  # one failing case loses only its own line
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {exc}", flush=True)
    print(f"{failures} case(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
