"""GPU kernels (``meprop_numba._cuda``) against the NumPy references and the CPU path.

Runs on a real GPU when one is present and under the CUDA simulator
otherwise (the repository's ``conftest.py`` turns it on).  Blocks are made tiny (a few
threads, 2x2-thread product blocks, at most 3 blocks along a grid's row dimension)
so that small inputs span several blocks and the grid-stride loops run; column
reductions over the batch are split into chunks of 2 rows.
"""
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import meprop_numba as mp
from meprop_numba import _cuda, _validation, gpu
from meprop_numba._cuda import device as cuda_device
from meprop_numba._cuda import linear as cuda_linear
from meprop_numba._cuda import topk as cuda_topk

if not _cuda.cuda_available():  # pragma: no cover - the simulator is always there
    pytest.skip("no CUDA GPU and the CUDA simulator is off", allow_module_level=True)

from cuda_helpers import InterfaceArray, dev, host, small_launch_settings  # noqa: E402
from reference import (  # noqa: E402
    AdaGradReference,
    AdamReference,
    SGDReference,
    densify,
    masked_backward_reference,
    selection_mask,
    topk_reference,
    unified_topk_reference,
)

SIMULATOR = _cuda.is_simulator()
SETTINGS = settings(deadline=None, max_examples=12 if SIMULATOR else 60)
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    """Tiny blocks so small inputs span several of them (see ``small_launch_settings``)."""
    yield from small_launch_settings()


@pytest.fixture
def threads(monkeypatch):
    def set_threads(n):
        monkeypatch.setattr(cuda_device, "THREADS_PER_BLOCK", n)

    return set_threads


@st.composite
def gradients(draw, max_batch=5, max_n=40, ties=None):
    """(g, k): small-integer data (many ties, exact column sums) or continuous data."""
    dtype = draw(st.sampled_from(DTYPES))
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(1, max_n))
    if ties is None:
        ties = draw(st.booleans())
    if ties:
        elements = st.integers(-3, 3).map(float)
    else:
        elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
    g = draw(hnp.arrays(dtype, (batch, n), elements=elements))
    k = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    return g, k


# ------------------------------------------------------------------ top-k
@SETTINGS
@given(gradients(), st.sampled_from([1, 3, 8]))
def test_topk_rows_match_stable_sort(problem, tpb):
    g, k = problem
    cuda_device.THREADS_PER_BLOCK = tpb  # the module fixture restores it
    try:
        d = dev(g)
        got = _cuda.topk_indices(d, k, False)
    finally:
        cuda_device.THREADS_PER_BLOCK = 8
    got = host(got)
    assert got.dtype == np.int64 and got.shape == (g.shape[0], k)
    np.testing.assert_array_equal(got, topk_reference(g, k))
    np.testing.assert_array_equal(host(d), g)  # input untouched


@SETTINGS
@given(gradients(ties=True))
def test_unified_topk_matches_reference(problem):
    g, k = problem
    got = host(_cuda.topk_indices(dev(g), k, True))
    assert got.dtype == np.int64 and got.shape == (k,)
    np.testing.assert_array_equal(got, unified_topk_reference(g, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_agrees_with_cpu_path(dtype):
    g = np.random.default_rng(1).normal(size=(5, 33)).astype(dtype)
    for unified in (False, True):
        cpu = mp.topk_indices(g, 7, unified=unified)
        np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), 7, unified)), cpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_orders_special_magnitudes(dtype):
    info = np.finfo(dtype)
    row = np.array([0.0, -0.0, info.smallest_subnormal, -info.smallest_normal, info.max, -info.max,
                    1.0, -1.0, 2 * info.smallest_subnormal, -info.tiny, 0.5, 3.0], dtype=dtype)
    g = np.stack([row, -row[::-1]])
    n = row.size
    np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), n, False)), topk_reference(g, n))


@pytest.mark.skipif(not SIMULATOR, reason="the race is in the CUDA simulator's allocation of shared arrays")
def test_every_thread_of_a_block_gets_the_same_shared_arrays(monkeypatch):
    # The simulator allocates a shared array when a thread first reaches its line; a thread
    # switch between its look-up and its store gave two threads private copies (garbage
    # indices in the output).  A slow allocation makes that switch certain.
    import time

    row = np.array([0.0, -0.0, 1e-300, -2.0, 7.0, -7.5, 1.0, -1.0, 3e-300, -1e-200, 0.5, 3.0])
    g = np.stack([row, -row[::-1]])
    d = dev(g)
    allocate = np.empty
    monkeypatch.setattr(np, "empty", lambda *args, **kwargs: (time.sleep(0.002), allocate(*args, **kwargs))[1])
    got = _cuda.topk_indices(d, row.size, False)
    monkeypatch.undo()
    np.testing.assert_array_equal(host(got), topk_reference(g, row.size))


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_large_k_sorts_in_global_scratch(monkeypatch, dtype):
    # k above SORT_CAPACITY takes the global-memory sort.
    monkeypatch.setattr(cuda_topk, "SORT_CAPACITY", 4)
    monkeypatch.setattr(cuda_topk, "_GLOBAL_SORT_MAX_BLOCKS", 2)  # two scratch rows reused by four rows
    g = np.random.default_rng(2).integers(-4, 5, size=(4, 23)).astype(dtype)
    for k in (5, 23):
        np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), k, False)), topk_reference(g, k))


