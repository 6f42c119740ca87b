"""linear_backward (meProp) against the dense NumPy/OpenBLAS backward (float32)."""
import numba

import meprop_numba as mp

from . import best_time, parse_shape, standard_normal


def dense_backward(x, W, g):
    """The dense backward of y = x W^T + b: dx, dW, db."""
    return g @ W, g.T @ x, g.sum(axis=0)


class _Backward:
    unified = False

    def setup(self, shape, k):
        batch, n, m = parse_shape(shape)
        if k > n:
            raise NotImplementedError("k larger than n")
        self.x = standard_normal((batch, m), seed=1)
        self.W = standard_normal((n, m), seed=2)
        self.g = standard_normal((batch, n), seed=3)
        self.k = k
        mp.linear_backward(self.x, self.W, self.g, k, unified=self.unified)
        dense_backward(self.x, self.W, self.g)

    def time_meprop(self, shape, k):
        mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified)

    def time_dense(self, shape, k):
        dense_backward(self.x, self.W, self.g)

    def track_speedup(self, shape, k):
        dense = best_time(lambda: dense_backward(self.x, self.W, self.g), repeat=self.track_repeat)
        sparse = best_time(
            lambda: mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified),
            repeat=self.track_repeat,
        )
        return dense / sparse

    track_speedup.unit = "x"

    def peakmem_meprop(self, shape, k):
        mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified)

    def peakmem_dense(self, shape, k):
        dense_backward(self.x, self.W, self.g)


class PerExampleBackward(_Backward):
    """Per-example top-k: the paper's CPU setting (B x n x m)."""

    params = (["10x500x500", "10x500x784", "32x2000x2000"], [20, 40, 100])
    param_names = ["B x n x m", "k"]
    track_repeat = 5


class UnifiedBackward(_Backward):
    """Unified top-k, minibatch 50 (the paper's GPU MLP setting)."""

    unified = True
    params = (["50x500x500"], [20, 50])
    param_names = ["B x n x m", "k"]
    track_repeat = 5


class UnifiedBackwardLarge(_Backward):
    """Unified top-k on a large synthetic layer; the dense call takes ~0.5 s."""

    unified = True
    params = (["1024x4096x4096"], [8, 64, 512])
    param_names = ["B x n x m", "k"]
    track_repeat = 2
    repeat = (1, 3, 20.0)
    number = 1
    timeout = 300


class BackwardThreads:
    """meProp backward with 1 numba thread versus all of them.

    BLAS keeps its own thread count (set OPENBLAS_NUM_THREADS before asv
    starts); only numba's is changed here.
    """

    params = (["per_example 32x2000x2000 k=40", "unified 50x500x500 k=20"], [1, 0])
    param_names = ["case", "numba threads (0: all)"]

    def setup(self, case, threads):
        kind, shape, k = case.split()
        batch, n, m = parse_shape(shape)
        self.k = int(k.split("=")[1])
        self.unified = kind == "unified"
        self.x = standard_normal((batch, m), seed=1)
        self.W = standard_normal((n, m), seed=2)
        self.g = standard_normal((batch, n), seed=3)
        self.saved_threads = mp.get_num_threads()
        mp.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
        mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified)

    def teardown(self, case, threads):
        mp.set_num_threads(self.saved_threads)

    def time_meprop(self, case, threads):
        mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified)
