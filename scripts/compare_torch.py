"""Time one training epoch of the paper's MNIST MLP: meProp against PyTorch CPU and our dense path.

Model 784-500-500-10 (ReLU, softmax cross-entropy, Adam lr 0.001), float32,
the same shuffled minibatches for every contender. Prints three ratios,
all measured in this one run (the contenders alternate, best of
``--repeat`` epochs each):

1. meProp k=20 unified + lazy Adam, batch 50, against the same model dense
   in PyTorch (``torch.nn.Linear`` + ``torch.optim.Adam``), whole epoch.
2. meProp k=20 per-example + lazy Adam, batch 10, against PyTorch, batch 10.
3. meProp k=20 against our own dense path (k=None, the same code with BLAS
   products), backward pass only, at batch 10 (per-example) and batch 50
   (unified).

Usage::

    python scripts/compare_torch.py                         # embedded subset, all cores
    python scripts/compare_torch.py --dataset fashion-mnist --data-dir DIR --threads 1

PyTorch is a benchmark-only dependency (``pip install torch``); without it
the PyTorch rows are skipped with a message and ratio 3 is still measured.
"""
import argparse
import os
import platform
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="embedded",
                        help="embedded (default), fashion-mnist, mnist or an IDX directory")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numba, BLAS and PyTorch (default: every core)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="epochs per contender; the fastest is kept (default 3)")
    parser.add_argument("--examples", type=int, default=None,
                        help="use only the first N training examples per epoch")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--torch-flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True): PyTorch treats subnormal floats as "
                             "zero (Adam moments of always-zero gradients decay into subnormals, "
                             "which are slow on x86)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


ARGS = parse_args()
if ARGS.threads is not None:
    # BLAS reads its thread count when it loads, i.e. at the numpy import.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import meprop_numba as mp  # noqa: E402
from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.nn import MLP  # noqa: E402
from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.training import train_step  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

HIDDEN, LAYERS = 500, 2


def hidden_backward_seconds(model):
    return sum(layer.backward_seconds for layer in model.linear_layers[:-1])


def meprop_epoch(model, optimizer, x, y, batches):
    """One epoch; returns (total s, backward s, backward s of the hidden linear layers)."""
    timers = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    hidden_before = hidden_backward_seconds(model)
    start = time.perf_counter()
    for rows in batches:
        train_step(model, optimizer, TASKS["mlp"].loss, (x[rows], y[rows]), timers)
    return (time.perf_counter() - start, timers["backward"],
            hidden_backward_seconds(model) - hidden_before)


def torch_model(n_in, n_out):
    layers, width = [], n_in
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(width, HIDDEN), torch.nn.ReLU()]
        width = HIDDEN
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def torch_epoch(model, optimizer, x, y, batches):
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for rows in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[rows]), y[rows])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def batches_of(order, batch):
    return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]


