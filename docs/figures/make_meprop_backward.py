"""Draw docs/figures/meprop_backward.png: which entries meProp keeps.

Run from the repository root (needs matplotlib, the ``plot`` extra)::

    python3 -m pip install ".[plot]" && python3 docs/figures/make_meprop_backward.py

The figure is a schematic drawn from a seeded random gradient with the
package's own selection functions; it shows no measurement.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import meprop_numba as mp  # noqa: E402

B, N, K = 6, 16, 4
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "meprop_backward.png")


def _mask(g, idx):
    m = np.zeros_like(g, dtype=bool)
    if idx.ndim == 1:
        m[:, idx] = True
    else:
        np.put_along_axis(m, idx, True, axis=1)
    return m


def main():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((B, N)).astype(np.float32)
    panels = [
        ("dense: all of $g$", np.ones_like(g, dtype=bool)),
        (f"per-example top-{K}", _mask(g, mp.topk_indices(g, K))),
        (f"unified top-{K}", _mask(g, mp.topk_indices(g, K, unified=True))),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.3), constrained_layout=True)
    for ax, (title, keep) in zip(axes, panels):
        shown = np.where(keep, np.abs(g), np.nan)
        ax.set_facecolor("white")
        ax.imshow(shown, cmap="viridis", vmin=0, vmax=np.abs(g).max(), aspect="equal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"output unit i (n = {N})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks(range(B))
        ax.set_yticklabels([f"b={b}" for b in range(B)], fontsize=7)
        rows = np.flatnonzero(keep.any(axis=0))
        ax.text(0.0, -0.42, f"rows of W touched: {rows.size} of {N}", fontsize=8,
                transform=ax.transAxes)
    axes[0].set_ylabel("example", fontsize=8)
    fig.suptitle(r"$|g| = |\partial L / \partial y|$ entries kept by the backward pass "
                 "(coloured; white = dropped)", fontsize=10)
    fig.savefig(OUT, dpi=110)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
