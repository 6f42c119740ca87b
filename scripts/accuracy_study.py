"""Remedies for meProp's accuracy loss with Adam: screen, final runs, trace, timing.

Trains the 784-500-500-10 MLP (ReLU, Adam lr 0.001, lazy updates, float32,
last 5,000 training images as dev) with one remedy at a time and writes one
JSON per run into ``--out-dir`` (runs already there are skipped, so an
interrupted study continues). Models are built layer by layer here, with the
same generator order as :class:`meprop_numba.nn.MLP`, so the plain settings
start from the same weights and see the same minibatches as
``scripts/mlp_study.py``.

Each run records, per epoch, the dev accuracy, the mean training loss, the
hidden layers' backward time (their ``backward_seconds``: selection plus the
sparse products, error feedback's memory included), the largest |logit| on
dev and how many units of the last hidden layer got no weight update in the
epoch; and, for its first ``--trace-steps`` steps, the largest |logit| of the
minibatch and the share of the last hidden layer's kept output-gradient
entries that are negative (a descent step then raises the activation),
beside that share among all its non-zero entries. The test split is
evaluated only with ``--test`` (the final runs), at every epoch, and
reported at the epoch with the best dev accuracy.

Commands (one per table of ``docs/results_mlp.md``, section "Closing the gap")::

    S="python scripts/accuracy_study.py --data-dir DIR --threads 1 --out-dir runs/accuracy"
    # screening: k=20, 2 epochs, seed 0, dev only (b10: per-example top-k at batch 10;
    # b50: unified top-k at batch 50); one JSON per run, runs already there are skipped
    $S screen --epochs 2 --seeds 0 --settings b10 --options dense plain balanced drop0.2+ef0.8 ...
    $S screen --epochs 2 --seeds 0 --settings b50 --options dense plain ef0.8 drop0.2+ef0.8 ...
    # the chosen remedy at the full protocol, test split evaluated
    $S final --epochs 20 --test --options drop0.2+ef0.8 --settings b10 b50 --ks 20 --seeds 0 1 2
    # second round at batch 50: 3-epoch screens of unified top-k, then 20-epoch runs
    # (b50topk: per-example top-k at batch 50)
    $S screen --epochs 3 --seeds 0 --settings b50 --options dense plain lr3e-3 lr5e-3 ...
    $S final --epochs 20 --test --seeds 0 --settings b50 --ks 20 --options lr3e-3 lr5e-3
    $S final --epochs 20 --test --seeds 0 1 2 --settings b50topk --ks 20 --options drop0.2+ef0.8
    # the figure, from the first 300 steps the screening runs recorded
    $S trace --epochs 1 --settings b10 b50topk b50 --options dense plain balanced drop0.2+ef0.8 \
        --figure docs/results_mlp_remedy_trace.png
    # third round at batch 50: per-layer k and other column scores (3-epoch screens)
    $S screen --epochs 3 --seeds 0 --settings b50 --options drop0.2+ef0.8 last40+drop0.2+ef0.8 ...
    # the embedded subset as the CLI trains it (dense, default meProp, --plain-meprop),
    # and those three arms trained step by step in turns for their time ratios
    $S subset --dataset embedded --epochs 20 --seeds 0 1 2 --batches 10 50 --horizons 5 10 15 20
    $S subset-timing --dataset embedded --epochs 2 --batches 10 50
    # backward cost: the hidden layers by option, variants in turns, 5th percentile
    $S layer-timing --calls 1200
    # (or whole models trained in turns: $S timing --steps 100 --repeat 5 --options ...)

Add ``--report FILE`` to write a command's Markdown table, ``--report-only`` to
tabulate what is in ``--out-dir`` without training.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import meprop_numba as mp  # noqa: E402
from meprop_numba.data import load_dataset  # noqa: E402
from meprop_numba.nn import Dropout, Linear, ReLU, Sequential, log_softmax, softmax_cross_entropy  # noqa: E402
from meprop_numba.training.loop import blas_threads, run_generators as _seeds  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from mlp_study import mean_std  # noqa: E402

#: Option name -> settings. ``last_k``: k of the last hidden layer ("same" =
#: the network's k, None = dense); ``selection``: per-example selection at
#: batch 10 (batch 50 always uses unified top-k); ``ef``: error-feedback
#: memory decay (0 = off) of the hidden layers; ``max_norm``: largest row
#: norm of the hidden weights after each update; ``eps``, ``lr``: Adam's
#: epsilon and learning rate; ``lazy=False``: dense Adam updates; ``sm``:
#: score-memory decay of unified selection (0 = off; batch 50 only);
#: ``score``: unified column scores other than the sum of |g| (see
#: :class:`ColumnScorer`; batch 50 only).
OPTIONS = {
    "dense": dict(dense=True),
    "plain": dict(),
    "balanced": dict(selection="balanced"),
    "lastdense": dict(last_k=None),
    "ef0.8": dict(ef=0.8),
    "ef0.5": dict(ef=0.5),
    "drop0.2": dict(dropout=0.2),
    "maxnorm2": dict(max_norm=2.0),
    "eps1e-3": dict(eps=1e-3),
    "eps1e-4": dict(eps=1e-4),
    "balanced+drop0.2": dict(selection="balanced", dropout=0.2),
    "balanced+ef0.8": dict(selection="balanced", ef=0.8),
    "balanced+maxnorm2": dict(selection="balanced", max_norm=2.0),
    "dense+drop0.2": dict(dense=True, dropout=0.2),
    "denseadam": dict(lazy=False),
    "lr2e-3": dict(lr=2e-3),
    "drop0.2+ef0.8": dict(dropout=0.2, ef=0.8),
    "drop0.1": dict(dropout=0.1),
    "lr3e-3": dict(lr=3e-3),
    "drop0.2+lr2e-3": dict(dropout=0.2, lr=2e-3),
    "drop0.2+lr3e-3": dict(dropout=0.2, lr=3e-3),
    "drop0.2+ef0.8+lr3e-3": dict(dropout=0.2, ef=0.8, lr=3e-3),
    "drop0.2+ef0.8+lr2e-3": dict(dropout=0.2, ef=0.8, lr=2e-3),
    "drop0.3+ef0.8": dict(dropout=0.3, ef=0.8),
    "drop0.2+ef0.9": dict(dropout=0.2, ef=0.9),
    "drop0.2+ef0.95": dict(dropout=0.2, ef=0.95),
    "drop0.2+ef0.8+eps1e-4": dict(dropout=0.2, ef=0.8, eps=1e-4),
    "drop0.2+ef0.8+maxnorm2": dict(dropout=0.2, ef=0.8, max_norm=2.0),
    "drop0.2+ef0.9+lr2e-3": dict(dropout=0.2, ef=0.9, lr=2e-3),
    "drop0.2+ef0.9+lr3e-3": dict(dropout=0.2, ef=0.9, lr=3e-3),
    "dense+lr3e-3": dict(dense=True, lr=3e-3),
    "lr5e-3": dict(lr=5e-3),
    "ef0.8+lr3e-3": dict(ef=0.8, lr=3e-3),
    "lr1e-2": dict(lr=1e-2),
    "drop0.2+lr5e-3": dict(dropout=0.2, lr=5e-3),
    "drop0.2+ef0.8+lr5e-3": dict(dropout=0.2, ef=0.8, lr=5e-3),
    "ef0.8+lr5e-3": dict(ef=0.8, lr=5e-3),
    "dense+lr5e-3": dict(dense=True, lr=5e-3),
    "sm0.9": dict(sm=0.9),
    "drop0.2+ef0.8+sm0.9": dict(dropout=0.2, ef=0.8, sm=0.9),
    "drop0.2+ef0.8+sm0.99": dict(dropout=0.2, ef=0.8, sm=0.99),
    "drop0.2+ef0.8+sm0.5": dict(dropout=0.2, ef=0.8, sm=0.5),
    "lastdense+drop0.2+ef0.8": dict(last_k=None, dropout=0.2, ef=0.8),
    "last30+drop0.2+ef0.8": dict(last_k=30, dropout=0.2, ef=0.8),
    "last40+drop0.2+ef0.8": dict(last_k=40, dropout=0.2, ef=0.8),
    "last80+drop0.2+ef0.8": dict(last_k=80, dropout=0.2, ef=0.8),
    "signbal+drop0.2+ef0.8": dict(score="signbal", dropout=0.2, ef=0.8),
    "wnorm": dict(score="wnorm"),
    "wnorm+drop0.2+ef0.8": dict(score="wnorm", dropout=0.2, ef=0.8),
}
SETTINGS = {"b10": (10, "topk"), "b50": (50, "unified"), "b50topk": (50, "topk")}


def settings(option, setting, k):
    """Full settings of one run: defaults, then the option."""
    batch, selection = SETTINGS[setting]
    spec = dict(dense=False, last_k="same", selection=selection, ef=0.0, sm=0.0, score=None, dropout=0.0,
                max_norm=None, eps=1e-8, lr=1e-3, lazy=True, batch=batch, k=k)
    spec.update(OPTIONS[option])
    if setting == "b50" and spec["selection"] == "balanced":
        spec["selection"] = "unified"  # sign balance is per example; unified shows no sign bias
    if spec["dense"]:
        spec["k"] = None
    return spec


def applies(option, setting):
    unified_only = OPTIONS[option].get("sm") or OPTIONS[option].get("score")
    return not ((setting == "b50" and "balanced" in option)
                or (SETTINGS[setting][1] != "unified" and unified_only))


class ColumnScorer:
    """Unified column scores other than sum_b |g_bj|, as a layer's ``column_scores_hook``.

    ``'wnorm'``: the squared norm of the weight-gradient row each column
    gives, ``g_j^T (X X^T) g_j`` (X the layer input; O(B^2 (m + n)) per
    step). ``'signbal'``: the same sum of |g|, but half of the k columns
    among those whose summed gradient is positive and half among the
    negative ones (a sign short of its share gives the rest to the other).
    Both see the gradient with the error-feedback memory added as the layer
    adds it (to the non-zero entries).
    """

    def __init__(self, layer, mode):
        self.layer, self.mode, self.g = layer, mode, None
        self._backward = layer.backward
        layer.backward = self.backward
        layer.column_scores_hook = self

    def backward(self, grad_out):
        self.g = grad_out
        return self._backward(grad_out)

    def __call__(self, scores):
        layer, g = self.layer, self.g.astype(np.float64)
        memory = getattr(layer, "_memory", None)
        if layer.error_feedback and memory is not None and memory.shape == (g.shape[1],):
            g = g + layer.error_feedback * memory[None, :] * (g != 0)
        if self.mode == "wnorm":
            x = layer._x.astype(np.float64)
            return np.maximum((g * ((x @ x.T) @ g)).sum(axis=0), 0.0)
        signed = g.sum(axis=0)
        k, out = layer.k, np.zeros_like(scores)
        pos, neg = np.flatnonzero(signed > 0), np.flatnonzero(signed <= 0)
        n_pos = min(len(pos), max(k // 2, k - len(neg)))
        ranked = [pos[np.argsort(-scores[pos], kind="stable")][:n_pos],
                  neg[np.argsort(-scores[neg], kind="stable")][:k - n_pos]]
        for cols in ranked:  # the chosen columns outrank every other, in their own order
            out[cols] = 1.0 + scores[cols]
        return out


def build(spec, n_in, n_classes, rng, hidden=500, layers=2):
    """The MLP of `spec`, built in :class:`~meprop_numba.nn.MLP`'s generator order."""
    modules, width = [], n_in
    for i in range(layers):
        k = spec["k"]
        if i == layers - 1 and spec["last_k"] != "same":
            k = spec["last_k"]
        modules.append(Linear(width, hidden, k, spec["selection"], rng=rng, input_grad=i > 0,
                              error_feedback=spec["ef"] if k is not None else 0.0,
                              score_memory=spec.get("sm", 0.0) if k is not None else 0.0))
        if spec.get("score") and k is not None:
            ColumnScorer(modules[-1], spec["score"])
        modules.append(ReLU())
        if spec["dropout"]:
            modules.append(Dropout(spec["dropout"], rng=rng))
        width = hidden
    modules.append(Linear(width, n_classes, None, rng=rng))
    return Sequential(modules)


