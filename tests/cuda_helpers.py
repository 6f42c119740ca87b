"""Helpers for the GPU tests: device transfers, an interface-only array, NumPy references.

The references are plain NumPy written for clarity (float64 arithmetic); they
share no code with ``meprop_numba``.
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


# ------------------------------------------------------------------ selection
def topk_reference(g, k):
    """(B, k) indices by descending |g|, ties to the lower index (stable sort)."""
    magnitude = np.abs(np.asarray(g, dtype=np.float64))
    return np.argsort(-magnitude, axis=1, kind="stable")[:, :k]


def unified_reference(g, k):
    """(k,) columns with the largest sum_b |g[b, i]| (exact for small-integer data)."""
    scores = np.abs(np.asarray(g, dtype=np.float64)).sum(axis=0)
    return np.argsort(-scores, kind="stable")[:k]


def selection_mask(shape, indices):
    """Boolean mask of the selected entries; `indices` is (B, k) or shared (k,)."""
    mask = np.zeros(shape, dtype=bool)
    indices = np.asarray(indices)
    if indices.ndim == 1:
        mask[:, indices] = True
    else:
        np.put_along_axis(mask, indices, True, axis=1)
    return mask


def backward_reference(x, W, g, mask):
    """(dx, rows, dW[rows], db) of y = x W^T + b with g kept only where `mask`."""
    x, W, g = (np.asarray(a, dtype=np.float64) for a in (x, W, g))
    kept = np.where(mask, g, 0.0)
    rows = np.flatnonzero(mask.any(axis=0))
    return kept @ W, rows, (kept.T @ x)[rows], g.sum(axis=0)


# ------------------------------------------------------------------ optimizers
def dense_grad(shape, grad):
    """Dense float64 gradient from a dense array or a (rows, values) pair."""
    if isinstance(grad, tuple):
        out = np.zeros(shape)
        out[np.asarray(grad[0])] = grad[1]
        return out
    return np.asarray(grad, dtype=np.float64)


def touched_rows(shape, grad, lazy):
    """Boolean per-row mask of what an update may change."""
    touched = np.ones(shape[0], dtype=bool) if len(shape) == 2 else None
    if isinstance(grad, tuple) and lazy:
        touched[:] = False
        touched[np.asarray(grad[0])] = True
    return touched


def sgd_reference(p, grad, vel, lr, momentum, lazy):
    g = dense_grad(p.shape, grad)
    rows = touched_rows(p.shape, grad, lazy)
    p, vel = p.astype(np.float64), vel.astype(np.float64)
    if momentum:
        new_vel = momentum * vel + g
        new_p = p - lr * new_vel
    else:
        new_vel, new_p = vel, p - lr * g
    if rows is not None:
        new_vel[~rows] = vel[~rows]
        new_p[~rows] = p[~rows]
    return new_p, new_vel


def adam_reference(p, grad, m, v, step, lr, b1, b2, eps, lazy):
    g = dense_grad(p.shape, grad)
    rows = touched_rows(p.shape, grad, lazy)
    p, m, v = (a.astype(np.float64) for a in (p, m, v))
    new_m = b1 * m + (1 - b1) * g
    new_v = b2 * v + (1 - b2) * g * g
    new_p = p - lr * (new_m / (1 - b1**step)) / (np.sqrt(new_v / (1 - b2**step)) + eps)
    if rows is not None:
        for new, old in ((new_m, m), (new_v, v), (new_p, p)):
            new[~rows] = old[~rows]
    return new_p, new_m, new_v


def adagrad_reference(p, grad, acc, lr, eps, lazy):
    g = dense_grad(p.shape, grad)
    p, acc = p.astype(np.float64), acc.astype(np.float64)
    new_acc = acc + g * g
    return p - lr * g / (np.sqrt(new_acc) + eps), new_acc


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
    generic = _cuda._kernels()
    for fdt in (np.float32, np.float64):
        f = types.float32 if fdt == np.float32 else types.float64
        bits, mask = (u32, u32) if fdt == np.float32 else (u64, u64)
        g2 = arr(f, 2, "A")
        table = [
            (generic, "topk_rows_shared", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2))),
            (generic, "topk_rows_global", (arr(bits, 2, "A"), mask, i64, i64, i64, arr(i64, 2), arr(i32, 2), arr(i64, 2))),
            (generic, "nonfinite_flag", (g2, arr(i64, 1))),
            (generic, "column_partial_sums", (g2, b1, i64, arr(f, 2))),
            (generic, "sum_partials", (arr(f, 2), arr(f, 1))),
            (generic, "fill_1d", (arr(f, 1), f)),
            (generic, "iota", (arr(i64, 1),)),
            (generic, "mark_columns", (arr(i64, 1), arr(i32, 1))),
            (generic, "mark_members", (arr(i64, 2), arr(i32, 2))),
            (generic, "count_members", (arr(i32, 2), i64, arr(i32, 2))),
            (generic, "scan_chunk_counts", (arr(i32, 2), arr(i32, 1))),
            (generic, "rank_members", (arr(i32, 2), i64, arr(i32, 2))),
            (generic, "scan_counts", (arr(i32, 1), arr(i64, 1), arr(i64, 1), arr(i64, 1))),
            (generic, "fill_segments", (arr(i64, 2), g2, arr(i32, 2), arr(i64, 1), arr(i64, 1), arr(f, 1))),
            (generic, "sgd_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), b1, f, f, f)),
            (generic, "adam_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), arr(f, 2)) + (f,) * 7),
            (generic, "adagrad_update", (arr(f, 2), arr(f, 2), arr(i64, 1), i64, i64, arr(f, 2), f, f)),
        ]
        typed = _cuda._typed_kernels(fdt)
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
