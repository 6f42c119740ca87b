"""Module.parameters / named_parameters / state_dict / load_state_dict, and the MLP's per-layer k."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from meprop_numba.nn import LSTM, MLP, Dropout, Embedding, Linear, ReLU, Sequential, softmax_cross_entropy
from meprop_numba.tasks.pos import Batch, POSTagger
from reference import assert_identical, masked_backward_reference, selection_mask, snapshot, topk_reference



def _tagger(seed, dtype=np.float32):
    return POSTagger(12, [3] * 7, 5, word_dim=4, feature_dim=2, hidden=6, bidirectional=True,
                     k=2, dtype=dtype, rng=seed)


def _tagger_input():
    words = np.array([[2, 3, 4], [5, 6, 0]])
    feats = np.ones((2, 3, 7), dtype=np.int64)
    return Batch(words, feats, np.array([[1, 2, 3], [4, 1, 0]]), np.array([3, 2]))


# (name, factory(seed, dtype), input) for every kind of module that holds parameters.
MODELS = {
    "linear": (lambda seed, dtype: Linear(4, 3, k=2, dtype=dtype, rng=seed),
               lambda dtype: np.linspace(-1, 1, 8).reshape(2, 4).astype(dtype)),
    "embedding": (lambda seed, dtype: Embedding(7, 3, padding_idx=0, dtype=dtype, rng=seed),
                  lambda dtype: np.array([[1, 2, 0], [6, 6, 3]])),
    "lstm": (lambda seed, dtype: LSTM(3, 4, 2, bidirectional=True, k=2, dtype=dtype, rng=seed),
             lambda dtype: np.linspace(-1, 1, 30).reshape(2, 5, 3).astype(dtype)),
    "mlp": (lambda seed, dtype: MLP(5, 6, 3, layers=2, k=[2, None], dropout=0.1, dtype=dtype,
                                    rng=seed),
            lambda dtype: np.linspace(-1, 1, 10).reshape(2, 5).astype(dtype)),
    "sequential": (lambda seed, dtype: Sequential([Linear(5, 4, dtype=dtype, rng=seed), ReLU(),
                                                    Sequential([Linear(4, 2, dtype=dtype,
                                                                       rng=seed + 1)])]),
                   lambda dtype: np.linspace(-1, 1, 10).reshape(2, 5).astype(dtype)),
    "pos_tagger": (_tagger, lambda dtype: _tagger_input()),
}


def _model(name, seed, dtype=np.float32):
    return MODELS[name][0](seed, dtype)


def _output(name, model, dtype=np.float32):
    return model(MODELS[name][1](dtype))


# ------------------------------------------------------------- names like torch
def test_mlp_names_match_torch_sequential():
    # The same layer list in torch: Linear, ReLU, Dropout per hidden layer, then Linear.
    torch = pytest.importorskip("torch", reason="torch (the 'bench' extra) names the reference")
    model = MLP(5, 6, 3, layers=2, dropout=0.1, rng=0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(6, 3))
    expected = [(name, tuple(p.shape)) for name, p in ref.named_parameters()]
    assert [(name, p.shape) for name, p in model.named_parameters()] == expected
    assert list(model.state_dict()) == [name for name, _ in expected]


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_lstm_names_match_torch_lstm(num_layers, bidirectional):
    torch = pytest.importorskip("torch", reason="torch (the 'bench' extra) names the reference")
    model = LSTM(3, 4, num_layers, bidirectional=bidirectional, rng=0)
    ref = torch.nn.LSTM(3, 4, num_layers, bidirectional=bidirectional)
    expected = []
    for name, p in ref.named_parameters():
        if name.startswith("bias_hh"):
            continue  # torch's two biases are one here: bias_ih + bias_hh -> bias
        expected.append((name.replace("bias_ih", "bias"), tuple(p.shape)))
    assert [(name, p.shape) for name, p in model.named_parameters()] == expected


def test_tagger_names_follow_its_attributes():
    names = list(_tagger(0).state_dict())
    assert names == ["word_embedding.weight", "feature_embedding.weight",
                     "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_l0",
                     "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse",
                     "lstm.bias_l0_reverse", "output.weight", "output.bias"]


@pytest.mark.parametrize("name", list(MODELS))
def test_parameters_are_the_live_arrays_aligned_with_grads(name):
    model = _model(name, 0)
    params = model.parameters()
    named = [p for _, p in model.named_parameters()]
    assert len(named) == len(params) == len(model.params()) > 0
    assert all(a is b is c for a, b, c in zip(named, params, model.params()))
    assert len({id(p) for p in params}) == len(params)
    x = MODELS[name][1](np.float32)
    y = model.forward(x, train=True)
    model.backward(np.ones_like(y))
    grads = model.grads()
    assert len(grads) == len(params)
    for p, g in zip(params, grads):
        assert g is None or g.shape == p.shape


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_the_same_model(name, dtype):
    source, target = _model(name, 1, dtype), _model(name, 2, dtype)
    assert not np.array_equal(_output(name, source, dtype), _output(name, target, dtype))
    state = source.state_dict()
    arrays_before = target.parameters()
    assert target.load_state_dict(state) is None
    # Loaded in place: the arrays an optimizer holds are the ones that changed.
    assert all(a is b for a, b in zip(arrays_before, target.parameters()))
    assert_identical(target.state_dict(), source.state_dict())
    np.testing.assert_array_equal(_output(name, target, dtype), _output(name, source, dtype))


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_is_a_copy(name):
    model = _model(name, 0)
    state = model.state_dict()
    kept = snapshot(state)
    for p in model.parameters():
        p += 1
    assert_identical(state, kept)
    assert not any(np.shares_memory(v, p) for v in state.values() for p in model.parameters())


def test_optimizer_keeps_training_the_loaded_parameters():
    model, other = MLP(5, 6, 3, layers=1, rng=0), MLP(5, 6, 3, layers=1, rng=1)
    opt = mp.SGD(model.parameters(), lr=0.5)
    model.load_state_dict(other.state_dict())
    x, y = np.eye(5, dtype=np.float32)[:3], np.array([0, 1, 2])
    _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(grad)
    opt.step(model.grads())
    expected = other.state_dict()["2.weight"] - 0.5 * (grad.T @ np.maximum(
        x @ other.state_dict()["0.weight"].T + other.state_dict()["0.bias"], 0))
    np.testing.assert_allclose(model.state_dict()["2.weight"], expected, rtol=1e-5, atol=1e-6)


def test_values_that_alias_other_parameters_are_read_before_any_change():
    # Two same-shape weights swapped, given as the live arrays themselves.
    model = Sequential([Linear(4, 4, rng=0), Linear(4, 4, rng=1)])
    first, second = model.layers[0].weight.copy(), model.layers[1].weight.copy()
    state = model.state_dict()
    state["0.weight"], state["1.weight"] = model.layers[1].weight, model.layers[0].weight
    model.load_state_dict(state)
    np.testing.assert_array_equal(model.layers[0].weight, second)
    np.testing.assert_array_equal(model.layers[1].weight, first)


# -------------------------------------------------------- bad input changes nothing
def _bad_states(model):
    """(label, state, error type, message pattern); the bad entry is the LAST key."""
    state = model.state_dict()
    names = list(state)
    last = names[-1]
    missing = {k: v for k, v in state.items() if k != last}
    unexpected = dict(state, **{"extra.weight": state[last]})
    renamed = {(k if k != last else last + "_x"): v for k, v in state.items()}
    wrong_shape = dict(state, **{last: np.zeros(state[last].shape + (1,), state[last].dtype)})
    wrong_dtype = dict(state, **{last: state[last].astype(np.float64)})
    as_list = dict(state, **{last: state[last].tolist()})
    return [
        ("missing", missing, ValueError, rf"missing keys \['{last}'\]"),
        ("unexpected", unexpected, ValueError, r"unexpected keys \['extra.weight'\]"),
        ("renamed", renamed, ValueError, rf"missing keys \['{last}'\].*'{last}_x'"),
        ("shape", wrong_shape, ValueError, rf"state_dict\['{last}'\] has shape"),
        ("dtype", wrong_dtype, TypeError, rf"state_dict\['{last}'\] has dtype float64"),
        ("list", as_list, TypeError, rf"state_dict\['{last}'\] must be an array"),
        ("not a mapping", list(state.values()), TypeError, "mapping"),
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_bad_state_leaves_the_model_unchanged(name):
    model = _model(name, 0)
    source = _model(name, 5).state_dict()  # other values, so a partial load would show
    before = snapshot(model.state_dict())
    out_before = _output(name, model)
    for label, state, error, pattern in _bad_states(model):
        # Fill the valid entries from another model: any half-done load would change them.
        if isinstance(state, dict):
            state = {k: (source[k] if k in source and np.shape(v) == source[k].shape
                         and getattr(v, "dtype", None) == source[k].dtype else v)
                     for k, v in state.items()}
        with pytest.raises(error, match=pattern):
            model.load_state_dict(state)
        assert_identical(model.state_dict(), before, f"after the {label} state")
    np.testing.assert_array_equal(_output(name, model), out_before)


@settings(deadline=None, max_examples=25)
@given(st.data())
def test_any_single_bad_entry_changes_nothing(data):
    model = MLP(3, 4, 2, layers=2, rng=0)
    state = MLP(3, 4, 2, layers=2, rng=9).state_dict()
    key = data.draw(st.sampled_from(list(state)))
    kind = data.draw(st.sampled_from(["shape", "dtype", "drop"]))
    if kind == "shape":
        state[key] = np.zeros(state[key].size + 1, state[key].dtype)
    elif kind == "dtype":
        state[key] = state[key].astype(np.float16)
    else:
        del state[key]
    before = snapshot(model.state_dict())
    with pytest.raises((TypeError, ValueError), match=key):
        model.load_state_dict(state)
    assert_identical(model.state_dict(), before)


# ------------------------------------------------------------------ per-layer k
def test_per_layer_k_builds_each_hidden_layer():
    model = MLP(8, 6, 3, layers=3, k=[2, None, 6], rng=0)
    assert [layer.k for layer in model.linear_layers] == [2, None, None, None]
    assert [layer.k for layer in MLP(8, 6, 3, layers=3, k=4, rng=0).linear_layers] == [4, 4, 4, None]


def test_per_layer_k_gradients_match_masked_dense_reference():
    rng = np.random.default_rng(0)
    model = MLP(5, 7, 3, layers=2, k=[None, 2], dtype=np.float64, rng=1)
    x = rng.standard_normal((4, 5))
    y = np.array([0, 2, 1, 0])
    _, g_out = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(g_out)
    grads = model.grads()
    W0, b0, W1, b1, W2, b2 = [p.astype(np.float64) for p in model.parameters()]
    h0 = np.maximum(x @ W0.T + b0, 0)
    h1 = np.maximum(h0 @ W1.T + b1, 0)
    _, dW2, _, _, _, _ = masked_backward_reference(h1, W2, g_out)
    g1 = (g_out @ W2) * (h1 > 0)
    mask1 = selection_mask(g1.shape, topk_reference(g1, 2))  # meProp in the second layer
    dh0, dW1, db1, _, _, _ = masked_backward_reference(h0, W1, g1, mask1)
    g0 = dh0 * (h0 > 0)
    _, dW0, db0, _, _, _ = masked_backward_reference(x, W0, g0)  # dense first layer
    for got, want in zip(grads[:4], (dW0, db0, dW1, db1)):
        got = got.to_dense() if isinstance(got, mp.RowSparse) else got
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[4].to_dense(), dW2, rtol=1e-10, atol=1e-12)
    assert len(grads[2].rows) <= 4 * 2 and len(grads[0].rows) == 7


@pytest.mark.parametrize("k,error,pattern", [
    ([2], ValueError, r"one value per hidden layer \(2\), got 1"),
    ([2, 3, 4], ValueError, r"one value per hidden layer"),
    ([2, 7], ValueError, r"k\[1\] must be in \[1, 6\], got 7"),
    ([0, None], ValueError, r"k\[0\] must be in \[1, 6\], got 0"),
    ([2.0, None], TypeError, r"k\[0\] must be an integer"),
    (7, ValueError, r"k must be in \[1, 6\], got 7"),
    ("20", TypeError, "k must be an integer, None or a sequence"),
    (2.5, TypeError, "k must be an integer, None or a sequence"),
    (True, TypeError, "k must be an integer"),
])
def test_per_layer_k_errors(k, error, pattern):
    with pytest.raises(error, match=pattern):
        MLP(4, 6, 3, layers=2, k=k)


def test_output_k_above_n_classes_is_refused():
    with pytest.raises(ValueError, match=r"output_k must be in \[1, 3\], got 4"):
        MLP(4, 6, 3, output_k=4)


@pytest.mark.parametrize("scope,limit", [("per_gate", 4), ("concat", 16)])
def test_lstm_k_above_its_limit_is_refused(scope, limit):
    LSTM(3, 4, k=limit, scope=scope)
    with pytest.raises(ValueError, match=rf"k must be in \[1, {limit}\], got {limit + 1}"):
        LSTM(3, 4, k=limit + 1, scope=scope)


def test_calling_a_module_is_inference():
    # model(x) keeps nothing for backward and turns dropout off, so it is deterministic.
    model = MLP(5, 6, 3, layers=1, k=2, dropout=0.5, rng=0)
    x = np.ones((2, 5), dtype=np.float32)
    np.testing.assert_array_equal(model(x), model(x))
    np.testing.assert_array_equal(model(x), model.forward(x, train=False))
    with pytest.raises(RuntimeError, match=r"module\(x\), runs inference"):
        model.backward(np.ones((2, 3), dtype=np.float32))
    lstm = LSTM(3, 4, rng=0)
    xs = np.ones((1, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(lstm(xs, lengths=[1]), lstm.forward(xs, lengths=[1]))
    with pytest.raises(RuntimeError, match="runs inference"):
        lstm.backward(np.ones((1, 2, 4), dtype=np.float32))
