"""Bad input raises a clear error naming the argument and changes nothing."""
import re
import warnings

import numpy as np
import pytest

import meprop_numba as mp
from reference import assert_identical, snapshot

ERRORS = (ValueError, TypeError, IndexError)


def assert_rejected(call, name, *inputs):
    """``call()`` raises one of ERRORS naming ``name``; ``inputs`` stay bit-identical."""
    before = [snapshot(a) for a in inputs]
    with pytest.raises(ERRORS) as info:
        call()
    message = str(info.value)
    assert re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", message), (
        f"message does not name {name!r}: {message!r}"
    )
    for a, b in zip(before, inputs):
        assert_identical(a, b, "input")


def _problem(dtype=np.float64, batch=3, n=6, m=4):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, m)).astype(dtype),
            rng.standard_normal((n, m)).astype(dtype),
            rng.standard_normal((batch, n)).astype(dtype))


# ------------------------------------------------------------------ top-k
BAD_K = [0, -1, 7, 2.0, 2.5, True, False, "2", None, np.float64(2.0)]


@pytest.mark.parametrize("k", BAD_K, ids=repr)
@pytest.mark.parametrize("unified", [False, True])
def test_topk_bad_k(k, unified):
    g = _problem()[2]
    assert_rejected(lambda: mp.topk_indices(g, k, unified=unified), "k", g)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 6), ()])
def test_topk_wrong_ndim(shape):
    g = np.ones(shape)
    assert_rejected(lambda: mp.topk_indices(g, 1), "g", g)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, np.bool_, object])
def test_topk_bad_dtype(dtype):
    g = np.ones((2, 5)).astype(dtype)
    assert_rejected(lambda: mp.topk_indices(g, 2), "g", g)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("unified", [False, True])
def test_topk_non_finite_g(bad, dtype, unified):
    g = np.ones((3, 5), dtype=dtype)
    g[2, 3] = bad
    assert_rejected(lambda: mp.topk_indices(g, 2, unified=unified), "g", g)


def test_topk_rejects_non_array_input():
    # Anything that is not a float array must be rejected by name, not crash
    # inside compiled code.
    assert_rejected(lambda: mp.topk_indices("abc", 1), "g")


# --------------------------------------------------------------- random-k
@pytest.mark.parametrize(
    "n, k, batch, name",
    [(5, 0, None, "k"), (5, 6, None, "k"), (5, -1, None, "k"), (5, 2.0, None, "k"),
     (5, True, None, "k"), (0, 1, None, "n"), (-3, 1, None, "n"), (5.0, 2, None, "n"),
     (5, 2, 0, "batch"), (5, 2, -2, "batch"), (5, 2, 1.5, "batch")],
)
def test_random_indices_bad_arguments(n, k, batch, name):
    assert_rejected(lambda: mp.random_indices(n, k, batch=batch, rng=0), name)


# ---------------------------------------------------------- linear_backward
@pytest.mark.parametrize("k", [k for k in BAD_K if k is not None], ids=repr)  # None: dense
@pytest.mark.parametrize("unified", [False, True])
def test_backward_bad_k(k, unified):
    x, W, g = _problem()
    assert_rejected(lambda: mp.linear_backward(x, W, g, k, unified=unified), "k", x, W, g)


@pytest.mark.parametrize(
    "which, shape",
    [("x", (4,)), ("x", (3, 4, 1)), ("W", (6,)), ("W", (1, 6, 4)), ("g", (6,)), ("g", (3, 6, 1))],
)
def test_backward_wrong_ndim(which, shape):
    x, W, g = _problem()
    arrays = {"x": x, "W": W, "g": g}
    arrays[which] = np.ones(shape)
    assert_rejected(lambda: mp.linear_backward(arrays["x"], arrays["W"], arrays["g"], 2),
                    which, *arrays.values())


@pytest.mark.parametrize(
    "shapes",
    [((3, 5), (6, 4), (3, 6)),    # x has m=5, W has m=4
     ((3, 4), (6, 4), (2, 6)),    # batch differs
     ((3, 4), (6, 4), (3, 7)),    # n differs
     ((3, 4), (5, 4), (3, 6))],   # n differs
)
def test_backward_mismatched_shapes(shapes):
    x, W, g = (np.ones(s) for s in shapes)
    with pytest.raises(ERRORS) as info:
        mp.linear_backward(x, W, g, 2)
    message = str(info.value)
    # A shape mismatch involves two arguments: naming either of them is fine.
    names = ("x", "W", "g")
    assert any(re.search(rf"(?<![A-Za-z_]){n}(?![A-Za-z_])", message) for n in names), message


