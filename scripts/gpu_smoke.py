"""Smoke test of every public GPU entry point, then each kernel's resources.

Runs :func:`meprop_numba.topk_indices`, :func:`meprop_numba.linear_backward`
(per-example, unified, dense, explicit host and device indices, without
``dx``), the three optimizers (lazy and dense, row-sparse and dense
gradients), the :mod:`meprop_numba.gpu` helpers, and training: an MLP
step with reused device buffers (``Module.to("cuda", reuse_buffers=True)``)
against one with fresh buffers (equal weights, no allocation on a repeated
step), ``out=`` refused before any launch when it does not fit, and
``fit(device='cuda')`` against the CPU fit, in float32 and float64,
at the package's default launch shapes (``THREADS_PER_BLOCK``,
``GEMM_TILE``) and at odd sizes, and checks every result against the NumPy
references of ``tests/reference.py``.  Then it prints, for every kernel
compiled on the way, its registers per thread, static shared memory, local
memory and the most threads per block it can launch with, next to the block
it was configured for.  Exit status 1 if a check failed.

Usage::

    python scripts/gpu_smoke.py              # on a GPU (default shapes)
    python scripts/gpu_smoke.py --small      # fewer, smaller cases (for compute-sanitizer)
    NUMBA_ENABLE_CUDASIM=1 python scripts/gpu_smoke.py --simulator   # tiny blocks, tiny sizes
"""
import argparse
import os
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from reference import (AdaGradReference, AdamReference, SGDReference, densify,  # noqa: E402
                       masked_backward_reference, selection_mask, topk_reference, unified_topk_reference)

# (batch, n, m, k): default-shape cases and odd sizes that leave partial blocks and tiles.
SIZES = [(64, 1000, 257, 32), (33, 4097, 129, 5), (1, 17, 3, 17), (130, 300, 65, 300)]
SMALL_SIZES = [(33, 301, 67, 5), (1, 17, 3, 17)]
SIMULATOR_SIZES = [(5, 37, 6, 4), (1, 9, 3, 9)]
# Training: (inputs, hidden width, batch, k) of an MLP step; (inputs, width, examples, batch, k) of a fit.
TRAINING_SIZES = {"default": (784, 500, 50, 20), "small": (33, 40, 9, 5), "simulator": (5, 6, 4, 2)}
FIT_SIZES = {"default": (784, 500, 200, 50, 20), "small": (33, 40, 36, 9, 5), "simulator": (5, 6, 8, 4, 2)}

FAILURES = []


def check(label, func):
    start = time.perf_counter()
    try:
        func()
    except Exception:  # report and go on: one failure must not hide the others
        FAILURES.append(label)
        print(f"FAIL {label}\n{traceback.format_exc()}", flush=True)
        return
    print(f"ok   {label} ({time.perf_counter() - start:.2f} s)", flush=True)


def tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def backward_case(mp, gpu, dtype, batch, n, m, k, rng):
    x, W, g = (rng.standard_normal(s).astype(dtype) for s in ((batch, m), (n, m), (batch, n)))
    dx_, dW_, dg_ = gpu.to_device(x), gpu.to_device(W), gpu.to_device(g)
    per_example = np.stack([rng.permutation(n)[:k] for _ in range(batch)])
    shared = rng.permutation(n)[:k]
    cases = [
        ("per-example", dict(k=k), selection_mask(g.shape, topk_reference(g, k))),
        ("unified", dict(k=k, unified=True), selection_mask(g.shape, unified_topk_reference(g, k))),
        ("dense", dict(), np.ones(g.shape, bool)),
        ("host indices", dict(indices=per_example), selection_mask(g.shape, per_example)),
        ("device indices", dict(indices=gpu.to_device(shared)), selection_mask(g.shape, shared)),
        ("no dx", dict(k=k, need_dx=False), selection_mask(g.shape, topk_reference(g, k))),
    ]
    for name, kwargs, mask in cases:
        def run(kwargs=kwargs, mask=mask):
            dx, dW, db = mp.linear_backward(dx_, dW_, dg_, **kwargs)
            rdx, rdW, rdb = masked_backward_reference(x, W, g, mask)[:3]
            rows = np.flatnonzero(mask.any(axis=0))
            np.testing.assert_array_equal(gpu.to_host(dW.rows), rows)
            np.testing.assert_allclose(gpu.to_host(dW.values), rdW[rows], **tolerance(dtype))
            np.testing.assert_allclose(gpu.to_host(db), rdb, **tolerance(dtype))
            if kwargs.get("need_dx", True):
                np.testing.assert_allclose(gpu.to_host(dx), rdx, **tolerance(dtype))
            else:
                assert dx is None
        check(f"linear_backward {name} {np.dtype(dtype).name} B={batch} n={n} m={m} k={k}", run)

    def topk():
        np.testing.assert_array_equal(gpu.to_host(mp.topk_indices(dg_, k)), topk_reference(g, k))
        np.testing.assert_array_equal(gpu.to_host(mp.topk_indices(dg_, k, unified=True)),
                                      unified_topk_reference(g, k))
    check(f"topk_indices rows+unified {np.dtype(dtype).name} {batch}x{n} k={k}", topk)


