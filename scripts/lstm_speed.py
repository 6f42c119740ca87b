"""Speed of the meProp LSTM tagger, measured in one run.

Prints two comparisons on the same sentences (by default the first 1000
training sentences of a UD treebank, minibatch 1 sentence as in the meProp
paper, float32, one thread for BLAS, numba and PyTorch):

1. the LSTM layer's backward time (BPTT including the top-k selection and
   the row-sparse weight gradients) in a training epoch, meProp k=10 per
   gate vs our dense BPTT (target >= 15x);
2. a whole training epoch of the tagger (embeddings 50 + 7 x 20, LSTM 500,
   dense output layer, Adam) with meProp k=10 and lazy Adam, vs the same
   tagger dense in PyTorch (nn.Embedding, nn.LSTM, nn.Linear, torch.optim.Adam)
   (target >= 2x). Skipped with a message when torch is not installed.

Usage::

    python scripts/lstm_speed.py --pos-dir ../shared/data/ud-english-ewt
    python scripts/lstm_speed.py --pos-dir DIR --sentences 12544 --k 10 --threads 1

Thread counts must be fixed before numpy is imported, so the script sets
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/
``NUMBA_NUM_THREADS`` from ``--threads`` and re-executes itself once.
"""
import argparse
import os
import sys
import time

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pos-dir", default=os.environ.get("MEPROP_NUMBA_POS_DIR"),
                   help="UD treebank directory (default $MEPROP_NUMBA_POS_DIR)")
    p.add_argument("--sentences", type=int, default=1000,
                   help="training sentences per epoch (default 1000; EWT train has 12544)")
    p.add_argument("--k", type=int, default=10, help="meProp k per gate (default 10)")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return p.parse_args(argv)


def _pin_threads(threads):
    wanted = str(threads)
    if all(os.environ.get(v) == wanted for v in _THREAD_VARS):
        return
    env = dict(os.environ, **{v: wanted for v in _THREAD_VARS})
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _ours(data, config, sentences):
    """A step function training our tagger on `sentences`, and its batches."""
    import numpy as np

    from meprop_numba.tasks import TASKS, pos
    from meprop_numba.training import build_optimizer, train_step

    task = TASKS["pos"]
    model = task.build_model(config, task.extra_state(data), np.random.default_rng(config.seed))
    opt = build_optimizer(config, model.parameters())
    bs = config.batch_size
    batches = [pos.make_batch(sentences[i:i + bs], model.feature_offsets)
               for i in range(0, len(sentences), bs)]
    times = {"epoch": 0.0, "forward": 0.0, "backward": 0.0, "lstm_backward": 0.0,
             "optimizer": 0.0}

    def step(i, record=True):
        lstm0 = model.lstm.backward_seconds
        t0 = time.perf_counter()
        train_step(model, opt, task.loss, batches[i], times if record else None)
        if record:
            times["epoch"] += time.perf_counter() - t0
            times["lstm_backward"] += model.lstm.backward_seconds - lstm0

    return step, len(batches), times


def _torch(data, config, sentences):
    """The same tagger dense in PyTorch: a step function and its timings."""
    import numpy as np
    import torch
    from torch import nn

    from meprop_numba.tasks import pos

    torch.manual_seed(config.seed)
    v = data.vocab
    n_feat_rows = 1 + sum(len(f) for f in v.features)
    offsets = pos.feature_offsets([len(f) for f in v.features])

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(len(v.words), config.word_dim, padding_idx=0)
            self.feats = nn.Embedding(n_feat_rows, config.feature_dim, padding_idx=0)
            self.lstm = nn.LSTM(config.word_dim + 7 * config.feature_dim, config.hidden,
                                batch_first=True)
            self.out = nn.Linear(config.hidden, len(v.tags))

        def forward(self, words, feats, lengths):
            B, T = words.shape
            x = torch.cat([self.words(words), self.feats(feats).reshape(B, T, -1)], dim=2)
            if B > 1:
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                           enforce_sorted=False)
                hs, _ = self.lstm(packed)
                hs, _ = nn.utils.rnn.pad_packed_sequence(hs, batch_first=True, total_length=T)
            else:
                hs, _ = self.lstm(x)
            return self.out(hs)

    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    bs = config.batch_size
    batches = []
    for i in range(0, len(sentences), bs):
        b = pos.make_batch(sentences[i:i + bs], offsets)
        batches.append((torch.from_numpy(b.words), torch.from_numpy(b.features),
                        torch.from_numpy(b.lengths), torch.from_numpy(b.tags)))
    times = {"epoch": 0.0}

    def step(i, record=True):
        words, feats, lengths, tags = batches[i]
        t0 = time.perf_counter()
        opt.zero_grad()
        scores = model(words, feats, lengths)
        loss = loss_fn(scores.reshape(-1, scores.shape[-1]), tags.reshape(-1))
        loss.backward()
        opt.step()
        if record:
            times["epoch"] += time.perf_counter() - t0

    return step, len(batches), times


