"""Plot the meSimp study: hidden sizes and dev accuracy over training, from simplify_study's JSON.

Left: each meSimp run's hidden-layer widths at the end of every epoch (one
line per layer and seed). Right: dev accuracy per epoch, mean over the
seeds with the range as a band, for every arm in the file.

Usage::

    python scripts/simplify_plot.py docs/simplify_study.json docs/simplify_study.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LABELS = {"dense": "dense", "meprop": "meProp k=160", "mesimp": "meProp k=160 + meSimp p=0.1"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        runs = json.load(f)["runs"]
    fig, (sizes_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        if run["arm"] != "mesimp":
            continue
        epochs = [0] + [e["epoch"] for e in run["epochs"]]
        widths = np.array([[500, 500]] + [e["hidden_sizes"] for e in run["epochs"]])
        for layer, style in zip(range(widths.shape[1]), ("-", "--")):
            sizes_ax.plot(epochs, widths[:, layer], style, marker=".",
                          label=f"hidden layer {layer + 1}, seed {run['seed']}")
    sizes_ax.set_xlabel("epoch")
    sizes_ax.set_ylabel("neurons")
    sizes_ax.set_title("meSimp: hidden sizes (784-h1-h2-10)")
    sizes_ax.set_ylim(0, 520)
    sizes_ax.legend(fontsize=7)
    for arm, label in LABELS.items():
        done = [r for r in runs if r["arm"] == arm]
        if not done:
            continue
        acc = 100 * np.array([[e["dev_accuracy"] for e in r["epochs"]] for r in done])
        epochs = [e["epoch"] for e in done[0]["epochs"]]
        acc_ax.plot(epochs, acc.mean(axis=0), marker=".", label=f"{label} ({len(done)} seeds)")
        acc_ax.fill_between(epochs, acc.min(axis=0), acc.max(axis=0), alpha=0.2)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("dev accuracy (%)")
    acc_ax.set_title("Fashion-MNIST dev accuracy (mean, range over seeds)")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