@pytest.mark.parametrize("which", ["x", "W", "g"])
@pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.bool_])
def test_backward_bad_dtype(which, dtype):
    x, W, g = _problem()
    arrays = {"x": x, "W": W, "g": g}
    arrays[which] = arrays[which].astype(dtype)
    assert_rejected(lambda: mp.linear_backward(arrays["x"], arrays["W"], arrays["g"], 2),
                    which, *arrays.values())


@pytest.mark.parametrize("which", ["x", "W", "g"])
def test_backward_mixed_float_dtypes(which):
    # One float dtype for all three arrays; silent up/down-casting would hide
    # a float64 copy of a large W on every call.
    x, W, g = _problem(np.float32)
    arrays = {"x": x, "W": W, "g": g}
    arrays[which] = arrays[which].astype(np.float64)
    with pytest.raises(ERRORS) as info:
        mp.linear_backward(arrays["x"], arrays["W"], arrays["g"], 2)
    assert re.search(rf"(?<![A-Za-z_]){which}(?![A-Za-z_])", str(info.value)), str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, None])
def test_backward_non_finite_g(bad, dtype, k):
    x, W, g = _problem(dtype)
    g[1, 4] = bad
    assert_rejected(lambda: mp.linear_backward(x, W, g, k), "g", x, W, g)


@pytest.mark.parametrize("dtype,huge", [(np.float32, 3e19), (np.float64, 3e154)])
def test_huge_finite_values_pass_the_finiteness_screen_silently(dtype, huge):
    # their sum of squares overflows; the exact test must accept them, without a warning
    x, W, g = _problem(dtype)
    g[1, 4] = huge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx, dW, db = mp.linear_backward(x, W, g, 2)
        idx = mp.topk_indices(g, 1)
    assert idx[1, 0] == 4 and db[4] == g[:, 4].sum()


@pytest.mark.parametrize(
    "indices",
    [np.array([[0, 1], [2, 6], [3, 4]]),        # 6 == n: out of range
     np.array([[0, 1], [2, -1], [3, 4]]),       # negative
     np.array([0, 6]),                          # shared, out of range
     np.array([-7, 1])],
    ids=["per_example_high", "per_example_negative", "shared_high", "shared_negative"],
)
def test_backward_indices_out_of_range(indices):
    x, W, g = _problem()
    assert_rejected(lambda: mp.linear_backward(x, W, g, indices=indices), "indices",
                    x, W, g, indices)


@pytest.mark.parametrize(
    "indices",
    [np.zeros((2, 2), dtype=np.int64),          # batch 2 != 3
     np.zeros((3, 2, 1), dtype=np.int64),       # 3-D
     np.arange(7, dtype=np.int64) % 6,          # k=7 > n=6 (and a duplicate)
     np.zeros((3, 0), dtype=np.int64),          # k=0
     np.zeros((0,), dtype=np.int64)],
    ids=["batch_mismatch", "3d", "k_above_n", "empty_rows", "empty"],
)
def test_backward_indices_wrong_shape(indices):
    x, W, g = _problem()
    assert_rejected(lambda: mp.linear_backward(x, W, g, indices=indices), "indices",
                    x, W, g, indices)


@pytest.mark.parametrize(
    "indices",
    [np.array([[0, 1], [2, 2], [3, 4]]), np.array([5, 5]), np.array([[1, 0, 1]] * 3)],
    ids=["per_example", "shared", "three"],
)
def test_backward_duplicate_indices(indices):
    x, W, g = _problem()
    assert_rejected(lambda: mp.linear_backward(x, W, g, indices=indices), "indices",
                    x, W, g, indices)


@pytest.mark.parametrize("indices", [np.array([0.0, 1.0]), np.array([[0.5, 1]] * 3),
                                     np.array([True, False]), [[0, "a"]] * 3])
