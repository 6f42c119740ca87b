"""asv benchmarks for the meprop_numba CPU core.

Every benchmark class builds its inputs and warms the JIT in ``setup`` so that
``time_*`` measures only the call.  ``track_*_speedup`` benchmarks report the
dense NumPy/OpenBLAS time divided by the meProp time, both measured in the
same process (best of a few repeats), so the ratio does not depend on which
machine state the separate ``time_*`` samples were taken in.

Thread counts: export ``NUMBA_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` (or
``OMP_NUM_THREADS``) before running asv to pin them; the defaults use every
core for both.
"""
import importlib.util
import os
import sys
import time
import timeit

_spec = importlib.util.find_spec("meprop_numba")
if _spec is None or _spec.origin is None:
    # `asv run --python=same` from a checkout that was not pip-installed (or
    # whose only `meprop_numba` on the path is a namespace directory, such as
    # numba cache files left in site-packages by an uninstalled copy):
    # benchmark the package next to this directory.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import meprop_numba  # noqa: E402

#: Directory that holds the meprop_numba package being benchmarked, for
#: subprocess benchmarks (timeraw_) that must import the same copy.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(meprop_numba.__file__)))


def best_time(func, repeat=5, min_seconds=0.02):
    """Best per-call wall time of ``func()`` in seconds.

    Each of ``repeat`` samples runs ``func`` enough times to last about
    ``min_seconds`` (at least once): sub-millisecond calls stay above timer
    resolution and slow calls are not run more often than ``repeat`` times.
    """
    start = time.perf_counter()
    func()
    once = time.perf_counter() - start
    number = max(1, int(min_seconds / max(once, 1e-9)))
    return min(timeit.Timer(func).repeat(repeat=repeat, number=number)) / number


def standard_normal(shape, seed, dtype=np.float32):
    """Reproducible float inputs."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def parse_shape(text):
    """'10x500x784' -> (10, 500, 784)."""
    return tuple(int(part) for part in text.split("x"))
