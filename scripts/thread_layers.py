"""Compare Numba threading layers (and the package's launch guard) for meProp's kernels.

For each set-up a fresh interpreter measures, with 2 Numba and 2 BLAS threads:

* ``pair``: a (100x500) @ (500x500) BLAS product followed by the threaded
  top-k kernel on a 100x500 gradient, per pair (a training step in
  miniature); ``gemm`` the product alone, ``kernel`` the kernel alone;
* ``big``: the threaded and the serial top-k kernel on 1024x8192 (k=8);
* ``raw``: the threaded kernel called from 4 Python threads at once, with no
  guard (``ok`` or the exit status of the aborted interpreter);
* ``api``: :func:`meprop_numba.topk_indices` on an input that takes the
  threaded path, from 4 threads at once (8 calls each) against the same
  32 calls made in turn: whether every result equals the serial one, and
  the wall-time ratio threads/serial;
* policies for calls from several threads, on the kernels directly (second
  table): ``fallback`` (the package's launch lock: the threaded kernel if
  the lock is free, else the serial one), ``blocking`` (wait for the lock,
  always threaded), ``off_main`` (threaded only on the main thread),
  ``serial`` (always serial).

Usage::

    python3 scripts/thread_layers.py            # every set-up
    python3 scripts/thread_layers.py workqueue  # one of them
    python3 scripts/thread_layers.py --rounds 3 # every set-up, three times in turn

Timings are the best of repeated runs (the minimum follows the load of a
shared machine much less than the median); compare set-ups within one run
of the script, and run it more than once (``--rounds``).
"""
import json
import os
import subprocess
import sys

SETUPS = {
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "omp": {"NUMBA_THREADING_LAYER": "omp"},
    "omp-passive": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE"},
    "tbb": {"NUMBA_THREADING_LAYER": "tbb"},
}

CHILD = r"""
import json, sys, threading, time
import numpy as np
import meprop_numba as mp
from meprop_numba._cpu import topk as _kernels

def median_ms(fn, reps):
    # The best of `reps` runs: on a machine shared with other jobs the
    # median follows their load, the minimum much less.
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return 1e3 * float(np.min(times))

rng = np.random.default_rng(0)
out = {}
A = rng.standard_normal((100, 500)).astype(np.float32)
Bm = rng.standard_normal((500, 500)).astype(np.float32)
g = rng.standard_normal((100, 500)).astype(np.float32)
bits, mask = _kernels.magnitude_bits(g)
idx = np.empty((100, 20), dtype=np.int64)
kernel = lambda: _kernels.topk_rows_parallel(bits, 20, mask, idx)
gemm = lambda: A @ Bm
def pair():
    A @ Bm
    kernel()
out["gemm"] = median_ms(gemm, 300)
out["kernel"] = median_ms(kernel, 300)
out["pair"] = median_ms(pair, 300)
out["layer"] = __import__("numba").threading_layer()

G = rng.standard_normal((1024, 8192)).astype(np.float32)
bitsG, maskG = _kernels.magnitude_bits(G)
idxG = np.empty((1024, 8), dtype=np.int64)
out["big_threaded"] = median_ms(lambda: _kernels.topk_rows_parallel(bitsG, 8, maskG, idxG), 15)
out["big_serial"] = median_ms(lambda: _kernels.topk_rows(bitsG, 8, maskG, idxG), 15)

H = rng.standard_normal((256, 4096)).astype(np.float32)
expected = mp.topk_indices(H, 8)
results = []
def work():
    for _ in range(8):
        results.append(mp.topk_indices(H, 8))
t = time.perf_counter()
for _ in range(4):
    work()
serial = time.perf_counter() - t
results.clear()
threads = [threading.Thread(target=work) for _ in range(4)]
t = time.perf_counter()
for th in threads: th.start()
for th in threads: th.join()
out["api_ratio"] = (time.perf_counter() - t) / serial
out["api_same"] = len(results) == 32 and all(np.array_equal(r, expected) for r in results)
print(json.dumps(out), flush=True)

bitsH, maskH = _kernels.magnitude_bits(H)
lock = threading.Lock()
main = threading.main_thread()
def call_fallback(o):
    from meprop_numba._config import launch
    launch(_kernels.topk_rows_parallel, _kernels.topk_rows, bitsH, 8, maskH, o)
def call_blocking(o):
    with lock:
        _kernels.topk_rows_parallel(bitsH, 8, maskH, o)
def call_off_main(o):
    if threading.current_thread() is main:
        _kernels.topk_rows_parallel(bitsH, 8, maskH, o)
    else:
        _kernels.topk_rows(bitsH, 8, maskH, o)
def call_serial(o):
    _kernels.topk_rows(bitsH, 8, maskH, o)
def run_once(policy, nthreads):
    def work():
        o = np.empty((256, 8), dtype=np.int64)
        for _ in range(32 // nthreads):
            policy(o)
    pool = [threading.Thread(target=work) for _ in range(nthreads)]
    t = time.perf_counter()
    for th in pool: th.start()
    for th in pool: th.join()
    return 1e3 * (time.perf_counter() - t)
policies = {"fallback": call_fallback, "blocking": call_blocking, "off_main": call_off_main, "serial": call_serial}
# Interleaved, best of 9 each: the load of a shared machine drifts within seconds.
best = {name: float("inf") for name in ["in_turn", *policies]}
for _ in range(9):
    best["in_turn"] = min(best["in_turn"], run_once(call_blocking, 1))
    for name, f in policies.items():
        best[name] = min(best[name], run_once(f, 4))
base = best["in_turn"]
print(json.dumps({"policies": {name: best[name] / base for name in policies}, "one_thread_ms": base}), flush=True)

def raw():
    o = np.empty((256, 8), dtype=np.int64)
    for _ in range(20):
        _kernels.topk_rows_parallel(bitsH, 8, maskH, o)
threads = [threading.Thread(target=raw) for _ in range(4)]
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps({"raw": "ok"}), flush=True)
"""


