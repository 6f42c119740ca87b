"""Text reports of training results: the epoch table, the summary, the speed-ups.

Every task's results (from :func:`meprop_numba.training.fit`) print the same
way: one table row per epoch, one summary line per run (best dev metric,
the test metric there when evaluated), and for ``--compare`` one line of
dense/meProp time ratios.
"""
__all__ = ["epoch_table", "speedup_line", "summary_line"]


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def _seconds(value):
    return "-" if value is None else f"{value:.3f}"


def _component_label(name):
    """``'backward_linear'`` -> ``'(linear)'``: a part of the backward pass."""
    return f"({name[len('backward_'):]})" if name.startswith("backward_") else name


def epoch_table(runs, metric="accuracy", component_timers=()):
    """The per-epoch table of one or more runs.

    Never raises for results from :func:`~meprop_numba.training.fit`.

    Parameters
    ----------
    runs : list of (str, dict)
        ``(label, results)`` pairs, results as :func:`~meprop_numba.training.fit` returns.
    metric : str, optional
        The task's primary metric.
    component_timers : tuple of str, optional
        The task's extra timers, shown after ``backward s``.

    Returns
    -------
    str
        The table, one row per epoch of each run.

    Examples
    --------
    >>> from meprop_numba.training.report import epoch_table
    >>> row = {"epoch": 1, "train_loss": 0.5, "dev_accuracy": 0.9, "forward_s": 0.1,
    ...        "backward_s": 0.2, "backward_linear_s": 0.1, "optimizer_s": 0.05,
    ...        "train_s": 0.4, "eval_s": 0.01}
    >>> print(epoch_table([("dense", {"epochs": [row]})], component_timers=("backward_linear",)))
      run  epoch    loss  dev %  test %  forward s  backward s  (linear) s  optimizer s  step total s  eval s
    -----  -----  ------  -----  ------  ---------  ----------  ----------  -----------  ------------  ------
    dense      1  0.5000  90.00       -      0.100       0.200       0.100        0.050         0.400   0.010
    """
    headers = ["run", "epoch", "loss", "dev %", "test %", "forward s", "backward s",
               *[f"{_component_label(c)} s" for c in component_timers],
               "optimizer s", "step total s", "eval s"]
    rows = []
    for label, results in runs:
        for e in results["epochs"]:
            loss = e.get("train_loss")
            rows.append([label, str(e["epoch"]), "-" if loss is None else f"{loss:.4f}",
                         _pct(e.get(f"dev_{metric}")), _pct(e.get(f"test_{metric}")),
                         _seconds(e.get("forward_s")), _seconds(e.get("backward_s")),
                         *[_seconds(e.get(f"{c}_s")) for c in component_timers],
                         _seconds(e.get("optimizer_s")), _seconds(e.get("train_s")),
                         _seconds(e.get("eval_s"))])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def summary_line(label, results, metric="accuracy"):
    """One line: the best dev evaluation and the test metric there.

    Never raises for results from :func:`~meprop_numba.training.fit`.

    Parameters
    ----------
    label : str
        The run's name.
    results : dict
        As :func:`~meprop_numba.training.fit` returns them.
    metric : str, optional
        The task's primary metric.

    Returns
    -------
    str
        The line.

    Examples
    --------
    >>> from meprop_numba.training.report import summary_line
    >>> best = {"epoch": 3, "step": 120, "dev_accuracy": 0.9012, "test_accuracy": 0.8876}
    >>> summary_line("dense", {"best": best, "mean_train_s": 1.25, "epochs": [{}] * 3})
    'dense: best dev accuracy 90.12% at epoch 3, test accuracy there 88.76%; mean epoch 1.25 s'
    """
    best = results.get("best")
    if not best or best.get(f"dev_{metric}") is None:
        return f"{label}: no dev evaluation"
    text = f"{label}: best dev {metric} {_pct(best[f'dev_{metric}'])}% at epoch {best['epoch']}"
    n_evals = len(results.get("evaluations", ())) if results.get("evaluations") else 0
    if n_evals > len(results.get("epochs", ())):
        text += f" (step {best['step']})"
    test = best.get(f"test_{metric}")
    if test is not None:
        text += f", test {metric} there {_pct(test)}%"
    mean = results.get("mean_train_s")
    if mean is not None:
        text += f"; mean epoch {mean:.2f} s"
    return text


def speedup_line(label, speedup, component_timers=()):
    """The dense/meProp time ratios of :func:`~meprop_numba.training.compare`.

    Never raises for a ``speedup`` dict from :func:`~meprop_numba.training.compare`.

    Parameters
    ----------
    label : str
        The meProp arm's label.
    speedup : dict
        ``compare(...)["speedup"]``.
    component_timers : tuple of str, optional
        The task's extra timers, shown with the backward pass.

    Returns
    -------
    str
        The line.

    Examples
    --------
    >>> from meprop_numba.training.report import speedup_line
    >>> s = {"forward": 1.0, "backward": 4.0, "backward_linear": 6.0, "optimizer": 3.0, "train": 2.5}
    >>> speedup_line("meProp k=20 topk", s, ("backward_linear",))
    'speed-up of meProp k=20 topk over dense (per-epoch means): backward 4.0x (linear 6.0x), optimizer 3.0x, forward 1.00x, whole training step 2.5x'
    """
    def ratio(name, digits=1):
        value = speedup.get(name)
        return "-" if value is None else f"{value:.{digits}f}x"

    parts = [f"backward {ratio('backward')}"]
    if component_timers:
        parts[0] += " (" + ", ".join(f"{_component_label(c)[1:-1]} {ratio(c)}"
                                     for c in component_timers) + ")"
    parts += [f"optimizer {ratio('optimizer')}", f"forward {ratio('forward', 2)}",
              f"whole training step {ratio('train')}"]
    return f"speed-up of {label} over dense (per-epoch means): " + ", ".join(parts)