def main():
    if ARGS.threads is not None:
        mp.set_num_threads(ARGS.threads)
        if torch is not None:
            torch.set_num_threads(ARGS.threads)
    if torch is not None and ARGS.torch_flush_denormal:
        if not torch.set_flush_denormal(True):
            print("this CPU cannot flush denormals in PyTorch; --torch-flush-denormal ignored")
    data = load_dataset(ARGS.dataset, ARGS.data_dir)
    x, y = data.x_train, data.y_train
    if ARGS.examples is not None:
        x, y = x[:ARGS.examples], y[:ARGS.examples]
    n, n_in = x.shape
    order = np.random.default_rng(0).permutation(n)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "default (all cores)"))
    print(f"{data.name}: one epoch = {n} examples; model {n_in}-{HIDDEN}-{HIDDEN}-{data.n_classes}, "
          f"float32, Adam lr 0.001, best of {ARGS.repeat} epochs")
    print(f"threads: numba {mp.get_num_threads()}, BLAS {blas}, "
          f"PyTorch {torch.get_num_threads() if torch else '-'}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'not installed'}"
          f"{', PyTorch flushes denormals' if torch is not None and ARGS.torch_flush_denormal else ''}")
    if torch is None:
        print("PyTorch is not installed: skipping ratios 1 and 2 (pip install torch)")
        xt = yt = None
    else:
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    k = ARGS.k
    cases = [("unified", 50), ("topk", 10)]
    rows = []
    for mode, batch in cases:
        batches = batches_of(order, batch)
        ours = {}
        for label, kk in (("meprop", k), ("dense", None)):
            model = MLP(n_in, HIDDEN, data.n_classes, layers=LAYERS, k=kk, selection=mode, rng=0)
            opt = mp.Adam(model.params(), lr=1e-3, lazy=True)
            meprop_epoch(model, opt, x, y, batches[:5])  # compile and warm caches
            ours[label] = (model, opt)
        if torch is not None:
            torch.manual_seed(0)
            tmodel = torch_model(n_in, data.n_classes)
            topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
            torch_epoch(tmodel, topt, xt, yt, [torch.from_numpy(b) for b in batches[:5]])
            tbatches = [torch.from_numpy(b) for b in batches]
        best = {"meprop": (np.inf,) * 3, "dense": (np.inf,) * 3, "torch": np.inf}
        for _ in range(ARGS.repeat):
            for label in ("meprop", "dense"):
                times = meprop_epoch(*ours[label], x, y, batches)
                best[label] = tuple(min(a, b) for a, b in zip(best[label], times))
            if torch is not None:
                best["torch"] = min(best["torch"], torch_epoch(tmodel, topt, xt, yt, tbatches))
        rows.append((mode, batch, best))

    print()
    print("epoch seconds (bwd: the whole backward pass; hidden: the hidden layers' linear backward)")
    print(f"{'case':<34}{'meProp':>8}{'ours dense':>12}{'PyTorch':>9}"
          f"{'meProp bwd':>12}{'dense bwd':>11}{'meProp hidden':>15}{'dense hidden':>14}")
    for mode, batch, best in rows:
        name = f"k={k} {'unified' if mode == 'unified' else 'per-example'}, batch {batch}"
        torch_s = f"{best['torch']:.3f}" if np.isfinite(best["torch"]) else "-"
        print(f"{name:<34}{best['meprop'][0]:>8.3f}{best['dense'][0]:>12.3f}{torch_s:>9}"
              f"{best['meprop'][1]:>12.3f}{best['dense'][1]:>11.3f}{best['meprop'][2]:>15.3f}"
              f"{best['dense'][2]:>14.3f}")
    print()
    by_case = {(m, b): best for m, b, best in rows}
    uni, per = by_case[("unified", 50)], by_case[("topk", 10)]
    if torch is not None:
        print(f"1. meProp k={k} unified + lazy Adam, batch 50 vs PyTorch CPU dense, whole epoch: "
              f"{uni['torch'] / uni['meprop'][0]:.2f}x faster (target >= 4x)")
        print(f"2. meProp k={k} per-example + lazy Adam, batch 10 vs PyTorch CPU dense, whole epoch: "
              f"{per['torch'] / per['meprop'][0]:.2f}x faster (target >= 5x)")
    print(f"3. meProp k={k} vs our dense path, backward pass only: per-example batch 10 "
          f"{per['dense'][1] / per['meprop'][1]:.1f}x, unified batch 50 "
          f"{uni['dense'][1] / uni['meprop'][1]:.1f}x (target >= 15x)")
    print(f"   hidden layers' linear backward only (the layers meProp sparsifies): per-example batch 10 "
          f"{per['dense'][2] / per['meprop'][2]:.1f}x, unified batch 50 {uni['dense'][2] / uni['meprop'][2]:.1f}x")
    print(f"   (whole epoch vs our dense path: per-example batch 10 "
          f"{per['dense'][0] / per['meprop'][0]:.2f}x, unified batch 50 {uni['dense'][0] / uni['meprop'][0]:.2f}x)")


if __name__ == "__main__":
    main()
