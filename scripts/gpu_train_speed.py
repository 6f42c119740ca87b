"""Whole training step on the GPU: meProp against PyTorch dense, for the paper's MLP and a 4096-wide one.

One step is forward, softmax cross-entropy, backward and an Adam update of
every parameter, on device-resident float32 data, one fixed minibatch.  The
baseline is what a user would otherwise run: ``torch.nn.Linear`` layers with
``torch.optim.Adam`` (cuBLAS, TF32 off).  The meProp variants:

* ``torch+meProp``: the same model converted by
  :func:`meprop_numba.torch.convert` (hidden layers meProp, output dense) with
  the lazy :class:`meprop_numba.torch.optim.Adam` (PyTorch's cuBLAS forward,
  this package's CUDA backward and update on PyTorch's stream);
* ``native``: :class:`meprop_numba.nn.MLP` moved to the device with
  ``Module.to("cuda")`` (numba device arrays: the package's own kernels for
  everything), trained by :func:`meprop_numba.training.train_step` with the
  lazy :class:`meprop_numba.Adam`;
* ``native, reused buffers``: the same with ``Module.to("cuda",
  reuse_buffers=True)`` (each layer's device outputs and scratch allocated
  once, no ``cudaMalloc`` in a step);
* ``native+CuPy``: the same model with CuPy arrays as parameters (CuPy's
  matmul for the forward and a shared selection's products), if CuPy is
  installed.

Before timing, each variant takes one SGD step with ``k`` = the layer width
(exact dense back propagation) from the baseline's initial weights, and its
weights must equal the baseline's after the same step (to 1e-3 of the largest
weight change); then it takes a step at the case's ``k`` and its loss must be
finite.  Each row is printed as soon as it is measured (a failing variant
prints its error in its row, the others still run): best of ``--repeat``
samples, the variants sampled in turn, each sample ``--steps`` steps closed
by a device synchronisation.

``--simulator`` is a dry run of the script itself under the CUDA simulator:
tiny shapes, PyTorch on CPU tensors, timings meaningless.

Usage::

    python scripts/gpu_train_speed.py
    python scripts/gpu_train_speed.py --repeat 10 --steps 20
    NUMBA_ENABLE_CUDASIM=1 python scripts/gpu_train_speed.py --simulator
"""
import argparse
import importlib.util
import platform
import sys

import numpy as np

from gpu_speed import best_of_turns, set_up

