"""Layers, loss and MLP against independent references."""
import numpy as np
import pytest

import meprop_numba as mp
from meprop_numba.nn import MLP, Dropout, Linear, ReLU, Sequential, log_softmax, softmax_cross_entropy

from reference import cross_entropy_reference as _reference_cross_entropy


# ---------------------------------------------------------------- loss

@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_cross_entropy_matches_reference(dtype, rtol):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(dtype)
    labels = rng.integers(0, 5, 7)
    loss, grad = softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = _reference_cross_entropy(logits, labels)
    assert grad.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(grad, ref_grad, rtol=10 * rtol, atol=10 * rtol)


def test_cross_entropy_gradient_by_finite_differences():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4))
    labels = np.array([0, 3, 1])
    _, grad = softmax_cross_entropy(logits, labels)
    eps = 1e-6
    for idx in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (softmax_cross_entropy(plus, labels)[0] - softmax_cross_entropy(minus, labels)[0]) / (2 * eps)
        assert abs(numeric - grad[idx]) < 1e-8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype=dtype)
    loss, grad = softmax_cross_entropy(logits, np.array([1, 2]))
    # Example 0 puts all mass on class 0: its loss is 1e4; example 1 splits 50/50: log 2.
    np.testing.assert_allclose(loss, (1e4 + np.log(2)) / 2, rtol=1e-6)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_any_layout_and_non_finite_logits(dtype):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 4)).astype(dtype)
    labels = rng.integers(0, 4, 6)
    loss_c, grad_c = softmax_cross_entropy(logits, labels)
    loss_f, grad_f = softmax_cross_entropy(np.asfortranarray(logits), labels)
    assert loss_f == loss_c
    np.testing.assert_array_equal(grad_f, grad_c)
    # The caller (the training loop) detects divergence from a non-finite loss.
    for bad in (np.nan, np.inf):
        logits[2, 1] = bad
        loss, grad = softmax_cross_entropy(logits, labels)
        assert np.isnan(loss) and np.isnan(grad[2]).all() and np.isfinite(np.delete(grad, 2, 0)).all()


