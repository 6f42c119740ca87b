"""How much of the hidden layer's output gradient the top k entries carry, cube vs ReLU.

Trains the parser densely (Adam, minibatches of oracle configurations of the
first ``--sentences`` training sentences) and, at a few steps, prints per
activation the mean share of each example's squared gradient norm (and of
its absolute sum) held by its ``--k`` largest entries, and the mean number of
non-zero entries. A small share means meProp's top-k keeps little of the
gradient.

Usage::

    python scripts/parse_gradient_share.py --data-dir ../shared/data/ud-english-ewt
"""
import argparse
import os
import sys

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("MEPROP_NUMBA_PARSE_DIR"))
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 50, 150])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data_dir:
        print("error: --data-dir DIR (a UD treebank folder) is required", file=sys.stderr)
        return 2

    from meprop_numba.tasks.parse.task import ParseConfig, ParseTask
    from meprop_numba.training.config import build_optimizer

    task = ParseTask()
    for activation in ("cube", "relu"):
        config = ParseConfig(data_dir=args.data_dir, max_train_sentences=args.sentences,
                             max_dev_sentences=1, k=None, activation=activation,
                             batch_size=args.batch_size, seed=args.seed).validate()
        data = task.load_data(config)
        model = task.build_model(config, task.extra_state(data), np.random.default_rng(args.seed))
        opt = build_optimizer(config, model.params())
        rng = np.random.default_rng(args.seed)
        print(activation)
        for step in range(max(args.steps) + 1):
            idx = rng.integers(0, len(data.transitions), args.batch_size)
            if step in args.steps:  # the hidden layer's output gradient, as its backward sees it
                _, grad = task.loss(model, (data.features[idx], data.transitions[idx]))
                g = model.activation.backward(model.dropout.backward(model.output.backward(grad)))
                a = -np.sort(-np.abs(np.asarray(g)), axis=1)
                sq = (a[:, :args.k] ** 2).sum(1) / np.maximum((a ** 2).sum(1), 1e-30)
                ab = a[:, :args.k].sum(1) / np.maximum(a.sum(1), 1e-30)
                print(f"  step {step}: top-{args.k} share of |g|^2 {sq.mean():.2f}, of |g| "
                      f"{ab.mean():.2f}, non-zero entries {(a > 0).sum(1).mean():.0f}/{a.shape[1]}")
            _, grad = task.loss(model, (data.features[idx], data.transitions[idx]))
            model.backward(grad)
            opt.step(model.grads())
    return 0


if __name__ == "__main__":
    sys.exit(main())