def test_topk_rows_longer_than_many_tiles(threads):
    threads(4)
    rng = np.random.default_rng(3)
    g = rng.normal(size=(2, 150)).astype(np.float32)
    g[0, 100:] = g[0, 7]  # one tied value far beyond the first tile, and in it
    np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), 9, False)), topk_reference(g, 9))


@pytest.mark.slow
def test_topk_digit_search_with_more_threads_than_histogram_bins(threads):
    # 264 threads for 256 bins: the threads past the last bin own none, and the k-th digit is found
    # by exactly one thread of the scan over the bins (small integers: many ties; digits far apart).
    threads(264)
    rng = np.random.default_rng(4)
    g = rng.integers(-3, 4, size=(1, 40)).astype(np.float32)
    g[0, :5] = [1e30, -1e-30, 2.0, 2.0, 7.0]
    np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), 6, False)), topk_reference(g, 6))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("unified", [False, True])
def test_topk_refuses_non_finite(bad, unified):
    g = np.ones((3, 6), dtype=np.float32)
    g[2, 4] = bad
    with pytest.raises(ValueError, match="g contains NaN or Inf"):
        _cuda.topk_indices(dev(g), 2, unified)


# ------------------------------------------------------------------ backward
@st.composite
def layers(draw):
    dtype = draw(st.sampled_from(DTYPES))
    batch, n, m = draw(st.integers(1, 5)), draw(st.integers(1, 12)), draw(st.integers(1, 10))
    elements = st.floats(-2, 2, allow_nan=False, width=32)
    x = draw(hnp.arrays(dtype, (batch, m), elements=elements))
    W = draw(hnp.arrays(dtype, (n, m), elements=elements))
    g = draw(hnp.arrays(dtype, (batch, n), elements=st.integers(-3, 3).map(float)))
    k = draw(st.one_of(st.none(), st.integers(1, n)))
    return x, W, g, k


def _row_sparse_reference(x, W, g, mask):
    """(dx, rows, dW[rows], db) of the masked dense reference; rows = the columns any example kept."""
    rdx, rdW, rdb = masked_backward_reference(x, W, g, mask)[:3]
    rows = np.flatnonzero(mask.any(axis=0))
    return rdx, rows, rdW[rows], rdb


