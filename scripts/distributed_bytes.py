"""Bytes per step and step time of data-parallel meProp vs a dense all-reduce (gloo, 127.0.0.1).

One linear layer (m inputs, n outputs, float32, per-rank batch B) trained by
MePropDataParallel on P local processes: dense (k=None: the weight and bias
gradients all-reduced), globally unified meProp (column scores + k rows) and
per-example meProp (union of rows, gathered / all-reduced / chosen
automatically).  Bytes are counted from the collectives' input sizes
(``bytes_sent``) and as a ring algorithm sends them (``ring_bytes``); the
start-up broadcast is left out.  Every process runs one thread.

    python scripts/distributed_bytes.py --procs 2 4 --out distributed_bytes.json
    python scripts/distributed_bytes.py --break-even --procs 4 --steps 9 --out break_even.json
"""
import argparse
import json
import os
import sys
import time

CASES = [(500, 500, 10), (500, 500, 20), (500, 500, 40), (4096, 4096, 64)]  # (m, n, k)
MODES = [("dense", None, "auto"), ("unified", "unified", "auto"), ("per-example auto", "topk", "auto"),
         ("per-example gather", "topk", "sparse"), ("per-example all-reduce", "topk", "dense")]


def worker(batch, steps, out, max_width):
    import datetime

    import torch
    import torch.distributed as dist

    from meprop_numba.torch import MePropLinear
    from meprop_numba.torch.distributed import MePropDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for m, n, k in CASES:
        if n > max_width:
            continue
        gen = torch.Generator().manual_seed(rank)
        x = torch.randn(steps + 1, batch, m, generator=gen)
        target = torch.randn(steps + 1, batch, n, generator=gen)
        for label, selection, reduction in MODES:
            if selection != "topk" and reduction != "auto":
                continue
            torch.manual_seed(0)
            layer = MePropLinear(m, n, k=None if selection is None else k, selection=selection or "topk")
            dp = MePropDataParallel(torch.nn.Sequential(layer), reduction=reduction)
            opt = torch.optim.SGD(dp.parameters(), lr=1e-3)
            times = []
            for step in range(steps + 1):
                if step == 1:  # the first step warms up (compilation, buffers)
                    dp.bytes_sent.clear(), dp.ring_bytes.clear(), dp.reductions.clear()
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                ((dp(x[step]) - target[step]) ** 2).sum().div(batch).backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            sent = {kind: v / steps for kind, v in dp.bytes_sent.items() if kind != "broadcast"}
            ring = {kind: v / steps for kind, v in dp.ring_bytes.items() if kind != "broadcast"}
            step_s = torch.tensor(sorted(times[1:])[len(times[1:]) // 2])
            dist.all_reduce(step_s, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
            rows.append({"P": world, "m": m, "n": n, "case_k": k, "k": None if selection is None else k, "mode": label,
                         "B": batch, "bytes": sum(sent.values()), "ring_bytes": sum(ring.values()),
                         "by_kind": sent, "choices": dict(dp.reductions), "step_ms": 1e3 * step_s.item()})
            dp.unwrap()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def break_even(width, rows_per_rank, reps, out):
    """Time an all-gather of (r, m) blocks against an all-reduce of (u, m) union rows, u from r to P*r."""
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    world = dist.get_world_size()
    r = rows_per_rank

    def timed(fn):
        times = []
        for _ in range(reps + 1):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        t = torch.tensor(sorted(times[1:])[reps // 2])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return 1e3 * t.item()

    block = torch.randn(r, width)
    blocks = [torch.empty_like(block) for _ in range(world)]
    gather_ms = timed(lambda: dist.all_gather(blocks, block))
    rows = []
    for u in sorted({r, *(r * world * f // 8 for f in range(1, 9))}):
        if u < r:
            continue
        union = torch.randn(u, width)
        rows.append({"P": world, "m": width, "r": r, "union": u, "gather_ms": gather_ms,
                     "allreduce_ms": timed(lambda: dist.all_reduce(union))})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def break_even_table(rows):
    lines = ["| P | m | rows per rank r | union U | all-gather ms | all-reduce of U ms | faster | ring model |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    from meprop_numba.torch.distributed import choose_reduction

    for r in rows:
        model = choose_reduction([r["r"]] * r["P"], r["union"], r["m"], r["P"])
        faster = "gather" if r["gather_ms"] <= r["allreduce_ms"] else "all-reduce"
        lines.append(f"| {r['P']} | {r['m']} | {r['r']} | {r['union']} | {r['gather_ms']:.2f} | "
                     f"{r['allreduce_ms']:.2f} | {faster} | {'gather' if model == 'sparse' else 'all-reduce'} |")
    return "\n".join(lines)


def table(rows):
    dense = {(r["P"], r["m"], r["n"], r["case_k"]): r for r in rows if r["mode"] == "dense"}
    lines = ["| P | layer | k | mode | bytes/step (input) | % of dense | ring bytes/step | % of dense | "
             "per-example choice | step ms | dense step / step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d = dense[r["P"], r["m"], r["n"], r["case_k"]]
        choice = ", ".join(f"{c} {v}" for c, v in sorted(r["choices"].items())) or "-"
        lines.append(f"| {r['P']} | {r['m']}->{r['n']} | {r['k'] or r['case_k']} | {r['mode']} | {r['bytes']:,.0f} | "
                     f"{100 * r['bytes'] / d['bytes']:.2f} | {r['ring_bytes']:,.0f} | "
                     f"{100 * r['ring_bytes'] / max(d['ring_bytes'], 1):.2f} | {choice} | {r['step_ms']:.2f} | "
                     f"{d['step_ms'] / r['step_ms']:.2f}x |")
    return "\n".join(lines)


def plot(rows, path):
    """Bytes per step relative to dense, by mode, one group of bars per (P, layer, k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = {(r["P"], r["m"], r["n"], r["case_k"]): r for r in rows if r["mode"] == "dense"}
    cases = list(dense)
    modes = [label for label, _, _ in MODES[1:]]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        ys = [100 * next(r["ring_bytes"] for r in rows if r["mode"] == mode and
                         (r["P"], r["m"], r["n"], r["case_k"]) == c) / dense[c]["ring_bytes"] for c in cases]
        ax.bar([i + j * width for i in range(len(cases))], ys, width, label=mode)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"P={P}\n{n}, k={k}" for P, m, n, k in cases], fontsize=7)
    ax.set_ylabel("ring bytes per step, % of dense")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=10, help="per-rank batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--max-width", type=int, default=4096, help="skip layers wider than this")
    parser.add_argument("--out", default="distributed_bytes.json")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--plot", help="also save a bar chart of the bytes to this PNG")
    parser.add_argument("--break-even", action="store_true",
                        help="time all-gather vs all-reduce of the union instead (m=500, r=100 rows per rank)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.break_even:
            return break_even(500, 100, args.steps, args.out)
        return worker(args.batch, args.steps, args.out, args.max_width)
    from meprop_numba.torch.distributed import launch_local

    rows = []
    for P in args.procs:
        part = f"{args.out}.P{P}"
        extra = ["--break-even"] if args.break_even else []
        runs = launch_local([__file__, "--worker", *extra, "--batch", args.batch, "--steps", args.steps,
                             "--max-width", args.max_width, "--out", part], P, timeout=args.timeout)
        for r in runs:
            if r.returncode != 0:
                sys.exit(f"P={P}: a rank failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
        with open(part) as f:
            rows += json.load(f)
        os.remove(part)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; one thread per process")
    print(break_even_table(rows) if args.break_even else table(rows))
    if args.plot and not args.break_even:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
