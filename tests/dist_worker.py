"""One rank of the data-parallel tests (run by tests/test_distributed.py through launch_local).

Usage: python dist_worker.py SCENARIO OUTDIR.  Writes OUTDIR/rank{R}.pt with what it measured.
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from meprop_numba.torch import MePropLinear, MePropLSTM
from meprop_numba.torch import optim as meprop_optim
from meprop_numba.torch.distributed import MePropDataParallel, save_on_rank0

B, STEPS, K = 6, 4, 5  # per-rank batch, SGD steps, meProp k
SIZES = (12, 16, 16, 4)


def make_model(selection, sparse_grad=True):
    torch.manual_seed(0)
    m0, m1, m2, m3 = SIZES
    return nn.Sequential(MePropLinear(m0, m1, k=K, selection=selection, sparse_grad=sparse_grad, dtype=torch.float64),
                         nn.Tanh(),
                         MePropLinear(m1, m2, k=K, selection=selection, sparse_grad=sparse_grad, dtype=torch.float64),
                         nn.Tanh(),
                         nn.Linear(m2, m3, dtype=torch.float64))


class LSTMNet(nn.Module):
    """A MePropLSTM with row-sparse weight gradients over the rows of x as (T, features) steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = MePropLSTM(SIZES[0] // 3, 8, k=3, sparse_grad=True, dtype=torch.float64)
        self.out = nn.Linear(8, SIZES[-1], dtype=torch.float64)

    def forward(self, x):
        output, _ = self.lstm(x.reshape(x.shape[0], 3, SIZES[0] // 3))
        return self.out(output[:, -1])


def data(world):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, world * B, SIZES[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (STEPS, world * B), generator=gen)
    return x, y


def train(model, xs, ys, opt=None):
    if opt is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {name: p.detach().clone() for name, p in getattr(model, "module", model).named_parameters()}


def resume_case(xs, ys, path):
    """Unified meProp + lazy Adam: STEPS steps straight, and STEPS // 2 steps, a rank-0 checkpoint, the rest."""
    def fresh():
        dp = MePropDataParallel(make_model("unified"))
        return dp, meprop_optim.Adam(dp.parameters(), lr=0.01)

    dp, opt = fresh()
    straight = train(dp, xs, ys, opt)
    half = STEPS // 2
    dp, opt = fresh()
    train(dp, xs[:half], ys[:half], opt)
    save_on_rank0({"model": dp.state_dict(), "optimizer": opt.state_dict()}, path)
    dp, opt = fresh()
    saved = torch.load(path, weights_only=True)
    dp.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    return {"straight": straight, "resumed": train(dp, xs[half:], ys[half:], opt)}


def main(scenario, outdir):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    xs, ys = data(world)
    mine = slice(rank * B, (rank + 1) * B)
    result = {}
    if scenario == "equivalence":
        for selection, reduction in (("unified", "auto"), ("topk", "sparse"), ("topk", "dense"), ("topk", "auto"),
                                     ("random", "auto")):
            dp = MePropDataParallel(make_model(selection), reduction=reduction)
            weights = train(dp, xs[:, mine], ys[:, mine])
            result[selection, reduction] = {"weights": weights, "bytes": dict(dp.bytes_sent), "ring": dict(dp.ring_bytes),
                                            "choices": dict(dp.reductions)}
            if rank == 0 and selection != "random":  # one process, batch world * B
                result[selection, reduction]["single"] = train(make_model(selection), xs, ys)
        for reduction in ("sparse", "dense"):
            dp = MePropDataParallel(LSTMNet(), reduction=reduction)
            result["lstm", reduction] = {"weights": train(dp, xs[:, mine], ys[:, mine]), "bytes": dict(dp.bytes_sent),
                                         "choices": dict(dp.reductions)}
            if rank == 0:
                result["lstm", reduction]["single"] = train(LSTMNet(), xs, ys)
        dp = MePropDataParallel(make_model("unified", sparse_grad=False))
        result["unified_dense_grad"] = train(dp, xs[:, mine], ys[:, mine])
        result["wrote"] = save_on_rank0({"model": dp.state_dict()}, os.path.join(outdir, "checkpoint.pt"))
        result["resume"] = resume_case(xs[:, mine], ys[:, mine], os.path.join(outdir, "resume.pt"))
    elif scenario == "raise":
        dp = MePropDataParallel(make_model("unified"))
        loss = nn.functional.cross_entropy(dp(xs[0, mine]), ys[0, mine])
        if rank == world - 1:
            raise ValueError("rank failure on purpose")
        try:
            loss.backward()
        except RuntimeError as err:
            result["error"] = str(err)
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
