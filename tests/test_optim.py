"""Sparse (lazy) and dense optimizer steps against dense NumPy references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from reference import (
    examples,
    FLOAT_DTYPES,
    AdaGradReference,
    AdamReference,
    SGDReference,
    arrays_in,
    assert_identical,
    snapshot,
)

SETTINGS = settings(deadline=None, max_examples=examples(40))

OPTIMIZERS = {
    "sgd": (lambda params, lazy: mp.SGD(params, lr=0.1, lazy=lazy),
            lambda shape: SGDReference(shape, lr=0.1)),
    "momentum": (lambda params, lazy: mp.SGD(params, lr=0.1, momentum=0.9, lazy=lazy),
                 lambda shape: SGDReference(shape, lr=0.1, momentum=0.9)),
    "adam": (lambda params, lazy: mp.Adam(params, lr=0.01, lazy=lazy),
             lambda shape: AdamReference(shape, lr=0.01)),
    "adam_custom": (lambda params, lazy: mp.Adam(params, lr=0.05, betas=(0.5, 0.9), eps=1e-3,
                                                 lazy=lazy),
                    lambda shape: AdamReference(shape, lr=0.05, betas=(0.5, 0.9), eps=1e-3)),
    "adagrad": (lambda params, lazy: mp.AdaGrad(params, lr=0.1, lazy=lazy),
                lambda shape: AdaGradReference(shape, lr=0.1)),
    "adagrad_custom": (lambda params, lazy: mp.AdaGrad(params, lr=0.3, eps=1e-2, lazy=lazy),
                       lambda shape: AdaGradReference(shape, lr=0.3, eps=1e-2)),
}
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
       np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)}


def row_sparse_gradient(rng, n, m, rows, dtype):
    """A RowSparse gradient on ``rows`` of an (n, m) weight, via the public API.

    linear_backward with shared ``indices`` gives dW = g[:, rows]^T x on
    exactly those rows, so no constructor beyond the contract is needed.
    """
    x = rng.standard_normal((2, m)).astype(dtype)
    g = rng.standard_normal((2, n)).astype(dtype)
    W = np.zeros((n, m), dtype=dtype)
    _, dW, _ = mp.linear_backward(x, W, g, indices=np.asarray(rows, dtype=np.int64))
    np.testing.assert_array_equal(dW.rows, np.sort(rows))
    return dW


@st.composite
def step_plans(draw):
    """dtype, weight shape, and for each step the rows its gradient touches."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 5))
    steps = draw(st.lists(
        st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True),
        min_size=1, max_size=4,
    ))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, n, m, steps, seed