# (label, in, hidden widths, classes, batch, k, selection)
CASES = [
    ("paper MLP 784-500-500-10, batch 50, unified k=30", 784, (500, 500), 10, 50, 30, "unified"),
    ("paper MLP 784-500-500-10, batch 50, top-k k=20", 784, (500, 500), 10, 50, 20, "topk"),
    ("4096-wide MLP 4096-4096-4096-10, batch 1024, unified k=64", 4096, (4096, 4096), 10, 1024, 64, "unified"),
    ("4096-wide MLP 4096-4096-4096-10, batch 1024, top-k k=32", 4096, (4096, 4096), 10, 1024, 32, "topk"),
]
SIMULATOR_CASES = [
    ("tiny MLP 12-8-8-3, batch 4, unified k=3", 12, (8, 8), 3, 4, 3, "unified"),
    ("tiny MLP 12-8-8-3, batch 4, top-k k=3", 12, (8, 8), 3, 4, 3, "topk"),
]
VARIANTS = ("torch dense", "torch+meProp", "native", "native, reused buffers", "native+CuPy")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="samples per variant; the best is kept (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per sample (default 10)")
    parser.add_argument("--simulator", action="store_true",
                        help="dry run under the CUDA simulator (tiny shapes, PyTorch on the CPU, meaningless timings)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.steps < 1:
        parser.error("--repeat and --steps must be >= 1")
    return args


class Case:
    """The baseline model and data of one case, and a builder of each variant's step."""

    def __init__(self, torch, device, n_in, widths, n_classes, batch, seed=0):
        self.torch, self.device = torch, device
        gen = torch.Generator().manual_seed(seed)
        layers, width = [], n_in
        for w in widths:
            layers += [torch.nn.Linear(width, w), torch.nn.ReLU()]
            width = w
        layers.append(torch.nn.Linear(width, n_classes))
        self.init = torch.nn.Sequential(*layers)  # on the host: every variant starts from these weights
        self.widths = widths
        self.x = torch.randn(batch, n_in, generator=gen).to(device)
        self.y = torch.randint(0, n_classes, (batch,), generator=gen).to(device)
        self.shape = (n_in, list(widths), n_classes)

    def host_state(self):
        return {name: p.detach().numpy().copy() for name, p in self.init.state_dict().items()}

    # Each builder returns (step, weights): step() runs one training step, weights() the host weights.
    def torch_dense(self, sgd_lr=None):
        import copy

        torch = self.torch
        model = copy.deepcopy(self.init).to(self.device)
        opt = torch.optim.SGD(model.parameters(), lr=sgd_lr) if sgd_lr else torch.optim.Adam(model.parameters(), lr=1e-3)
        return self._torch_step(model, opt)

    def torch_meprop(self, k, selection, sgd_lr=None):
        import copy

        from meprop_numba.torch import convert, optim

        model = convert(copy.deepcopy(self.init), k=k, selection=selection).to(self.device)
        opt = optim.SGD(model.parameters(), lr=sgd_lr) if sgd_lr else optim.Adam(model.parameters(), lr=1e-3)
        return self._torch_step(model, opt)

    def _torch_step(self, model, opt):
        import torch.nn.functional as F

        def step():
            opt.zero_grad()
            loss = F.cross_entropy(model(self.x), self.y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step, lambda: [p.detach().cpu().numpy() for p in model.parameters()]

    def native(self, k, selection, sgd_lr=None, library=None, reuse_buffers=False):
        import meprop_numba as mp
        from meprop_numba import gpu
        from meprop_numba.nn import MLP, softmax_cross_entropy
        from meprop_numba.training import train_step

        model = MLP(*self.shape, k=k, selection=selection, rng=0)
        model.load_state_dict(self.host_state())
        model.to("cuda", reuse_buffers=reuse_buffers)
        x = gpu.to_device(self.x.cpu().numpy())
        y = gpu.to_device(self.y.cpu().numpy())
        if library == "cupy":
            import cupy

            for layer in model.linear_layers:
                layer.weight, layer.bias = cupy.asarray(layer.weight), cupy.asarray(layer.bias)
            x, y = cupy.asarray(x), cupy.asarray(y)
        opt = mp.SGD(model.params(), lr=sgd_lr) if sgd_lr else mp.Adam(model.params(), lr=1e-3)

        def loss(model, batch):
            return softmax_cross_entropy(model.forward(batch[0], train=True), batch[1], workspace=model.workspace)

        def step():
            return train_step(model, opt, loss, (x, y))

        return step, lambda: [gpu.to_host(p) for p in model.parameters()]

    def builders(self, k, selection):
        """Per variant: a function ``(k, sgd_lr) -> (step, weights)``, None for the dense baseline's k."""
        return {
            "torch dense": lambda kk, lr: self.torch_dense(lr),
            "torch+meProp": lambda kk, lr: self.torch_meprop(kk, selection, lr),
            "native": lambda kk, lr: self.native(kk, selection, lr),
            "native, reused buffers": lambda kk, lr: self.native(kk, selection, lr, reuse_buffers=True),
            "native+CuPy": lambda kk, lr: self.native(kk, selection, lr, library="cupy"),
        }


def check_variant(case, builder, reference, widths):
    """One exact-dense SGD step must give the baseline's weights; raises AssertionError otherwise."""
    step, weights = builder(widths[0], 0.1)  # the cases' hidden layers have one width
    step()
    got = weights()
    init = [p.detach().numpy() for p in case.init.parameters()]
    change = max(float(np.abs(r - i).max()) for r, i in zip(reference, init))
    err = max(float(np.abs(g - r).max()) for g, r in zip(got, reference))
    assert change > 0 and err <= 1e-3 * change, (
        f"after one exact-dense step the weights differ from PyTorch dense by {err:.2e} "
        f"(the step changed them by up to {change:.2e})")


def main(argv=None):
    args = parse_args(argv)
    set_up(args.simulator)
    import torch

    import meprop_numba as mp
    from meprop_numba import _cuda, gpu

    if args.simulator:
        cases, torch_device = SIMULATOR_CASES, "cpu"

        def synchronize():
            pass
    else:
        if not torch.cuda.is_available():
            raise SystemExit("PyTorch sees no CUDA GPU")
        cases, torch_device = CASES, "cuda"

        def synchronize():
            torch.cuda.synchronize()
            _cuda.synchronize()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    has_cupy = importlib.util.find_spec("cupy") is not None and not args.simulator

    print(f"device: {gpu.device_name()}; {platform.platform()}")
    print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"meprop_numba {getattr(mp, '__version__', 'unknown')}, CuPy {'yes' if has_cupy else 'no'}")
    print(f"float32, TF32 off, Adam lr 1e-3; best of {args.repeat} samples of {args.steps} steps, variants in turn; "
          "each variant checked first (one exact-dense SGD step against PyTorch dense)")
    print()
    print("| case | variant | ms per step | speed-up vs torch dense |")
    print("| --- | --- | ---: | ---: |", flush=True)
    failed = 0
    for label, n_in, widths, n_classes, batch, k, selection in cases:
        try:
            case = Case(torch, torch_device, n_in, widths, n_classes, batch)
            ref_step, ref_weights = case.torch_dense(0.1)
            ref_step()
            reference = ref_weights()
        except Exception as exc:
            failed += 1
            print(f"| {label} | all | failed: {type(exc).__name__}: {str(exc)[:200]} | |", flush=True)
            continue
        steps, errors = {}, {}
        for name, builder in case.builders(k, selection).items():
            if name == "native+CuPy" and not has_cupy:
                errors[name] = "CuPy not installed"
                continue
            try:
                if name != "torch dense":
                    check_variant(case, builder, reference, widths)
                step, _ = builder(k, None)
                loss = float(step())
                assert np.isfinite(loss), f"loss {loss} at k={k}"
                steps[name] = step
            except Exception as exc:
                errors[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"

        def repeated(step):
            return lambda: [step() for _ in range(args.steps)]

        names = list(steps)
        timed = best_of_turns([repeated(steps[n]) for n in names], synchronize, args.repeat)
        ms = {n: t * 1e3 / args.steps for n, t in zip(names, timed)}
        dense = ms.get("torch dense")
        for name in VARIANTS:
            if name in ms:
                ratio = f"{dense / ms[name]:.2f}x" if dense else "-"
                print(f"| {label} | {name} | {ms[name]:.3f} | {ratio} |", flush=True)
            else:
                failed += errors[name] != "CuPy not installed"
                print(f"| {label} | {name} | {errors[name]} | |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
