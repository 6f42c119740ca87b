"""How large the MLP's activations and logits grow under dense, per-example and unified meProp.

Trains the 784-500-500-10 MLP (Adam lr 0.001, lazy updates, float32, seed 0)
on the first ``--examples`` shuffled training images for each setting and
prints, on the dev set: the mean, median and largest per-example loss, the
largest |logit| and first-layer activation, and the mean training loss over
the last 2,000 examples. ``docs/results_mlp.md`` quotes its output.

Usage::

    python scripts/mlp_activation_growth.py --data-dir DIR
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import meprop_numba as mp  # noqa: E402
from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.nn import MLP, log_softmax  # noqa: E402
from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.training import train_step  # noqa: E402

SETTINGS = [("dense", None, "topk", 10), ("per-example top-k", 5, "topk", 10),
            ("per-example top-k", 20, "topk", 10), ("unified top-k", 5, "unified", 50),
            ("unified top-k", 20, "unified", 50)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=20000)
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    x, y = data.x_train, data.y_train
    order = np.random.default_rng(0).permutation(len(y))[:args.examples]
    print(f"{data.summary()}; {args.examples} training examples, seed 0\n")
    print("| setting | k | batch | train loss, last 2000 examples | dev loss: mean / median / max "
          "| max abs logit | max first-layer activation |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, k, mode, batch in SETTINGS:
        model = MLP(x.shape[1], 500, data.n_classes, k=k, selection=mode, rng=0)
        optimizer = mp.Adam(model.params(), lr=1e-3)
        losses = []
        for start in range(0, len(order), batch):
            b = order[start:start + batch]
            losses.append(train_step(model, optimizer, TASKS["mlp"].loss, (x[b], y[b])))
        logits = model.forward(data.x_dev)
        dev_loss = -log_softmax(logits)[np.arange(len(data.y_dev)), data.y_dev]
        first = model.linear_layers[0]
        hidden = np.maximum(data.x_dev @ first.weight.T + first.bias, 0)
        print(f"| {label} | {k if k is not None else 500} | {batch} "
              f"| {np.mean(losses[-2000 // batch:]):.2f} "
              f"| {dev_loss.mean():.2f} / {np.median(dev_loss):.3f} / {dev_loss.max():.0f} "
              f"| {np.abs(logits).max():.0f} | {hidden.max():.0f} |", flush=True)


if __name__ == "__main__":
    main()
