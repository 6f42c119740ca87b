"""Print the GPU speed table: meProp CUDA kernels against dense cuBLAS.

Every row is measured in this one process on device-resident float32 data,
the dense baseline and the meProp call alternating, best of ``--repeat``
samples each, every sample closed by a device synchronisation.  The
baseline is what a dense network pays on the same GPU:

* backward of ``y = x W^T + b``: ``g @ W``, ``g.T @ x``, ``g.sum(0)`` with
  cuBLAS through PyTorch (or CuPy with ``--baseline cupy``), TF32 off so
  both sides do float32 arithmetic;
* row-wise top-k by magnitude: ``torch.topk(g.abs(), k, dim=1)`` (or
  ``cupy.argpartition`` + sort with CuPy).

The meProp column times the public call (:func:`meprop_numba.linear_backward`
or :func:`meprop_numba.topk_indices`) on the baseline's own arrays, passed
zero-copy through ``__cuda_array_interface__``: validation, the on-device
NaN/Inf check, top-k, the sparse products and the dense bias gradient.
Before timing, each meProp result is checked against the baseline library
(``--no-check`` skips that).  The table is printed as it goes, one row per
case as soon as it is measured; a case that fails prints its error in its
row and the others still run.

``--simulator`` is a dry run of the script itself under the CUDA simulator:
tiny shapes, a NumPy baseline on host copies, timings meaningless.

Usage::

    pip install "meprop_numba[cuda12]" torch        # or [cuda13]
    python scripts/gpu_speed.py
    python scripts/gpu_speed.py --baseline cupy --repeat 10
    NUMBA_ENABLE_CUDASIM=1 python scripts/gpu_speed.py --simulator
"""
import argparse
import importlib.util
import os
import platform
import sys
import time

