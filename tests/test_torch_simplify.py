"""Model simplification of PyTorch MePropLinear stacks: counting, physical removal, optimizer state."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'meprop_numba[torch]')")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from meprop_numba.simplify import PruneSchedule  # noqa: E402
from meprop_numba.torch import MePropLinear, convert, optim  # noqa: E402
from meprop_numba.torch.simplify import Simplifier, prunable_layers, remove_neurons, shrink_to  # noqa: E402
from reference import selection_mask, topk_reference, unified_topk_reference  # noqa: E402


def _mlp(k=3, hidden=(16, 12), selection="topk", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    sizes = (10, *hidden)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b, dtype=dtype), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(sizes[-1], 4, dtype=dtype))
    return convert(torch.nn.Sequential(*layers), k=k, selection=selection)


def _batches(seed, count, B=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, 10, generator=g, dtype=dtype), torch.randint(0, 4, (B,), generator=g))
            for _ in range(count)]


def _step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _output_grads(model):
    """Record each hidden layer's output gradient with hooks of the test's own."""
    grads = {i: [] for i in range(len(prunable_layers(model)))}

    def recorder(i):
        def forward_hook(module, inputs, out):
            if out.requires_grad:
                out.register_hook(lambda g: grads[i].append(g.detach().numpy().copy()))
        return forward_hook

    for i, (layer, _) in enumerate(prunable_layers(model)):
        layer.register_forward_hook(recorder(i))
    return grads


@settings(deadline=None, max_examples=6)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 12), selection=st.sampled_from(["topk", "unified"]))
def test_counts_equal_the_reference_selections_of_the_output_gradients(seed, k, selection):
    model = _mlp(k=k, selection=selection, seed=seed)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    grads = _output_grads(model)
    simplifier = Simplifier(model, opt, p=0.1)
    for x, y in _batches(seed, 3):
        _step(model, opt, x, y)
    for i, unit in enumerate(simplifier.units):
        expected = np.zeros(unit.width, dtype=np.int64)
        for g in grads[i]:
            if selection == "topk":
                kept = selection_mask(g.shape, topk_reference(g, k))
            else:
                kept = np.zeros(g.shape, dtype=bool)
                kept[:, unified_topk_reference(g, k)] = True
            expected += (kept & (g != 0)).sum(axis=0)
        np.testing.assert_array_equal(unit.counts, expected, err_msg=f"layer {i}")
        assert unit.seen == 24


def test_dense_hidden_layers_count_their_non_zero_output_gradients():
    model = _mlp(k=None)
    grads = _output_grads(model)
    simplifier = Simplifier(model, p=0.1)
    x, y = _batches(1, 1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for i, unit in enumerate(simplifier.units):
        np.testing.assert_array_equal(unit.counts, (grads[i][0] != 0).sum(axis=0))
    with torch.no_grad():
        model(x)  # no backward: nothing counted
    simplifier.close()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(unit.counts is None for unit in simplifier.units)


def test_counting_changes_no_gradient():
    plain, counted = _mlp(seed=3), _mlp(seed=3)
    Simplifier(counted)
    x, y = _batches(3, 1)[0]
    for model in (plain, counted):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(plain.parameters(), counted.parameters()):
        ga, gb = (g.to_dense() if g.is_sparse else g for g in (a.grad, b.grad))
        assert torch.equal(ga, gb)


def _masked(model, keeps):
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for (layer, reader), keep in zip(prunable_layers(masked), keeps):
            reader.weight[:, np.setdiff1d(np.arange(layer.out_features), keep)] = 0
    return masked


@pytest.mark.parametrize("make_opt", [lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2),
                                      lambda p: optim.SGD(p, lr=1e-2, momentum=0.9)])
def test_removal_preserves_the_masked_function_and_the_surviving_optimizer_state(make_opt):
    model = _mlp(k=3, hidden=(16, 12))
    for layer in model:
        if isinstance(layer, MePropLinear):
            layer.sparse_grad = not isinstance(make_opt(model.parameters()), torch.optim.Adam)
    opt = make_opt(model.parameters())
    for x, y in _batches(4, 3):
        _step(model, opt, x, y)
    keeps = [np.array([0, 3, 4, 9, 15]), np.array([1, 2, 11])]
    params = list(model.parameters())
    before = [{n: t.clone() for n, t in opt.state[p].items() if torch.is_tensor(t) and t.dim()} for p in params]
    weights = [p.detach().clone() for p in params]
    masked = _masked(model, keeps)
    x = _batches(5, 1)[0][0]
    assert remove_neurons(model, keeps, opt) is model
    assert torch.allclose(model.eval()(x), masked.eval()(x), rtol=1e-12, atol=1e-12)
    model.train()
    assert [p is q for p, q in zip(model.parameters(), params)] == [True] * 6
    k0, k1 = (torch.from_numpy(k) for k in keeps)
    # (rows, columns) each parameter keeps: 0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias
    cuts = [(k0, None), (k0, None), (k1, k0), (k1, None), (None, k1), (None, None)]
    for j, (rows, cols) in enumerate(cuts):
        for t in [weights[j]] + list(before[j].values()):
            want = t if rows is None else t[rows]
            want = want if cols is None else want[:, cols]
            got = params[j].detach() if t is weights[j] else opt.state[params[j]][
                next(n for n, v in before[j].items() if v is t)]
            assert torch.equal(got, want), j
    assert (model[0].out_features, model[2].in_features, model[2].out_features, model[4].in_features) == \
        (5, 5, 3, 3)
    assert model[2].k is None and model[0].k == 3  # 3 neurons left at k=3: dense from now on
    _step(model, opt, *_batches(6, 1)[0])   # the optimizer keeps working on the smaller tensors
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_prune_with_p_zero_trains_bit_identically():
    batches = _batches(7, 5)
    models = []
    for p in (None, 0.0):
        model = _mlp(seed=8)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        simplifier = None if p is None else Simplifier(model, opt, p=p, schedule=PruneSchedule(1, 5))
        for i, (x, y) in enumerate(batches):
            _step(model, opt, x, y)
            if simplifier is not None:
                assert all(r.size == 0 for r in simplifier.after_step(0, i, len(batches)))
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_prune_removes_the_rarely_kept_neurons_and_the_model_saves_and_loads():
    model = _mlp(k=2, hidden=(20, 20), seed=9)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    simplifier = Simplifier(model, opt, p=0.2)
    for x, y in _batches(9, 4):
        _step(model, opt, x, y)
    counts = [u.counts.copy() for u in simplifier.units]
    removed = simplifier.prune()
    for c, r in zip(counts, removed):
        np.testing.assert_array_equal(r, np.flatnonzero(c < 0.2 * 32))
    assert sum(r.size for r in removed) > 0, "the case must exercise a removal"
    assert simplifier.hidden_sizes == [20 - r.size for r in removed]
    assert all(u.seen == 0 and not u.counts.any() for u in simplifier.units)
    rebuilt = shrink_to(_mlp(k=2, hidden=(20, 20), seed=0), simplifier.hidden_sizes)
    rebuilt.load_state_dict(model.state_dict())
    x = _batches(10, 1)[0][0]
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    model.train()
    _step(model, opt, *_batches(11, 1)[0])  # counting goes on in the shrunk layers
    assert all(u.seen == 8 and u.counts.shape == (u.width,) for u in simplifier.units)


def test_refusals_change_nothing():
    with pytest.raises(TypeError):
        Simplifier(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="sparse_grad"):
        Simplifier(convert(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)),
                           k=2, sparse_grad=False))
    model = _mlp()
    state = copy.deepcopy(model.state_dict())
    for keeps in ([[0, 1]], [[0, 1], []], [[0, 1], [3, 2]], [[0, 16], [0]]):
        with pytest.raises(ValueError):
            remove_neurons(model, keeps)
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