def optimizer_case(mp, gpu, dtype, n, m, rng):
    makers = {
        "SGD momentum": (lambda p, lazy: mp.SGD(p, lr=0.1, momentum=0.9, lazy=lazy),
                         lambda: SGDReference((n, m), lr=0.1, momentum=0.9)),
        "Adam": (lambda p, lazy: mp.Adam(p, lr=0.01, lazy=lazy), lambda: AdamReference((n, m), lr=0.01)),
        "AdaGrad": (lambda p, lazy: mp.AdaGrad(p, lr=0.1, lazy=lazy), lambda: AdaGradReference((n, m), lr=0.1)),
    }
    for name, (make, make_ref) in makers.items():
        for lazy in (True, False):
            def run(make=make, make_ref=make_ref, lazy=lazy):
                p = rng.standard_normal((n, m)).astype(dtype)
                dp = gpu.to_device(p)
                opt, ref, expected = make([dp], lazy), make_ref(), p.astype(np.float64)
                for step in range(3):
                    rows = np.sort(rng.choice(n, size=max(1, n // 3), replace=False))
                    values = rng.standard_normal((rows.size, m)).astype(dtype)
                    if step == 1:  # a dense gradient between the row-sparse ones
                        dense = rng.standard_normal((n, m)).astype(dtype)
                        opt.step([gpu.to_device(dense)])
                        ref.step(expected, dense.astype(np.float64))
                        continue
                    opt.step([mp.RowSparse(gpu.to_device(rows), gpu.to_device(values), (n, m))])
                    ref.step(expected, densify(rows, values, (n, m)), rows=rows if lazy else None)
                np.testing.assert_allclose(gpu.to_host(dp), expected, **tolerance(dtype))
            check(f"{name} lazy={lazy} {np.dtype(dtype).name} {n}x{m}", run)


def helpers_case(gpu, dtype):
    def run():
        z = gpu.zeros((3, 5), dtype=dtype)
        a = gpu.to_device(np.arange(6.0).reshape(2, 3), dtype=dtype)
        gpu.synchronize()
        np.testing.assert_array_equal(gpu.to_host(z), 0)
        np.testing.assert_array_equal(gpu.to_host(a), np.arange(6.0).reshape(2, 3))
        assert isinstance(gpu.device_name(), str) and gpu.is_available()
    check(f"gpu helpers {np.dtype(dtype).name}", run)


def training_case(mp, gpu, dtype, n_in, width, batch, k):
    from meprop_numba import _cuda
    from meprop_numba._cuda import device, mlp
    from meprop_numba.nn import MLP, softmax_cross_entropy
    from meprop_numba.training import train_step

    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    y = rng.integers(0, 10, batch)

    def loss(model, b):
        return softmax_cross_entropy(model.forward(b[0], train=True), b[1], workspace=model.workspace)

    for selection in ("topk", "unified"):
        def run(selection=selection):
            models = [MLP(n_in, width, 10, k=k, selection=selection, dropout=0.2, dtype=dtype, rng=0).to(
                "cuda", reuse_buffers=reuse) for reuse in (True, False)]
            opts = [mp.Adam(m.params(), lr=1e-3) for m in models]
            allocations = []
            for _ in range(3):
                before = models[0].workspace.allocations
                for m, opt in zip(models, opts):
                    train_step(m, opt, loss, (_cuda.copy_in(x, 0, m.workspace, "x"),
                                              _cuda.copy_in(y, 0, m.workspace, "y")))
                allocations.append(models[0].workspace.allocations - before)
            assert allocations[0] > 0 and allocations[1:] == [0, 0], f"allocations per step {allocations}"
            for p, q in zip(models[0].parameters(), models[1].parameters()):
                np.testing.assert_array_equal(gpu.to_host(p), gpu.to_host(q))
        check(f"training step, reused buffers = fresh ones {selection} {np.dtype(dtype).name} "
              f"{n_in}-{width}-{width}-10 batch {batch} k={k}", run)

    def refused():
        xd, W, b = gpu.to_device(x), gpu.to_device(rng.standard_normal((7, n_in)).astype(dtype)), gpu.zeros(7, dtype)
        outs = (gpu.zeros((batch, 8), dtype), gpu.zeros((batch, 7), np.float16), np.zeros((batch, 7), dtype))
        launched = []
        real = device.launch
        device.launch = lambda *args: (launched.append(args[0]), real(*args))
        try:
            for out in outs:
                try:
                    mlp.linear_forward(xd, W, b, out=out)
                except (TypeError, ValueError):
                    continue
                raise AssertionError(f"out {out.shape} {out.dtype} was accepted")
        finally:
            device.launch = real
        assert not launched, f"{len(launched)} launches before the refusal"
    check(f"out= refused before any launch {np.dtype(dtype).name}", refused)


def fit_case(dtype, n_in, width, n_train, batch, k):
    import dataclasses

    from meprop_numba.data.datasets import Dataset
    from meprop_numba.tasks import TASKS
    from meprop_numba.training import fit

    def run():
        rng = np.random.default_rng(2)
        centers = 2 * rng.standard_normal((10, n_in))

        def draw(n):
            labels = rng.integers(0, 10, n)
            return (centers[labels] + rng.standard_normal((n, n_in))).astype(dtype), labels.astype(np.int64)

        data = Dataset("smoke", *draw(n_train), *draw(batch), *draw(batch), n_classes=10, source="smoke")
        task = TASKS["mlp"]
        config = task.config_class(dataset="smoke", hidden=width, k=k, error_feedback=0.0, epochs=1,
                                   batch_size=batch, dtype=np.dtype(dtype).name, seed=0)
        cpu = fit(task, config, data, progress=False)
        on_gpu = fit(task, dataclasses.replace(config, device="cuda"), data, progress=False)
        for p, q in zip(cpu["model"].parameters(), on_gpu["model"].parameters()):
            np.testing.assert_allclose(q, p, **tolerance(dtype))
    check(f"fit(device='cuda') = the CPU fit {np.dtype(dtype).name} {n_in}-{width}-{width}-10 "
          f"{n_train} examples batch {batch} k={k}", run)


def resources():
    """Print the resources of every kernel compiled so far (a real GPU only)."""
    from meprop_numba._cuda import device, linear, mlp, optim, topk

    print("\nkernel resources (per compiled signature): registers/thread, static shared bytes, "
          "local bytes/thread, max threads/block, configured block")
    if device.is_simulator():
        print("  simulator: no compiled kernels")
        return
    for module in (device, topk, linear, mlp, optim):
        for key, namespace in module._KERNELS.items():
            tile = key[2] if isinstance(key, tuple) and key[0] == "tiled" else None
            for name, kernel in sorted(namespace.items()):
                overloads = getattr(kernel, "overloads", None)
                if not overloads or getattr(kernel, "targetoptions", {}).get("device"):
                    continue
                block = tile * tile if tile else device._tpb()
                for sig, compiled in overloads.items():
                    dtypes = ",".join(sorted({str(getattr(t, "dtype", t)) for t in sig}))
                    limit = compiled.max_threads_per_block
                    flag = "" if limit >= block else "  BLOCK TOO LARGE (clamped at launch)"
                    print(f"  {module.__name__.rsplit('.', 1)[1]}.{name} [{dtypes}]: regs {compiled.regs_per_thread}, "
                          f"shared {compiled.shared_mem_per_block}, local {compiled.local_mem_per_thread}, "
                          f"max threads {limit}, block {block}{flag}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer, smaller cases (for compute-sanitizer)")
    parser.add_argument("--simulator", action="store_true",
                        help="CUDA simulator: tiny blocks and sizes (set NUMBA_ENABLE_CUDASIM=1)")
    args = parser.parse_args(argv)
    import numba

    import meprop_numba as mp
    from meprop_numba import _cuda, gpu
    from meprop_numba._cuda import device, linear

    if not gpu.is_available():
        raise SystemExit("no usable CUDA GPU (or simulator)")
    if args.simulator:
        if not _cuda.is_simulator():
            raise SystemExit("--simulator needs NUMBA_ENABLE_CUDASIM=1")
        device.THREADS_PER_BLOCK, linear.GEMM_TILE, device.MAX_GRID_ROWS = 8, 2, 3
        sys.setswitchinterval(1e-4)
        sizes, shapes = SIMULATOR_SIZES, "simulator"
    else:
        sizes, shapes = (SMALL_SIZES, "small") if args.small else (SIZES, "default")
    print(f"device {gpu.device_name()}; numba {numba.__version__}; THREADS_PER_BLOCK {device.THREADS_PER_BLOCK}, "
          f"GEMM_TILE {linear.GEMM_TILE}", flush=True)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        helpers_case(gpu, dtype)
        for batch, n, m, k in sizes:
            backward_case(mp, gpu, dtype, batch, n, m, k, rng)
        batch, n, m, k = sizes[0]
        optimizer_case(mp, gpu, dtype, n, m, rng)
        training_case(mp, gpu, dtype, *TRAINING_SIZES[shapes])
        if not args.small:  # the sanitizer runs: fit repeats the step's kernels and adds minutes of host work
            fit_case(dtype, *FIT_SIZES[shapes])
    resources()
    print(f"\n{len(FAILURES)} failed" + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
