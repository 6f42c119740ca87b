"""Where the time of the parser's meProp hidden-layer backward goes, part by part, in one run.

Trains the parser (meProp k, Adam) for ``--steps`` minibatches on the first
``--sentences`` EWT training sentences, then keeps the hidden layer's
input, weight and output gradient of the next ``--batches`` minibatches
and times, in turns and best of ``--repeats`` passes over them (one
thread, float32):

- the NaN/Inf checks of x and g, the top-k selection;
- the compiled kernel with and without the input gradient (their
  difference is the input gradient dx; without it: the grouping of the
  selection by row and the weight gradient);
- the public call (checks, selection, kernel) and the dense path (two
  BLAS products ``g @ W`` and ``g.T @ x``, same checks).

It also prints the distinct rows the batches select and the multiply-add
rates.

Usage::

    python scripts/parse_backward_profile.py --data-dir ../shared/data/ud-english-ewt
"""
import argparse
import os
import sys
import time

from lstm_speed import _pin_threads  # scripts/lstm_speed.py: re-exec with pinned thread counts


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("MEPROP_NUMBA_PARSE_DIR"))
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--steps", type=int, default=300, help="training steps before the capture")
    p.add_argument("--batches", type=int, default=10, help="captured minibatches")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rounds", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if not args.data_dir:
        print("error: --data-dir DIR (a UD treebank folder) is required", file=sys.stderr)
        return 2
    _pin_threads(1)
    import numpy as np

    from meprop_numba._cpu import linear as cpu_linear
    from meprop_numba._validation import finite
    from meprop_numba.backward import _linear_backward
    from meprop_numba.tasks.parse.task import ParseConfig, ParseTask
    from meprop_numba.topk import _topk_host
    from meprop_numba.training.config import build_optimizer

    task = ParseTask()
    config = ParseConfig(data_dir=args.data_dir, max_train_sentences=args.sentences,
                         max_dev_sentences=1, k=args.k, batch_size=args.batch_size).validate()
    data = task.load_data(config)
    model = task.build_model(config, task.extra_state(data), np.random.default_rng(0))
    opt = build_optimizer(config, model.params())
    order = np.random.default_rng(0).permutation(len(data.transitions))
    need = (args.steps + args.batches) * args.batch_size
    order = np.resize(order, need)
    captured = []
    hidden_backward = model.hidden.backward

    def capture(g):
        captured.append((model.hidden._x.copy(), np.ascontiguousarray(g).copy()))
        return hidden_backward(g)

    for step in range(args.steps + args.batches):
        if step == args.steps:
            model.hidden.backward = capture
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        _, grad = task.loss(model, (data.features[idx], data.transitions[idx]))
        model.backward(grad)
        if step < args.steps:
            opt.step(model.grads())  # the captured batches share the current weights
    W = np.ascontiguousarray(model.hidden.weight)
    xs, gs = [c[0] for c in captured], [c[1] for c in captured]
    ks = [_topk_host(g, args.k, False) for g in gs]
    B, m = xs[0].shape
    n = W.shape[0]
    rows = [len(cpu_linear._transpose_selection(i, n)[0]) for i in ks]
    print(f"batch {B}, input {m}, hidden {n}, k={args.k}, float32, one thread; after "
          f"{args.steps} Adam steps; distinct rows selected per batch: mean {np.mean(rows):.1f} "
          f"(min {min(rows)}, max {max(rows)})")

    def kernel(need_dx):
        return lambda i: cpu_linear.per_example_backward(xs[i], W, gs[i], ks[i], need_dx)

    parts = {
        "checks (NaN/Inf of x and g)": lambda i: (finite(gs[i], "g"), finite(xs[i], "x")),
        "top-k selection": lambda i: _topk_host(gs[i], args.k, False),
        "kernel without dx (grouping + weight gradient)": kernel(False),
        "kernel with dx": kernel(True),
        "public call, meProp": lambda i: _linear_backward(xs[i], W, gs[i], args.k, None, False, True),
        "public call, dense (BLAS)": lambda i: _linear_backward(xs[i], W, gs[i], None, None, False,
                                                                True),
    }
    best = {name: np.inf for name in parts}
    for name, f in parts.items():
        f(0)  # compile
    for _ in range(args.rounds):
        for name, f in parts.items():
            for _ in range(args.repeats):
                start = time.perf_counter()
                for i in range(len(xs)):
                    f(i)
                best[name] = min(best[name], (time.perf_counter() - start) / len(xs))
    for name, seconds in best.items():
        print(f"  {name:48s} {1e3 * seconds:8.3f} ms")
    dx_s = best["kernel with dx"] - best["kernel without dx (grouping + weight gradient)"]
    madds = B * args.k * m
    print(f"  {'input gradient dx (the difference)':48s} {1e3 * dx_s:8.3f} ms")
    print(f"multiply-adds: dx {madds / 1e6:.1f} M, weight gradient {madds / 1e6:.1f} M; kernel "
          f"{2 * madds / best['kernel with dx'] / 1e9:.1f} G/s; dense {2 * B * n * m / 1e6:.0f} M at "
          f"{2 * B * n * m / best['public call, dense (BLAS)'] / 1e9:.1f} G/s")
    print(f"public call: dense / meProp = "
          f"{best['public call, dense (BLAS)'] / best['public call, meProp']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