def test_cross_entropy_rejects_bad_input():
    with pytest.raises(TypeError, match="logits"):
        softmax_cross_entropy(np.zeros((2, 3), dtype=np.int32), np.array([0, 1]))
    with pytest.raises(TypeError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(IndexError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


# ---------------------------------------------------------------- layers

def _mlp_loss(model, x, y):
    return softmax_cross_entropy(model.forward(x, train=False), y)[0]


def test_two_layer_mlp_gradients_match_finite_differences():
    """k = n (dense back propagation) in float64 against central differences."""
    rng = np.random.default_rng(2)
    model = MLP(6, 5, 3, layers=2, k=5, dtype=np.float64, rng=3)
    x = rng.normal(size=(4, 6))
    y = np.array([0, 2, 1, 2])
    _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(grad)
    eps = 1e-6
    for param, g in zip(model.params(), model.grads()):
        analytic = g.to_dense() if isinstance(g, mp.RowSparse) else g
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            saved = param[idx]
            param[idx] = saved + eps
            up = _mlp_loss(model, x, y)
            param[idx] = saved - eps
            down = _mlp_loss(model, x, y)
            param[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["topk", "unified"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_meprop_with_k_equal_n_trains_like_dense(mode, dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 12)).astype(dtype)
    y = rng.integers(0, 4, 8)
    dense = MLP(12, 6, 4, layers=2, k=None, dtype=dtype, rng=5)
    meprop = MLP(12, 6, 4, layers=2, k=6, selection=mode, dtype=dtype, rng=5)
    opt_d = mp.Adam(dense.params(), lr=1e-2)
    opt_m = mp.Adam(meprop.params(), lr=1e-2)
    for _ in range(3):
        for model, opt in ((dense, opt_d), (meprop, opt_m)):
            _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
            model.backward(grad)
            opt.step(model.grads())
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(dense.params(), meprop.params()):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_linear_topk_keeps_k_entries_per_example():
    rng = np.random.default_rng(6)
    layer = Linear(5, 9, k=2, rng=0, dtype=np.float64)
    x = rng.normal(size=(3, 5))
    layer.forward(x, train=True)
    g = rng.normal(size=(3, 9))
    dx = layer.backward(g)
    dW, db = layer.grads()
    # Independent reference: mask g to its 2 largest |entries| per row.
    masked = np.zeros_like(g)
    for b in range(3):
        top = np.argsort(-np.abs(g[b]))[:2]
        masked[b, top] = g[b, top]
    np.testing.assert_allclose(dx, masked @ layer.weight, rtol=1e-12)
    np.testing.assert_allclose(dW.to_dense(), masked.T @ x, rtol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=1e-12)
    assert set(dW.rows) == set(np.flatnonzero(np.abs(masked).sum(axis=0)))


def test_linear_unified_and_random_modes():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 3))
    g = rng.normal(size=(4, 8))
    unified = Linear(3, 8, k=3, selection="unified", rng=0, dtype=np.float64)
    unified.forward(x, train=True)
    unified.backward(g)
    cols = np.sort(np.argsort(-np.abs(g).sum(axis=0))[:3])
    np.testing.assert_array_equal(unified.grads()[0].rows, cols)

    random = Linear(3, 8, k=3, selection="random", rng=0, dtype=np.float64)
    random.forward(x, train=True)
    replay = np.random.default_rng()
    replay.bit_generator.state = random.rng.bit_generator.state
    dx = random.backward(g)
    chosen = mp.random_indices(8, 3, batch=4, rng=replay)
    masked = np.zeros_like(g)
    np.put_along_axis(masked, chosen, np.take_along_axis(g, chosen, axis=1), axis=1)
    assert (np.count_nonzero(masked, axis=1) == 3).all()
    np.testing.assert_allclose(random.grads()[0].to_dense(), masked.T @ x, rtol=1e-12)
    np.testing.assert_allclose(dx, masked @ random.weight, rtol=1e-12)


def test_first_layer_returns_no_input_gradient_and_dense_path_is_exact():
    rng = np.random.default_rng(8)
    layer = Linear(4, 3, k=None, input_grad=False, rng=0, dtype=np.float64)
    x = rng.normal(size=(5, 4))
    layer.forward(x, train=True)
    g = rng.normal(size=(5, 3))
    assert layer.backward(g) is None
    np.testing.assert_allclose(layer.grads()[0].to_dense(), g.T @ x, rtol=1e-12)


def test_linear_forward_and_init():
    layer = Linear(100, 7, rng=0, dtype=np.float32)
    assert layer.weight.dtype == np.float32 and layer.weight.shape == (7, 100)
    assert np.abs(layer.weight).max() <= 0.1 and np.abs(layer.bias).max() <= 0.1
    x = np.random.default_rng(0).normal(size=(2, 100)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), x @ layer.weight.T + layer.bias, rtol=1e-5)
    assert Linear(3, 4, k=4).k is None  # k == out_features is dense
    # One example (1-D) and a stack of minibatches (3-D) broadcast as in x @ W.T.
    np.testing.assert_allclose(layer.forward(x[0]), x[0] @ layer.weight.T + layer.bias, rtol=1e-5)
    x3 = np.random.default_rng(1).normal(size=(3, 2, 100)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x3), x3 @ layer.weight.T + layer.bias, rtol=1e-5)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="selection"):
        Linear(3, 4, k=2, selection="best")
    with pytest.raises(ValueError, match="k"):
        Linear(3, 4, k=0)
    # k above out_features is refused exactly as linear_backward refuses it.
    with pytest.raises(ValueError) as layer_error:
        Linear(3, 4, k=5)
    with pytest.raises(ValueError) as functional_error:
        mp.linear_backward(np.zeros((1, 3)), np.zeros((4, 3)), np.zeros((1, 4)), k=5)
    assert str(layer_error.value) == str(functional_error.value) == "k must be in [1, 4], got 5"
    with pytest.raises(TypeError, match="dtype"):
        Linear(3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="p"):
        Dropout(1.0)
    with pytest.raises(RuntimeError, match="forward"):
        Linear(3, 4).backward(np.zeros((1, 4)))
    with pytest.raises(TypeError, match=r"layers\[1\].*ufunc"):
        Sequential([ReLU(), np.tanh])
    with pytest.raises(RuntimeError, match="forward"):
        ReLU().backward(np.zeros((1, 4)))