def _lockstep(steppers, n_batches, warm_up=20, chunk=25):
    """Run the trainers in turns of `chunk` batches, so that the varying load of
    a shared machine falls on all of them alike while each keeps its own
    cache state within a turn; the first batches warm up untimed."""
    for i in range(min(warm_up, n_batches)):
        for step in steppers:
            step(i, record=False)
    for lo in range(0, n_batches, chunk):
        for step in steppers:
            for i in range(lo, min(lo + chunk, n_batches)):
                step(i)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    _pin_threads(args.threads)
    if not args.pos_dir:
        print("error: give --pos-dir DIR (a UD treebank folder) or set $MEPROP_NUMBA_POS_DIR",
              file=sys.stderr)
        return 2
    import numba
    import numpy as np  # noqa: F401

    from meprop_numba.tasks import pos

    data = pos.load_pos_data(args.pos_dir, max_train_sentences=args.sentences,
                             max_dev_sentences=1)
    sentences = data.train
    tokens = sum(len(s) for s in sentences)
    print(f"{len(sentences)} training sentences ({tokens} tokens) from {args.pos_dir}; "
          f"hidden {args.hidden}, batch {args.batch_size}, float32, {args.threads} thread(s) "
          f"(numba {numba.get_num_threads()}), Adam")
    # The paper's tagger (unidirectional, no dropout): the PyTorch twin below is the same model.
    base = pos.POSConfig.preset("paper", hidden=args.hidden, batch_size=args.batch_size,
                                seed=args.seed)
    step_m, n_batches, mep = _ours(data, pos.POSConfig(**{**base.__dict__, "k": args.k}),
                                   sentences)
    step_d, _, dense = _ours(data, pos.POSConfig(**{**base.__dict__, "k": None}), sentences)
    steppers = [step_m, step_d]
    ref = None
    if args.no_torch:
        print("PyTorch comparison skipped (--no-torch)")
    else:
        try:
            import torch
        except ImportError:
            print("PyTorch comparison skipped: torch is not installed (pip install torch)")
        else:
            torch.set_num_threads(args.threads)
            step_t, _, ref = _torch(data, base, sentences)
            steppers.append(step_t)
    _lockstep(steppers, n_batches)

    def row(name, t):
        return (f"| {name} | {t['epoch']:.2f} | {t['forward']:.2f} | {t['backward']:.2f} | "
                f"{t['lstm_backward']:.3f} | {t['optimizer']:.2f} |")

    print("\n| ours, seconds per epoch | training step | forward+loss | backward | "
          "LSTM backward | optimizer |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row(f"meProp k={args.k} per gate, lazy Adam", mep))
    print(row("dense BPTT, Adam", dense))
    speedup = dense["lstm_backward"] / mep["lstm_backward"]
    print(f"\nLSTM layer backward per epoch: dense BPTT {dense['lstm_backward']:.3f} s, meProp "
          f"k={args.k} {mep['lstm_backward']:.3f} s -> {speedup:.1f}x (target >= 15x)")
    if ref is not None:
        print(f"whole tagger epoch: PyTorch {torch.__version__} dense {ref['epoch']:.2f} s, ours "
              f"meProp k={args.k} {mep['epoch']:.2f} s -> {ref['epoch'] / mep['epoch']:.2f}x "
              f"(target >= 2x); ours dense {dense['epoch']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
