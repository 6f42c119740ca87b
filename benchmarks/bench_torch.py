"""meprop_numba.torch against plain PyTorch (float32; skipped without torch).

``time_*`` time one training step (or one layer's backward); the
``track_*_speedup`` benchmarks report the PyTorch dense time divided by the
meProp time, both measured in the same process (best of a few repeats).
"""
from . import best_time


def _torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("PyTorch is not installed (pip install 'meprop_numba[torch]')") from None
    return torch


def _mlp_runs(selection):
    """``(batches, {kind: (model, optimizer)})``: the dense and the converted 784-500-500-10 MLP.

    Per example k=20 trains on batches of 10, unified k=20 on batches of 50
    (``(x, y)`` minibatches of the embedded Fashion-MNIST subset, shuffled
    once); the dense side is ``nn.Linear`` + ``torch.optim.Adam`` with its defaults.
    """
    torch = _torch()
    from meprop_numba.data import load_dataset
    from meprop_numba.torch import convert, optim

    batch = 10 if selection == "topk" else 50
    data = load_dataset("embedded")
    order = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = torch.from_numpy(data.x_train)[order].contiguous(), torch.from_numpy(data.y_train).long()[order]
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, x.shape[0] - batch + 1, batch)]
    runs = {}
    for kind in ("dense", "meprop"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500),
                                    torch.nn.ReLU(), torch.nn.Linear(500, 10))
        if kind == "meprop":
            convert(model, k=20, selection=selection)
        runs[kind] = (model, (optim.Adam if kind == "meprop" else torch.optim.Adam)(model.parameters()))
    return batches, runs


class MLPTrainingStep:
    """784-500-500-10 MLP: zero_grad, forward, cross entropy, backward, optimizer step, on the next minibatch.

    ``convert(model, k=20)`` + lazy Adam against ``nn.Linear`` + ``torch.optim.Adam``.
    """

    params = (["topk", "unified"],)
    param_names = ["selection"]

    def setup(self, selection):
        torch = _torch()
        batches, runs = _mlp_runs(selection)
        self.steps = {}
        for kind, (model, opt) in runs.items():
            def step(model=model, opt=opt, position=[0]):
                # the minibatches a user trains on, one after the other
                x, y = batches[position[0] % len(batches)]
                position[0] += 1
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

            step()  # warm-up: JIT and optimizer state
            self.steps[kind] = step

    def time_dense(self, selection):
        self.steps["dense"]()

    def time_meprop(self, selection):
        self.steps["meprop"]()

    def track_step_speedup(self, selection):
        return best_time(self.steps["dense"]) / best_time(self.steps["meprop"])

    track_step_speedup.unit = "x"


class WideLayerBackward:
    """One 4096 -> 4096 layer, batch 256, unified k=64: forward + backward.

    A backward needs a fresh graph, so asv times it with its forward (the
    same ``F.linear`` on both sides); ``scripts/torch_speed.py`` times the
    backward alone.
    """

    def setup(self):
        torch = _torch()
        from meprop_numba.torch import MePropLinear

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(256, 4096, generator=gen).requires_grad_(True)
        self.g = torch.randn(256, 4096, generator=gen)
        self.layers = {"dense": torch.nn.Linear(4096, 4096), "meprop": MePropLinear(4096, 4096, k=64,
                                                                                   selection="unified")}
        self.backward("meprop")

    def backward(self, kind):
        self.layers[kind](self.x).backward(self.g)

    def time_dense_forward_backward(self):
        self.backward("dense")

    def time_meprop_forward_backward(self):
        self.backward("meprop")

    def track_forward_backward_speedup(self):
        return best_time(lambda: self.backward("dense")) / best_time(lambda: self.backward("meprop"))

    track_forward_backward_speedup.unit = "x"


class OptimizerStep:
    """The optimizer step alone, on the gradients of one 784-500-500-10 training step.

    Lazy :class:`meprop_numba.torch.optim.Adam` on ``convert(model, k=20)``'s
    row-sparse gradients (its per-step checks of every parameter and
    gradient included) against ``torch.optim.Adam`` (defaults) on the dense
    model's gradients.
    """

    params = (["topk", "unified"],)
    param_names = ["selection"]

    def setup(self, selection):
        torch = _torch()
        batches, runs = _mlp_runs(selection)
        x, y = batches[0]
        self.opts = {}
        for kind, (model, opt) in runs.items():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()  # warm-up: JIT and optimizer state
            self.opts[kind] = opt

    def time_dense(self, selection):
        self.opts["dense"].step()

    def time_meprop(self, selection):
        self.opts["meprop"].step()

    def track_step_speedup(self, selection):
        return best_time(self.opts["dense"].step) / best_time(self.opts["meprop"].step)

    track_step_speedup.unit = "x"