def linears(model):
    return [m for m in model.layers if isinstance(m, Linear)]


def clip_rows(layer, rows, max_norm):
    """Scale the given rows of ``layer.weight`` down to norm `max_norm` where longer."""
    W = layer.weight[rows]
    norms = np.sqrt((W * W).sum(axis=1))
    over = norms > max_norm
    if over.any():
        layer.weight[rows[over]] = W[over] * (max_norm / norms[over])[:, None].astype(W.dtype)


class Tracer:
    """Records, for the first `steps` steps, the last hidden layer's kept-entry sign share."""

    def __init__(self, layer, steps):
        self.layer, self.steps, self.rows = layer, steps, []
        self._backward = layer.backward
        layer.backward = self.backward

    def backward(self, grad_out):
        layer = self.layer
        if len(self.rows) < self.steps and layer.k is not None:
            g = layer._with_memory(grad_out) if layer.error_feedback else grad_out
            idx = layer.select(g)
            kept = g[:, idx] if idx.ndim == 1 else np.take_along_axis(g, idx, axis=1)
            kept = kept[kept != 0]
            active = g[g != 0]
            self.rows.append([float(np.mean(kept < 0)) if kept.size else float("nan"),
                              float(np.mean(active < 0)) if active.size else float("nan")])
        return self._backward(grad_out)


