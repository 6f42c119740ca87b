"""Snapshot of the asv history as static plots: cost vs k, one line per commit.

Reads the asv results of one machine (``benchmarks/results/<machine>/``, see
``asv.conf.json``) and draws, for the top-k and the sparse-backward
benchmarks, the time of each call against k for every benchmarked commit,
with the dense baseline (NumPy argpartition / OpenBLAS products) of the newest
commit dashed. ``docs/benchmarks.md`` shows the figures this writes.

Usage::

    asv run --machine NAME HASHFILE:commits.txt      # measure some commits
    python scripts/asv_snapshot.py --machine NAME    # -> docs/figures/asv_*.png
"""
import argparse
import glob
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: figure name -> (title, sparse benchmark, dense baseline benchmark)
FIGURES = {
    "topk": ("top-k selection (per example)", "bench_topk.TopK.time_topk",
             "bench_topk.TopK.time_argpartition"),
    "per_example": ("per-example sparse backward", "bench_backward.PerExampleBackward.time_meprop",
                    "bench_backward.PerExampleBackward.time_dense"),
    "unified": ("unified sparse backward", "bench_backward.UnifiedBackward.time_meprop",
                "bench_backward.UnifiedBackward.time_dense"),
}


def load_results(results_dir, machine):
    """commit hash -> {benchmark: (values, params)}, plus commit -> date (ms)."""
    runs, dates = {}, {}
    for path in glob.glob(os.path.join(results_dir, machine, "*.json")):
        if os.path.basename(path) == "machine.json":
            continue
        with open(path) as fh:
            data = json.load(fh)
        columns = data["result_columns"]
        entries = runs.setdefault(data["commit_hash"], {})
        for name, row in data["results"].items():
            row = dict(zip(columns, row))
            if row.get("result") is not None:
                entries[name] = (row["result"], row["params"])
        dates[data["commit_hash"]] = data["date"]
    return runs, dates


def commit_order(commits, dates):
    """Oldest first: by git history when the commits are in this repository, else by date."""
    try:
        log = subprocess.run(["git", "-C", ROOT, "log", "--format=%H"], capture_output=True,
                             text=True, check=True).stdout.split()
        position = {h: i for i, h in enumerate(reversed(log))}
        if all(c in position for c in commits):
            return sorted(commits, key=position.get)
    except (OSError, subprocess.CalledProcessError):
        pass
    return sorted(commits, key=dates.get)


def subject(commit):
    try:
        return subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%s", commit],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def series(entry):
    """{shape: [(k, seconds)]} from an asv (values, params) pair over (shape, k)."""
    values, (shapes, ks) = entry
    out = {}
    for i, shape in enumerate(shapes):
        for j, k in enumerate(ks):
            value = values[i * len(ks) + j]
            if value is not None and value == value:   # skipped params are None or NaN
                out.setdefault(shape.strip("'"), []).append((int(k), value))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--machine", default="vm")
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "figures"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs, dates = load_results(args.results_dir, args.machine)
    if not runs:
        raise SystemExit(f"no asv results for machine {args.machine!r} under {args.results_dir}")
    commits = commit_order(list(runs), dates)
    colours = plt.cm.viridis([i / max(1, len(commits) - 1) * 0.9 for i in range(len(commits))])
    print("| commit | subject |\n| --- | --- |")
    for commit in commits:
        print(f"| {commit[:8]} | {subject(commit)} |")
    for name, (title, sparse, dense) in FIGURES.items():
        shapes = sorted({s for c in commits if sparse in runs[c] for s in series(runs[c][sparse])},
                        key=lambda s: [int(p) for p in s.split("x")])
        if not shapes:
            continue
        fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            for commit, colour in zip(commits, colours):
                pts = series(runs[commit][sparse]).get(shape) if sparse in runs[commit] else None
                if pts:
                    ax.plot(*zip(*[(k, 1e6 * t) for k, t in pts]), marker="o", color=colour,
                            label=commit[:8])
            newest = next((c for c in reversed(commits) if dense in runs[c]), None)
            if newest is not None and shape in series(runs[newest][dense]):
                pts = series(runs[newest][dense])[shape]
                ax.plot(*zip(*[(k, 1e6 * t) for k, t in pts]), linestyle="--", color="grey",
                        label=f"dense baseline ({newest[:8]})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ks = sorted({k for c in commits if sparse in runs[c]
                         for k, _ in series(runs[c][sparse]).get(shape, [])})
            ax.set_xticks(ks)
            ax.set_xticklabels([str(k) for k in ks])
            ax.minorticks_off()
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("k")
            ax.set_ylabel("µs per call")
            ax.set_title(f"{title}\n{shape}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(args.out_dir, f"asv_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
