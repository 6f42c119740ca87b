#!/usr/bin/env bash
# The device check: every GPU result this package owes, in one command (about 10 minutes at most
# on one GPU, usually far less). Each step has its own time limit and writes OUTDIR/<step>.txt (its output and,
# last, "rc=N"), so a failing or hanging step loses nothing else.
#
#   scripts/gpu_check.sh OUTDIR               # on a GPU machine
#   scripts/gpu_check.sh OUTDIR --simulator   # dry run under the CUDA simulator (small sizes)
#   STEPS="tests train_speed" scripts/gpu_check.sh OUTDIR   # only the named steps
#
# Steps: environment, smoke (every public GPU entry point at the default launch shapes and odd
# sizes, both dtypes, then each kernel's registers / shared memory / max threads per block),
# tests (tests/test_cuda.py and tests/test_cuda_training.py, with the n=16,384 top-k cases and the
# ptxas resource check), torch (scripts/gpu_torch_check.py: MePropLinear and the lazy torch
# optimizers on CUDA tensors against the same training on the CPU), speed (scripts/gpu_speed.py:
# the kernel table, TF32 off, results checked before timing, printed as it goes), train_speed
# (scripts/gpu_train_speed.py: the whole training step against PyTorch dense, the paper's MLP and a
# 4096-wide one), memcheck / racecheck / synccheck / initcheck (compute-sanitizer over the small
# smoke test).
# OUTDIR/summary.txt lists each step's exit status and seconds.
set -u
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUTDIR [--simulator]" >&2
    exit 2
fi
OUT=$1
SIMULATOR=0
[ "${2:-}" = "--simulator" ] && SIMULATOR=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$OUT/numba_cache}"
export PYTHONUNBUFFERED=1
if [ $SIMULATOR = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
    # step limits (s): environment smoke tests speed sanitizer-each torch train_speed
    LIMITS=(60 300 900 300 60 60 300)
    SMOKE_ARGS=(--simulator)
    SPEED_ARGS=(--simulator --repeat 2)
    TRAIN_ARGS=(--simulator --repeat 1 --steps 1)
else
    export NUMBA_ENABLE_CUDASIM=0
    LIMITS=(20 100 140 80 35 45 90)
    SMOKE_ARGS=()
    SPEED_ARGS=()
    TRAIN_ARGS=()
fi
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
: > "$OUT/summary.txt"
FAILED=0

step() {  # step NAME LIMIT COMMAND...
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    local start=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    [ $rc = 124 ] && echo "timed out after ${limit}s" >> "$OUT/$name.txt"
    echo "rc=$rc" >> "$OUT/$name.txt"
    echo "   $name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
    [ $rc = 0 ] || FAILED=$((FAILED + 1))
}

environment() {
    date -u
    uname -a
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
    python3 - <<'EOF'
import importlib.metadata as md
import platform
print("python", platform.python_version())
for dist in ("numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "torch", "numpy"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
from numba import config
from meprop_numba import gpu
print("simulator:", bool(config.ENABLE_CUDASIM), "| available:", gpu.is_available(), "| device:", gpu.device_name())
if not config.ENABLE_CUDASIM:
    from numba import cuda
    dev = cuda.get_current_device()
    print("compute capability", dev.compute_capability, "| max threads/block", dev.MAX_THREADS_PER_BLOCK,
          "| shared/block", dev.MAX_SHARED_MEMORY_PER_BLOCK, "| SMs", dev.MULTIPROCESSOR_COUNT)
    try:
        print("driver", cuda.cudadrv.driver.driver.get_version(), "| runtime", cuda.runtime.get_version())
    except Exception as exc:
        print("driver/runtime version:", exc)
    cuda.detect()
try:
    import torch
    print("torch CUDA", torch.version.cuda, "| available", torch.cuda.is_available())
except ImportError:
    pass
EOF
    if [ -x "$SANITIZER" ]; then "$SANITIZER" --version | head -3; else echo "compute-sanitizer: not found"; fi
    if command -v ptxas > /dev/null; then ptxas --version | tail -1; else echo "ptxas: not found"; fi
}

sanitize() {  # sanitize TOOL EXTRA...
    local tool=$1
    shift
    if [ $SIMULATOR = 1 ]; then
        echo "simulator: compute-sanitizer --tool $tool $* python3 scripts/gpu_smoke.py --small not run (no device)"
        return 0
    fi
    "$SANITIZER" --tool "$tool" --error-exitcode 1 "$@" python3 scripts/gpu_smoke.py --small
}

step environment "${LIMITS[0]}" bash -c "$(declare -f environment); SANITIZER='$SANITIZER' environment"
step smoke "${LIMITS[1]}" python3 scripts/gpu_smoke.py "${SMOKE_ARGS[@]}"
step tests "${LIMITS[2]}" python3 -m pytest tests/test_cuda.py tests/test_cuda_training.py -q -rs -p no:cacheprovider
step torch "${LIMITS[5]}" python3 scripts/gpu_torch_check.py "${SMOKE_ARGS[@]}"
step speed "${LIMITS[3]}" python3 scripts/gpu_speed.py "${SPEED_ARGS[@]}"
step train_speed "${LIMITS[6]}" python3 scripts/gpu_train_speed.py "${TRAIN_ARGS[@]}"
for tool in memcheck racecheck synccheck initcheck; do
    extra=()
    [ $tool = racecheck ] && extra=(--racecheck-report all)
    step "$tool" "${LIMITS[4]}" bash -c "$(declare -f sanitize); SIMULATOR=$SIMULATOR SANITIZER='$SANITIZER' sanitize $tool ${extra[*]:-}"
done
echo "$FAILED step(s) failed; outputs in $OUT" | tee -a "$OUT/summary.txt"
[ $FAILED = 0 ]
