"""The threading set-up chosen in meprop_numba._config."""
import os

import numba
import numpy as np
import pytest

import meprop_numba as mp


@pytest.mark.skipif("NUMBA_THREADING_LAYER" in os.environ, reason="the user chose a threading layer")
def test_parallel_kernels_run_on_the_workqueue_layer():
    # A row-wise top-k large enough to take the threaded kernel launches the pool.
    from meprop_numba._config import PARALLEL_MIN_TOPK

    g = np.random.default_rng(0).standard_normal((2 * PARALLEL_MIN_TOPK // 4096, 4096)).astype(np.float32)
    mp.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    idx = mp.topk_indices(g, 8)
    assert idx.shape == (g.shape[0], 8)
    assert numba.threading_layer() == "workqueue"
