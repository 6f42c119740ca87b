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
    simulator array's host buffer the same way.
    """

    def __init__(self, device_array):
        self._device_array = device_array

    @property
    def __cuda_array_interface__(self):
        if not _cuda.is_simulator():
            return self._device_array.__cuda_array_interface__
        data = self._device_array._ary
        strides = None if data.flags.c_contiguous else data.strides
        return {
            "shape": data.shape,
            "typestr": data.dtype.str,
            "data": (data.ctypes.data, False),
            "strides": strides,
            "version": 3,
        }


# ------------------------------------------------------------------ PTX check
def ptx_report():
    """Compile every kernel to PTX for sm_90 without a GPU and print one line per kernel.

    Run in a fresh process with ``NUMBA_ENABLE_CUDASIM=0``; needs NVVM (the
    ``numba-cuda[cu12]``/``[cu13]`` extras) but no driver.  This applies the
    real CUDA typing rules, which the simulator skips, and shows whether a
    float32 kernel does any float64 arithmetic.  Lines: ``ok NAME DTYPE
    F64_OPS`` or ``FAIL NAME DTYPE ERROR``; exit status 3 if NVVM is missing.
    """
    import re

    from numba import cuda, types

    try:
        import numba.cuda.dispatcher as dispatcher

        class _Device:  # device functions ask the current device for its compute capability
            compute_capability = (9, 0)

        dispatcher.get_current_device = lambda: _Device()
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as exc:  # no NVVM, or a numba-cuda without this hook
        print(f"SKIP {exc}")
        raise SystemExit(3)

    def arr(dt, nd, layout="C"):
        return types.Array(dt, nd, layout)

    i64, i32, u32, u64, b1 = types.int64, types.int32, types.uint32, types.uint64, types.boolean
    from meprop_numba._cuda import device, linear, optim, topk

    common, selection, bookkeeping, updates = (device.common_kernels(), topk._kernels(), linear._kernels(),
                                               optim._kernels())
    for fdt in (np.float32, np.float64):
        f = types.float32 if fdt == np.float32 else types.float64
        bits, mask = (u32, u32) if fdt == np.float32 else (u64, u64)
        g2 = arr(f, 2, "A")
        table = [
            (selection, "topk_rows_shared", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2))),
            (selection, "topk_rows_global", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2), arr(i32, 2), arr(i64, 2))),
            (common, "nonfinite_flag", (g2, arr(i64, 1))),
            (selection, "column_partial_sums", (g2, b1, i64, arr(f, 2))),
            (selection, "sum_partials", (arr(f, 2), arr(f, 1))),
            (common, "fill_1d", (arr(f, 1), f)),
            (common, "iota", (arr(i64, 1),)),
            (bookkeeping, "mark_columns", (arr(i64, 1), arr(i32, 1))),
            (bookkeeping, "mark_members", (arr(i64, 2), arr(i32, 2))),
            (bookkeeping, "count_members", (arr(i32, 2), i64, arr(i32, 2))),
            (bookkeeping, "scan_chunk_counts", (arr(i32, 2), arr(i32, 1))),
            (bookkeeping, "rank_members", (arr(i32, 2), i64, arr(i32, 2))),
            (bookkeeping, "scan_counts", (arr(i32, 1), arr(i64, 1), arr(i64, 1), arr(i64, 1))),
            (bookkeeping, "fill_segments", (arr(i64, 2), g2, arr(i32, 2), arr(i64, 1), arr(i64, 1), arr(f, 1))),
            (updates, "sgd_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), b1, f, f, f)),
            (updates, "adam_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), arr(f, 2)) + (f,) * 7),
            (updates, "adagrad_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), f, f)),
        ]
        typed = linear._typed_kernels(fdt)
        table += [
            (typed, "per_example_dx", (g2, g2, arr(i64, 2), arr(f, 2))),
            (typed, "gather_dx", (g2, g2, arr(i64, 1), arr(f, 2))),
            (typed, "gather_values", (g2, g2, arr(i64, 1), arr(f, 2))),
            (typed, "segment_values", (g2, arr(i64, 1), arr(i64, 1), arr(i64, 1), arr(f, 1), arr(f, 2))),
        ]
        for kernels, name, sig in table:
            try:
                ptx, _ = cuda.compile_ptx(kernels[name].py_func, types.void(*sig), cc=(9, 0))
            except Exception as exc:
                print(f"FAIL {name} {np.dtype(fdt).name} {type(exc).__name__}: {str(exc)[:300]!r}")
                continue
            print(f"ok {name} {np.dtype(fdt).name} {len(re.findall(r'[.]f64', ptx))}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--ptx"]:
        ptx_report()
