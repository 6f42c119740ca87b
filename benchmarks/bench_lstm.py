"""The meProp LSTM layer as k changes: BPTT of one sentence, the paper's POS shapes.

One sentence of 23 tokens (the mean EWT training sentence), minibatch 1,
input 190 (word embedding 50 + 7 features x 20), hidden 500, float32,
per-gate top-k. ``time_forward_backward`` times a training forward plus
the layer's backward (the backward needs the forward's tape);
``track_backward_speedup_vs_dense`` is dense BPTT's backward time over
meProp's, both measured in the same process.
"""
import time

import numpy as np

from meprop_numba.nn import LSTM

T, D, H = 23, 190, 500
KS = [5, 10, 20, None]  # None: dense BPTT


def _layer_and_inputs(k):
    rng = np.random.default_rng(0)
    layer = LSTM(D, H, k=k, rng=0)
    x = (0.5 * rng.standard_normal((1, T, D))).astype(np.float32)
    dout = (0.1 * rng.standard_normal((1, T, H))).astype(np.float32)
    layer.forward(x, train=True)
    layer.backward(dout)  # compile and allocate the workspaces
    return layer, x, dout


def _backward_seconds(layer, x, dout, repeat=5, calls=20):
    """Best per-call seconds of the backward alone (the forward before each call is not timed)."""
    best = float("inf")
    for _ in range(repeat):
        total = 0.0
        for _ in range(calls):
            layer.forward(x, train=True)
            start = time.perf_counter()
            layer.backward(dout)
            total += time.perf_counter() - start
        best = min(best, total / calls)
    return best


class LSTMBackward:
    """One sentence through the LSTM layer at k = 5, 10, 20 per gate and dense."""

    params = (KS,)
    param_names = ["k"]
    timeout = 300

    def setup(self, k):
        self.layer, self.x, self.dout = _layer_and_inputs(k)

    def time_forward_backward(self, k):
        self.layer.forward(self.x, train=True)
        self.layer.backward(self.dout)

    def track_backward_speedup_vs_dense(self, k):
        if k is None:
            return 1.0
        dense = _backward_seconds(*_layer_and_inputs(None))
        return dense / _backward_seconds(self.layer, self.x, self.dout)

    track_backward_speedup_vs_dense.unit = "x"
