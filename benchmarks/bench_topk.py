"""Top-k selection against np.argpartition (float32)."""
import numpy as np

import meprop_numba as mp

from . import best_time, parse_shape, standard_normal


class TopK:
    """Per-example and unified top-k of |g| versus a NumPy partition."""

    params = (["100x500", "1024x8192"], [8, 20, 32, 128])
    param_names = ["B x n", "k"]

    def setup(self, shape, k):
        self.g = standard_normal(parse_shape(shape), seed=0)
        self.k = k
        mp.topk_indices(self.g, k)
        mp.topk_indices(self.g, k, unified=True)

    def time_topk(self, shape, k):
        mp.topk_indices(self.g, self.k)

    def time_topk_unified(self, shape, k):
        mp.topk_indices(self.g, self.k, unified=True)

    def time_argpartition(self, shape, k):
        n = self.g.shape[1]
        np.argpartition(np.abs(self.g), n - self.k, axis=1)

    def track_topk_speedup(self, shape, k):
        n = self.g.shape[1]
        dense = best_time(lambda: np.argpartition(np.abs(self.g), n - self.k, axis=1))
        sparse = best_time(lambda: mp.topk_indices(self.g, self.k))
        return dense / sparse

    track_topk_speedup.unit = "x"

    def peakmem_topk(self, shape, k):
        mp.topk_indices(self.g, self.k)