def test_backward_indices_bad_dtype(indices):
    x, W, g = _problem()
    assert_rejected(lambda: mp.linear_backward(x, W, g, indices=indices), "indices",
                    x, W, g)


def test_backward_valid_inputs_are_not_modified():
    x, W, g = _problem(np.float32)
    indices = np.array([[5, 0], [1, 2], [3, 4]])
    before = [snapshot(a) for a in (x, W, g, indices)]
    mp.linear_backward(x, W, g, indices=indices)
    mp.linear_backward(x, W, g, 3, unified=True)
    mp.linear_backward(x, W, g, 3)
    for a, b in zip(before, (x, W, g, indices)):
        assert_identical(a, b, "input")


# --------------------------------------------------------------- optimizers
def _optimizers(params):
    return [mp.SGD(params, lr=0.1), mp.SGD(params, lr=0.1, momentum=0.9),
            mp.Adam(params), mp.Adam(params, lazy=False),
            mp.AdaGrad(params), mp.AdaGrad(params, lazy=False)]


def _warm_optimizers(dtype=np.float64):
    """Optimizers over a (6, 4) weight and a (6,) bias, each stepped once."""
    rng = np.random.default_rng(1)
    result = []
    for index in range(6):
        params = [rng.standard_normal((6, 4)).astype(dtype),
                  rng.standard_normal(6).astype(dtype)]
        opt = _optimizers(params)[index]
        opt.step([rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal(6).astype(dtype)])
        result.append((opt, params))
    return result


def _row_sparse(n, m, rows, dtype=np.float64):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, m)).astype(dtype)
    g = rng.standard_normal((2, n)).astype(dtype)
    return mp.linear_backward(x, np.zeros((n, m), dtype=dtype), g,
                              indices=np.asarray(rows))[1]


def _bad_grads():
    good_w = np.ones((6, 4))
    good_b = np.ones(6)
    nan_w = good_w.copy()
    nan_w[2, 1] = np.nan
    inf_b = good_b.copy()
    inf_b[0] = np.inf
    return {
        "too_few": [good_w],
        "too_many": [good_w, good_b, good_b],
        "not_a_list": good_w,
        "wrong_shape": [np.ones((6, 3)), good_b],
        "transposed_shape": [np.ones((4, 6)), good_b],
        "bias_wrong_shape": [good_w, np.ones(5)],
        "bias_2d": [good_w, np.ones((6, 1))],
        "int_dtype": [np.ones((6, 4), dtype=np.int64), good_b],
        "complex_dtype": [good_w, np.ones(6, dtype=np.complex128)],
        "float32_for_float64": [good_w.astype(np.float32), good_b],
        "row_sparse_float32": [_row_sparse(6, 4, [0, 2], np.float32), good_b],
        "nan": [nan_w, good_b],
        "inf": [good_w, inf_b],
        "row_sparse_wrong_n": [_row_sparse(7, 4, [0, 6]), good_b],
        "row_sparse_wrong_m": [_row_sparse(6, 3, [0, 5]), good_b],
        "row_sparse_for_bias": [good_w, _row_sparse(6, 1, [1])],
        "row_sparse_nan": [mp.RowSparse([1, 4], np.array([[0.0] * 4, [1.0, np.nan, 0.0, 0.0]]),
                                        (6, 4)), good_b],
        "row_sparse_inf": [mp.RowSparse([0], np.full((1, 4), -np.inf), (6, 4)), good_b],
        "string": [good_w, "grad"],
    }


@pytest.mark.parametrize("case", sorted(_bad_grads()))
def test_optimizer_bad_grads_change_nothing(case):
    for opt, params in _warm_optimizers():
        grads = _bad_grads()[case]
        params_before = snapshot(params)
        state_before = snapshot(opt.state_dict())
        with pytest.raises(ERRORS) as info:
            opt.step(grads)
        assert re.search(r"grad", str(info.value)), str(info.value)
        assert_identical(params_before, params, "params")
        assert_identical(state_before, opt.state_dict(), "optimizer state")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_error_in_a_later_gradient_leaves_earlier_params_unchanged(dtype):
    # Validation of every gradient must happen before any parameter moves.
    for opt, params in _warm_optimizers(dtype):
        bad_bias = np.ones(6, dtype=dtype)
        bad_bias[3] = np.nan
        grads = [_row_sparse(6, 4, [1, 3], dtype), bad_bias]
        params_before = snapshot(params)
        state_before = snapshot(opt.state_dict())
        with pytest.raises(ERRORS):
            opt.step(grads)
        assert_identical(params_before, params, "params")
        assert_identical(state_before, opt.state_dict(), "optimizer state")


