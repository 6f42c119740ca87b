"""Speed of ``meprop_numba.torch.MePropLSTM`` in a PyTorch tagger, measured in one run.

A POS-tagger-shaped PyTorch model (``nn.Embedding`` -> LSTM h=500 ->
``nn.Linear`` over the tags, cross-entropy, one sentence a minibatch,
float32, CPU) trains one epoch over the same sentences twice, in turns of 25
sentences: with ``MePropLSTM`` (meProp k=10 per gate) and with
``torch.nn.LSTM`` (dense). Both start from the same weights and use the same
optimizer. Printed: seconds per epoch and the ratio (target >= 2x), and
where the time goes (forward+loss, backward, optimizer step; for
``MePropLSTM`` also the time inside its compiled loops).

Sentences: the first ``--sentences`` training sentences of a UD treebank
(word ids; words seen once share the UNK id), or, without ``--pos-dir``,
synthetic token ids with EWT-like lengths (3-40, mean about 17).

Optimizers (``--optimizer``):

- ``sgd`` (default): ``torch.optim.SGD``, the embedding with
  ``sparse=True`` on both sides and ``MePropLSTM(sparse_grad=True)``, so the
  meProp side updates only the touched rows;
- ``adam``: ``torch.optim.Adam`` with dense gradients everywhere (a dense
  update of every LSTM weight each sentence on both sides);
- ``lazy-adam``: what a user of this package would pick against a dense
  ``torch.optim.Adam`` model: on the meProp side a sparse embedding,
  ``MePropLSTM(sparse_grad=True)`` and :class:`meprop_numba.torch.optim.Adam`
  (only the touched rows and their moments updated); on the dense side
  ``torch.optim.Adam`` with dense gradients, as with ``adam``.

Usage::

    python scripts/torch_lstm_speed.py --pos-dir ../shared/data/ud-english-ewt
    python scripts/torch_lstm_speed.py --sentences 500 --optimizer adam
    python scripts/torch_lstm_speed.py --sentences 500 --optimizer lazy-adam

Thread counts are pinned (BLAS, numba, PyTorch) from ``--threads`` before
numpy is imported; the script re-executes itself once to do so.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lstm_speed import _lockstep, _pin_threads  # noqa: E402  (scripts/lstm_speed.py)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pos-dir", default=os.environ.get("MEPROP_NUMBA_POS_DIR"),
                   help="UD treebank directory (default $MEPROP_NUMBA_POS_DIR; synthetic "
                        "token ids when neither is given)")
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--k", type=int, default=10, help="meProp k per gate (default 10)")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--embed", type=int, default=190,
                   help="embedding size (default 190, the paper's LSTM input width 50 + 7 x 20)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "lazy-adam"), default="sgd")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sentences(args):
    """(list of (words, tags) int64 arrays, vocabulary size, tag count, description)."""
    import numpy as np

    if args.pos_dir:
        from meprop_numba.tasks import pos

        data = pos.load_pos_data(args.pos_dir, max_train_sentences=args.sentences,
                                 max_dev_sentences=1)
        pairs = [(s.words.astype(np.int64), s.tags.astype(np.int64)) for s in data.train]
        return pairs, len(data.vocab.words), len(data.vocab.tags), args.pos_dir
    rng = np.random.default_rng(args.seed)
    vocab, tags = 10000, 50
    pairs = []
    for _ in range(args.sentences):
        n = int(rng.integers(3, 41)) if rng.random() < 0.5 else int(rng.integers(3, 25))
        pairs.append((rng.integers(1, vocab, n), rng.integers(0, tags, n)))
    return pairs, vocab, tags, "synthetic token ids"


def _timed(module, name, times, key):
    """Wrap module.name so that its wall time adds to times[key]."""
    inner = getattr(module, name)

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            times[key] += time.perf_counter() - t0

    setattr(module, name, wrapper)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    _pin_threads(args.threads)
    import numba
    import torch
    from torch import nn

    import meprop_numba.torch.lstm as mlstm
    from meprop_numba.torch import MePropLSTM, optim

    torch.set_num_threads(args.threads)
    pairs, vocab, n_tags, source = _sentences(args)
    tokens = sum(len(w) for w, _ in pairs)
    sparse = args.optimizer == "sgd"  # sparse gradients on both sides
    sparse_meprop = sparse or args.optimizer == "lazy-adam"

    class Tagger(nn.Module):
        def __init__(self, lstm, sparse):
            super().__init__()
            self.embed = nn.Embedding(vocab, args.embed, sparse=sparse)
            self.lstm = lstm
            self.out = nn.Linear(args.hidden, n_tags)

        def forward(self, words):
            hs, _ = self.lstm(self.embed(words)[None])
            return self.out(hs[0])

    torch.manual_seed(args.seed)
    dense = Tagger(nn.LSTM(args.embed, args.hidden, batch_first=True), sparse)
    meprop = Tagger(MePropLSTM.from_lstm(dense.lstm, k=args.k, sparse_grad=sparse_meprop), sparse_meprop)
    meprop.embed.load_state_dict(dense.embed.state_dict())
    meprop.out.load_state_dict(dense.out.state_dict())
    batches = [(torch.from_numpy(w), torch.from_numpy(t)) for w, t in pairs]
    loss_fn = nn.CrossEntropyLoss()
    inner = {"kernels forward": 0.0, "kernels backward": 0.0}
    _timed(mlstm, "_forward", inner, "kernels forward")
    _timed(mlstm, "_backward", inner, "kernels backward")

    def stepper(model, lazy=False):
        if sparse:
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        elif lazy:
            opt = optim.Adam(model.parameters(), lr=1e-3)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        times = {"epoch": 0.0, "forward+loss": 0.0, "backward": 0.0, "optimizer": 0.0}

        def step(i, record=True):
            words, tags = batches[i]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(words), tags)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if record:
                times["forward+loss"] += t1 - t0
                times["backward"] += t2 - t1
                times["optimizer"] += t3 - t2
                times["epoch"] += t3 - t0

        return step, times

    step_m, t_m = stepper(meprop, lazy=args.optimizer == "lazy-adam")
    step_d, t_d = stepper(dense)
    print(f"{len(pairs)} sentences ({tokens} tokens) from {source}; embedding {args.embed}, "
          f"LSTM {args.hidden}, {n_tags} tags, batch 1 sentence, float32, {args.threads} "
          f"thread(s) (numba {numba.get_num_threads()}, torch {torch.get_num_threads()}), "
          f"optimizer {args.optimizer}, torch {torch.__version__}")
    for i in range(min(20, len(batches))):  # warm-up, untimed
        step_m(i, record=False)
        step_d(i, record=False)
    inner.update({key: 0.0 for key in inner})
    _lockstep([step_m, step_d], len(batches), warm_up=0)
    print("\n| seconds per epoch | training step | forward+loss | backward | optimizer |")
    print("| --- | --- | --- | --- | --- |")
    for name, t in ((f"MePropLSTM k={args.k} per gate", t_m), ("torch.nn.LSTM dense", t_d)):
        print(f"| {name} | {t['epoch']:.2f} | {t['forward+loss']:.2f} | {t['backward']:.2f} | "
              f"{t['optimizer']:.2f} |")
    kf, kb = inner["kernels forward"], inner["kernels backward"]
    print(f"\nMePropLSTM inside its autograd function: forward "
          f"loops {kf:.2f} s of its forward+loss {t_m['forward+loss']:.2f} s; meProp BPTT and "
          f"weight gradients {kb:.2f} s of its backward {t_m['backward']:.2f} s "
          f"({1e6 * kb / len(batches):.0f} us per sentence)")
    print(f"whole epoch: torch.nn.LSTM {t_d['epoch']:.2f} s, MePropLSTM {t_m['epoch']:.2f} s -> "
          f"{t_d['epoch'] / t_m['epoch']:.2f}x (target >= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
