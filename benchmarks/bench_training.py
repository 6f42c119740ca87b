"""Training steps of the paper's MNIST MLP (784-500-500-10, Adam, float32): dense vs meProp.

Each timed call runs ``STEPS`` minibatches (forward, loss, backward, lazy
Adam update) over the embedded Fashion-MNIST subset, i.e. about one tenth
of an epoch of that subset. ``TorchTrainingSteps`` runs the same steps with
``torch.nn.Linear`` + ``torch.optim.Adam`` and is skipped (with a message)
when PyTorch is not installed.
"""
import sys
import time

import numpy as np

import meprop_numba as mp
from meprop_numba.data import load_dataset
from meprop_numba.nn import MLP
from meprop_numba.tasks import TASKS
from meprop_numba.training import train_step

from . import best_time

STEPS = 60
HIDDEN = 500
CASES = {  # name -> (k, mode, batch)
    "dense-b10": (None, "topk", 10),
    "topk-k20-b10": (20, "topk", 10),
    "dense-b50": (None, "unified", 50),
    "unified-k20-b50": (20, "unified", 50),
}


def _batches(n, batch, steps):
    order = np.random.default_rng(0).permutation(n)
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


class _Data:
    data = None

    @classmethod
    def get(cls):
        if cls.data is None:
            cls.data = load_dataset("embedded")
        return cls.data


_LOSS = TASKS["mlp"].loss


def _meprop_steps(model, optimizer, x, y, batches, timers=None):
    """The training loop's own step (the MLP task's loss) over `batches`."""
    for rows in batches:
        train_step(model, optimizer, _LOSS, (x[rows], y[rows]), timers)


class TrainingSteps:
    """``STEPS`` training steps of our MLP; ``track_*`` report dense / meProp ratios."""

    params = (list(CASES),)
    param_names = ["case"]
    timeout = 300

    def setup(self, case):
        data = _Data.get()
        self.x, self.y = data.x_train, data.y_train
        self.n_classes = data.n_classes
        k, mode, batch = CASES[case]
        self.batches = _batches(len(self.y), batch, STEPS)
        self.model, self.optimizer = self._build(k, mode)
        _meprop_steps(self.model, self.optimizer, self.x, self.y, self.batches[:3])

    def _build(self, k, mode):
        model = MLP(self.x.shape[1], HIDDEN, self.n_classes, k=k, selection=mode, rng=0)
        return model, mp.Adam(model.params(), lr=1e-3, lazy=True)

    def time_steps(self, case):
        _meprop_steps(self.model, self.optimizer, self.x, self.y, self.batches)

    def _backward_seconds(self, k, mode):
        model, optimizer = self._build(k, mode)
        _meprop_steps(model, optimizer, self.x, self.y, self.batches[:3])
        samples = []
        for _ in range(3):
            timers = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
            _meprop_steps(model, optimizer, self.x, self.y, self.batches, timers)
            samples.append(timers["backward"])
        return min(samples)

    def track_backward_speedup_vs_dense(self, case):
        k, mode, _ = CASES[case]
        if k is None:
            return 1.0
        return self._backward_seconds(None, mode) / self._backward_seconds(k, mode)

    track_backward_speedup_vs_dense.unit = "x"

    def track_step_speedup_vs_dense(self, case):
        k, mode, _ = CASES[case]
        if k is None:
            return 1.0
        dense = self._build(None, mode)
        sparse = self._build(k, mode)
        for model, optimizer in (dense, sparse):
            _meprop_steps(model, optimizer, self.x, self.y, self.batches[:3])
        t_dense = best_time(lambda: _meprop_steps(*dense, self.x, self.y, self.batches), repeat=3)
        t_sparse = best_time(lambda: _meprop_steps(*sparse, self.x, self.y, self.batches), repeat=3)
        return t_dense / t_sparse

    track_step_speedup_vs_dense.unit = "x"


class TorchTrainingSteps:
    """The same steps, dense, in PyTorch CPU (the baseline a user would pick)."""

    params = ([10, 50],)
    param_names = ["batch"]
    timeout = 300

    def setup(self, batch):
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: skipping the PyTorch baseline (pip install torch)",
                  file=sys.stderr)
            raise NotImplementedError("PyTorch is not installed")
        self.torch = torch
        data = _Data.get()
        self.x = torch.from_numpy(data.x_train)
        self.y = torch.from_numpy(data.y_train)
        self.batches = [torch.from_numpy(b) for b in _batches(len(data.y_train), batch, STEPS)]
        torch.manual_seed(0)
        n_in = data.x_train.shape[1]
        self.model = torch.nn.Sequential(
            torch.nn.Linear(n_in, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, data.n_classes))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = torch.nn.CrossEntropyLoss()
        self._steps(self.batches[:3])

    def _steps(self, batches):
        for rows in batches:
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(self.x[rows]), self.y[rows]).backward()
            self.optimizer.step()

    def time_steps(self, batch):
        self._steps(self.batches)
