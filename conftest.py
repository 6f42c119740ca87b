"""Test-session set-up shared by the test suite and the doctests.

At the repository root so that both ``pytest`` (``tests/``) and ``pytest
--doctest-modules meprop_numba`` load it. Runs before numba is imported:
it points numba's on-disk cache at a project-local directory (unless the
caller chose one) and, on machines without an NVIDIA driver, turns on the
CUDA simulator so that the GPU kernels are still exercised.
"""
import os
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parent
os.environ.setdefault("NUMBA_CACHE_DIR", str(_ROOT / ".numba_cache"))
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def pytest_collection_modifyitems(config, items):
    """Every test of the CUDA kernels carries the ``cuda`` marker (``-m cuda`` / ``-m "not cuda"``)."""
    import pytest

    for item in items:
        if item.fspath.basename.startswith("test_cuda"):
            item.add_marker(pytest.mark.cuda)
