"""The paper's MNIST study, on Fashion-MNIST, at a size chosen on the command line.

Runs groups of training runs (784-500-500-10 MLP, ReLU, Adam lr 0.001,
last 5,000 training images as dev, test accuracy taken at the epoch with
the best dev accuracy), one JSON file per run in ``--out-dir`` (runs already
there are not repeated, so an interrupted study continues), then writes a
Markdown report with one table per group and, with matplotlib, two plots
(accuracy vs k, backward time vs k). The backward-time table and plot come
from a separate measurement in the same process (``--timing-steps``), not from
the training runs' own timings, which other jobs on the machine can disturb.

Groups (``--groups``, default all):

- ``k``: dense vs meProp per-example top-k, k in ``--ks``, batch 10;
- ``unified``: dense vs unified top-k, batch 50;
- ``k50``: dense vs meProp per-example top-k, batch 50;
- ``random``: random-k vs top-k at equal k, batch 10;
- ``small``: a dense network of hidden size k vs meProp at k;
- ``dropout``: dense and meProp k=20 with dropout 0.2;
- ``update``: meProp k=20 with lazy vs dense Adam updates;
- ``layers``: dense and meProp k=20 with 3, 4 and 5 hidden layers.

Usage::

    python scripts/mlp_study.py --data-dir DIR --epochs 3 --seeds 0 --out-dir runs/study \\
        --report study.md      # docs/results_mlp.md quotes such a report
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.tasks.mlp import MLPConfig  # noqa: E402
from meprop_numba.training import fit, train_step  # noqa: E402


def groups(ks):
    """Group name -> list of (run name, config overrides)."""
    top = [(f"topk-k{k}-b10", dict(k=k)) for k in ks]
    return {
        "k": [("dense-b10", dict(k=None))] + top,
        "unified": [("dense-b50", dict(k=None, batch_size=50))]
                   + [(f"unified-k{k}-b50", dict(k=k, selection="unified", batch_size=50)) for k in ks],
        "k50": [("dense-b50", dict(k=None, batch_size=50))]
               + [(f"topk-k{k}-b50", dict(k=k, batch_size=50)) for k in ks],
        "random": [(f"random-k{k}-b10", dict(k=k, selection="random")) for k in ks] + top,
        "small": [(f"dense-h{k}-b10", dict(k=None, hidden=k)) for k in ks] + top,
        "dropout": [("dense-b10-drop0.2", dict(k=None, dropout=0.2)),
                    ("topk-k20-b10-drop0.2", dict(k=20, dropout=0.2)),
                    ("dense-b10", dict(k=None)), ("topk-k20-b10", dict(k=20))],
        "update": [("topk-k20-b10", dict(k=20)), ("topk-k20-b10-denseupdate", dict(k=20, lazy=False)),
                   ("dense-b10", dict(k=None))],
        "layers": [run for depth in (3, 4, 5)
                   for run in ((f"dense-b10-l{depth}", dict(k=None, layers=depth)),
                               (f"topk-k20-b10-l{depth}", dict(k=20, layers=depth)))],
    }


def run_one(name, overrides, seed, args, data):
    path = os.path.join(args.out_dir, f"{name}-s{seed}.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    if args.report_only:
        return None
    config = MLPConfig(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, seed=seed,
                         threads=args.threads, **overrides)
    start = time.time()
    results = fit(TASKS["mlp"], config, data, progress=False)
    results.pop("model")
    results["wall_s"] = time.time() - start
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, path)
    print(f"{name} seed {seed}: test {100 * results['test_accuracy_at_best_dev']:.2f}% "
          f"({results['wall_s']:.0f} s)", flush=True)
    return results


def mean_std(values):
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def describe(overrides):
    c = MLPConfig(**{**dict(k=20), **overrides})
    parts = ["dense" if c.k is None else f"k={c.k} {c.selection}", f"batch {c.batch_size}"]
    if c.hidden != 500:
        parts.append(f"hidden {c.hidden}")
    if c.layers != 2:
        parts.append(f"{c.layers} hidden layers")
    if c.dropout:
        parts.append(f"dropout {c.dropout}")
    if not c.lazy:
        parts.append("dense Adam update")
    return ", ".join(parts)


def table(group, runs, by_name):
    lines = [f"### {group}", "",
             "| run | seeds | dev acc % (best epoch) | test acc % at best dev | backward (linear) s/epoch "
             "| backward s/epoch | optimizer s/epoch | training s/epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, overrides in runs:
        results = by_name[name]
        lines.append(
            f"| {describe(overrides)} | {len(results)} "
            f"| {mean_std([100 * r['best_dev_accuracy'] for r in results])} "
            f"| {mean_std([100 * r['test_accuracy_at_best_dev'] for r in results])} "
            f"| {np.mean([r['mean_backward_linear_s'] for r in results]):.2f} "
            f"| {np.mean([r['mean_backward_s'] for r in results]):.2f} "
            f"| {np.mean([r['mean_optimizer_s'] for r in results]):.2f} "
            f"| {np.mean([r['mean_train_s'] for r in results]):.2f} |")
    return "\n".join(lines)


def _k_axis(ax, ks):
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (of 500)")


def plots(by_name, ks, prefix):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    made = []
    series = [("per-example top-k, batch 10", "topk-k{}-b10", "dense-b10"),
              ("random-k, batch 10", "random-k{}-b10", None),
              ("unified top-k, batch 50", "unified-k{}-b50", "dense-b50"),
              ("per-example top-k, batch 50", "topk-k{}-b50", None)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pattern, dense in series:
        pts = [(k, np.mean([100 * r["test_accuracy_at_best_dev"] for r in by_name[pattern.format(k)]]))
               for k in ks if by_name.get(pattern.format(k))]
        if pts:
            line, = ax.plot(*zip(*pts), marker="o", label=label)
            if by_name.get(dense):
                ax.axhline(np.mean([100 * r["test_accuracy_at_best_dev"] for r in by_name[dense]]),
                           color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"dense, batch {dense.split('-b')[1]}")
    _k_axis(ax, ks)
    ax.set_ylabel("test accuracy % (model chosen on dev)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(prefix + "_accuracy.png", dpi=100)
    made.append(prefix + "_accuracy.png")

    return made


def backward_timing(data, ks, steps, repeat=3):
    """Backward time per step of the hidden linear layers, by k, in one process.

    For each (mode, batch) and k (None = dense) a fresh model takes `steps`
    training steps (after 20 warm-up steps) `repeat` times; the best total is
    kept. Returns rows (mode, batch, k, microseconds per step).
    """
    import meprop_numba as mp
    from meprop_numba.nn import MLP

    x, y = data.x_train, data.y_train
    rows = []
    for mode, batch in (("topk", 10), ("unified", 50)):
        order = np.random.default_rng(0).permutation(len(y))
        batches = [order[i * batch:(i + 1) * batch] for i in range(steps + 20)]
        for k in [None] + list(ks):
            model = MLP(x.shape[1], 500, data.n_classes, k=k, selection=mode, rng=0)
            optimizer = mp.Adam(model.params(), lr=1e-3)
            hidden = model.linear_layers[:-1]
            best = np.inf
            for r in range(repeat):
                for i, b in enumerate(batches):
                    if i == 20:
                        start = sum(layer.backward_seconds for layer in hidden)
                    train_step(model, optimizer, TASKS["mlp"].loss, (x[b], y[b]))
                best = min(best, sum(layer.backward_seconds for layer in hidden) - start)
            rows.append((mode, batch, k, 1e6 * best / steps))
            print(f"{mode} batch {batch} k={k}: {rows[-1][3]:.0f} us per step", flush=True)
    return rows


def timing_section(rows, prefix):
    lines = ["### backward time of the hidden layers vs k", "",
             "| selection | batch | k | hidden-layer backward, us per step | speed-up vs dense |",
             "| --- | --- | --- | --- | --- |"]
    dense = {(m, b): t for m, b, k, t in rows if k is None}
    for mode, batch, k, us in rows:
        label = "dense" if k is None else ("per-example top-k" if mode == "topk" else "unified top-k")
        lines.append(f"| {label} | {batch} | {k if k is not None else 500} | {us:.0f} "
                     f"| {dense[(mode, batch)] / us:.1f}x |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "\n".join(lines)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, batch, label in (("topk", 10, "per-example top-k, batch 10"), ("unified", 50, "unified top-k, batch 50")):
        pts = [(k, us) for m, b, k, us in rows if m == mode and k is not None]
        line, = ax.plot(*zip(*pts), marker="o", label=label)
        ax.axhline(dense[(mode, batch)], color=line.get_color(), linestyle="--", linewidth=1,
                   label=f"dense, batch {batch}")
    _k_axis(ax, sorted({k for _, _, k, _ in rows if k is not None}))
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylabel("hidden-layer backward, us per step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(prefix + "_backward_time.png", dpi=100)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    parser.add_argument("--groups", nargs="+", default=None, help="default: all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", default="runs/mlp_study")
    parser.add_argument("--report", default=None, help="write the Markdown tables here")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the runs already in --out-dir (any of --seeds)")
    parser.add_argument("--timing-steps", type=int, default=300,
                        help="steps per backward-timing measurement (0: skip the timing section)")
    args = parser.parse_args(argv)

    all_groups = groups(args.ks)
    chosen = args.groups or list(all_groups)
    os.makedirs(args.out_dir, exist_ok=True)
    data = load_dataset(args.dataset, args.data_dir)
    print(data.summary(), flush=True)
    by_name = {}
    for group in chosen:
        for name, overrides in all_groups[group]:
            if name not in by_name:
                runs = [run_one(name, overrides, seed, args, data) for seed in args.seeds]
                by_name[name] = [r for r in runs if r is not None]

    sections = [table(group, [(n, o) for n, o in all_groups[group] if by_name[n]], by_name)
                for group in chosen]
    prefix = os.path.splitext(args.report)[0] if args.report else os.path.join(args.out_dir, "study")
    if args.timing_steps > 0:
        sections.append(timing_section(backward_timing(data, args.ks, args.timing_steps), prefix))
    header = (f"Dataset: {data.summary()}. Model 784-500-500-10 unless stated, ReLU, Adam lr 0.001 "
              f"(lazy updates unless stated), float32, {args.epochs} epochs, seeds from {args.seeds}; "
              "test accuracy at the epoch with the best dev accuracy. Times are per-epoch means.")
    report = header + "\n\n" + "\n\n".join(sections) + "\n"
    print(report)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(report)
        for path in plots(by_name, args.ks, prefix):
            print(f"plot: {path}")


if __name__ == "__main__":
    main()
