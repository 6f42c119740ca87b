"""Import plus first-call cost: JIT compilation (cold cache) and cache loading."""
import shutil
import subprocess
import sys
import tempfile
import textwrap

from . import PACKAGE_PARENT

# First calls of every public entry point in float32 and float64.
FIRST_CALLS = textwrap.dedent(
    """
    import meprop_numba as mp
    for dtype in (np.float32, np.float64):
        x = np.ones((4, 6), dtype=dtype)
        W = np.ones((8, 6), dtype=dtype)
        g = np.arange(32, dtype=dtype).reshape(4, 8)
        mp.topk_indices(g, 2)
        mp.topk_indices(g, 2, unified=True)
        mp.linear_backward(x, W, g, 2)
        _, dW, db = mp.linear_backward(x, W, g, 2, unified=True)
        for opt in (mp.SGD([W], lr=0.1, momentum=0.9), mp.Adam([W]), mp.AdaGrad([W])):
            opt.step([dW])
    """
)


def _setup_code(cache_dir=None):
    """Untimed set-up of the child: the numba cache directory, then imports.

    numba reads NUMBA_CACHE_DIR when it is imported, so it is set first;
    ``cache_dir=None`` makes a fresh empty directory removed at exit.
    """
    if cache_dir is None:
        choose = (
            "import atexit, shutil, tempfile\n"
            "cache_dir = tempfile.mkdtemp(prefix='meprop_numba_asv_cold_')\n"
            "atexit.register(shutil.rmtree, cache_dir, True)\n"
        )
    else:
        choose = f"cache_dir = {cache_dir!r}\n"
    return (
        "import os, sys\n"
        + choose
        + "os.environ['NUMBA_CACHE_DIR'] = cache_dir\n"
        + f"sys.path.insert(0, {PACKAGE_PARENT!r})\n"
        + "import numpy as np\n"
        + "import numba\n"
    )


class ColdCompile:
    """Every kernel compiled from scratch (what a fresh install pays once)."""

    timeout = 600
    repeat = (1, 2, 60.0)
    number = 1

    def timeraw_import_and_first_calls(self):
        return FIRST_CALLS, _setup_code()


class WarmCache:
    """Import and first calls when numba's on-disk cache is already filled."""

    timeout = 600
    repeat = (1, 5, 30.0)
    number = 1

    def setup(self):
        self.cache_dir = tempfile.mkdtemp(prefix="meprop_numba_asv_warm_")
        subprocess.run([sys.executable, "-c", _setup_code(self.cache_dir) + FIRST_CALLS],
                       check=True)

    def teardown(self):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def timeraw_import_and_first_calls(self):
        return FIRST_CALLS, _setup_code(self.cache_dir)
