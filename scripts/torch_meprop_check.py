"""Cross-check meProp's training behaviour against an independent PyTorch version.

The PyTorch version is meProp written directly in autograd: in every hidden
layer the product ``x W^T`` passes through a function that is the identity
forward and, backward, keeps the k largest-magnitude entries of its gradient
(per example, or the k columns with the largest summed magnitude over the
minibatch for ``--mode unified``) and zeroes the rest; the bias is added
after it, so its gradient is the full one, as in the paper's code and in
:func:`meprop_numba.linear_backward`. The same MLP
(784-500-500-10 unless ``--layers``/``--hidden``, ReLU, weights and biases
uniform in +-1/sqrt(fan-in), dense output layer, Adam lr 0.001 with dense
updates) trains on the same data as ``meprop_numba``'s own run with
``lazy=False`` (each shuffles with its own seeded generator). Accuracy after each epoch is printed for both.

Two checks:

1. lockstep (``--lockstep-steps``): both start from the same float64 weights
   and take the same minibatches; the largest difference between their
   parameters is printed after some steps. Equal to rounding error means the
   two are the same algorithm. (meProp's selection is discontinuous, so
   rounding differences eventually flip a selection and the trajectories
   part: compare the early steps.)
2. training (``--epochs``, 0 skips it): float32 runs of both, per seed;
   test accuracy after each epoch.

If they agree, a gap between meProp and dense training is a property of the
algorithm on this data, not of this package's kernels.

Usage::

    python scripts/torch_meprop_check.py --data-dir DIR --epochs 1 --seeds 0 1 2
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.tasks.mlp import MLPConfig  # noqa: E402
from meprop_numba.training import build_optimizer, run_generators, train_step  # noqa: E402


def sparse_grad_function(torch, k, mode):
    """Identity forward; backward keeps the top-k of the gradient (per row or unified)."""

    class SparseGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.view_as(y)

        @staticmethod
        def backward(ctx, grad):
            if mode == "unified":
                columns = grad.abs().sum(0).topk(k).indices
                mask = torch.zeros_like(grad[0]).index_fill_(0, columns, 1.0)
            else:
                mask = torch.zeros_like(grad).scatter_(1, grad.abs().topk(k, dim=1).indices, 1.0)
            return grad * mask

    return SparseGrad


def torch_forward(torch, SparseGrad, k, hidden_params, output_params, x):
    """The MLP's forward: ReLU(top-k-masked x W^T + b) per hidden layer, dense output."""
    for W, b in hidden_params:
        y = x @ W.T
        x = torch.relu((y if k is None else SparseGrad.apply(y)) + b)
    W, b = output_params
    return x @ W.T + b


def lockstep(torch, data, k, mode, batch_size, hidden, layers, steps, seed=0):
    """Max |parameter difference| between ours and PyTorch after some identical float64 steps."""
    import meprop_numba as mp
    from meprop_numba.nn import MLP

    model = MLP(data.n_features, hidden, data.n_classes, layers=layers, k=k, selection=mode,
                dtype=np.float64, rng=seed)
    optimizer = mp.Adam(model.params(), lr=1e-3, lazy=False)
    params = [torch.tensor(p.copy(), requires_grad=True) for p in model.params()]
    torch_optimizer = torch.optim.Adam(params, lr=1e-3)
    pairs = list(zip(params[0::2], params[1::2]))
    SparseGrad = sparse_grad_function(torch, k, mode)
    x_all, y_all = data.x_train.astype(np.float64), data.y_train
    batches = np.random.default_rng(seed).integers(0, len(y_all), (steps, batch_size))
    report = {}
    for step, batch in enumerate(batches, 1):
        train_step(model, optimizer, TASKS["mlp"].loss, (x_all[batch], y_all[batch]))
        logits = torch_forward(torch, SparseGrad, k, pairs[:-1], pairs[-1], torch.from_numpy(x_all[batch]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_all[batch].astype(np.int64)))
        torch_optimizer.zero_grad()
        loss.backward()
        torch_optimizer.step()
        if step in (1, 10, 100, 1000) or step == steps:
            report[step] = max(float(np.abs(p - t.detach().numpy()).max())
                               for p, t in zip(model.params(), params))
    return report