@pytest.mark.parametrize(
    "make, name",
    [(lambda p: mp.SGD(p, lr=-0.1), "lr"),
     (lambda p: mp.SGD(p, lr=float("nan")), "lr"),
     (lambda p: mp.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
     (lambda p: mp.Adam(p, lr=-1e-3), "lr"),
     (lambda p: mp.Adam(p, betas=(1.0, 0.999)), "betas"),
     (lambda p: mp.Adam(p, betas=(0.9, -0.1)), "betas"),
     (lambda p: mp.Adam(p, betas=(0.9,)), "betas"),
     (lambda p: mp.Adam(p, eps=-1e-8), "eps"),
     (lambda p: mp.AdaGrad(p, lr=-0.01), "lr"),
     (lambda p: mp.AdaGrad(p, eps=-1.0), "eps")],
)
def test_optimizer_bad_hyperparameters(make, name):
    params = [np.ones((3, 2))]
    assert_rejected(lambda: make(params), name, params)


@pytest.mark.parametrize(
    "params",
    [[np.ones((3, 2), dtype=np.int64)], [np.ones(3, dtype=np.complex128)],
     [[1.0, 2.0]], np.ones((3, 2))],
    ids=["int", "complex", "list", "bare_array"],
)
@pytest.mark.parametrize("cls", [mp.SGD, mp.Adam, mp.AdaGrad], ids=lambda c: c.__name__)
def test_optimizer_bad_params(params, cls):
    kwargs = {"lr": 0.1}
    assert_rejected(lambda: cls(params, **kwargs), "params", params)


def test_optimizer_read_only_param_is_rejected():
    weight = np.ones((3, 2))
    weight.setflags(write=False)
    assert_rejected(lambda: mp.SGD([weight], lr=0.1), "params", weight)


def test_load_state_dict_rejects_mismatched_state():
    rng = np.random.default_rng(3)
    small = [rng.standard_normal((3, 2))]
    big = [rng.standard_normal((5, 2))]
    source = mp.Adam(small)
    source.step([rng.standard_normal((3, 2))])
    target = mp.Adam(big)
    target.step([rng.standard_normal((5, 2))])
    state_before = snapshot(target.state_dict())
    with pytest.raises(ERRORS):
        target.load_state_dict(source.state_dict())
    assert_identical(state_before, target.state_dict(), "optimizer state")


@pytest.mark.parametrize("indices", [np.array([0, 1]), np.array([[0, 1], [2, 3], [4, 5]])],
                         ids=["shared", "per_example"])
def test_backward_non_finite_g_with_explicit_indices(indices):
    x, W, g = _problem()
    g[0, 5] = np.nan
    assert_rejected(lambda: mp.linear_backward(x, W, g, indices=indices), "g", x, W, g, indices)


@pytest.mark.parametrize(
    "rows, values, shape",
    [([2, 1], np.ones((2, 3)), (4, 3)),          # not sorted
     ([1, 1], np.ones((2, 3)), (4, 3)),          # duplicate
     ([1, 4], np.ones((2, 3)), (4, 3)),          # out of range
     ([-1, 2], np.ones((2, 3)), (4, 3)),         # negative
     ([1, 2], np.ones((3, 3)), (4, 3)),          # values rows != len(rows)
     ([1, 2], np.ones((2, 2)), (4, 3)),          # values columns != shape[1]
     ([1, 2], np.ones((2, 3), dtype=np.int64), (4, 3)),
     ([1.0, 2.0], np.ones((2, 3)), (4, 3)),
     ([[1, 2]], np.ones((2, 3)), (4, 3))],
    ids=["unsorted", "duplicate", "high", "negative", "values_rows", "values_cols",
         "int_values", "float_rows", "2d_rows"],
)
def test_row_sparse_rejects_inconsistent_parts(rows, values, shape):
    with pytest.raises(ERRORS):
        mp.RowSparse(rows, values, shape)