def test_relu_forward_backward():
    relu = ReLU()
    x = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.forward(x, train=True), [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 6.0, 7.0]])), [[0.0, 0.0, 7.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_after_linear_any_layout(dtype):
    rng = np.random.default_rng(3)
    layer, relu = Linear(6, 5, rng=0, dtype=dtype), ReLU()
    x = rng.normal(size=(4, 6)).astype(dtype)
    pre = layer.forward(x)
    np.testing.assert_allclose(pre, x @ layer.weight.T + layer.bias, rtol=1e-5)
    y = relu.forward(pre, train=True)
    assert y.flags.c_contiguous and y.dtype == dtype
    np.testing.assert_array_equal(y, np.where(pre > 0, pre, 0))
    g = rng.normal(size=(5, 4)).astype(dtype).T   # a transposed view: the NumPy fallback
    expected = np.where(pre > 0, g, 0)
    np.testing.assert_array_equal(relu.backward(g), expected)
    relu.forward(pre, train=True)
    np.testing.assert_array_equal(relu.backward(np.ascontiguousarray(g)), expected)
    # NaN and Inf pass through the forward (so a diverging run shows in the loss).
    pre = pre.copy()
    pre[1, 2], pre[2, 3] = np.nan, np.inf
    y = relu.forward(pre.T.copy().T)
    assert np.isnan(y[1, 2]) and y[2, 3] == np.inf


def test_dropout_masks_scales_and_backpropagates_the_same_mask():
    drop = Dropout(0.25, rng=0)
    x = np.ones((200, 50), dtype=np.float32)
    y = drop.forward(x, train=True)
    kept = y != 0
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    g = drop.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(g != 0, kept)
    np.testing.assert_allclose(g[kept], 2 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(drop.forward(x, train=False), x)


def test_mlp_structure_dropout_and_shared_rng():
    model = MLP(8, 6, 3, layers=3, k=2, dropout=0.5, rng=0)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "ReLU", "Dropout"] * 3 + ["Linear"]
    assert model.linear_layers[-1].k is None
    assert all(m.rng is model.rng for m in model.layers if hasattr(m, "rng"))
    x = np.ones((4, 8), dtype=np.float32)
    # Evaluation is deterministic; training draws fresh dropout masks.
    np.testing.assert_array_equal(model.forward(x), model.forward(x))
    assert not np.array_equal(model.forward(x, train=True), model.forward(x, train=True))
    assert len(model.params()) == 8 and len(model.grads()) == 8


def test_mlp_same_seed_same_model():
    a, b = MLP(5, 4, 2, rng=11), MLP(5, 4, 2, rng=11)
    for p, q in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q)


def test_sequential_with_sparse_optimizer_step_learns():
    """A few Adam steps on a separable toy problem lower the loss."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(64, 10))
    y = (x[:, 0] > 0).astype(np.int64)
    model = MLP(10, 32, 2, layers=1, k=4, dtype=np.float64, rng=1)
    opt = mp.Adam(model.params(), lr=1e-2)
    first = _mlp_loss(model, x, y)
    for _ in range(60):
        _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
        model.backward(grad)
        opt.step(model.grads())
    assert _mlp_loss(model, x, y) < 0.5 * first
    assert isinstance(model, Sequential)