def run_sequence(name, lazy, dtype, n, m, steps, seed, reference_lazy):
    """Step the library optimizer and the reference on a weight and a bias.

    The weight gets a RowSparse gradient on the planned rows; the bias a dense
    gradient every step.  ``reference_lazy`` chooses whether the reference
    updates only the gradient's rows or every row with the densified gradient.
    """
    rng = np.random.default_rng(seed)
    make_opt, make_ref = OPTIMIZERS[name]
    weight = rng.standard_normal((n, m)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    ref_weight, ref_bias = weight.astype(np.float64), bias.astype(np.float64)
    ref_w_opt, ref_b_opt = make_ref((n, m)), make_ref((n,))
    params = [weight, bias]
    opt = make_opt(params, lazy)
    for rows in steps:
        grad_w = row_sparse_gradient(rng, n, m, rows, dtype)
        grad_b = rng.standard_normal(n).astype(dtype)
        dense_w = grad_w.to_dense().astype(np.float64)
        ref_w_opt.step(ref_weight, dense_w, rows=np.sort(rows) if reference_lazy else None)
        ref_b_opt.step(ref_bias, grad_b.astype(np.float64))
        opt.step([grad_w, grad_b])
        assert params[0] is weight and params[1] is bias
        assert weight.dtype == dtype and bias.dtype == dtype
    np.testing.assert_allclose(weight, ref_weight, **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(bias, ref_bias, **TOL[np.dtype(dtype)])
    return opt, weight, bias


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@SETTINGS
@given(plan=step_plans())
def test_dense_mode_equals_dense_optimizer_on_densified_gradient(name, plan):
    # lazy=False: every row is updated as the dense optimizer would (Adam's
    # and momentum's state decays where the gradient is zero).
    run_sequence(name, False, *plan, reference_lazy=False)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@SETTINGS
@given(plan=step_plans())
def test_lazy_mode_equals_reference_restricted_to_rows(name, plan):
    # Lazy step: the dense formulas applied to the gradient's rows only, with
    # the step count (Adam's bias correction) counted per parameter.
    run_sequence(name, True, *plan, reference_lazy=True)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adagrad_custom"])
@SETTINGS
@given(plan=step_plans())
def test_lazy_equals_dense_where_they_must_agree(name, plan):
    # Plain SGD and AdaGrad leave zero-gradient rows exactly where they are,
    # so the lazy update must equal the dense optimizer on any rows.
    run_sequence(name, True, *plan, reference_lazy=False)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lazy_equals_dense_when_every_row_is_touched(name, dtype):
    n, m = 6, 3
    steps = [list(range(n)), list(reversed(range(n))), list(range(n))]
    lazy = run_sequence(name, True, dtype, n, m, steps, 3, reference_lazy=False)
    dense = run_sequence(name, False, dtype, n, m, steps, 3, reference_lazy=False)
    np.testing.assert_allclose(lazy[1], dense[1], **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_ndarray_gradients_equal_dense_optimizer(name, lazy, dtype):
    rng = np.random.default_rng(7)
    make_opt, make_ref = OPTIMIZERS[name]
    weight = rng.standard_normal((5, 4)).astype(dtype)
    ref_weight = weight.astype(np.float64)
    ref = make_ref(weight.shape)
    opt = make_opt([weight], lazy)
    for _ in range(3):
        grad = rng.standard_normal(weight.shape).astype(dtype)
        grad[1] = 0.0  # a zero row is still a touched row for a dense gradient
        opt.step([grad])
        ref.step(ref_weight, grad.astype(np.float64))
    np.testing.assert_allclose(weight, ref_weight, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("name", ["momentum", "adam", "adagrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lazy_leaves_untouched_rows_and_their_state_unchanged(name, dtype):
    rng = np.random.default_rng(1)
    n, m = 7, 3
    weight = rng.standard_normal((n, m)).astype(dtype)
    opt = OPTIMIZERS[name][0]([weight], True)
    opt.step([row_sparse_gradient(rng, n, m, list(range(n)), dtype)])  # fill all state
    touched = [1, 4]
    untouched = [0, 2, 3, 5, 6]
    param_before = weight.copy()
    state_before = snapshot(opt.state_dict())
    for _ in range(3):
        opt.step([row_sparse_gradient(rng, n, m, touched, dtype)])
    assert weight[untouched].tobytes() == param_before[untouched].tobytes()
    assert not np.array_equal(weight[touched], param_before[touched])
    # Per-row state (arrays shaped like the weight) keeps its untouched rows.
    before = [a for a in arrays_in(state_before) if a.shape == (n, m)]
    after = [a for a in arrays_in(opt.state_dict()) if a.shape == (n, m)]
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a[untouched].tobytes() == b[untouched].tobytes()


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_dense_mode_moves_untouched_rows_through_decaying_state(name):
    # The observable difference between the modes: with momentum state, a
    # dense step moves rows whose gradient is zero, a lazy step does not.
    rng = np.random.default_rng(2)
    n, m = 4, 2
    results = {}
    for lazy in (True, False):
        weight = np.ones((n, m))
        opt = OPTIMIZERS[name][0]([weight], lazy)
        opt.step([row_sparse_gradient(np.random.default_rng(0), n, m, [0, 1, 2, 3], np.float64)])
        after_first = weight.copy()
        opt.step([row_sparse_gradient(rng, n, m, [2], np.float64)])
        results[lazy] = (after_first, weight)
    first, final = results[True]
    np.testing.assert_array_equal(final[[0, 1, 3]], first[[0, 1, 3]])
    first, final = results[False]
    assert np.all(final[[0, 1, 3]] != first[[0, 1, 3]])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_none_gradient_skips_the_parameter(name):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 2))
    b = rng.standard_normal(3)
    opt = OPTIMIZERS[name][0]([a, b], True)
    a_before, b_before = a.copy(), b.copy()
    opt.step([None, rng.standard_normal(3)])
    np.testing.assert_array_equal(a, a_before)
    assert not np.array_equal(b, b_before)
    b_before = b.copy()
    opt.step([rng.standard_normal((3, 2)), None])
    np.testing.assert_array_equal(b, b_before)
    assert not np.array_equal(a, a_before)


def _is_plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(key, (str, int)) and _is_plain(v) for key, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    return isinstance(obj, (np.ndarray, int, float, bool, str, np.number, type(None)))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("lazy", [True, False])
def test_state_dict_round_trip_continues_bit_identically(name, lazy):
    rng = np.random.default_rng(9)
    make_opt = OPTIMIZERS[name][0]
    n, m = 6, 3
    weight = rng.standard_normal((n, m)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    opt = make_opt([weight, bias], lazy)
    for rows in ([0, 2], [1, 2, 5]):
        opt.step([row_sparse_gradient(rng, n, m, rows, np.float32),
                  rng.standard_normal(n).astype(np.float32)])
    state = opt.state_dict()
    assert isinstance(state, dict) and _is_plain(state)
    saved = snapshot(state)

    weight2, bias2 = weight.copy(), bias.copy()
    restored = make_opt([weight2, bias2], lazy)
    restored.load_state_dict(snapshot(saved))
    for rows in ([3], [0, 1, 2, 3, 4, 5], [4, 2]):
        grads_seed = int(rng.integers(1 << 30))
        for o in (opt, restored):
            r = np.random.default_rng(grads_seed)
            o.step([row_sparse_gradient(r, n, m, rows, np.float32),
                    r.standard_normal(n).astype(np.float32)])
    assert weight.tobytes() == weight2.tobytes()
    assert bias.tobytes() == bias2.tobytes()
    assert_identical(opt.state_dict(), restored.state_dict())


@pytest.mark.parametrize("name", ["momentum", "adam", "adagrad"])
def test_state_dict_is_a_snapshot_not_a_live_view(name):
    # A checkpoint taken now must not change when training goes on.
    rng = np.random.default_rng(10)
    weight = rng.standard_normal((4, 3))
    opt = OPTIMIZERS[name][0]([weight], True)
    opt.step([rng.standard_normal((4, 3))])
    state = opt.state_dict()
    saved = snapshot(state)
    opt.step([rng.standard_normal((4, 3))])
    assert_identical(state, saved)


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad"])
@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_non_contiguous_params_are_updated_in_place_or_rejected(name, layout):
    # A parameter that is a view must really change in place (an internal
    # contiguous copy would silently drop the update) or be refused by name.
    rng = np.random.default_rng(12)
    base = rng.standard_normal((6, 8))
    base_before = base.copy()
    weight = np.asfortranarray(base) if layout == "fortran" else base[:, ::2]
    ref_weight = np.array(weight, dtype=np.float64)
    ref = OPTIMIZERS[name][1](weight.shape)
    try:
        opt = OPTIMIZERS[name][0]([weight], True)
    except (ValueError, TypeError) as error:
        assert "param" in str(error)
        return
    for rows in ([0, 3], [1, 2, 5]):
        grad = row_sparse_gradient(rng, 6, 4 if layout == "strided" else 8, rows, np.float64)
        opt.step([grad])
        ref.step(ref_weight, grad.to_dense(), rows=np.array(rows))
    np.testing.assert_allclose(weight, ref_weight, **TOL[np.dtype(np.float64)])
    if layout == "strided":  # the columns between the view's are not touched
        np.testing.assert_array_equal(base[:, 1::2], base_before[:, 1::2])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_empty_row_sparse_gradient_moves_nothing_lazily(name):
    weight = np.random.default_rng(13).standard_normal((5, 3))
    before = weight.copy()
    opt = OPTIMIZERS[name][0]([weight], True)
    opt.step([mp.RowSparse(np.zeros(0, dtype=np.int64), np.zeros((0, 3)), (5, 3))])
    np.testing.assert_array_equal(weight, before)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("lazy", [True, False])
def test_constructed_row_sparse_equals_its_dense_form(name, lazy):
    # A RowSparse built by hand steps exactly like its dense form would in
    # the matching reference (lazy: its rows only; dense mode: every row).
    rng = np.random.default_rng(14)
    weight = rng.standard_normal((6, 2))
    ref_weight = weight.copy()
    opt, ref = OPTIMIZERS[name][0]([weight], lazy), OPTIMIZERS[name][1](weight.shape)
    for rows in ([0, 5], [2], [0, 1, 2, 3, 4, 5]):
        values = rng.standard_normal((len(rows), 2))
        grad = mp.RowSparse(rows, values, (6, 2))
        dense = np.zeros((6, 2))
        dense[rows] = values
        np.testing.assert_array_equal(grad.to_dense(), dense)
        opt.step([grad])
        ref.step(ref_weight, dense, rows=np.array(rows) if lazy else None)
    np.testing.assert_allclose(weight, ref_weight, **TOL[np.dtype(np.float64)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_decaying_state_is_flushed_to_zero_not_left_subnormal(dtype, name):
    # After one gradient g, zero gradients make Adam's first moment decay as
    # (1 - b1) g b1^t and a momentum velocity as g mu^t.  Run exactly until
    # an unflushed state would sit in the subnormal range (about tiny / 1000);
    # there it must be exactly zero instead (subnormal arithmetic is two
    # orders of magnitude slower on x86).
    p = np.ones((3, 4), dtype=dtype)
    g = np.full_like(p, 1e-3)
    if name == "adam":
        opt, start, rate = mp.Adam([p], betas=(0.9, 0.999), lazy=False), 0.1 * 1e-3, 0.9
    else:
        opt, start, rate = mp.SGD([p], lr=0.1, momentum=0.5, lazy=False), 1e-3, 0.5
    tiny = float(np.finfo(dtype).tiny)
    steps = int(np.ceil(np.log(tiny * 1e-3 / start) / np.log(rate)))
    assert start * rate ** (steps - 1) > np.finfo(dtype).smallest_subnormal
    opt.step([g])
    zero = np.zeros_like(p)
    for _ in range(steps):
        opt.step([zero])
    state = opt.state[0]["m" if name == "adam" else "velocity"]
    np.testing.assert_array_equal(state, 0)