def _check_backward(x, W, g, mask, got, dtype):
    dx, rows, values, db = (host(a) for a in got)
    rdx, rrows, rvalues, rdb = _row_sparse_reference(x, W, g, mask)
    for a in (dx, values, db):
        assert a.dtype == dtype
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, rrows)
    scale = 1 + np.abs(x).max() * np.abs(g).max() * g.shape[0] + np.abs(W).max() * np.abs(g).max() * g.shape[1]
    for a, r in ((dx, rdx), (values, rvalues), (db, rdb)):
        np.testing.assert_allclose(a, r, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@SETTINGS
@given(layers(), st.booleans())
def test_linear_backward_matches_masked_dense_reference(layer, unified):
    x, W, g, k = layer
    n = W.shape[0]
    got = _cuda.linear_backward(dev(x), dev(W), dev(g), k, None, unified)
    if k is None or (k == n and not unified):
        mask = np.ones(g.shape, dtype=bool)
    elif unified:
        mask = selection_mask(g.shape, unified_topk_reference(g, k))
    else:
        mask = selection_mask(g.shape, topk_reference(g, k))
    _check_backward(x, W, g, mask, got, x.dtype.type)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("on_device", [False, True])
def test_linear_backward_explicit_indices(dtype, shared, on_device):
    rng = np.random.default_rng(4)
    B, n, m, k = 5, 13, 6, 3
    x, W, g = (rng.normal(size=s).astype(dtype) for s in ((B, m), (n, m), (B, n)))
    if shared:
        indices = rng.permutation(n)[:k]
    else:
        indices = np.stack([rng.permutation(n)[:k] for _ in range(B)])
    indices = indices.astype(np.int64)
    got = _cuda.linear_backward(dev(x), dev(W), dev(g), k, dev(indices) if on_device else indices, False)
    _check_backward(x, W, g, selection_mask(g.shape, indices), got, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unified", [False, True])
def test_linear_backward_agrees_with_cpu_path(dtype, unified):
    rng = np.random.default_rng(5)
    x, W, g = (rng.normal(size=s).astype(dtype) for s in ((6, 7), (10, 7), (6, 10)))
    cdx, cdW, cdb = mp.linear_backward(x, W, g, k=3, unified=unified)
    dx, rows, values, db = (host(a) for a in _cuda.linear_backward(dev(x), dev(W), dev(g), 3, None, unified))
    np.testing.assert_array_equal(rows, cdW.rows)
    for a, r in ((dx, cdx), (values, cdW.values), (db, cdb)):
        np.testing.assert_allclose(a, r, rtol=TOL[dtype], atol=TOL[dtype] * 10)


@pytest.mark.parametrize("tile", [1, 3])
def test_tiled_products_with_other_block_shapes(monkeypatch, tile):
    monkeypatch.setattr(cuda_linear, "GEMM_TILE", tile)
    rng = np.random.default_rng(15)
    x, W, g = (rng.normal(size=s) for s in ((7, 13), (11, 13), (7, 11)))
    for k in (None, 5):
        got = _cuda.linear_backward(dev(x), dev(W), dev(g), k, None, True)
        mask = np.ones(g.shape, bool) if k is None else selection_mask(g.shape, unified_topk_reference(g, k))
        _check_backward(x, W, g, mask, got, np.float64)


def test_linear_backward_refuses_non_finite_g_before_writing():
    x, W = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    g = np.ones((2, 4), np.float32)
    g[1, 1] = np.nan
    dx, dW, dg = dev(x), dev(W), dev(g)
    with pytest.raises(ValueError, match="g contains NaN or Inf"):
        _cuda.linear_backward(dx, dW, dg, 2, None, False)
    for d, a in ((dx, x), (dW, W), (dg, g)):
        np.testing.assert_array_equal(host(d), a)


def test_per_example_backward_with_every_row_hit_many_times(threads):
    # B*k far above n: each dW row sums many examples, in example order.
    threads(4)
    rng = np.random.default_rng(6)
    B, n, m, k = 9, 6, 5, 4
    x, W, g = (rng.normal(size=s) for s in ((B, m), (n, m), (B, n)))
    got = _cuda.linear_backward(dev(x), dev(W), dev(g), k, None, False)
    _check_backward(x, W, g, selection_mask(g.shape, topk_reference(g, k)), got, np.float64)


# ------------------------------------------------------------------ optimizers
def _sparse_problem(rng, dtype, shape=(7, 5), nrows=3):
    p = rng.normal(size=shape).astype(dtype)
    rows = np.sort(rng.choice(shape[0], size=nrows, replace=False)).astype(np.int64)
    values = rng.normal(size=(nrows, shape[1])).astype(dtype)
    return p, rows, values


def _grad_variants(rng, dtype, shape):
    _, rows, values = _sparse_problem(rng, dtype, shape)
    dense = rng.normal(size=shape).astype(dtype)
    return [("sparse", (rows, values)), ("dense", dense)]


def _device_grad(grad):
    return (dev(grad[0]), dev(grad[1])) if isinstance(grad, tuple) else dev(grad)


def _reference_step(reference, param64, grad, lazy):
    """One reference step on float64 `param64` from a dense or (rows, values) gradient."""
    if isinstance(grad, tuple):
        rows, values = grad
        reference.step(param64, densify(rows, values, param64.shape), rows=rows if lazy else None)
    else:
        reference.step(param64, grad.astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_step_matches_reference(dtype, lazy, momentum):
    rng = np.random.default_rng(7)
    for kind, grad in _grad_variants(rng, dtype, (7, 5)):
        p = rng.normal(size=(7, 5)).astype(dtype)
        vel = rng.normal(size=p.shape).astype(dtype) if momentum else np.zeros_like(p)
        dp, dvel = dev(p), dev(vel)
        _cuda.sgd_step(dp, _device_grad(grad), dvel if momentum else None, 0.1, momentum, lazy)
        reference, expected = SGDReference(p.shape, 0.1, momentum), p.astype(np.float64)
        reference.velocity[:] = vel
        _reference_step(reference, expected, grad, lazy)
        np.testing.assert_allclose(host(dp), expected, rtol=TOL[dtype], atol=TOL[dtype], err_msg=kind)
        np.testing.assert_allclose(host(dvel), reference.velocity, rtol=TOL[dtype], atol=TOL[dtype], err_msg=kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lazy", [True, False])
def test_adam_steps_match_reference(dtype, lazy):
    rng = np.random.default_rng(8)
    p = rng.normal(size=(7, 5)).astype(dtype)
    dp, dm, dv = dev(p), _cuda.zeros_like(dev(p)), _cuda.zeros_like(dev(p))
    reference, expected = AdamReference(p.shape, lr=0.01, betas=(0.9, 0.999), eps=1e-8), p.astype(np.float64)
    for _ in range(3):
        for kind, grad in _grad_variants(rng, dtype, p.shape):
            _cuda.adam_step(dp, _device_grad(grad), dm, dv, reference.t + 1, 0.01, 0.9, 0.999, 1e-8, lazy)
            _reference_step(reference, expected, grad, lazy)
            for d, r in ((dp, expected), (dm, reference.m), (dv, reference.v)):
                np.testing.assert_allclose(host(d), r, rtol=10 * TOL[dtype], atol=10 * TOL[dtype], err_msg=kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lazy", [True, False])
def test_adagrad_steps_match_reference(dtype, lazy):
    rng = np.random.default_rng(9)
    p = rng.normal(size=(7, 5)).astype(dtype)
    dp, dacc = dev(p), _cuda.zeros_like(dev(p))
    reference, expected = AdaGradReference(p.shape, lr=0.1, eps=1e-10), p.astype(np.float64)
    for kind, grad in _grad_variants(rng, dtype, p.shape) * 2:
        _cuda.adagrad_step(dp, _device_grad(grad), dacc, 0.1, 1e-10, lazy)
        _reference_step(reference, expected, grad, lazy)
        np.testing.assert_allclose(host(dp), expected, rtol=TOL[dtype], atol=TOL[dtype], err_msg=kind)
        np.testing.assert_allclose(host(dacc), reference.sum_sq, rtol=TOL[dtype], atol=TOL[dtype], err_msg=kind)


def test_updates_of_1d_parameters():
    rng = np.random.default_rng(10)
    b, g = rng.normal(size=11), rng.normal(size=11)
    db, dm, dv = dev(b), _cuda.zeros_like(dev(b)), _cuda.zeros_like(dev(b))
    _cuda.adam_step(db, dev(g), dm, dv, 1, 0.01, 0.9, 0.999, 1e-8, True)
    reference, expected = AdamReference(b.shape, lr=0.01, betas=(0.9, 0.999), eps=1e-8), b.copy()
    reference.step(expected, g)
    np.testing.assert_allclose(host(db), expected, rtol=1e-12)
    np.testing.assert_allclose(host(dm), reference.m, rtol=1e-12)


@pytest.mark.parametrize("step", ["sgd", "adam", "adagrad"])
def test_non_finite_gradient_leaves_everything_unchanged(step):
    p = np.ones((4, 3), np.float32)
    values = np.ones((2, 3), np.float32)
    values[1, 2] = np.inf
    grad = (dev(np.array([0, 2])), dev(values))
    dp, s1, s2 = dev(p), _cuda.zeros_like(dev(p)), _cuda.zeros_like(dev(p))
    with pytest.raises(ValueError, match="grad contains NaN or Inf"):
        if step == "sgd":
            _cuda.sgd_step(dp, grad, s1, 0.1, 0.9, True)
        elif step == "adam":
            _cuda.adam_step(dp, grad, s1, s2, 1, 0.1, 0.9, 0.999, 1e-8, True)
        else:
            _cuda.adagrad_step(dp, grad, s1, 0.1, 1e-10, True)
    np.testing.assert_array_equal(host(dp), p)
    np.testing.assert_array_equal(host(s1), 0)
    np.testing.assert_array_equal(host(s2), 0)


# ------------------------------------------------------------------ interop and errors
def test_interface_arrays_are_used_in_place():
    rng = np.random.default_rng(11)
    p, rows, values = _sparse_problem(rng, np.float32)
    dp = dev(p)
    _cuda.sgd_step(InterfaceArray(dp), (InterfaceArray(dev(rows)), InterfaceArray(dev(values))), None, 0.5, 0.0, True)
    expected = p.copy()
    expected[rows] -= 0.5 * values
    np.testing.assert_allclose(host(dp), expected, rtol=1e-6)


def test_public_api_dispatches_interface_arrays():
    rng = np.random.default_rng(12)
    x, W, g = (rng.normal(size=s).astype(np.float32) for s in ((4, 6), (9, 6), (4, 9)))
    idx = mp.topk_indices(InterfaceArray(dev(g)), 3)
    np.testing.assert_array_equal(host(idx), topk_reference(g, 3))
    dx, dW, db = mp.linear_backward(InterfaceArray(dev(x)), InterfaceArray(dev(W)), InterfaceArray(dev(g)), k=3)
    rdx, rrows, rvalues, rdb = _row_sparse_reference(x, W, g, selection_mask(g.shape, topk_reference(g, 3)))
    np.testing.assert_allclose(host(dx), rdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(host(dW.rows), rrows)
    np.testing.assert_allclose(host(dW.values), rvalues, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(db), rdb, rtol=1e-5, atol=1e-5)


def test_public_optimizer_dispatches_interface_arrays():
    rng = np.random.default_rng(13)
    p, rows, values = _sparse_problem(rng, np.float32)
    dp = dev(p)
    gpu_opt = mp.Adam([InterfaceArray(dp)], lr=0.01)
    cpu_p = p.copy()
    cpu_opt = mp.Adam([cpu_p], lr=0.01)
    for _ in range(2):
        gpu_opt.step([mp.RowSparse(InterfaceArray(dev(rows)), InterfaceArray(dev(values)), p.shape)])
        cpu_opt.step([mp.RowSparse(rows, values, p.shape)])
    np.testing.assert_allclose(host(dp), cpu_p, rtol=1e-5, atol=1e-6)


def test_host_arrays_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="g must be a CUDA array"):
        _cuda.topk_indices(np.ones((2, 3), np.float32), 1, False)


def test_missing_cuda_names_what_to_install(monkeypatch):
    monkeypatch.setattr(cuda_device, "cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"numba-cuda\[cu12\]"):
        _cuda.topk_indices(object(), 1, False)
    with pytest.raises(RuntimeError, match="cuda13"):
        gpu.to_device(np.zeros(3))


def test_is_cuda_array_detection():
    assert gpu.is_cuda_array(dev(np.zeros(3)))
    assert gpu.is_cuda_array(InterfaceArray(dev(np.zeros(3))))
    assert not gpu.is_cuda_array(np.zeros(3))
    # The public functions' own check sees simulator and interface arrays too.
    assert _validation.is_cuda_array(dev(np.zeros(3)))
    assert _validation.is_cuda_array(InterfaceArray(dev(np.zeros(3))))
    assert not _validation.is_cuda_array(np.zeros(3))


def test_zeros_like_and_launch_settings_are_checked(monkeypatch):
    z = _cuda.zeros_like(dev(np.ones((3, 4), np.float32)))
    assert z.dtype == np.float32
    np.testing.assert_array_equal(host(z), np.zeros((3, 4), np.float32))
    monkeypatch.setattr(cuda_device, "THREADS_PER_BLOCK", 4096)
    with pytest.raises(ValueError, match="THREADS_PER_BLOCK"):
        _cuda.zeros_like(dev(np.ones(3)))


def test_kernels_compile_for_a_real_gpu_without_float64_in_float32_work(tmp_path):
    """Compile every kernel to sm_90 PTX in a fresh process (no simulator, no GPU needed)."""
    import os
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mp.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=path)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, os.path.join(here, "cuda_helpers.py"), "--ptx"],
                          env=env, cwd=here, capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(f"NVVM not installed (numba-cuda[cu12] or [cu13] extras): {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    results = [line.split() for line in lines if line.startswith(("ok ", "FAIL "))]
    assert len(results) == 2 * 29, proc.stdout
    failures = [line for line in lines if line.startswith("FAIL")]
    assert not failures, "\n".join(failures)
    widened = [r for r in results if r[2] == "float32" and int(r[3]) > 0]
    assert not widened, f"float32 kernels with float64 arithmetic: {widened}"
    if any(r[4] == "-" for r in results):
        pytest.skip("ptxas not found: registers and shared memory not checked")
    # Every kernel can launch with the block the package configures for it, within 48 KB of static shared memory.
    too_big = [r for r in results if int(r[6]) > int(r[7]) or int(r[5]) > cuda_device.STATIC_SHARED_LIMIT]
    assert not too_big, f"kernels that cannot launch at their configured block: {too_big}"


@pytest.mark.parametrize("unified", [False, True])
def test_training_step_stays_on_the_device(unified):
    """Backward then a lazy Adam step through the public API, device arrays end to end."""
    rng = np.random.default_rng(16)
    x, W, g = (rng.normal(size=s).astype(np.float32) for s in ((5, 6), (9, 6), (5, 9)))
    dW_dev = dev(W)
    dx, dW, db = mp.linear_backward(dev(x), dW_dev, dev(g), k=2, unified=unified)
    assert gpu.is_cuda_array(dW.values) and gpu.is_cuda_array(dW.rows)
    gpu_opt, cpu_W = mp.Adam([dW_dev], lr=0.01), W.copy()
    cpu_opt = mp.Adam([cpu_W], lr=0.01)
    cdx, cdW, cdb = mp.linear_backward(x, W, g, k=2, unified=unified)
    gpu_opt.step([dW])
    cpu_opt.step([cdW])
    np.testing.assert_allclose(host(dx), cdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(dW_dev), cpu_W, rtol=1e-5, atol=1e-6)
    state = gpu_opt.state_dict()
    assert isinstance(state["state"][0]["m"], np.ndarray)


def test_empty_batch():
    x, W, g = np.zeros((0, 3)), np.ones((4, 3)), np.zeros((0, 4))
    assert host(_cuda.topk_indices(dev(g), 2, False)).shape == (0, 2)
    dx, rows, values, db = (host(a) for a in _cuda.linear_backward(dev(x), dev(W), dev(g), 2, None, False))
    assert dx.shape == (0, 3) and rows.shape == (0,) and values.shape == (0, 3)
    np.testing.assert_array_equal(db, np.zeros(4))
    dx, rows, values, db = (host(a) for a in _cuda.linear_backward(dev(x), dev(W), dev(g), None, None, False))
    np.testing.assert_array_equal(values, np.zeros((4, 3)))
    np.testing.assert_array_equal(db, np.zeros(4))


@pytest.mark.skipif(SIMULATOR, reason="n=16384 rows take ~15 s each under the simulator; runs on a GPU")
@pytest.mark.parametrize("k", [1024, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_long_rows_and_large_k(dtype, k):  # pragma: no cover - GPU only
    cuda_device.THREADS_PER_BLOCK = 256  # the module fixture restores it
    try:
        g = np.random.default_rng(17).integers(-100, 100, size=(6, 16384)).astype(dtype)
        got = host(_cuda.topk_indices(dev(g), k, False))
        unified = host(_cuda.topk_indices(dev(g), k, True))
    finally:
        cuda_device.THREADS_PER_BLOCK = 8
    np.testing.assert_array_equal(got, topk_reference(g, k))
    np.testing.assert_array_equal(unified, unified_topk_reference(g, k))


def test_public_optimizer_checks_every_gradient_before_any_update():
    p1, p2 = np.ones((3, 2), np.float32), np.ones((3, 2), np.float32)
    d1, d2 = dev(p1), dev(p2)
    bad = np.ones((3, 2), np.float32)
    bad[0, 0] = np.nan
    opt = mp.SGD([InterfaceArray(d1), InterfaceArray(d2)], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[1\] contains NaN or Inf"):
        opt.step([InterfaceArray(dev(np.ones((3, 2), np.float32))), InterfaceArray(dev(bad))])
    np.testing.assert_array_equal(host(d1), p1)
    np.testing.assert_array_equal(host(d2), p2)


# ------------------------------------------------------------------ launches on a real device
@pytest.fixture
def launches(monkeypatch):
    """Record (kernel name, grid, block) of every launch."""
    record = []
    real = cuda_device.launch

    def spy(kernel, grid, block, stream, args):
        record.append((getattr(kernel, "py_func", kernel).__name__, grid, block))
        return real(kernel, grid, block, stream, args)

    monkeypatch.setattr(cuda_device, "launch", spy)
    return record


def _threads(block):
    return int(np.prod(block)) if isinstance(block, tuple) else int(block)


def test_fit_block_never_exceeds_the_kernel_limit():
    assert cuda_device.fit_block(256, 896) == 256
    assert cuda_device.fit_block(1024, 896) == 896
    assert cuda_device.fit_block(1024, 900) == 896  # whole warps
    assert cuda_device.fit_block(8, 5) == 5


def test_blocks_are_sized_from_each_kernels_own_limit(monkeypatch, launches):
    # A device whose kernels take at most 6 threads per block (here: fewer than THREADS_PER_BLOCK=8, GEMM_TILE=2 fits).
    monkeypatch.setattr(cuda_device, "kernel_max_threads", lambda kernel, args: 6)
    rng = np.random.default_rng(20)
    x, W, g = (rng.normal(size=s) for s in ((4, 5), (9, 5), (4, 9)))
    for unified in (False, True):
        got = _cuda.linear_backward(dev(x), dev(W), dev(g), 3, None, unified)
        ref = unified_topk_reference(g, 3) if unified else topk_reference(g, 3)
        _check_backward(x, W, g, selection_mask(g.shape, ref), got, np.float64)
    assert launches and all(_threads(block) <= 6 for _, _, block in launches), launches
    monkeypatch.setattr(cuda_device, "kernel_max_threads", lambda kernel, args: 3)  # 2x2 tiles no longer fit
    got = _cuda.linear_backward(dev(x), dev(W), dev(g), None, None, False)
    _check_backward(x, W, g, np.ones(g.shape, bool), got, np.float64)
    assert all(_threads(block) <= 3 for _, _, block in launches[-3:]), launches[-3:]


def test_grid_rows_beyond_max_grid_rows_are_looped_over(launches):
    # GEMM_TILE=2 covers 8 rows a block; MAX_GRID_ROWS=3 blocks cover 24: 30 examples and 26
    # selected columns need the grid-stride loops in y of both tiled products.
    rng = np.random.default_rng(21)
    x, W, g = (rng.normal(size=s) for s in ((30, 2), (27, 2), (30, 27)))
    got = _cuda.linear_backward(dev(x), dev(W), dev(g), None, None, False)
    _check_backward(x, W, g, np.ones(g.shape, bool), got, np.float64)
    tiled = [grid for name, grid, _ in launches if name in ("gather_dx", "gather_values")]
    assert tiled and all(grid[1] <= 3 for grid in tiled)


def test_dw_of_a_shared_selection_sums_slices_of_the_batch(launches, monkeypatch):
    # 2x2-thread blocks cover 8x8 outputs: dW (k=3 or 9 rows, m=5) takes one or two blocks, so the
    # batch of 37 is cut into 37 // (4 tiles of 2) = 4 slices of 10, 10, 10 and 7 examples.
    rng = np.random.default_rng(23)
    x, W, g = (rng.normal(size=s) for s in ((37, 5), (9, 5), (37, 9)))
    cases = ((3, True, selection_mask(g.shape, unified_topk_reference(g, 3))), (None, False, np.ones(g.shape, bool)))
    sums = []
    for target, slices in ((cuda_linear.VALUES_TARGET_BLOCKS, 4), (1, 1)):
        monkeypatch.setattr(cuda_linear, "VALUES_TARGET_BLOCKS", target)
        del launches[:]
        for k, unified, mask in cases:
            _check_backward(x, W, g, mask, _cuda.linear_backward(dev(x), dev(W), dev(g), k, None, unified),
                            np.float64)
        grids = [grid for name, grid, _ in launches if name == "gather_values"]
        assert [grid[2] for grid in grids] == [slices, slices], grids
        sums.append([name for name, _, _ in launches].count("sum_partials"))
    assert sums[0] == sums[1] + 2  # one fixed-order sum of the slices per sliced call


def test_launch_settings_beyond_the_hardware_are_refused(monkeypatch):
    monkeypatch.setattr(cuda_device, "MAX_GRID_ROWS", 65536)
    with pytest.raises(ValueError, match="MAX_GRID_ROWS"):
        _cuda.topk_indices(dev(np.ones((2, 3), np.float32)), 1, False)


def test_compile_time_constants_are_checked_and_kept_per_value(monkeypatch):
    for bad in (4096, 3, 0):
        monkeypatch.setattr(cuda_topk, "SORT_CAPACITY", bad)
        with pytest.raises(ValueError, match="SORT_CAPACITY"):
            _cuda.topk_indices(dev(np.ones((2, 3), np.float32)), 1, False)
    assert cuda_topk.shared_bytes(2048) <= cuda_device.STATIC_SHARED_LIMIT < cuda_topk.shared_bytes(4096)
    monkeypatch.setattr(cuda_topk, "SORT_CAPACITY", 2048)
    assert cuda_topk._kernels(4) is not cuda_topk._kernels(2048)  # built per value, never resized
    with pytest.raises(ValueError, match="GEMM_TILE=40"):
        cuda_linear._tiled_kernels(np.float64, 40)


def test_no_device_memory_is_cached_between_calls():
    # Device arrays belong to one CUDA context: none may be kept in a module cache.
    rng = np.random.default_rng(22)
    p = dev(rng.normal(size=(3, 4)))
    _cuda.sgd_step(p, dev(rng.normal(size=(3, 4))), None, 0.1, 0.0, True)
    for cache in (cuda_device._KERNELS, cuda_topk._KERNELS, cuda_linear._KERNELS, _cuda.optim._KERNELS):
        for namespace in cache.values():
            assert not any(gpu.is_cuda_array(v) for v in namespace.values())


def test_stream_comes_from_the_inputs_or_the_argument():
    a = dev(np.zeros(3))
    assert cuda_device.stream_handle([a]) is None  # the default stream
    with_stream = InterfaceArray(a, stream=7)  # a version-3 interface naming its stream, as CuPy's does
    assert cuda_device.stream_handle([None, with_stream]) == 7

    class TorchLikeStream:
        cuda_stream = 11

    class CupyLikeStream:
        ptr = 13

    assert cuda_device.stream_handle([with_stream], TorchLikeStream()) == 11
    assert cuda_device.stream_handle([with_stream], CupyLikeStream()) == 13
    assert cuda_device.stream_handle([with_stream], 5) == 5
    with pytest.raises(TypeError, match="stream"):
        cuda_device.stream_handle([a], True)
    s = cuda_device.cuda.stream()
    assert cuda_device.stream_handle([dev(np.zeros(3)).bind(s)]) is s
    g = np.random.default_rng(23).normal(size=(3, 7))
    np.testing.assert_array_equal(host(_cuda.topk_indices(dev(g), 2, False, stream=s)), topk_reference(g, 2))


def test_device_rows_are_validated_before_any_write():
    rng = np.random.default_rng(24)
    p = rng.normal(size=(6, 3)).astype(np.float32)
    for rows, error in (([0, 2, 2], ValueError), ([3, 1], ValueError), ([1, 6], IndexError), ([-1, 2], IndexError)):
        values = np.ones((len(rows), 3), np.float32)
        dp, vel = dev(p), dev(np.zeros_like(p))
        opt = mp.SGD([dp], lr=0.1, momentum=0.9)
        with pytest.raises(error, match="rows"):
            opt.step([mp.RowSparse(dev(np.array(rows)), dev(values), p.shape)])
        np.testing.assert_array_equal(host(dp), p)
        np.testing.assert_array_equal(host(opt.state[0]["velocity"]), 0)
        for step in (_cuda.adam_step, _cuda.adagrad_step):
            state = [dev(np.zeros_like(p)) for _ in range(2 if step is _cuda.adam_step else 1)]
            args = (1, 0.1, 0.9, 0.999, 1e-8) if step is _cuda.adam_step else (0.1, 1e-10)
            with pytest.raises(error, match="rows"):
                step(dp, (dev(np.array(rows)), dev(values)), *state, *args, True)
            np.testing.assert_array_equal(host(dp), p)
            for a in state:
                np.testing.assert_array_equal(host(a), 0)


def test_bad_device_rows_in_a_later_gradient_leave_every_param_unchanged():
    rng = np.random.default_rng(25)
    p0, p1 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    d0, d1 = dev(p0), dev(p1)
    opt = mp.Adam([d0, d1], lr=0.1)
    good = mp.RowSparse(dev(np.array([1, 3])), dev(np.ones((2, 3), np.float32)), p0.shape)
    bad = mp.RowSparse(dev(np.array([2, 2])), dev(np.ones((2, 3), np.float32)), p1.shape)
    with pytest.raises(ValueError, match="rows"):
        opt.step([good, bad])
    np.testing.assert_array_equal(host(d0), p0)
    np.testing.assert_array_equal(host(d1), p1)
    assert opt.step_count == 0


@pytest.mark.parametrize("unified", [False, True])
def test_non_finite_x_is_refused_and_nothing_changes(unified):
    x, W, g = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones((2, 4), np.float32)
    x[1, 2] = np.inf
    dx, dW, dg = dev(x), dev(W), dev(g)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        mp.linear_backward(dx, dW, dg, k=2, unified=unified)
    for d, a in ((dx, x), (dW, W), (dg, g)):
        np.testing.assert_array_equal(host(d), a)


@pytest.mark.parametrize("unified", [False, True])
def test_need_dx_false_skips_the_input_gradient(unified, launches):
    rng = np.random.default_rng(25)
    x, W, g = (rng.normal(size=s) for s in ((3, 4), (6, 4), (3, 6)))
    dx, dW, db = mp.linear_backward(dev(x), dev(W), dev(g), k=2, unified=unified, need_dx=False)
    assert dx is None
    ref = unified_topk_reference(g, 2) if unified else topk_reference(g, 2)
    rdx, rrows, rvalues, rdb = _row_sparse_reference(x, W, g, selection_mask(g.shape, ref))
    np.testing.assert_array_equal(host(dW.rows), rrows)
    np.testing.assert_allclose(host(dW.values), rvalues, rtol=1e-12, atol=1e-12)
    assert not {"gather_dx", "per_example_dx"} & {name for name, _, _ in launches}


def test_one_pass_over_g_and_one_status_read_per_call(monkeypatch, launches):
    reads = []
    real = cuda_linear.read_status
    monkeypatch.setattr(cuda_linear, "read_status", lambda status, stream: reads.append(1) or real(status, stream))
    rng = np.random.default_rng(26)
    x, W, g = (rng.normal(size=s) for s in ((3, 4), (6, 4), (3, 6)))
    _cuda.linear_backward(dev(x), dev(W), dev(g), 2, None, True)
    names = [name for name, _, _ in launches]
    # g is read in full once (NaN/Inf flag, db and the unified scores together); the flag check runs on x only.
    assert names.count("scan_columns") == 1 and names.count("nonfinite_flag") == 1, names
    assert len(reads) == 1
    _cuda.linear_backward(dev(x), dev(W), dev(g), 2, None, True, check_finite=False)
    assert len(reads) == 1  # nothing read back, no wait for the device


@pytest.mark.parametrize("shared", [False, True])
def test_device_indices_from_other_libraries_are_accepted_and_checked(shared):
    rng = np.random.default_rng(27)
    B, n, m, k = 4, 9, 3, 3
    x, W, g = (rng.normal(size=s).astype(np.float32) for s in ((B, m), (n, m), (B, n)))
    indices = rng.permutation(n)[:k] if shared else np.stack([rng.permutation(n)[:k] for _ in range(B)])
    for dtype in (np.int64, np.int32):
        given = InterfaceArray(dev(indices.astype(dtype)))
        dx, dW, db = mp.linear_backward(dev(x), dev(W), dev(g), indices=given)
        rdx, rrows, rvalues, rdb = _row_sparse_reference(x, W, g, selection_mask(g.shape, indices))
        np.testing.assert_allclose(host(dx), rdx, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(host(dW.rows), rrows)
    repeated, outside = indices.copy(), indices.copy()
    repeated[..., 1] = repeated[..., 0]
    outside[..., 0] = n
    with pytest.raises(ValueError, match="repeats"):
        mp.linear_backward(dev(x), dev(W), dev(g), indices=InterfaceArray(dev(repeated)))
    with pytest.raises(IndexError, match="outside"):
        mp.linear_backward(dev(x), dev(W), dev(g), indices=InterfaceArray(dev(outside)))


class _FakeLibraryArray(InterfaceArray):
    """A CUDA array of an outside library (its type's module names it)."""


_FakeLibraryArray.__module__ = "fakelib.core"


def test_shared_products_go_through_the_callers_library(monkeypatch):
    calls = []

    def products(x, W, g, rows, need_dx, dense):
        calls.append(dense)
        xh, Wh, gh, cols = host(x), host(W), host(g), host(rows)
        g_sel = gh[:, cols]
        return (dev(g_sel @ Wh[cols]) if need_dx else None), dev(g_sel.T @ xh)

    monkeypatch.setitem(cuda_linear._LIBRARY_PRODUCTS, "fakelib", products)
    rng = np.random.default_rng(28)
    x, W, g = (rng.normal(size=s) for s in ((3, 4), (6, 4), (3, 6)))
    wrapped = [_FakeLibraryArray(dev(a)) for a in (x, W, g)]
    for k, unified in ((2, True), (None, False)):
        got = _cuda.linear_backward(*wrapped, k, None, unified)
        mask = np.ones(g.shape, bool) if k is None else selection_mask(g.shape, unified_topk_reference(g, k))
        _check_backward(x, W, g, mask, got, np.float64)
    assert calls == [False, True]
    _cuda.linear_backward(*wrapped, 2, None, False)  # per-example: own kernels
    assert len(calls) == 2
