"""asv benchmarks for the CUDA kernels (needs an NVIDIA GPU).

Every class skips (``NotImplementedError`` in ``setup``) when no CUDA GPU is
usable or when the CUDA simulator is on: simulator timings say nothing about
a GPU.  Inputs live on the device; each ``time_*`` call ends with a device
synchronisation so that the kernels, not just their launches, are timed.

Dense baselines use cuBLAS through PyTorch (TF32 off, so both sides do
float32 arithmetic); the ``*_torch`` benchmarks and ``track_speedup`` skip
when PyTorch with CUDA is not installed.  The full table with the paper's
figures is printed by ``scripts/gpu_speed.py``.
"""
import time

import numpy as np

import meprop_numba as mp
from meprop_numba import gpu

from . import parse_shape


def _require_gpu():
    if not gpu.is_available():
        raise NotImplementedError(
            "no usable CUDA GPU: needs an NVIDIA GPU and driver and meprop_numba[cuda12] or [cuda13]"
        )
    from meprop_numba import _cuda

    if _cuda.is_simulator():
        raise NotImplementedError("NUMBA_ENABLE_CUDASIM=1: simulator timings are meaningless")


def _torch_cuda():
    """PyTorch with CUDA and TF32 off, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _device_normal(shape, seed):
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return gpu.to_device(data)


def _best_seconds(func, repeat=5):
    """Best wall time of one synchronised call (after one warm-up call)."""
    func()
    gpu.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        gpu.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


class _GpuBackward:
    unified = False
    timeout = 300

    def setup(self, shape, k):
        _require_gpu()
        batch, n, m = parse_shape(shape)
        self.x = _device_normal((batch, m), 1)
        self.W = _device_normal((n, m), 2)
        self.g = _device_normal((batch, n), 3)
        self.k = k
        self.meprop()  # compile and warm up
        gpu.synchronize()
        self.torch = _torch_cuda()
        if self.torch is not None:
            as_tensor = self.torch.as_tensor
            self.tx, self.tW, self.tg = (as_tensor(a, device="cuda") for a in (self.x, self.W, self.g))

    def meprop(self):
        return mp.linear_backward(self.x, self.W, self.g, self.k, unified=self.unified)

    def dense_torch(self):
        return self.tg @ self.tW, self.tg.T @ self.tx, self.tg.sum(0)

    def time_meprop(self, shape, k):
        self.meprop()
        gpu.synchronize()

    def time_dense_numba(self, shape, k):
        mp.linear_backward(self.x, self.W, self.g)
        gpu.synchronize()

    def time_dense_torch(self, shape, k):
        if self.torch is None:
            raise NotImplementedError("PyTorch with CUDA is not installed")
        self.dense_torch()
        self.torch.cuda.synchronize()

    def track_speedup(self, shape, k):
        """Dense cuBLAS backward time / meProp backward time."""
        if self.torch is None:
            raise NotImplementedError("PyTorch with CUDA is not installed")
        return _best_seconds(self.dense_torch) / _best_seconds(self.meprop)

    track_speedup.unit = "x"


class GpuUnifiedBackward(_GpuBackward):
    """Unified top-k, the paper's synthetic GPU layer (batch 1024, hidden 8192)."""

    unified = True
    params = (["1024x8192x8192"], [8, 64, 512])
    param_names = ["B x n x m", "k"]


class GpuPerExampleBackward(_GpuBackward):
    """Per-example top-k on a large layer."""

    params = (["1024x4096x4096"], [32])
    param_names = ["B x n x m", "k"]


class GpuTopk:
    """Row-wise top-k by magnitude against ``torch.topk(g.abs())``."""

    params = (["1024x8192"], [32, 1024])
    param_names = ["B x n", "k"]

    def setup(self, shape, k):
        _require_gpu()
        self.g = _device_normal(parse_shape(shape), 4)
        self.k = k
        mp.topk_indices(self.g, k)
        gpu.synchronize()
        self.torch = _torch_cuda()
        if self.torch is not None:
            self.tg = self.torch.as_tensor(self.g, device="cuda")

    def time_meprop(self, shape, k):
        mp.topk_indices(self.g, self.k)
        gpu.synchronize()

    def time_unified(self, shape, k):
        mp.topk_indices(self.g, self.k, unified=True)
        gpu.synchronize()

    def time_torch(self, shape, k):
        if self.torch is None:
            raise NotImplementedError("PyTorch with CUDA is not installed")
        self.torch.topk(self.tg.abs(), self.k, dim=1)
        self.torch.cuda.synchronize()


class GpuAdamUpdate:
    """Adam on an 8192 x 8192 weight: lazy (k rows) against the dense update."""

    params = ([64, 512], [True, False])
    param_names = ["rows", "lazy"]

    def setup(self, rows, lazy):
        _require_gpu()
        n = m = 8192
        self.W = _device_normal((n, m), 5)
        chosen = np.sort(np.random.default_rng(6).choice(n, size=rows, replace=False)).astype(np.int64)
        self.grad = mp.RowSparse(gpu.to_device(chosen), _device_normal((rows, m), 7), (n, m))
        self.opt = mp.Adam([self.W], lr=1e-3, lazy=lazy)
        self.opt.step([self.grad])
        gpu.synchronize()

    def time_step(self, rows, lazy):
        self.opt.step([self.grad])
        gpu.synchronize()
