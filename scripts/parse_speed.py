"""Speed of the meProp dependency parser, measured in one run.

On the oracle configurations of the first ``--sentences`` training sentences
of a UD treebank (float32, one thread for BLAS, numba and PyTorch), the three
parsers train the same shuffled epochs in turns (``--rounds`` times each,
the best round reported) and the script prints:

1. the hidden layer's backward time per epoch (top-k selection, input
   gradient and row-sparse weight gradient), meProp k=20 vs our dense path
   (BLAS products) (target >= 15x);
2. a whole training epoch (forward, loss, backward, Adam) of our meProp
   parser vs the same parser dense in PyTorch (``nn.Embedding``,
   ``nn.Linear``, cube, ``torch.optim.Adam``) (target >= 3x), and vs our
   dense parser;
3. the one-off cost of the oracle and feature extraction next to an epoch,
   and the time to parse the dev sentences.

Usage::

    python scripts/parse_speed.py --data-dir ../shared/data/ud-english-ewt
    python scripts/parse_speed.py --data-dir DIR --sentences 2000 --batch-size 10000

Thread counts must be fixed before numpy is imported, so the script sets
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/
``NUMBA_NUM_THREADS`` from ``--threads`` and re-executes itself once.
"""
import argparse
import os
import sys
import time

from lstm_speed import _pin_threads  # scripts/lstm_speed.py: re-exec with pinned thread counts


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("MEPROP_NUMBA_PARSE_DIR"),
                   help="UD treebank directory (default $MEPROP_NUMBA_PARSE_DIR)")
    p.add_argument("--sentences", type=int, default=1000,
                   help="training sentences (default 1000; EWT train has 12544)")
    p.add_argument("--dev-sentences", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100,
                   help="transitions per step (default 100; the paper used 10000)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return p.parse_args(argv)


def _ours(task, config, data):
    """An epoch function for our parser; returns (epoch seconds, hidden backward seconds)."""
    import numpy as np

    from meprop_numba.training.config import build_optimizer

    model = task.build_model(config, task.extra_state(data), np.random.default_rng(config.seed))
    opt = build_optimizer(config, model.params())

    def epoch(order):
        hidden0 = model.hidden.backward_seconds
        start = time.perf_counter()
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            _, grad = task.loss(model, (data.features[idx], data.transitions[idx]))
            model.backward(grad)
            opt.step(model.grads())
        return time.perf_counter() - start, model.hidden.backward_seconds - hidden0
    return model, epoch


def _torch(config, data, n_words, n_pos, n_labels, n_trans):
    import torch

    torch.set_num_threads(config.threads or 1)
    torch.manual_seed(config.seed)
    dim = config.dim

    class Parser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.words = torch.nn.Embedding(n_words, dim)
            self.pos = torch.nn.Embedding(n_pos, dim)
            self.labels = torch.nn.Embedding(n_labels, dim)
            self.hidden = torch.nn.Linear(48 * dim, config.hidden)
            self.output = torch.nn.Linear(config.hidden, n_trans)

        def forward(self, f):
            b = f.shape[0]
            x = torch.cat([self.words(f[:, :18]).reshape(b, -1), self.pos(f[:, 18:36]).reshape(b, -1),
                           self.labels(f[:, 36:]).reshape(b, -1)], dim=1)
            return self.output(self.hidden(x) ** 3)

    model = Parser()
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    feats = torch.from_numpy(data.features.astype("int64"))
    gold = torch.from_numpy(data.transitions)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch(order):
        order = torch.from_numpy(order)
        start = time.perf_counter()
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(feats[idx]), gold[idx])
            loss.backward()
            opt.step()
        return time.perf_counter() - start, None
    return epoch


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if not args.data_dir:
        print("error: --data-dir DIR (a UD treebank folder) is required", file=sys.stderr)
        return 2
    _pin_threads(args.threads)
    import numpy as np

    from meprop_numba.tasks.parse.task import ParseConfig, ParseTask

    task = ParseTask()
    base = ParseConfig(data_dir=args.data_dir, max_train_sentences=args.sentences,
                       max_dev_sentences=args.dev_sentences, hidden=args.hidden,
                       batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    sparse_cfg = ParseConfig(**{**base.__dict__, "k": args.k}).validate()
    dense_cfg = ParseConfig(**{**base.__dict__, "k": None}).validate()
    task.load_data(sparse_cfg)  # compiles (or loads) the kernels: the second load is timed
    start = time.perf_counter()
    data = task.load_data(sparse_cfg)
    load_s = time.perf_counter() - start
    s = data.stats
    v = data.vocab
    print(f"{s['train_sentences']} training sentences ({s['non_projective']} non-projective "
          f"skipped), {s['train_transitions']} transitions, batch {args.batch_size}, "
          f"hidden {args.hidden}, k={args.k}, float32, {args.threads} thread(s)")
    print(f"data: read {s['read_s']:.2f}s, oracle + features {s['oracle_s']:.3f}s (once per run)")

    arms = {}
    sparse_model, arms[f"meProp k={args.k}"] = _ours(task, sparse_cfg, data)
    _, arms["dense (ours)"] = _ours(task, dense_cfg, data)
    if not args.no_torch:
        try:
            arms["dense (PyTorch)"] = _torch(dense_cfg, data, len(v.words), len(v.pos),
                                             len(v.labels) + 1, v.n_transitions)
        except ImportError:
            print("torch is not installed: PyTorch comparison skipped")
    rng = np.random.default_rng(args.seed)
    warm = rng.permutation(len(data.transitions))[:max(2 * args.batch_size, 2000)]
    for epoch in arms.values():  # compile and warm up
        epoch(warm)
    best = {name: (np.inf, np.inf) for name in arms}
    for r in range(args.rounds):
        order = rng.permutation(len(data.transitions))
        for name, epoch in arms.items():
            total, hidden = epoch(order)
            print(f"  round {r + 1} {name:16s} epoch {total:7.2f}s"
                  + ("" if hidden is None else f"  hidden backward {hidden:6.2f}s"), flush=True)
            best[name] = (min(best[name][0], total),
                          min(best[name][1], hidden if hidden is not None else np.inf))
    sparse, dense = best[f"meProp k={args.k}"], best["dense (ours)"]
    print(f"\nhidden-layer backward per epoch: dense {dense[1]:.2f}s, meProp {sparse[1]:.2f}s "
          f"-> {dense[1] / sparse[1]:.1f}x (target >= 15x)")
    print(f"whole epoch: ours dense {dense[0]:.2f}s, meProp {sparse[0]:.2f}s "
          f"-> {dense[0] / sparse[0]:.2f}x vs our dense")
    if "dense (PyTorch)" in best:
        torch_s = best["dense (PyTorch)"][0]
        print(f"whole epoch: PyTorch dense {torch_s:.2f}s -> {torch_s / sparse[0]:.2f}x "
              f"(target >= 3x)")
    print(f"oracle + features {s['oracle_s']:.3f}s = {100 * s['oracle_s'] / sparse[0]:.1f}% "
          f"of one meProp epoch")
    start = time.perf_counter()
    scores = task.evaluate(sparse_model, data, "dev")
    print(f"parsing {s['dev_sentences']} dev sentences: {time.perf_counter() - start:.2f}s "
          f"(UAS {scores['uas']:.3f} after {args.rounds} epochs and the warm-up; load {load_s:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
