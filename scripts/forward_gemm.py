"""Time the forward products of the paper's MLP: NumPy's BLAS in two layouts and PyTorch.

A linear layer stores its weight as (out, in), like ``torch.nn.Linear``.
Its forward product can be written ``x @ W.T`` or ``(W @ x.T).T``; both
give the same numbers, but BLAS receives the large operand (W) transposed
in the first and not in the second, and OpenBLAS is markedly slower on the
first. ``meprop_numba.nn.Linear`` uses the second. The PyTorch column
(``torch.nn.functional.linear``, MKL on x86 builds) is what the same product
costs the PyTorch baseline of ``scripts/compare_torch.py``.

Every figure is the best of several samples of the thread's CPU time,
the contenders measured in turn in this one process, float32.

Usage::

    python scripts/forward_gemm.py              # one thread (the default)
    python scripts/forward_gemm.py --threads 2
"""
import argparse
import os
import platform
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS and PyTorch threads (default 1)")
    parser.add_argument("--repeat", type=int, default=9, help="samples per contender (default 9)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be >= 1")
    return args


ARGS = parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

# (batch, in, out): the paper's MLP at the two minibatch sizes.
SHAPES = [(50, 784, 500), (50, 500, 500), (10, 784, 500), (10, 500, 500)]


def best_us(funcs, repeat, calls=200):
    """Best per-call microseconds of each function (CPU time), sampled in turn."""
    best = [float("inf")] * len(funcs)
    for f in funcs:
        f()
    for _ in range(repeat):
        for j, f in enumerate(funcs):
            start = time.thread_time_ns()
            for _ in range(calls):
                f()
            best[j] = min(best[j], (time.thread_time_ns() - start) / calls / 1e3)
    return best


def main():
    rng = np.random.default_rng(0)
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
    print(f"threads: {ARGS.threads}; {platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch is not None else ", torch not installed"))
    print(f"{'B x in -> out':>18} {'x @ W.T':>9} {'(W @ x.T).T':>12} {'ratio':>6} {'torch linear':>13}   (us per product)")
    for B, m, n in SHAPES:
        x = rng.standard_normal((B, m)).astype(np.float32)
        W = rng.standard_normal((n, m)).astype(np.float32)
        funcs = [lambda: x @ W.T, lambda: (W @ x.T).T]
        if torch is not None:
            tx, tW = torch.from_numpy(x), torch.from_numpy(W)
            funcs.append(lambda: torch.nn.functional.linear(tx, tW))
        assert np.allclose(funcs[0](), funcs[1](), rtol=1e-4, atol=1e-3)
        times = best_us(funcs, ARGS.repeat)
        torch_col = f"{times[2]:13.1f}" if torch is not None else f"{'-':>13}"
        print(f"{f'{B} x {m} -> {n}':>18} {times[0]:9.1f} {times[1]:12.1f} {times[0] / times[1]:5.2f}x {torch_col}")


if __name__ == "__main__":
    main()