def run(name):
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", **SETUPS[name])
    env.pop("OMP_WAIT_POLICY", None) if "OMP_WAIT_POLICY" not in SETUPS[name] else None
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    if "raw" not in out:
        out["raw"] = f"aborted (exit {proc.returncode})"
    if "pair" not in out:
        out["error"] = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return out


def main(names, rounds=1):
    print(f"{'set-up':12} {'layer':10} {'gemm ms':>8} {'kernel ms':>9} {'pair ms':>8} "
          f"{'big thr ms':>10} {'big ser ms':>10} {'api same':>8} {'api thr/ser':>11}  raw threads")
    policies = []
    for name in [n for _ in range(rounds) for n in names]:
        r = run(name)
        if "error" in r:
            print(f"{name:12} failed: {r['error']}")
            continue
        if "policies" in r:
            policies.append((name, r["one_thread_ms"], r["policies"]))
        print(f"{name:12} {r['layer']:10} {r['gemm']:8.2f} {r['kernel']:9.3f} {r['pair']:8.2f} "
              f"{r['big_threaded']:10.1f} {r['big_serial']:10.1f} {str(r['api_same']):>8} "
              f"{r['api_ratio']:11.2f}  {r['raw']}", flush=True)
    print("\n32 top-k calls on 256x4096 from 4 threads, wall time / the same calls threaded in turn from one thread")
    print(f"{'set-up':12} {'in turn ms':>10} " + " ".join(f"{p:>9}" for p in ("fallback", "blocking", "off_main", "serial")))
    for name, base, ratios in policies:
        print(f"{name:12} {base:10.1f} " + " ".join(f"{ratios[p]:9.2f}" for p in ("fallback", "blocking", "off_main", "serial")))


if __name__ == "__main__":
    args = sys.argv[1:]
    rounds = 1
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    main(args or list(SETUPS), rounds)