def run(option, setting, k, seed, data, args, test=False, partial=None):
    """Train one run; return its results dictionary (also written to `partial` after each epoch)."""
    spec = settings(option, setting, k)
    model_rng, data_rng = _seeds(seed)
    x_train, y_train = data.x_train, data.y_train
    model = build(spec, x_train.shape[1], data.n_classes, model_rng)
    optimizer = mp.Adam(model.params(), lr=spec["lr"], eps=spec["eps"], lazy=spec["lazy"])
    hidden = linears(model)[:-1]
    tracer = Tracer(hidden[-1], args.trace_steps)
    batch = spec["batch"]
    n_steps = len(y_train) // batch
    results = dict(option=option, setting=setting, k=k, seed=seed, spec=spec, epochs=[], trace=[])
    step_total = 0
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        order = data_rng.permutation(len(y_train))
        before = sum(layer.backward_seconds for layer in hidden)
        updated = np.zeros(hidden[-1].out_features, dtype=bool)
        loss_sum = 0.0
        for step in range(n_steps):
            rows = order[step * batch:(step + 1) * batch]
            logits = model.forward(x_train[rows], train=True)
            loss, grad = softmax_cross_entropy(logits, y_train[rows])
            if not np.isfinite(loss):
                results["stopped"] = f"loss {loss} at epoch {epoch}, step {step + 1}"
                break
            model.backward(grad)
            grads = model.grads()
            optimizer.step(grads)
            for layer in hidden:
                dW = layer.grads()[0]
                if spec["max_norm"]:
                    clip_rows(layer, dW.rows, spec["max_norm"])
            updated[hidden[-1].grads()[0].rows] = True
            if step_total < args.trace_steps:
                results["trace"].append(float(np.abs(logits).max()))
            step_total += 1
            loss_sum += loss
        if "stopped" in results:
            break
        dev_logits = np.concatenate([model.forward(data.x_dev[i:i + 1000])
                                     for i in range(0, len(data.y_dev), 1000)])
        record = dict(epoch=epoch, train_loss=loss_sum / n_steps,
                      dev_accuracy=float(np.mean(dev_logits.argmax(1) == data.y_dev)),
                      dev_loss=float(-log_softmax(dev_logits)[np.arange(len(data.y_dev)), data.y_dev].mean()),
                      dev_max_abs_logit=float(np.abs(dev_logits).max()),
                      hidden_backward_us_per_step=1e6 * (sum(layer.backward_seconds for layer in hidden)
                                                         - before) / n_steps,
                      never_updated_units=int((~updated).sum()))
        if test:
            pred = np.concatenate([model.forward(data.x_test[i:i + 1000]).argmax(1)
                                   for i in range(0, len(data.y_test), 1000)])
            record["test_accuracy"] = float(np.mean(pred == data.y_test))
        results["epochs"].append(record)
        if partial:
            with open(partial, "w") as fh:
                json.dump(results, fh)
        print(f"  {option} {setting} k={k} seed {seed} epoch {epoch}: dev {100 * record['dev_accuracy']:.2f} "
              f"loss {record['train_loss']:.3f} max|logit| {record['dev_max_abs_logit']:.0f} "
              f"bwd {record['hidden_backward_us_per_step']:.0f} us/step", flush=True)
    results["sign_trace"] = tracer.rows
    results["wall_s"] = time.time() - start
    if results["epochs"]:
        best = max(results["epochs"], key=lambda e: (e["dev_accuracy"], -e["epoch"]))
        results["best_epoch"], results["best_dev_accuracy"] = best["epoch"], best["dev_accuracy"]
        if test:
            results["test_accuracy_at_best_dev"] = best["test_accuracy"]
        results["hidden_backward_us_per_step"] = float(np.median(
            [e["hidden_backward_us_per_step"] for e in results["epochs"]]))
    return results


