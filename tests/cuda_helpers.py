"""Helpers for the GPU tests: device transfers, an interface-only array, the PTX check.

The NumPy references the GPU results are compared with are those of the CPU
tests, in ``reference.py``.
"""
import numpy as np

from meprop_numba import _cuda, gpu


def dev(a):
    """Copy host array `a` to the device."""
    return gpu.to_device(np.asarray(a))


def host(a):
    """Copy a device array back to the host."""
    return _cuda.as_device(a).copy_to_host()


class InterfaceArray:
    """An object exposing only ``__cuda_array_interface__`` (like CuPy or a torch CUDA tensor).

    On a GPU it forwards the interface of a numba device array; under the
    CUDA simulator, where device memory is host memory, it describes the
    simulator array's host buffer the same way.  `stream` is put in the
    interface (version 3), as CuPy puts its current stream there.
    """

    def __init__(self, device_array, stream=None):
        self._device_array = device_array
        self._stream = stream

    @property
    def __cuda_array_interface__(self):
        if not _cuda.is_simulator():
            iface = dict(self._device_array.__cuda_array_interface__)
        else:
            data = self._device_array._ary
            iface = {
                "shape": data.shape,
                "typestr": data.dtype.str,
                "data": (data.ctypes.data, False),
                "strides": None if data.flags.c_contiguous else data.strides,
                "version": 3,
            }
        if self._stream is not None:
            iface["stream"] = self._stream
        return iface


def small_launch_settings():
    """Tiny blocks so small inputs span several of them; a short GIL switch interval.

    A generator for a module-scoped fixture (the simulator runs each CUDA
    thread as a Python thread and spends most of its time handing the GIL
    over at barriers).
    """
    import sys

    from meprop_numba._cuda import device as cuda_device
    from meprop_numba._cuda import linear as cuda_linear

    settings = ((cuda_device, "THREADS_PER_BLOCK", 8), (cuda_linear, "GEMM_TILE", 2),
                (cuda_device, "MAX_GRID_ROWS", 3), (cuda_device, "COLUMN_CHUNK", 2))
    saved = [(module, name, getattr(module, name)) for module, name, _ in settings]
    switch_interval = sys.getswitchinterval()
    for module, name, value in settings:
        setattr(module, name, value)
    if _cuda.is_simulator():
        sys.setswitchinterval(1e-4)
    yield
    for module, name, value in saved:
        setattr(module, name, value)
    sys.setswitchinterval(switch_interval)


# ------------------------------------------------------------------ PTX check
def max_threads_for_registers(regs, registers_per_block=65536, granularity=256, limit=1024):
    """Largest block (whole warps) a kernel using `regs` registers per thread can launch with (sm_90 rules)."""
    per_warp = -(-max(regs, 1) * 32 // granularity) * granularity
    return min(limit, registers_per_block // per_warp * 32)


def _ptxas_resources(ptx, cc):
    """(registers, static shared bytes) from ``ptxas -v``, or None when ptxas is absent."""
    import os
    import re
    import shutil
    import subprocess
    import tempfile

    ptxas = shutil.which("ptxas") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "ptxas")
    if not os.path.exists(ptxas):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-500:])
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    smem = re.search(r"(\d+) bytes smem", proc.stderr)
    return int(regs.group(1)) if regs else 0, int(smem.group(1)) if smem else 0