# (label, kind, shape, k, paper figure on a GTX 1080 or None)
CASES = [
    ("unified B=1024, n=m=8192, k=8", "unified", (1024, 8192, 8192), 8, "8.37 ms, 36.8x"),
    ("unified B=1024, n=m=8192, k=64", "unified", (1024, 8192, 8192), 64, "14.38 ms, 21.4x"),
    ("unified B=1024, n=m=8192, k=512", "unified", (1024, 8192, 8192), 512, "69.95 ms, 4.4x"),
    ("per-example B=1024, n=m=4096, k=32", "per_example", (1024, 4096, 4096), 32, None),
    ("row top-k 1024x8192, k=32", "topk", (1024, 8192), 32, None),
]
PAPER_DENSE = "dense 308 ms (GTX 1080)"
SIMULATOR_CASES = [
    ("unified B=6, n=m=20, k=3", "unified", (6, 20, 20), 3, None),
    ("per-example B=6, n=m=20, k=3", "per_example", (6, 20, 20), 3, None),
    ("row top-k 6x20, k=3", "topk", (6, 20), 3, None),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", choices=("torch", "cupy"), default="torch",
                        help="library for the dense cuBLAS baseline (default torch)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="samples per measurement; the best is kept (default 7)")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check")
    parser.add_argument("--simulator", action="store_true",
                        help="dry run under the CUDA simulator (tiny shapes, NumPy baseline, meaningless timings)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("PyTorch sees no CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.torch = torch
        self.version = f"torch {torch.__version__} (CUDA {torch.version.cuda})"

    def normal(self, shape, seed):
        gen = self.torch.Generator(device="cuda").manual_seed(seed)
        return self.torch.randn(shape, generator=gen, device="cuda", dtype=self.torch.float32)

    def synchronize(self):
        self.torch.cuda.synchronize()

    def dense_backward(self, x, W, g):
        return g @ W, g.T @ x, g.sum(0)

    def topk(self, g, k):
        return self.torch.topk(g.abs(), k, dim=1).indices

    def to_numpy(self, a):
        return self.torch.as_tensor(a, device="cuda").cpu().numpy()


class CupyBackend:
    name = "cupy"

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.version = f"cupy {cupy.__version__}"
        # CuPy's matmul uses plain float32 cuBLAS unless CUPY_TF32=1.
        if os.environ.get("CUPY_TF32", "0") != "0":
            raise SystemExit("unset CUPY_TF32: the baseline must not use TF32")

    def normal(self, shape, seed):
        return self.cupy.random.default_rng(seed).standard_normal(shape, dtype=self.cupy.float32)

    def synchronize(self):
        self.cupy.cuda.Device().synchronize()

    def dense_backward(self, x, W, g):
        return g @ W, g.T @ x, g.sum(axis=0)

    def topk(self, g, k):
        n = g.shape[1]
        mag = self.cupy.abs(g)
        part = self.cupy.argpartition(mag, n - k, axis=1)[:, n - k:]
        order = self.cupy.argsort(-self.cupy.take_along_axis(mag, part, axis=1), axis=1)
        return self.cupy.take_along_axis(part, order, axis=1)

    def to_numpy(self, a):
        return self.cupy.asnumpy(self.cupy.asarray(a))


class SimulatorBackend:
    """NumPy on host copies, for a dry run of this script under the CUDA simulator."""

    name = "numpy"

    def __init__(self):
        import numpy as np

        from meprop_numba import gpu

        self.np, self.gpu = np, gpu
        self.version = f"numpy {np.__version__} (simulator dry run)"

    def normal(self, shape, seed):
        return self.gpu.to_device(self.np.random.default_rng(seed).standard_normal(shape).astype(self.np.float32))

    def synchronize(self):
        self.gpu.synchronize()

    def dense_backward(self, x, W, g):
        x, W, g = self.gpu.to_host((x, W, g))
        return g @ W, g.T @ x, g.sum(0)

    def topk(self, g, k):
        mag = self.np.abs(self.gpu.to_host(g))
        return self.np.argsort(-mag, axis=1, kind="stable")[:, :k]

    def to_numpy(self, a):
        return a if isinstance(a, self.np.ndarray) else self.gpu.to_host(a)


def best_of_turns(funcs, synchronize, repeat):
    """Best synchronised seconds of each function (None for a function that is None), sampled in turn."""
    live = [f for f in funcs if f is not None]
    for func in live:  # warm-up: compilation, cuBLAS handles, allocator
        func()
        synchronize()
    best = [float("inf")] * len(live)
    for _ in range(repeat):
        for i, func in enumerate(live):
            synchronize()
            start = time.perf_counter()
            func()
            synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    it = iter(best)
    return [None if f is None else next(it) for f in funcs]


def check_case(backend, kind, arrays, k, result):
    """Compare a meProp result with the same computation done densely by the baseline library."""
    import numpy as np

    from meprop_numba import gpu

    if kind == "topk":
        (g,) = arrays
        got = gpu.to_host(result)
        mag = np.abs(backend.to_numpy(g))
        chosen = np.take_along_axis(mag, got, axis=1)
        kth = -np.sort(-mag, axis=1)[:, k - 1:k]
        assert (chosen >= kth).all() and (np.diff(chosen, axis=1) <= 0).all(), "top-k mismatch"
        return
    x, W, g = (backend.to_numpy(a) for a in arrays)
    dx, dW, db = result
    rows, values = gpu.to_host(dW.rows), gpu.to_host(dW.values)
    mask = np.zeros(g.shape, dtype=bool)
    if kind == "unified":
        expected = np.sort(np.argsort(-np.abs(g.astype(np.float64)).sum(0), kind="stable")[:k])
        assert np.array_equal(rows, expected), "unified selection differs from the float64 column scores"
        mask[:, rows] = True
    else:
        np.put_along_axis(mask, backend.to_numpy(backend.topk(arrays[2], k)), True, axis=1)
        assert np.array_equal(rows, np.flatnonzero(mask.any(0))), "dW rows differ from the baseline's top-k"
    kept = np.where(mask, g, 0).astype(np.float64)
    ref_dx = kept @ W.astype(np.float64)
    ref_dW = (kept.T @ x.astype(np.float64))[rows]
    for name, got, ref in (("dx", gpu.to_host(dx), ref_dx), ("dW", values, ref_dW),
                           ("db", gpu.to_host(db), g.astype(np.float64).sum(0))):
        err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
        assert err < 1e-4, f"{name} differs from the float64 reference by {err:.2e} (relative)"


def set_up(simulator):
    """Import the package (from this checkout if it is not installed) and check the GPU or the simulator.

    Under the simulator, launches are made tiny (it runs each CUDA thread as a Python thread).
    """
    if importlib.util.find_spec("meprop_numba") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from meprop_numba import _cuda, gpu

    if not gpu.is_available():
        raise SystemExit('no usable CUDA GPU: needs an NVIDIA driver and pip install "meprop_numba[cuda12]" (or [cuda13])')
    if _cuda.is_simulator() and not simulator:
        raise SystemExit("NUMBA_ENABLE_CUDASIM=1 is set: unset it (simulator timings are meaningless) or pass --simulator")
    if simulator and not _cuda.is_simulator():
        raise SystemExit("--simulator needs NUMBA_ENABLE_CUDASIM=1")
    if simulator:
        from meprop_numba._cuda import device, linear

        device.THREADS_PER_BLOCK, linear.GEMM_TILE = 8, 2
        sys.setswitchinterval(1e-4)


def main(argv=None):
    args = parse_args(argv)
    set_up(args.simulator)
    import numba

    import meprop_numba as mp
    from meprop_numba import gpu

    if args.simulator:
        backend, cases = SimulatorBackend(), SIMULATOR_CASES
    else:
        backend, cases = (TorchBackend() if args.baseline == "torch" else CupyBackend()), CASES

    print(f"device: {gpu.device_name()}; {platform.platform()}")
    print(f"python {platform.python_version()}, numba {numba.__version__}, {backend.version}, "
          f"meprop_numba {getattr(mp, '__version__', 'unknown')}")
    print(f"float32, TF32 off, best of {args.repeat} alternating synchronised samples per row; "
          f"results checked first: {not args.no_check}")
    print()
    print(f"| case | dense {backend.name} ms | meProp ms | speed-up | paper ({PAPER_DENSE}) |")
    print("| --- | ---: | ---: | ---: | --- |", flush=True)
    failed = 0
    for label, kind, shape, k, paper in cases:
        try:
            dense_ms, sparse_ms = measure_case(mp, backend, kind, shape, k, args)
        except Exception as exc:  # the row says why; the other cases still run
            failed += 1
            print(f"| {label} | failed: {type(exc).__name__}: {str(exc)[:200]} | | | {paper or '-'} |", flush=True)
            continue
        print(f"| {label} | {dense_ms:.3f} | {sparse_ms:.3f} | {dense_ms / sparse_ms:.1f}x | {paper or '-'} |",
              flush=True)
    return 1 if failed else 0


def measure_case(mp, backend, kind, shape, k, args):
    """(dense ms, meProp ms) of one case, its result checked first."""
    if kind == "topk":
        g = backend.normal(shape, 3)
        arrays = (g,)

        def dense():
            return backend.topk(g, k)

        def sparse():
            return mp.topk_indices(g, k)
    else:
        batch, n, m = shape
        x, W, g = backend.normal((batch, m), 1), backend.normal((n, m), 2), backend.normal((batch, n), 3)
        arrays = (x, W, g)
        unified = kind == "unified"

        def dense():
            return backend.dense_backward(x, W, g)

        def sparse():
            return mp.linear_backward(x, W, g, k, unified=unified)
    if not args.no_check:
        check_case(backend, kind, arrays, k, sparse())
    dense_s, sparse_s = best_of_turns((dense, sparse), backend.synchronize, args.repeat)
    return dense_s * 1e3, sparse_s * 1e3


if __name__ == "__main__":
    sys.exit(main())
