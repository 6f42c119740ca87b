"""Print the CPU speed table: meProp kernels against the dense NumPy baseline.

Every row is measured in this one process, the dense baseline and the meProp
call sampled in turn, the best sample of each kept (float32).  The baseline
is what a dense network pays with NumPy/OpenBLAS:
``np.argpartition(np.abs(g), n - k, axis=1)`` for top-k, and ``g @ W``,
``g.T @ x``, ``g.sum(0)`` for the backward of a linear layer.

Usage::

    python scripts/cpu_speed.py                 # all cores
    python scripts/cpu_speed.py --threads 1     # one thread for numba and BLAS
    python scripts/cpu_speed.py --skip-large    # leave out B=1024, n=m=4096
"""
import argparse
import importlib.util
import os
import platform
import sys
import time
import timeit


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numba and BLAS (default: every core)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="minimum samples per measurement; the best is kept (default 5)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds per case after which no more samples are taken"
                             " once --repeat is reached (default 1)")
    parser.add_argument("--skip-large", action="store_true",
                        help="skip the B=1024, n=m=4096 unified case (~1 s a dense call)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


# (label, kind, shape, k, target ratio); kind: topk | per_example | unified.
CASES = [
    ("top-k 100x500, k=20", "topk", (100, 500), 20, 3),
    ("top-k 1024x8192, k=32", "topk", (1024, 8192), 32, 3),
    ("per-example B=10, n=500, m=500, k=20", "per_example", (10, 500, 500), 20, 8),
    ("per-example B=10, n=500, m=784, k=20", "per_example", (10, 500, 784), 20, 8),
    ("per-example B=32, n=m=2000, k=40", "per_example", (32, 2000, 2000), 40, 15),
    ("unified B=50, n=m=500, k=20", "unified", (50, 500, 500), 20, 10),
    ("unified B=1024, n=m=4096, k=64", "unified", (1024, 4096, 4096), 64, 20),
]


def calls_per_sample(func, min_seconds=0.002):
    """How many calls make one sample last about ``min_seconds`` (>= 1).

    Short samples, many of them: on a shared machine the best of many short
    samples is far less disturbed by other processes than a few long ones.
    """
    func()  # warm-up (JIT compilation, caches, allocator)
    start = time.perf_counter()
    func()
    once = time.perf_counter() - start
    return max(1, int(min_seconds / max(once, 1e-9)))


def best_of_alternating(dense, sparse, repeat, budget_seconds=1.0):
    """Best per-call seconds of each function, the two sampled in turn.

    At least ``repeat`` samples of each; more while the case has used less
    than ``budget_seconds`` (at most 500), so fast cases get many samples.
    """
    n_dense, n_sparse = calls_per_sample(dense), calls_per_sample(sparse)
    dense_timer, sparse_timer = timeit.Timer(dense), timeit.Timer(sparse)
    best_dense = best_sparse = float("inf")
    start = time.perf_counter()
    samples = 0
    while samples < repeat or (time.perf_counter() - start < budget_seconds and samples < 500):
        best_dense = min(best_dense, dense_timer.timeit(n_dense) / n_dense)
        best_sparse = min(best_sparse, sparse_timer.timeit(n_sparse) / n_sparse)
        samples += 1
    return best_dense, best_sparse, samples


def make_case(kind, shape, k):
    """(dense baseline, meProp call) closures over float32 inputs."""
    import numpy as np
    import meprop_numba as mp

    rng = np.random.default_rng(0)
    if kind == "topk":
        g = rng.standard_normal(shape).astype(np.float32)
        n = shape[1]
        return (lambda: np.argpartition(np.abs(g), n - k, axis=1),
                lambda: mp.topk_indices(g, k))
    batch, n, m = shape
    x = rng.standard_normal((batch, m)).astype(np.float32)
    W = rng.standard_normal((n, m)).astype(np.float32)
    g = rng.standard_normal((batch, n)).astype(np.float32)
    unified = kind == "unified"

    def dense():
        return g @ W, g.T @ x, g.sum(axis=0)

    return dense, lambda: mp.linear_backward(x, W, g, k, unified=unified)


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(repeat):
    import numba
    import numpy as np
    import meprop_numba as mp

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not initialised"
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS",
                                  os.environ.get("OMP_NUM_THREADS", "library default"))
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__},"
        f" meprop_numba {getattr(mp, '__version__', 'unknown')}",
        f"threads: numba {mp.get_num_threads()} (layer {layer}),"
        f" BLAS {blas_threads}",
        f"float32, dense and meProp sampled in turn, best of >= {repeat} samples per row",
    ]


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        # BLAS reads these when NumPy is first imported, so set them first.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    import numpy  # noqa: F401  (imported after the thread variables are set)

    if importlib.util.find_spec("meprop_numba") is None:
        # A checkout without `pip install`: use the package beside scripts/.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import meprop_numba as mp

    if args.threads is not None:
        mp.set_num_threads(args.threads)
    rows = []
    for label, kind, shape, k, target in CASES:
        if args.skip_large and shape == (1024, 4096, 4096):
            continue
        dense, sparse = make_case(kind, shape, k)
        dense_s, sparse_s, samples = best_of_alternating(dense, sparse, args.repeat,
                                                         args.budget)
        rows.append((label, dense_s * 1e3, sparse_s * 1e3, dense_s / sparse_s, target, samples))
        print(f"measured {label}", file=sys.stderr, flush=True)

    for line in describe_machine(args.repeat):
        print(line)
    print()
    print("| case | dense ms | meProp ms | ratio | target |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, dense_ms, sparse_ms, ratio, target, samples in rows:
        mark = "" if ratio >= target else " (below)"
        print(f"| {label} | {dense_ms:.3f} | {sparse_ms:.3f} | {ratio:.1f}x{mark} | >= {target}x |")
    print()
    print("samples per row (best kept): " + ", ".join(str(row[-1]) for row in rows))


if __name__ == "__main__":
    main()
