"""Sparse (lazy) versus dense optimizer steps on a 500 x 784 weight (float32)."""
import numpy as np

import meprop_numba as mp

from . import best_time, standard_normal

N_OUT, N_IN = 500, 784


def make_optimizer(name, params, lazy):
    if name == "sgd":
        return mp.SGD(params, lr=0.01, lazy=lazy)
    if name == "momentum":
        return mp.SGD(params, lr=0.01, momentum=0.9, lazy=lazy)
    if name == "adam":
        return mp.Adam(params, lr=1e-3, lazy=lazy)
    if name == "adagrad":
        return mp.AdaGrad(params, lr=1e-2, lazy=lazy)
    raise ValueError(name)


class OptimizerStep:
    """One step with a RowSparse gradient on ``rows`` rows, lazy vs dense.

    ``time_dense_gradient`` is the baseline a dense network pays: the dense
    optimizer with a dense (n, m) gradient.
    """

    params = (["sgd", "momentum", "adam", "adagrad"], [20, 200])
    param_names = ["optimizer", "rows"]

    def setup(self, name, rows):
        rng = np.random.default_rng(4)
        self.weight_lazy = standard_normal((N_OUT, N_IN), seed=5)
        self.weight_dense = self.weight_lazy.copy()
        self.weight_full = self.weight_lazy.copy()
        selected = np.sort(rng.choice(N_OUT, size=rows, replace=False))
        x = standard_normal((10, N_IN), seed=6)
        g = standard_normal((10, N_OUT), seed=7)
        _, self.sparse_grad, _ = mp.linear_backward(x, self.weight_lazy, g, indices=selected)
        self.dense_grad = self.sparse_grad.to_dense()
        self.lazy = make_optimizer(name, [self.weight_lazy], lazy=True)
        self.dense = make_optimizer(name, [self.weight_dense], lazy=False)
        self.full = make_optimizer(name, [self.weight_full], lazy=False)
        self.lazy.step([self.sparse_grad])
        self.dense.step([self.sparse_grad])
        self.full.step([self.dense_grad])

    def time_lazy_sparse(self, name, rows):
        self.lazy.step([self.sparse_grad])

    def time_dense_mode_sparse(self, name, rows):
        self.dense.step([self.sparse_grad])

    def time_dense_gradient(self, name, rows):
        self.full.step([self.dense_grad])

    def track_lazy_speedup(self, name, rows):
        dense = best_time(lambda: self.full.step([self.dense_grad]))
        lazy = best_time(lambda: self.lazy.step([self.sparse_grad]))
        return dense / lazy

    track_lazy_speedup.unit = "x"

    def peakmem_lazy_sparse(self, name, rows):
        self.lazy.step([self.sparse_grad])
