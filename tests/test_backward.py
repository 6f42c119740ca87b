"""Property tests of linear_backward against a masked dense NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from reference import (
    examples,
    FLOAT_DTYPES,
    assert_close_scaled,
    is_valid_topk,
    layouts,
    masked_backward_reference,
    matrices,
    selection_mask,
    topk_reference,
    unified_scores,
)

SETTINGS = settings(deadline=None, max_examples=examples(100))
ERRORS_ANY = (ValueError, TypeError)
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
MODES = ("per_example", "unified", "indices_per_example", "indices_shared", "dense_none", "dense_n")


@st.composite
def backward_problems(draw, mode=None, max_batch=6, max_n=30, max_m=20):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_m))
    ties = draw(st.booleans())
    x = draw(layouts(draw(matrices(dtype, (batch, m), bound=1e2))))
    W = draw(layouts(draw(matrices(dtype, (n, m), bound=1e2))))
    g = draw(layouts(draw(matrices(dtype, (batch, n), ties=ties, bound=1e2))))
    k = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    if mode is None:
        mode = draw(st.sampled_from(MODES))
    indices = None
    if mode == "indices_per_example":
        indices = np.array(
            [draw(st.permutations(range(n)))[:k] for _ in range(batch)], dtype=np.int64
        ).reshape(batch, k)
    elif mode == "indices_shared":
        indices = np.array(draw(st.permutations(range(n)))[:k], dtype=np.int64)
    return mode, x, W, g, k, indices


def run_backward(mode, x, W, g, k, indices):
    """Call the library; return (dx, dW, db, selection) with selection (B,k)/(k,)/None."""
    if mode == "per_example":
        return (*mp.linear_backward(x, W, g, k), topk_reference(g, k))
    if mode == "unified":
        selection = mp.topk_indices(g, k, unified=True)
        rtol = 8 * g.shape[0] * np.finfo(g.dtype).eps
        message = is_valid_topk(unified_scores(g), selection, k, rtol)
        assert message is None, message
        return (*mp.linear_backward(x, W, g, k, unified=True), selection)
    if mode.startswith("indices"):
        return (*mp.linear_backward(x, W, g, indices=indices), indices)
    if mode == "dense_none":
        return (*mp.linear_backward(x, W, g), None)
    if mode == "dense_n":
        return (*mp.linear_backward(x, W, g, g.shape[1]), None)
    raise AssertionError(mode)


def check_against_reference(mode, x, W, g, k, indices, rtol=None):
    dtype = np.result_type(x, W, g)
    rtol = RTOL[dtype] if rtol is None else rtol
    copies = [np.array(a, copy=True) for a in (x, W, g)]
    dx, dW, db, selection = run_backward(mode, x, W, g, k, indices)
    for before, after in zip(copies, (x, W, g)):
        assert before.tobytes() == np.ascontiguousarray(after).tobytes(), "input modified"

    batch, n = g.shape
    m = x.shape[1]
    mask = None if selection is None else selection_mask((batch, n), selection)
    ref_dx, ref_dW, ref_db, bound_dx, bound_dW, bound_db = masked_backward_reference(x, W, g, mask)

    assert isinstance(dx, np.ndarray) and dx.shape == (batch, m) and dx.dtype == dtype
    assert isinstance(db, np.ndarray) and db.shape == (n,) and db.dtype == dtype
    assert isinstance(dW, mp.RowSparse)
    assert tuple(dW.shape) == (n, m)
    rows = np.asarray(dW.rows)
    assert rows.dtype == np.int64 and rows.ndim == 1
    assert np.all(np.diff(rows) > 0), "rows must be sorted and unique"
    expected_rows = np.arange(n) if mask is None else np.flatnonzero(mask.any(axis=0))
    np.testing.assert_array_equal(rows, expected_rows)
    assert dW.values.shape == (len(rows), m) and dW.values.dtype == dtype
    dense_dW = dW.to_dense()
    assert isinstance(dense_dW, np.ndarray)
    assert dense_dW.shape == (n, m) and dense_dW.dtype == dtype

    assert_close_scaled(dx, ref_dx, bound_dx, rtol, "dx")
    assert_close_scaled(dense_dW, ref_dW, bound_dW, rtol, "dW.to_dense()")
    assert_close_scaled(dW.values, ref_dW[rows], bound_dW[rows], rtol, "dW.values")
    assert_close_scaled(db, ref_db, bound_db, rtol, "db")
    # Rows outside the selection are exactly zero in the dense form.
    outside = np.setdiff1d(np.arange(n), rows)
    assert not np.any(dense_dW[outside])


@SETTINGS
@given(backward_problems())
def test_linear_backward_matches_masked_dense_reference(problem):
    check_against_reference(*problem)


@pytest.mark.parametrize("mode", MODES)
@settings(deadline=None, max_examples=examples(40))
@given(data=st.data())
def test_linear_backward_each_mode(mode, data):
    check_against_reference(*data.draw(backward_problems(mode=mode)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_k_equal_n_and_none_are_exact_dense_backprop(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 7)).astype(dtype)
    W = rng.standard_normal((5, 7)).astype(dtype)
    g = rng.standard_normal((4, 5)).astype(dtype)
    ref_dx, ref_dW, ref_db, *_ = masked_backward_reference(x, W, g)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for k in (None, 5, np.int64(5)):
        dx, dW, db = mp.linear_backward(x, W, g, k)
        np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol)
        np.testing.assert_allclose(dW.to_dense(), ref_dW, rtol=tol, atol=tol)
        np.testing.assert_allclose(db, ref_db, rtol=tol, atol=tol)
        np.testing.assert_array_equal(dW.rows, np.arange(5))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_backward_drops_unselected_entries(dtype):
    # One example, k=1: only the largest |g| contributes, to one row of dW.
    x = np.array([[1.0, 2.0]], dtype=dtype)
    W = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=dtype)
    g = np.array([[0.5, -2.0, 1.0]], dtype=dtype)
    dx, dW, db = mp.linear_backward(x, W, g, 1)
    np.testing.assert_array_equal(dx, [[0.0, -2.0]])
    np.testing.assert_array_equal(dW.rows, [1])
    np.testing.assert_array_equal(dW.values, [[-2.0, -4.0]])
    np.testing.assert_array_equal(dW.to_dense(), [[0, 0], [-2, -4], [0, 0]])
    np.testing.assert_array_equal(db, [0.5, -2.0, 1.0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "mode, batch, n, m, k",
    [("per_example", 10, 500, 784, 20), ("per_example", 32, 2000, 300, 40),
     ("per_example", 257, 600, 100, 20), ("per_example", 3, 4096, 17, 4000),
     ("unified", 50, 500, 500, 20), ("unified", 300, 2048, 300, 64),
     ("unified", 7, 300, 40, 299), ("indices_per_example", 64, 1000, 50, 30),
     ("indices_shared", 64, 1000, 50, 30), ("dense_none", 40, 300, 200, None),
     ("per_example", 100, 500, 2400, 20), ("per_example", 7, 40, 1030, 20)],
)
def test_linear_backward_benchmark_like_shapes(dtype, mode, batch, n, m, k):
    # Kernels may switch strategy (threads, gathered BLAS products, ...) with
    # size: cover the benchmark shapes and shapes next to them (the parser's
    # 100 x 500 x 2400 among them).
    rng = np.random.default_rng(batch + n + m)
    x = rng.standard_normal((batch, m)).astype(dtype)
    W = rng.standard_normal((n, m)).astype(dtype)
    g = rng.standard_normal((batch, n)).astype(dtype)
    indices = None
    if mode == "indices_per_example":
        indices = np.argsort(rng.random((batch, n)), axis=1)[:, :k]
    elif mode == "indices_shared":
        indices = rng.permutation(n)[:k]
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    check_against_reference(mode, x, W, g, k, indices, rtol=rtol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_random_indices_drive_linear_backward(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 9)).astype(dtype)
    W = rng.standard_normal((40, 9)).astype(dtype)
    g = rng.standard_normal((6, 40)).astype(dtype)
    per_example = mp.random_indices(40, 4, batch=6, rng=1)
    shared = mp.random_indices(40, 4, rng=2)
    check_against_reference("indices_per_example", x, W, g, 4, per_example)
    check_against_reference("indices_shared", x, W, g, 4, shared)


# ------------------------------------------- finite-difference gradient check
def _two_layer_loss(params, x, target):
    W1, b1, W2, b2 = params
    h = np.tanh(x @ W1.T + b1)
    y = h @ W2.T + b2
    return np.sum(target * y) + 0.5 * np.sum(y * y)


def _two_layer_grads(params, x, target, k1, k2):
    W1, b1, W2, b2 = params
    h = np.tanh(x @ W1.T + b1)
    y = h @ W2.T + b2
    g2 = target + y
    dh, dW2, db2 = mp.linear_backward(h, W2, g2, k2)
    g1 = dh * (1.0 - h * h)
    dx, dW1, db1 = mp.linear_backward(x, W1, g1, k1)
    return dx, [dW1.to_dense(), db1, dW2.to_dense(), db2]


@pytest.mark.parametrize("k", ["n", None])
def test_finite_difference_gradient_of_two_layer_network(k):
    rng = np.random.default_rng(11)
    batch, m, hidden, out = 3, 4, 6, 5
    x = rng.standard_normal((batch, m))
    target = rng.standard_normal((batch, out))
    params = [rng.standard_normal((hidden, m)) * 0.5, rng.standard_normal(hidden) * 0.1,
              rng.standard_normal((out, hidden)) * 0.5, rng.standard_normal(out) * 0.1]
    k1, k2 = (hidden, out) if k == "n" else (None, None)
    dx, grads = _two_layer_grads(params, x, target, k1, k2)

    step = 1e-6

    def numeric(array, loss):
        result = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + step
            up = loss()
            array[idx] = saved - step
            down = loss()
            array[idx] = saved
            result[idx] = (up - down) / (2 * step)
        return result

    for param, grad in zip(params, grads):
        expected = numeric(param, lambda: _two_layer_loss(params, x, target))
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    expected_dx = numeric(x, lambda: _two_layer_loss(params, x, target))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------- threads and determinism
@pytest.fixture
def restore_threads():
    saved = mp.get_num_threads()
    yield saved
    mp.set_num_threads(saved)


def test_set_num_threads_round_trips_and_validates(restore_threads):
    mp.set_num_threads(1)
    assert mp.get_num_threads() == 1
    mp.set_num_threads(restore_threads)
    assert mp.get_num_threads() == restore_threads
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ERRORS_ANY):
            mp.set_num_threads(bad)
        assert mp.get_num_threads() == restore_threads


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("unified", [False, True])
def test_results_do_not_depend_on_thread_count(dtype, unified, restore_threads):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((130, 90)).astype(dtype)
    W = rng.standard_normal((700, 90)).astype(dtype)
    g = rng.standard_normal((130, 700)).astype(dtype)
    results = []
    for threads in sorted({1, restore_threads}):
        mp.set_num_threads(threads)
        results.append((mp.topk_indices(g, 25, unified=unified),
                        mp.linear_backward(x, W, g, 25, unified=unified)))
    (idx_a, (dx_a, dW_a, db_a)), (idx_b, (dx_b, dW_b, db_b)) = results[0], results[-1]
    np.testing.assert_array_equal(idx_a, idx_b)
    np.testing.assert_array_equal(dW_a.rows, dW_b.rows)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(dx_a, dx_b, **tol)
    np.testing.assert_allclose(dW_a.values, dW_b.values, **tol)
    np.testing.assert_allclose(db_a, db_b, **tol)


@pytest.mark.parametrize("unified", [False, True])
def test_repeated_calls_are_bit_identical(unified):
    # Training runs must be reproducible: no order-dependent races.
    rng = np.random.default_rng(22)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    W = rng.standard_normal((900, 64)).astype(np.float32)
    g = rng.standard_normal((200, 900)).astype(np.float32)
    first = mp.linear_backward(x, W, g, 30, unified=unified)
    for _ in range(3):
        again = mp.linear_backward(x, W, g, 30, unified=unified)
        assert first[0].tobytes() == again[0].tobytes()
        assert first[1].values.tobytes() == again[1].values.tobytes()
        assert first[2].tobytes() == again[2].tobytes()


@pytest.mark.parametrize("layout", ["fortran", "strided"])
@pytest.mark.parametrize("mode", ["per_example", "unified"])
def test_large_non_contiguous_inputs(layout, mode):
    rng = np.random.default_rng(23)
    batch, n, m, k = 40, 1500, 120, 30
    arrays = [rng.standard_normal(s) for s in ((batch, m), (n, m), (batch, n))]
    if layout == "fortran":
        arrays = [np.asfortranarray(a) for a in arrays]
    else:
        arrays = [np.repeat(a, 2, axis=1)[:, ::2] for a in arrays]
    x, W, g = arrays
    check_against_reference(mode, x, W, g, k, None)


@pytest.mark.parametrize("kwargs", [dict(k=None), dict(k=3), dict(k=3, unified=True),
                                    dict(indices=np.array([0, 2, 5]))])
def test_need_dx_false_skips_only_the_input_gradient(kwargs):
    rng = np.random.default_rng(3)
    x, W, g = rng.normal(size=(4, 6)), rng.normal(size=(7, 6)), rng.normal(size=(4, 7))
    dx, dW, db = mp.linear_backward(x, W, g, **kwargs)
    none, dW2, db2 = mp.linear_backward(x, W, g, need_dx=False, **kwargs)
    assert dx is not None and none is None
    np.testing.assert_array_equal(dW.rows, dW2.rows)
    np.testing.assert_allclose(dW2.values, dW.values, rtol=1e-12)
    np.testing.assert_allclose(db2, db, rtol=1e-12)


@settings(deadline=None, max_examples=examples(60))
@given(data=st.data())
def test_one_call_kernels_equal_the_separate_steps(data):
    # The serial path runs checks, selection and products in one compiled call; the
    # threaded path (and the explicit-indices one) runs them step by step.
    from meprop_numba._cpu import linear as cpu_linear
    from meprop_numba._cpu import topk as cpu_topk

    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    batch, n, m = data.draw(st.integers(1, 12)), data.draw(st.integers(2, 70)), data.draw(st.integers(1, 90))
    k = data.draw(st.integers(1, n - 1))
    need_dx = data.draw(st.booleans())
    x = data.draw(matrices(dtype, (batch, m), bound=1e2))
    W = data.draw(matrices(dtype, (n, m), bound=1e2))
    g = data.draw(matrices(dtype, (batch, n), ties=data.draw(st.booleans()), bound=1e2))
    big = np.finfo(dtype).max

    status, idx, dx, rows, values, db = cpu_linear.topk_backward(x, W, g, *cpu_topk.magnitude_bits(g), k, need_dx,
                                                                 big)
    ref_idx = np.empty((batch, k), dtype=np.int64)
    bits, mask = cpu_topk.magnitude_bits(g)
    cpu_topk.topk_rows(bits, k, mask, ref_idx)
    ref = cpu_linear.per_example_backward(x, W, g, ref_idx, need_dx)
    assert status == 0
    np.testing.assert_array_equal(idx, ref_idx)
    for got, want in zip((dx, rows, values, db), ref):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()

    status, cols, dx, values, db = cpu_linear.unified_backward(x, W, g, k, need_dx, big)
    ref_db, scores = cpu_topk.column_sums_and_abs_sums(g)
    ref_cols, g_sel = cpu_topk.select_and_gather_columns(g, scores, k)
    assert status == 0
    np.testing.assert_array_equal(cols, ref_cols)
    assert db.tobytes() == ref_db.tobytes()
    rtol = RTOL[np.dtype(dtype)]
    assert_close_scaled(values, g_sel.T @ x, np.abs(g_sel).T @ np.abs(x), rtol, "values")
    assert dx.shape == ((batch, m) if need_dx else (0, m))
    if need_dx:
        assert_close_scaled(dx, g_sel @ W[ref_cols], np.abs(g_sel) @ np.abs(W[ref_cols]), rtol, "dx")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "g", "both"])
@pytest.mark.parametrize("unified", [False, True])
def test_non_finite_input_is_named_by_the_one_call_kernels(bad, where, unified):
    rng = np.random.default_rng(5)
    x, W, g = rng.normal(size=(4, 6)), rng.normal(size=(7, 6)), rng.normal(size=(4, 7))
    if where != "g":
        x[2, 3] = bad
    if where != "x":
        g[1, 5] = bad
    with pytest.raises(ValueError, match=f"^{'x' if where == 'x' else 'g'} contains NaN or Inf"):
        mp.linear_backward(x, W, g, 3, unified=unified)


def test_unified_selection_takes_finite_values_whose_magnitude_sums_overflow():
    # float64 column magnitudes summing past the largest double are still finite input
    rng = np.random.default_rng(6)
    x, W, g = 1e-10 * rng.normal(size=(3, 4)), 1e-10 * rng.normal(size=(6, 4)), rng.normal(size=(3, 6))
    g[0, 2] = g[1, 2] = 1e308
    dx, dW, db = mp.linear_backward(x, W, g, 2, unified=True)
    assert 2 in dW.rows
    np.testing.assert_allclose(dW.values[list(dW.rows).index(2)], g[:, 2] @ x, rtol=1e-12)
    np.testing.assert_allclose(dx, g[:, dW.rows] @ W[dW.rows], rtol=1e-12)