def run_cached(option, setting, k, seed, data, args, test=False):
    tag = f"{option}-{setting}-k{k}-e{args.epochs}-s{seed}{'-test' if test else ''}"
    path = os.path.join(args.out_dir, tag + ".json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    if args.report_only:
        return None
    results = run(option, setting, k, seed, data, args, test, partial=path + ".partial")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh)
    os.replace(tmp, path)
    print(f"{tag}: dev {100 * results.get('best_dev_accuracy', float('nan')):.2f} "
          f"({results['wall_s']:.0f} s)", flush=True)
    return results


def table(rows, test):
    """Markdown table of (option, setting, k, results list) rows."""
    head = ["option", "setting", "k", "seeds", "dev acc % (best epoch)"]
    if test:
        head.append("test acc % at best dev")
    head += ["dev max abs logit (last epoch)", "units never updated (last hidden, last epoch)",
             "kept sign share, first steps", "hidden backward us/step (in-run)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for option, setting, k, runs in rows:
        runs = [r for r in runs if r and r.get("epochs")]
        if not runs:
            continue
        last = [r["epochs"][-1] for r in runs]
        signs = [np.nanmean([s[0] for s in r["sign_trace"][:100]]) for r in runs if r["sign_trace"]]
        actives = [np.nanmean([s[1] for s in r["sign_trace"][:100]]) for r in runs if r["sign_trace"]]
        cells = [option, f"{'dense' if OPTIONS[option].get('dense') else SETTINGS[setting][1]}, batch {SETTINGS[setting][0]}",
                 "500" if k is None or OPTIONS[option].get("dense") else str(k), str(len(runs)),
                 mean_std([100 * r["best_dev_accuracy"] for r in runs])]
        if test:
            cells.append(mean_std([100 * r["test_accuracy_at_best_dev"] for r in runs]))
        cells += [f"{np.mean([e['dev_max_abs_logit'] for e in last]):.0f}",
                  f"{np.mean([e['never_updated_units'] for e in last]):.0f}",
                  f"{100 * np.mean(signs):.0f}% (all active {100 * np.mean(actives):.0f}%)" if signs else "-",
                  f"{np.mean([r['hidden_backward_us_per_step'] for r in runs]):.0f}"]
        if any("stopped" in r for r in runs):
            cells[0] += " (diverged)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing(data, options, ks, steps, repeat=3):
    """Hidden-layer backward us/step of each option, measured in turns in this process.

    Each repeat takes every (option, setting, k) in turn: a fresh model, 20
    warm-up steps, then `steps` timed steps; the best repeat is kept. The
    speed-up kept is the option's speed-up over dense divided by plain
    meProp's, i.e. plain's time over the option's.
    """
    x, y = data.x_train, data.y_train
    cases = [(o, s, k) for s in SETTINGS for k in ks for o in options if applies(o, s)]
    best = {c: np.inf for c in cases}
    for _ in range(repeat):
        for option, setting, k in cases:
            spec = settings(option, setting, k)
            model = build(spec, x.shape[1], data.n_classes, np.random.default_rng(0))
            optimizer = mp.Adam(model.params(), lr=spec["lr"], eps=spec["eps"], lazy=spec["lazy"])
            hidden = linears(model)[:-1]
            order = np.random.default_rng(0).permutation(len(y))
            b = spec["batch"]
            for i in range(steps + 20):
                if i == 20:
                    t0 = sum(layer.backward_seconds for layer in hidden)
                rows = order[i * b:(i + 1) * b]
                _, grad = softmax_cross_entropy(model.forward(x[rows], train=True), y[rows])
                model.backward(grad)
                optimizer.step(model.grads())
            best[(option, setting, k)] = min(best[(option, setting, k)],
                                             1e6 * (sum(layer.backward_seconds for layer in hidden) - t0) / steps)
    lines = ["| option | setting | k | hidden-layer backward, us per step | speed-up vs dense | share of plain meProp's speed-up kept |",
             "| --- | --- | --- | --- | --- | --- |"]
    for option, setting, k in cases:
        dense = best.get(("dense", setting, k))
        plain = best.get(("plain", setting, k))
        us = best[(option, setting, k)]
        share = plain / us if plain and option != "dense" else float("nan")
        lines.append(f"| {option} | batch {SETTINGS[setting][0]} | {k} | {us:.0f} "
                     f"| {dense / us:.2f}x | {100 * share:.0f}% |" if dense else f"| {option} | {setting} | {k} | {us:.0f} | - | - |")
    return "\n".join(lines)


def layer_timing(calls=3000, seed=0, sm=0.9):
    """Backward us per step of the two hidden layers (784-500, 500-500), k=20, by option.

    Synthetic inputs and output gradients (half of the entries zero, as
    after a ReLU); the variants are called in turns, one call each, and the
    5th percentile of each one's per-call times is kept, which on a busy
    machine stays near the time of an undisturbed call.
    """
    from meprop_numba.nn import Linear as L

    rng = np.random.default_rng(seed)
    lines = ["| selection | batch | variant | hidden-layer backward, us per step | speed-up over dense "
             "| share of plain meProp's speed-up kept |", "|" + " --- |" * 6]
    for batch, selection in ((10, "topk"), (50, "unified"), (50, "topk")):
        x1 = rng.random((batch, 784)).astype(np.float32)
        x2 = np.maximum(rng.normal(size=(batch, 500)), 0).astype(np.float32)
        g = (rng.normal(size=(batch, 500)) * 1e-2).astype(np.float32)
        g[rng.random(g.shape) < 0.5] = 0

        def pair(k, sel, **kw):
            return (L(784, 500, k, sel, rng=0, input_grad=False, **kw), L(500, 500, k, sel, rng=1, **kw))

        variants = {"dense": pair(None, selection), "plain meProp": pair(20, selection),
                    "error feedback 0.8": pair(20, selection, error_feedback=0.8)}
        if selection == "topk":
            variants["sign-balanced"] = pair(20, "balanced")
        else:
            variants[f"score memory {sm}"] = pair(20, selection, score_memory=sm)
            variants[f"error feedback 0.8 + score memory {sm}"] = pair(
                20, selection, error_feedback=0.8, score_memory=sm)
        samples = {name: [] for name in variants}
        for _ in range(calls):
            for name, (first, second) in variants.items():
                first.forward(x1, train=True)
                second.forward(x2, train=True)
                t0 = time.perf_counter()
                second.backward(g)
                first.backward(g)
                samples[name].append(time.perf_counter() - t0)
        us = {name: 1e6 * np.percentile(v[calls // 10:], 5) for name, v in samples.items()}
        dense, plain = us["dense"], us["plain meProp"]
        for name, t in us.items():
            kept = "-" if name == "dense" else f"{100 * plain / t:.0f}%"
            lines.append(f"| {selection} | {batch} | {name} | {t:.0f} | {dense / t:.1f}x | {kept} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


#: Arms of the ``subset`` command: the CLI's default meProp, the paper's meProp, dense.
SUBSET_ARMS = {"dense": dict(k=None), "default": dict(), "plain": dict(dropout=0.0, error_feedback=0.0)}


def subset_runs(args):
    """Train the CLI's arms (``train --compare`` and ``--plain-meprop``) for each batch and seed.

    Each run is :func:`meprop_numba.training.fit` on the MLP task with the
    CLI's defaults (per-example top-k, k=20; dropout and error feedback as
    the defaults set them for meProp), dev split only, one JSON per run in
    ``--out-dir``; the arms of one seed run one after the other, so their
    time ratios come from the same stretch of machine load.
    """
    from meprop_numba.tasks.mlp import MLPConfig, MLPTask
    from meprop_numba.training import fit

    task = MLPTask()
    out = {}
    for batch in args.batches:
        for seed in args.seeds:
            for arm, over in SUBSET_ARMS.items():
                config = MLPConfig(dataset=args.dataset, data_dir=args.data_dir, batch_size=batch,
                                   seed=seed, epochs=args.epochs, threads=args.threads,
                                   eval_test=False, **{**dict(k=args.ks[0]), **over})
                tag = f"subset-{arm}-b{batch}-k{args.ks[0]}-e{args.epochs}-s{seed}"
                path = os.path.join(args.out_dir, tag + ".json")
                if not os.path.exists(path) and not args.report_only:
                    fit(task, config, out=path + ".tmp", progress=False)
                    os.replace(path + ".tmp", path)
                    print(f"{tag} done", flush=True)
                if os.path.exists(path):
                    with open(path) as fh:
                        out[(batch, seed, arm)] = json.load(fh)
    return out


def subset_table(runs, batches, seeds, horizons):
    """Best dev accuracy within the first E epochs per arm, and the time ratios over them."""
    def ratio(dense, mine, key, epochs):
        d = sum(e[key] for e in dense["epochs"][:epochs])
        m = sum(e[key] for e in mine["epochs"][:epochs])
        return d / m

    lines = ["| batch | epochs | seeds | dense dev % | meProp default dev % | gap | paper's meProp dev % "
             "| backward speed-up, default (plain) | share of plain's kept | whole-step speed-up, "
             "default (plain) |", "|" + " --- |" * 10]
    for batch in batches:
        for epochs in horizons:
            have = [s for s in seeds if all((batch, s, a) in runs for a in SUBSET_ARMS)
                    and len(runs[(batch, s, "default")]["epochs"]) >= epochs]
            if not have:
                continue
            best = {a: [100 * max(e["dev_accuracy"] for e in runs[(batch, s, a)]["epochs"][:epochs])
                        for s in have] for a in SUBSET_ARMS}
            gap = np.asarray(best["default"]) - np.asarray(best["dense"])
            bwd = {a: np.mean([ratio(runs[(batch, s, "dense")], runs[(batch, s, a)], "backward_s", epochs)
                               for s in have]) for a in ("default", "plain")}
            step = {a: np.mean([ratio(runs[(batch, s, "dense")], runs[(batch, s, a)], "train_s", epochs)
                                for s in have]) for a in ("default", "plain")}
            lines.append(f"| {batch} | {epochs} | {len(have)} | {mean_std(best['dense'])} "
                         f"| {mean_std(best['default'])} | {mean_std(gap)} | {mean_std(best['plain'])} "
                         f"| {bwd['default']:.1f}x ({bwd['plain']:.1f}x) | {100 * bwd['default'] / bwd['plain']:.0f}% "
                         f"| {step['default']:.1f}x ({step['plain']:.1f}x) |")
    return "\n".join(lines)


def subset_timing(args):
    """The CLI's three arms trained step by step in turns; per-step time ratios.

    The models of ``train --compare`` (dense, default meProp) and of
    ``--plain-meprop`` take the same minibatches, one step each in turn, so
    the machine's load falls on all three alike (each arm goes first every
    third step); per arm, the median over the steps (after 20 warm-up
    steps) of the forward with the loss, the backward (``model.backward``,
    as the CLI's backward column) and the update, their sum as the whole
    step, and dense's time over each arm's.
    """
    from meprop_numba.tasks.mlp import MLPConfig, MLPTask
    from meprop_numba.training import thread_limits, train_step
    from meprop_numba.training.config import build_optimizer

    task = MLPTask()
    lines = ["| batch | steps | arm | forward, ms per step | backward, ms | update, ms | whole step, ms "
             "| backward speed-up | whole-step speed-up | share of plain meProp's backward speed-up kept |",
             "|" + " --- |" * 10]
    with thread_limits(args.threads):
        for batch in args.batches:
            configs = {arm: MLPConfig(dataset=args.dataset, data_dir=args.data_dir, batch_size=batch,
                                      seed=args.seeds[0], **{**dict(k=args.ks[0]), **over}).validate()
                       for arm, over in SUBSET_ARMS.items()}
            data = task.load_data(configs["dense"])
            extra = task.extra_state(data)
            arms = {}
            for arm, config in configs.items():
                model_rng, _ = _seeds(config.seed)
                model = task.build_model(config, extra, model_rng)
                arms[arm] = (model, build_optimizer(config, model.parameters()))
            times = {arm: [] for arm in arms}
            data_rng = _seeds(args.seeds[0])[1]
            for epoch in range(args.epochs):
                for model, _ in arms.values():
                    task.start_epoch(model)
                for step, b in enumerate(task.batches(configs["dense"], data, data_rng)):
                    order = list(arms)[step % 3:] + list(arms)[:step % 3]  # each arm first in turn
                    for arm in order:
                        model, optimizer = arms[arm]
                        timers = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
                        train_step(model, optimizer, task.loss, b, timers)
                        times[arm].append([timers["forward"], timers["backward"], timers["optimizer"]])
            # per phase, the median over the steps; the whole step is their sum (a sum's median
            # would take in every descheduling the step met)
            med = {arm: np.median(np.asarray(t[20:]), axis=0) for arm, t in times.items()}
            for arm, (fwd, bwd, opt) in med.items():
                step = fwd + bwd + opt
                kept = "-" if arm != "default" else f"{100 * med['plain'][1] / bwd:.0f}%"
                lines.append(f"| {batch} | {len(times[arm]) - 20} | {arm} | {1e3 * fwd:.3f} | {1e3 * bwd:.3f} "
                             f"| {1e3 * opt:.3f} | {1e3 * step:.3f} | {med['dense'][1] / bwd:.2f}x "
                             f"| {med['dense'].sum() / step:.2f}x | {kept} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def trace_figure(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    window = 10
    for i, (label, r) in enumerate(runs):
        color = f"C{i}"
        logit = np.asarray(r["trace"])
        axes[0].plot(np.arange(1, len(logit) + 1), logit, label=label, linewidth=1, color=color)
        if r["sign_trace"]:
            share = np.asarray([s[0] for s in r["sign_trace"]])
            smooth = np.convolve(share, np.ones(window) / window, mode="valid")
            axes[1].plot(np.arange(window, len(share) + 1), 100 * smooth, label=label, linewidth=1,
                         color=color)
            active = np.asarray([s[1] for s in r["sign_trace"]])
            axes[1].plot(np.arange(window, len(active) + 1),
                         100 * np.convolve(active, np.ones(window) / window, mode="valid"),
                         color=color, linestyle=":", linewidth=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("max |logit| of the minibatch")
    axes[1].axhline(50, color="grey", linewidth=0.5)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("% of kept entries with g < 0 (dotted: of all active)")
    axes[1].set_title("last hidden layer, 10-step mean", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["screen", "final", "trace", "timing", "layer-timing",
                                            "subset", "subset-timing"])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[20])
    parser.add_argument("--options", nargs="+", default=None, help="default: all")
    parser.add_argument("--settings", nargs="+", default=["b10", "b50"], choices=list(SETTINGS),
                        help="b10: per-example top-k, batch 10; b50: unified top-k, batch 50; "
                             "b50topk: per-example top-k, batch 50")
    parser.add_argument("--test", action="store_true", help="evaluate the test split (final runs only)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", default="runs/accuracy")
    parser.add_argument("--trace-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="timing: steps per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="timing: repeats (the best is kept)")
    parser.add_argument("--calls", type=int, default=3000, help="layer-timing: calls per variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 50],
                        help="subset: minibatch sizes")
    parser.add_argument("--horizons", type=int, nargs="+", default=[10, 20],
                        help="subset: report the best dev accuracy within these many epochs")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--report", default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        mp.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.command in ("subset", "subset-timing"):
        report = (subset_table(subset_runs(args), args.batches, args.seeds, args.horizons)
                  if args.command == "subset" else subset_timing(args))
        print(report)
        if args.report:
            with open(args.report, "w") as fh:
                fh.write(report + "\n")
        return
    data = load_dataset(args.dataset, args.data_dir)
    print(data.summary(), flush=True)
    options = args.options or list(OPTIONS)
    with blas_threads(args.threads):
        if args.command == "layer-timing":
            report = layer_timing(args.calls)
        elif args.command == "timing":
            report = timing(data, options, args.ks, args.steps, args.repeat)
        elif args.command == "trace":
            # The first --trace-steps steps of the runs (trained here if not in --out-dir).
            # Labelled "plain, unified b50"; dense once per batch size (its selection does not
            # matter); sign balance per example at batch 10 only.
            cases, seen = [], set()
            for setting in args.settings:
                batch, selection = SETTINGS[setting]
                for option in options:
                    dense = OPTIONS[option].get("dense")
                    key = (option, batch) if dense else (option, setting)
                    if (not applies(option, setting) or key in seen
                            or (option == "balanced" and batch != 10)):
                        continue
                    seen.add(key)
                    where = f"b{batch}" if dense else f"{'per example' if selection == 'topk' else selection} b{batch}"
                    cases.append((f"{option}, {where}", option, setting))
            runs = [(label, run_cached(option, setting, args.ks[0], args.seeds[0], data, args))
                    for label, option, setting in cases]
            runs = [(label, r) for label, r in runs if r]
            if args.figure:
                trace_figure(runs, args.figure)
            report = "\n".join(
                f"{label}: max|logit| of the minibatch at steps 10/100/{len(r['trace'])}: "
                f"{r['trace'][9]:.0f}/{r['trace'][99]:.0f}/{r['trace'][-1]:.0f}; "
                + (f"kept entries with g < 0, first 100 steps: "
                   f"{100 * np.nanmean([s[0] for s in r['sign_trace'][:100]]):.0f}% "
                   f"(all active: {100 * np.nanmean([s[1] for s in r['sign_trace'][:100]]):.0f}%)"
                   if r["sign_trace"] else "dense")
                for label, r in runs)
        else:
            rows = []
            for setting in args.settings:
                for k in args.ks:
                    for option in options:
                        if not applies(option, setting):
                            continue
                        if option.startswith("dense") and k != args.ks[0]:
                            continue
                        runs = [run_cached(option, setting, k, seed, data, args, args.test)
                                for seed in args.seeds]
                        rows.append((option, setting, k, runs))
            report = table(rows, args.test)
    print(report)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