def kernel_table(fdt):
    """(name, dispatcher, numba signature, configured block size) of every kernel, for float dtype `fdt`."""
    from numba import types

    from meprop_numba._cuda import device, linear, mlp, optim, topk

    def arr(dt, nd, layout="C"):
        return types.Array(dt, nd, layout)

    i64, i32, u32, u64, b1 = types.int64, types.int32, types.uint32, types.uint64, types.boolean
    f = types.float32 if fdt == np.float32 else types.float64
    bits, mask = (u32, u32) if fdt == np.float32 else (u64, u64)
    g2 = arr(f, 2, "A")
    common, selection = device.common_kernels(), topk._kernels()
    bookkeeping, updates, layers = linear._kernels(), optim._kernels(), mlp._kernels(fdt)
    typed, tile = linear._typed_kernels(fdt), linear._tile()
    tiled = linear._tiled_kernels(fdt, tile)
    table = [
        (selection, "topk_rows_shared", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2))),
        (selection, "topk_rows_global", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2), arr(i32, 2), arr(i64, 2))),
        (selection, "scan_columns", (g2, i64, arr(f, 2), arr(f, 2), arr(i64, 1))),
        (selection, "sum_partials", (arr(f, 2), arr(f, 1))),
        (common, "nonfinite_flag", (g2, arr(i64, 1), i64)),
        (common, "fill_1d", (arr(f, 1), f)),
        (common, "iota", (arr(i64, 1),)),
        (common, "cast_copy", (arr(i32, 1, "A"), arr(i64, 1))),
        (bookkeeping, "count_indices", (arr(i64, 2, "A"), i64, arr(i32, 2), arr(i64, 1))),
        (bookkeeping, "mark_columns", (arr(i64, 1), arr(i32, 1))),
        (bookkeeping, "mark_members", (arr(i64, 2), arr(i32, 2))),
        (bookkeeping, "count_members", (arr(i32, 2), i64, arr(i32, 2))),
        (bookkeeping, "scan_chunk_counts", (arr(i32, 2), arr(i32, 1))),
        (bookkeeping, "rank_members", (arr(i32, 2), i64, arr(i32, 2))),
        (bookkeeping, "scan_counts", (arr(i32, 1), arr(i64, 1), arr(i64, 1), arr(i64, 1))),
        (bookkeeping, "fill_segments", (arr(i64, 2), g2, arr(i32, 2), arr(i64, 1), arr(i64, 1), arr(f, 1))),
        (updates, "check_rows", (arr(i64, 1), i64, arr(i64, 1))),
        (updates, "sgd_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), b1, f, f, f)),
        (updates, "adam_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), arr(f, 2)) + (f,) * 7),
        (updates, "adagrad_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), f, f)),
        (typed, "per_example_dx", (g2, g2, arr(i64, 2), arr(f, 2))),
        (typed, "segment_values", (g2, arr(i64, 1), arr(i64, 1), arr(i64, 1), arr(f, 1), arr(f, 2))),
        (layers, "relu_forward", (g2, arr(f, 2))),
        (layers, "relu_backward", (g2, g2, arr(f, 2))),
        (layers, "multiply", (g2, g2, arr(f, 2))),
        (layers, "softmax_cross_entropy", (g2, arr(i64, 1, "A"), f, arr(f, 2), arr(f, 1), arr(i64, 1))),
    ]
    rows = [(name, kernels[name], sig, device._tpb()) for kernels, name, sig in table]
    rows.append(("gather_dx", tiled["gather_dx"], (g2, g2, arr(i64, 1), arr(f, 2)), tile * tile))
    rows.append(("gather_values", tiled["gather_values"], (g2, g2, arr(i64, 1), arr(f, 3)), tile * tile))
    rows.append(("forward_product", tiled["forward_product"], (g2, g2, arr(f, 1, "A"), arr(f, 2)), tile * tile))
    return rows


def ptx_report(cc=(9, 0)):
    """Compile every kernel to PTX and cubin for `cc` without a GPU; print one line per kernel.

    Run in a fresh process with ``NUMBA_ENABLE_CUDASIM=0``; needs NVVM (the
    ``numba-cuda[cu12]``/``[cu13]`` extras) but no driver.  This applies the
    real CUDA typing rules, which the simulator skips, shows whether a
    float32 kernel does any float64 arithmetic and, through ``ptxas -v``,
    the registers and static shared memory of each kernel, so whether it can
    launch with the block size the package configures for it.  Lines:
    ``ok NAME DTYPE F64_OPS REGS SMEM BLOCK MAX_THREADS`` (``-`` for the last
    four without ptxas), ``FAIL NAME DTYPE ERROR``; exit status 3 if NVVM is
    missing.
    """
    import re

    from numba import cuda, types

    try:
        import numba.cuda.dispatcher as dispatcher

        class _Device:  # device functions ask the current device for its compute capability
            compute_capability = cc

        dispatcher.get_current_device = lambda: _Device()
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as exc:  # no NVVM, or a numba-cuda without this hook
        print(f"SKIP {exc}")
        raise SystemExit(3)

    for fdt in (np.float32, np.float64):
        for name, kernel, sig, block in kernel_table(fdt):
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, types.void(*sig), cc=cc)
                resources = _ptxas_resources(ptx, cc)
            except Exception as exc:
                print(f"FAIL {name} {np.dtype(fdt).name} {type(exc).__name__}: {str(exc)[:300]!r}")
                continue
            f64 = len(re.findall(r"[.]f64", ptx))
            if resources is None:
                print(f"ok {name} {np.dtype(fdt).name} {f64} - - - -")
                continue
            regs, smem = resources
            print(f"ok {name} {np.dtype(fdt).name} {f64} {regs} {smem} {block} {max_threads_for_registers(regs)}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--ptx"]:
        ptx_report()