def torch_run(torch, data, k, mode, batch_size, hidden, layers, epochs, seed):
    """Train the PyTorch meProp MLP; return test accuracy after each epoch."""
    SparseGrad = sparse_grad_function(torch, k, mode)
    torch.manual_seed(seed)
    sizes = [data.n_features] + [hidden] * layers
    hidden_layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
    output = torch.nn.Linear(hidden, data.n_classes)
    params = list(hidden_layers.parameters()) + list(output.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def forward(x):
        return torch_forward(torch, SparseGrad, k, [(m.weight, m.bias) for m in hidden_layers],
                             (output.weight, output.bias), x)

    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train.astype(np.int64))
    x_test = torch.from_numpy(data.x_test)
    order_rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(epochs):
        order = torch.from_numpy(order_rng.permutation(len(x_train)))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(forward(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracies.append(float((forward(x_test).argmax(1).numpy() == data.y_test).mean()))
    return accuracies


def ours_run(data, k, mode, batch_size, hidden, layers, epochs, seed, dataset, data_dir):
    """Test accuracy after every epoch (the training loop's own step; test read every epoch here)."""
    task = TASKS["mlp"]
    config = MLPConfig(dataset=dataset, data_dir=data_dir, k=k, selection=mode,
                       batch_size=batch_size, hidden=hidden, layers=layers, epochs=epochs,
                       seed=seed, lazy=False, threads=1).validate()
    model_rng, data_rng = run_generators(seed)
    model = task.build_model(config, task.extra_state(data), model_rng)
    optimizer = build_optimizer(config, model.parameters())
    accuracies = []
    for _ in range(epochs):
        task.start_epoch(model)
        for batch in task.batches(config, data, data_rng):
            train_step(model, optimizer, task.loss, batch)
        accuracies.append(task.evaluate(model, data, "test")["accuracy"])
    return accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--mode", choices=("topk", "unified"), default="topk")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lockstep-steps", type=int, default=100,
                        help="identical float64 steps of the lockstep check (0 skips it)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed (pip install torch): nothing to compare against")
        return 1
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, args.data_dir)
    print(f"{data.summary()}; {args.layers} hidden layers of {args.hidden}, batch {args.batch_size}, "
          f"Adam lr 0.001 (dense updates), 1 thread; test accuracy % after each epoch", flush=True)
    if args.lockstep_steps > 0:
        for k in (None, args.k):
            report = lockstep(torch, data, k, args.mode, args.batch_size, args.hidden, args.layers,
                              args.lockstep_steps)
            label = "dense" if k is None else f"meProp k={k} {args.mode}"
            print(f"lockstep, {label}, float64: max |ours - PyTorch| over the parameters after "
                  + ", ".join(f"{step} steps: {diff:.1e}" for step, diff in report.items()), flush=True)
    if args.epochs == 0:
        return 0
    common = dict(batch_size=args.batch_size, hidden=args.hidden, layers=args.layers, epochs=args.epochs)
    rows = []
    for k in (None, args.k):
        label = "dense" if k is None else f"meProp k={k} {args.mode}"
        for impl in ("meprop_numba", "PyTorch autograd"):
            finals = []
            for seed in args.seeds:
                start = time.perf_counter()
                if impl == "meprop_numba":
                    acc = ours_run(data, k, args.mode, seed=seed, dataset=args.dataset,
                                   data_dir=args.data_dir, **common)
                else:
                    acc = torch_run(torch, data, k, args.mode, seed=seed, **common)
                finals.append(100 * acc[-1])
                print(f"{label:>22} | {impl:>16} | seed {seed} | "
                      + " ".join(f"{100 * a:.2f}" for a in acc)
                      + f" | {time.perf_counter() - start:.0f} s", flush=True)
            rows.append((label, impl, finals))
    print(f"\n| run | implementation | test acc % after epoch {args.epochs}, seeds {args.seeds} |")
    print("| --- | --- | --- |")
    for label, impl, finals in rows:
        spread = f" ± {np.std(finals, ddof=1):.2f}" if len(finals) > 1 else ""
        print(f"| {label} | {impl} | {np.mean(finals):.2f}{spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
