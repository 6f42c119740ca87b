"""Plot a meSimp study: hidden sizes and dev score over training, from simplify_study's JSON.

Left: each meSimp run's hidden-layer widths at the end of every epoch (one
line per layer and seed). Right: the dev score per epoch (accuracy, or UAS
for the parser), mean over the seeds with the range as a band, for every
arm in the file.

Usage::

    python scripts/simplify_plot.py docs/simplify_study_mlp.json docs/simplify_study_mlp.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

TITLES = {"mlp": "MLP on Fashion-MNIST", "pos": "POS tagger on EWT", "parse": "parser on EWT"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        study = json.load(f)
    runs, options = study["runs"], study["args"]
    task, metric = options.get("task", "mlp"), study.get("metric", "accuracy")
    labels = {"dense": "dense", "meprop": f"meProp k={options['k']}",
              "mesimp": f"meProp k={options['k']} + meSimp p={options['p']}"}
    unit = "LSTM layer" if task == "pos" else "hidden layer"
    fig, (sizes_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        if run["arm"] != "mesimp":
            continue
        epochs = [0] + [e["epoch"] for e in run["epochs"]]
        start = [run["config"]["hidden"]] * len(run["final_hidden_sizes"])
        widths = np.array([start] + [e["hidden_sizes"] for e in run["epochs"]])
        for layer in range(widths.shape[1]):
            sizes_ax.plot(epochs, widths[:, layer], ("-", "--", ":")[layer % 3], marker=".",
                          label=f"{unit} {layer + 1}, seed {run['seed']}")
    sizes_ax.set_xlabel("epoch")
    sizes_ax.set_ylabel("hidden units")
    sizes_ax.set_title(f"meSimp: hidden sizes ({TITLES[task]})")
    sizes_ax.set_ylim(0, 1.04 * options.get("hidden", 500))
    sizes_ax.legend(fontsize=7)
    for arm, label in labels.items():
        done = [r for r in runs if r["arm"] == arm]
        if not done:
            continue
        acc = 100 * np.array([[e[f"dev_{metric}"] for e in r["epochs"]] for r in done])
        epochs = [e["epoch"] for e in done[0]["epochs"]]
        acc_ax.plot(epochs, acc.mean(axis=0), marker=".", label=f"{label} ({len(done)} seeds)")
        acc_ax.fill_between(epochs, acc.min(axis=0), acc.max(axis=0), alpha=0.2)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel(f"dev {'UAS' if metric == 'uas' else metric} (%)")
    acc_ax.set_title(f"dev {'UAS' if metric == 'uas' else metric} (mean, range over seeds)")
    acc_ax.legend(fontsize=8)
    for ax in (sizes_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
