"""Model simplification: selection counts, the prune, physical shrinking, the schedule."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from meprop_numba.nn import MLP, Dropout, Linear, Module, ReLU, Sequential, softmax_cross_entropy
from meprop_numba.simplify import (PruneSchedule, Simplifier, prunable_layers, prunable_units,
                                   remove_neurons, shrink_to)

from reference import AdamReference, selection_mask, snapshot, topk_reference, unified_topk_reference


def _batches(seed, count, B=16, d=12, classes=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((B, d)).astype(dtype), rng.integers(0, classes, B))
            for _ in range(count)]


def _train_step(model, opt, x, y):
    _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(grad)
    opt.step(model.grads())


def _trained(seed, k=3, p=0.3, steps=3):
    """A float64 MLP(12, 16, 4) with Adam and a Simplifier, trained `steps` minibatches."""
    model = MLP(12, 16, 4, k=k, dtype=np.float64, rng=seed)
    opt = mp.Adam(model.parameters(), lr=1e-2)
    simplifier = Simplifier(model, opt, p=p)
    for x, y in _batches(seed, steps):
        _train_step(model, opt, x, y)
    return model, opt, simplifier


# ------------------------------------------------------------------ counting

@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 9), n=st.integers(1, 20),
       data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_counts_equal_the_reference_topk_selections(seed, B, n, data, dtype):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    layer = Linear(5, n, k=k, dtype=dtype, rng=0)
    layer.count_selections()
    expected = np.zeros(n, dtype=np.int64)
    for _ in range(3):
        x = rng.standard_normal((B, 5)).astype(dtype)
        # Continuous gradients with exact zeros (ReLUs that were off): the
        # non-zero entries never tie, and a kept zero does not count.
        g = rng.uniform(-1, 1, (B, n)).astype(dtype)
        g[rng.random((B, n)) < 0.4] = 0
        layer.forward(x, train=True)
        layer.backward(g)
        expected += (selection_mask((B, n), topk_reference(g, k)) & (g != 0)).sum(axis=0)
    np.testing.assert_array_equal(layer.selection_counts, expected)
    assert layer.counted_examples == 3 * B


def test_unified_counts_each_shared_column_once_per_example():
    rng = np.random.default_rng(1)
    layer = Linear(5, 12, k=4, selection="unified", dtype=np.float64, rng=0)
    layer.count_selections()
    expected = np.zeros(12, dtype=np.int64)
    for B in (3, 7):
        g = rng.uniform(-1, 1, (B, 12))
        g[0, :] = 0  # an example whose gradient is zero counts for no column
        layer.forward(rng.standard_normal((B, 5)), train=True)
        layer.backward(g)
        expected[unified_topk_reference(g, 4)] += B - 1
    np.testing.assert_array_equal(layer.selection_counts, expected)
    assert layer.counted_examples == 10


def test_random_counts_follow_the_drawn_selections():
    rng = np.random.default_rng(2)
    layer = Linear(5, 15, k=3, selection="random", dtype=np.float64, rng=7)
    twin = np.random.default_rng(7)
    twin.uniform(size=15 * 5), twin.uniform(size=15)  # the twin draws the same initialisation
    layer.count_selections()
    x, g = rng.standard_normal((6, 5)), rng.uniform(-1, 1, (6, 15))
    layer.forward(x, train=True)
    layer.backward(g)
    drawn = mp.random_indices(15, 3, batch=6, rng=twin)
    np.testing.assert_array_equal(layer.selection_counts, selection_mask((6, 15), drawn).sum(axis=0))
    np.testing.assert_array_equal(np.flatnonzero(layer.selection_counts), layer.grads()[0].rows)


def test_dense_counts_every_non_zero_entry_and_stop_drops_the_counts():
    layer = Linear(3, 4, dtype=np.float64, rng=0)
    layer.count_selections()
    layer.forward(np.ones((5, 3)), train=True)
    g = np.ones((5, 4))
    g[:3, 1] = 0
    layer.backward(g)
    np.testing.assert_array_equal(layer.selection_counts, [5, 2, 5, 5])
    layer.count_selections(False)
    assert layer.selection_counts is None and layer.counted_examples == 0


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 16), data=st.data())
def test_a_narrowed_layer_counts_as_if_its_removed_neurons_had_zero_gradients(seed, n, data):
    # The meSimp authors mask neurons instead of removing them: masked
    # entries stay in the top-k as zeros. Counting only non-zero kept entries
    # makes the physically narrowed layer count the survivors identically.
    k = data.draw(st.integers(1, n))
    keep = np.sort(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)))
    rng = np.random.default_rng(seed)
    g = rng.uniform(-1, 1, (7, n))
    g[rng.random((7, n)) < 0.3] = 0
    g_masked = np.zeros_like(g)
    g_masked[:, keep] = g[:, keep]
    wide = Linear(4, n, k=k, dtype=np.float64, rng=0)
    narrow = Linear(4, keep.size, k=k if k < keep.size else None, dtype=np.float64, rng=0)
    x = rng.standard_normal((7, 4))
    for layer, grad in ((wide, g_masked), (narrow, g[:, keep])):
        layer.count_selections()
        layer.forward(x, train=True)
        layer.backward(np.ascontiguousarray(grad))
    np.testing.assert_array_equal(narrow.selection_counts, wide.selection_counts[keep])


def test_counting_changes_no_gradient():
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 10)).astype(np.float32)
    plain, counted = Linear(6, 10, k=3, rng=0), Linear(6, 10, k=3, rng=0)
    counted.count_selections()
    for layer in (plain, counted):
        layer.forward(x, train=True)
    dx_plain, dx_counted = plain.backward(g), counted.backward(g)
    np.testing.assert_array_equal(dx_plain, dx_counted)
    (a, da), (b, db) = plain.grads(), counted.grads()
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(da, db)


# ------------------------------------------------------------------ prune

@pytest.mark.parametrize("selection,dtype", [("topk", np.float64), ("unified", np.float32),
                                             ("random", np.float32)])
def test_prune_with_p_zero_removes_nothing_and_training_stays_bit_identical(selection, dtype):
    batches = _batches(4, 6, dtype=dtype)
    models = [MLP(12, 10, 4, k=3, selection=selection, dropout=0.2, dtype=dtype, rng=5)
              for _ in range(2)]
    opts = [mp.Adam(m.parameters(), lr=1e-2) for m in models]
    simplifier = Simplifier(models[1], opts[1], p=0.0)
    for x, y in batches:
        for model, opt in zip(models, opts):
            _train_step(model, opt, x, y)
        assert all(r.size == 0 for r in simplifier.prune())
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert simplifier.removed == 0 and models[1].hidden_sizes == [10, 10]


def test_prune_removes_the_neurons_kept_by_fewer_than_p_of_the_examples():
    model = MLP(12, 20, 4, k=2, dtype=np.float64, rng=6)
    opt = mp.Adam(model.parameters(), lr=1e-2)
    simplifier = Simplifier(model, opt, p=0.2)
    for x, y in _batches(5, 4):
        _train_step(model, opt, x, y)
    counts = [layer.selection_counts.copy() for layer in (u.layer for u in simplifier.units)]
    seen = [layer.counted_examples for layer in (u.layer for u in simplifier.units)]
    removed = simplifier.prune()
    for c, n, r in zip(counts, seen, removed):
        assert n == 64
        np.testing.assert_array_equal(r, [i for i in range(20) if c[i] < 0.2 * n])
    assert model.hidden_sizes == [20 - len(r) for r in removed]
    assert sum(len(r) for r in removed) > 0, "the case must exercise a removal"
    assert all(layer.counted_examples == 0 and not layer.selection_counts.any()
               for layer in (u.layer for u in simplifier.units))


def test_min_size_keeps_the_most_often_kept_neurons():
    layer_model = MLP(4, 6, 2, layers=1, k=1, dtype=np.float64, rng=0)
    simplifier = Simplifier(layer_model, p=0.9, min_size=2)
    hidden = simplifier.units[0].layer
    hidden.selection_counts[:] = [3, 0, 5, 1, 0, 4]
    hidden.counted_examples = 100
    simplifier.prune()
    assert layer_model.hidden_sizes == [2]


def _masked_copy(model, keeps):
    """The model with every removed neuron silenced: its column of the next weight set to 0."""
    masked = copy.deepcopy(model)
    for (layer, reader), keep in zip(prunable_layers(masked), keeps):
        dropped = np.setdiff1d(np.arange(layer.out_features), keep)
        reader.weight[:, dropped] = 0
    return masked


def test_shrinking_preserves_the_function_of_the_masked_network():
    model, opt, simplifier = _trained(8, k=3)
    keeps = simplifier.survivors()
    assert any(k.size < 16 for k in keeps)
    before = [(layer.weight.copy(), layer.bias.copy(), reader.weight.copy())
              for layer, reader in ((u.layer, u.reader) for u in simplifier.units)]
    masked = _masked_copy(model, keeps)
    simplifier.prune()
    x = np.random.default_rng(9).standard_normal((30, 12))
    np.testing.assert_allclose(model.forward(x), masked.forward(x), rtol=1e-12, atol=1e-12)
    # The arrays are the surviving entries themselves, in order.
    layers = [(u.layer, u.reader) for u in simplifier.units]
    (W0, b0, R0), (W1, b1, R1) = before
    np.testing.assert_array_equal(layers[0][0].weight, W0[keeps[0]])
    np.testing.assert_array_equal(layers[0][0].bias, b0[keeps[0]])
    np.testing.assert_array_equal(layers[1][0].weight, W1[keeps[1]][:, keeps[0]])
    np.testing.assert_array_equal(layers[1][1].weight, R1[:, keeps[1]])
    assert model.linear_layers[0].in_features == 12 and model.linear_layers[-1].out_features == 4


def test_optimizer_state_follows_the_surviving_rows_and_columns():
    model, opt, simplifier = _trained(10, k=3)
    keeps = simplifier.survivors()
    full_params = [p.copy() for p in model.parameters()]
    full_state = snapshot(opt.state)
    step = opt.step_count
    simplifier.prune()
    assert opt.step_count == step
    assert all(a is b for a, b in zip(opt.params, model.parameters()))
    k0, k1 = keeps
    takes = [(k0, None), (k0, None), (k1, k0), (k1, None), (slice(None), k1), (slice(None), None)]
    for j, (rows, cols) in enumerate(takes):
        for s in ("m", "v"):
            expected = full_state[j][s][rows]
            if cols is not None:
                expected = expected[:, cols]
            np.testing.assert_array_equal(opt.state[j][s], expected, err_msg=f"state[{j}][{s!r}]")
    # One more step on the shrunk model equals the reference Adam on the surviving entries.
    rng = np.random.default_rng(11)
    grads = [rng.standard_normal(p.shape) for p in model.parameters()]
    expected = []
    for j, (rows, cols) in enumerate(takes):
        p = full_params[j][rows] if cols is None else full_params[j][rows][:, cols]
        ref = _reference_adam(p.shape, full_state[j], rows, cols, step)
        p = p.copy()
        ref.step(p, grads[j])
        expected.append(p)
    opt.step(grads)
    for j, (p, e) in enumerate(zip(model.parameters(), expected)):
        np.testing.assert_allclose(p, e, rtol=1e-12, atol=1e-15, err_msg=f"params[{j}]")


def _reference_adam(shape, state, rows, cols, step):
    """AdamReference (lr=1e-2) started from the surviving entries of a saved state."""
    ref = AdamReference(shape, lr=1e-2)
    m, v = state["m"][rows], state["v"][rows]
    ref.m[...] = m if cols is None else m[:, cols]
    ref.v[...] = v if cols is None else v[:, cols]
    ref.t = step
    return ref


def test_shrunk_model_saves_and_loads_with_its_recorded_sizes():
    model, opt, simplifier = _trained(12, k=10)
    simplifier.prune()
    sizes = model.hidden_sizes
    ks = [layer.k for layer in model.linear_layers[:-1]]
    assert sizes != [16, 16]
    assert all(k is None or k < s for k, s in zip(ks, sizes))
    rebuilt = MLP(12, sizes, 4, k=ks, dtype=np.float64, rng=0)
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(13).standard_normal((5, 12))
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))
    # The same from the config the run started with and the recorded widths.
    again = MLP(12, 16, 4, k=10, dtype=np.float64, rng=0)
    shrink_to(again, simplifier.state_dict()["hidden_sizes"])
    assert [layer.k for layer in again.linear_layers[:-1]] == ks
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    with pytest.raises(ValueError):
        shrink_to(MLP(12, 16, 4, rng=0), [17, 3])
    with pytest.raises(ValueError, match="shape"):
        MLP(12, 16, 4, k=10, dtype=np.float64, rng=0).load_state_dict(model.state_dict())
    # The optimizer's checkpoint has the new shapes too and loads into one built on the rebuilt model.
    other = mp.Adam(rebuilt.parameters(), lr=1e-2)
    other.load_state_dict(opt.state_dict())


def test_resume_across_a_prune_is_bit_identical():
    batches = _batches(14, 6)

    def run(stop=None, resume=None):
        model = MLP(12, 16, 4, k=3, dtype=np.float64, rng=15)
        opt = mp.Adam(model.parameters(), lr=1e-2)
        simplifier = Simplifier(model, opt, p=0.2, schedule=PruneSchedule(1, 2))
        start = 0
        if resume is not None:
            sd, osd, ssd, rng_state, start = resume
            model = MLP(12, 16, 4, k=3, dtype=np.float64, rng=15)
            shrink_to(model, ssd["hidden_sizes"])  # as a checkpoint is loaded
            model.load_state_dict(sd["params"])
            model.rng.bit_generator.state = rng_state
            opt = mp.Adam(model.parameters(), lr=1e-2)
            opt.load_state_dict(osd)
            simplifier = Simplifier(model, opt, p=0.2, schedule=PruneSchedule(1, 2))
            simplifier.load_state_dict(ssd)
        for i in range(start, len(batches)):
            _train_step(model, opt, *batches[i])
            simplifier.after_step(0, i, len(batches))
            if i == stop:
                sd = {"sizes": model.hidden_sizes, "ks": [l.k for l in model.linear_layers[:-1]],
                      "params": model.state_dict()}
                return sd, opt.state_dict(), simplifier.state_dict(), model.rng.bit_generator.state, i + 1
        return model

    straight = run()
    resumed = run(resume=run(stop=3))  # stops after the first prune (batch 2), mid-way to the next
    assert straight.hidden_sizes == resumed.hidden_sizes and straight.hidden_sizes != [16, 16]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


# ------------------------------------------------------------------ boundaries

def test_optimizer_shrink_refuses_bad_cuts_and_changes_nothing():
    W, b = np.ones((4, 3)), np.ones(4)
    opt = mp.SGD([W, b], lr=0.1, momentum=0.5)
    before = snapshot(opt.state)
    for cuts, error in [
        ([(np.ones((4, 3)), [0], 0)], ValueError),      # not one of its parameters
        ([(W, [0, 1], 2)], ValueError),                 # no such axis
        ([(W, [1, 0], 0)], ValueError),                 # not increasing
        ([(W, [0, 4], 0)], ValueError),                 # out of range
        ([(W, [], 0)], ValueError),                     # empty
        ([(W, [0.0], 0)], TypeError),                   # not integers
        ([(W, [0], 0), (W, [1], 0)], ValueError),       # the second cut is out of range after the first
        ([(b, [0, 1], 0), (W, [9], 1)], ValueError),    # a later bad cut: the earlier one is not applied
        (W, TypeError),
    ]:
        with pytest.raises(error):
            opt.shrink(cuts)
        assert opt.params[0] is W and opt.params[1] is b
        for st_now, st_before in zip(opt.state, before):
            for s in st_now:
                np.testing.assert_array_equal(st_now[s], st_before[s])
    opt.step([np.ones((4, 3)), np.ones(4)])


def test_optimizer_refuses_the_old_arrays_after_a_shrink():
    W = np.ones((4, 3))
    opt = mp.Adam([W])
    opt.shrink([(W, [0, 2], 0), (W, [1], 1)])
    assert opt.params[0].shape == (2, 1) and opt.state[0]["v"].shape == (2, 1)
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.ones((4, 3))])
    opt.step([np.ones((2, 1))])


def test_simplifier_refuses_a_model_without_hidden_layers_and_bad_arguments():
    with pytest.raises(ValueError, match="no hidden"):
        Simplifier(Sequential([Linear(3, 2)]))
    with pytest.raises(TypeError):
        Simplifier(Linear(3, 2))
    with pytest.raises(ValueError):
        Simplifier(MLP(3, 4, 2, rng=0), p=1.5)
    model = MLP(3, 4, 2, rng=0)
    opt = mp.Adam(MLP(3, 4, 2, rng=0).parameters())
    simplifier = Simplifier(model, opt, p=0.5)
    shapes = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="not one of"):
        simplifier.remove([[0], [0, 1]])  # the optimizer holds another model's arrays
    assert [p.shape for p in model.parameters()] == shapes
    with pytest.raises(ValueError):
        simplifier.remove([[0]])


def test_prunable_layers_stop_at_modules_that_mix_features():
    class Mix(Module):
        def forward(self, x, train=False):
            return x[:, ::-1]

    a, b, c = Linear(3, 4), Linear(4, 4), Linear(4, 2)
    assert prunable_layers(Sequential([a, ReLU(), Dropout(0.1), b, ReLU(), c])) == [(a, b), (b, c)]
    # An unknown module between two linear layers may mix features: no pair across it.
    assert prunable_layers(Sequential([a, Mix(), b, c])) == [(b, c)]


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 50), parts=st.integers(1, 10), cycle=st.integers(1, 4), epoch=st.integers(0, 12))
def test_schedule_prunes_after_every_part_in_even_cycles(n, parts, cycle, epoch):
    schedule = PruneSchedule(cycle, parts)
    due = [b for b in range(n) if schedule.prunes_after(epoch, b, n)]
    if (epoch // cycle) % 2:
        assert due == []
    else:
        # Part j ends at the last batch before j/parts of the epoch is done.
        ends = sorted({int(np.ceil((j + 1) * n / parts)) - 1 for j in range(parts)})
        assert due == ends


# ------------------------------------------------------------------ LSTM counting

@pytest.mark.parametrize("scope,k,bidirectional", [("per_gate", 2, False), ("concat", 5, True),
                                                   ("per_gate", None, False)])
def test_lstm_counts_units_kept_in_any_of_their_four_gates(scope, k, bidirectional):
    rng = np.random.default_rng(16)
    h = 6
    lstm = mp.nn.LSTM(4, h, num_layers=2, bidirectional=bidirectional, k=k, scope=scope,
                      dtype=np.float64, rng=0)
    lstm.count_selections()
    expected = [np.zeros(h, dtype=np.int64) for _ in range(len(lstm.parameters()) // 3)]
    steps = 0
    for lengths in ([5, 3, 1], [2, 2, 1]):
        T = max(lengths)
        y = lstm.forward(rng.standard_normal((3, T, 4)), train=True, lengths=lengths)
        lstm.backward(rng.standard_normal(y.shape))
        steps += sum(lengths)
        for d in range(len(expected)):
            if k is None:
                expected[d] += sum(lengths)
                continue
            sel = lstm.last_selected[d]
            for t in range(sel.shape[0]):
                for b in range(sel.shape[1]):
                    units = {int(e) % h for e in sel[t, b] if e >= 0}
                    assert (not units) == (t >= lengths[b])  # padded steps (processing order) keep none
                    for u in units:
                        expected[d][u] += 1
    assert lstm.counted_steps == steps
    for d, (got, want) in enumerate(zip(lstm.selection_counts, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"layer/direction {d}")


# ------------------------------------------------------------------ LSTM units

def _tagger(layers=1, bidirectional=False, hidden=8, k=2, scope="per_gate", seed=0):
    from meprop_numba.tasks.pos import POSTagger

    return POSTagger(20, [5] * 7, 5, word_dim=6, feature_dim=3, hidden=hidden, layers=layers,
                     bidirectional=bidirectional, k=k, scope=scope, dtype=np.float64, rng=seed)


def _tag_batches(seed, count, B=3, T=6):
    from meprop_numba.tasks.pos import Batch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        mask = np.arange(T)[None, :] < lengths[:, None]
        words = np.where(mask, rng.integers(2, 20, (B, T)), 0)
        feats = np.where(mask[:, :, None], rng.integers(1, 5, (B, T, 7)), 0)
        tags = np.where(mask, rng.integers(1, 5, (B, T)), 0)
        out.append(Batch(words, feats, tags, lengths))
    return out


def _tag_step(model, opt, batch):
    mask = batch.mask
    _, grad = softmax_cross_entropy(model.forward(batch, train=True), batch.tags[mask])
    model.backward(grad)
    opt.step(model.grads())


def _masked_tagger(model, keeps):
    """The tagger with every removed LSTM unit silenced: its output never read again.

    A removed unit's state still evolves, but nothing reads it: its column
    of its own W_h (the recurrence), of the next layer's W_x or of the
    output layer is set to zero.
    """
    masked = copy.deepcopy(model)
    lstm, dirs = masked.lstm, masked.lstm.num_directions
    h = lstm.hidden_size
    for i, keep in enumerate(keeps):
        dropped = np.setdiff1d(np.arange(h), keep)
        lstm._params[3 * i + 1][:, dropped] = 0
        layer, direction = divmod(i, dirs)
        columns = direction * h + dropped
        if layer + 1 < lstm.num_layers:
            for d in range(dirs):
                lstm._params[3 * ((layer + 1) * dirs + d)][:, columns] = 0
        else:
            masked.output.weight[:, columns] = 0
    return masked


@settings(deadline=None, max_examples=12)
@given(layers=st.integers(1, 2), bidirectional=st.booleans(), data=st.data(),
       scope=st.sampled_from(["per_gate", "concat"]))
def test_removing_lstm_units_preserves_the_function_of_the_masked_tagger(layers, bidirectional,
                                                                          data, scope):
    model = _tagger(layers, bidirectional, scope=scope, k=3)
    n = len(prunable_units(model))
    keeps = [np.sort(data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True)))
             for _ in range(n)]
    masked = _masked_tagger(model, keeps)
    remove_neurons(model, keeps)
    assert model.lstm.hidden_sizes == [k.size for k in keeps]
    assert model.lstm.hidden_size == 8  # the width as built (documented), not a shrunk one
    assert model.lstm.output_size == sum(k.size for k in keeps[-model.lstm.num_directions:])
    for batch in _tag_batches(1, 2):
        np.testing.assert_allclose(model.forward(batch), masked.forward(batch), rtol=1e-12,
                                   atol=1e-12)
    # The shrunk tagger still trains (k clamps to a narrowed direction's width).
    opt = mp.Adam(model.parameters(), lr=1e-2)
    _tag_step(model, opt, _tag_batches(2, 1)[0])
    assert all(np.isfinite(p).all() for p in model.parameters())


def test_lstm_optimizer_state_follows_the_surviving_gate_rows_and_columns():
    model = _tagger(layers=2, bidirectional=True)
    opt = mp.Adam(model.parameters(), lr=1e-2)
    for batch in _tag_batches(3, 3):
        _tag_step(model, opt, batch)
    assert len(model.lstm.parameters()) + len(model.output.parameters()) == 14
    first = len(model.word_embedding.parameters()) + len(model.feature_embedding.parameters())
    before = [{name: a.copy() for name, a in opt.state[first + j].items()} for j in range(14)]
    keeps = [np.array([0, 3, 4]), np.arange(8), np.array([1, 2, 6, 7]), np.array([5])]
    remove_neurons(model, keeps, opt)
    h = 8
    gate_rows = [np.concatenate([g * h + k for g in range(4)]) for k in keeps]
    out0 = np.concatenate([keeps[0], h + keeps[1]])   # layer 0's output columns kept
    out1 = np.concatenate([keeps[2], h + keeps[3]])
    expect_rows = [gate_rows[0], gate_rows[0], gate_rows[0], gate_rows[1], gate_rows[1], gate_rows[1],
                   gate_rows[2], gate_rows[2], gate_rows[2], gate_rows[3], gate_rows[3], gate_rows[3]]
    for j, state in enumerate(before[:12]):
        for name, array in state.items():
            want = array[expect_rows[j]]
            if j % 3 == 1:   # W_h: its own units' columns
                want = want[:, keeps[j // 3]]
            if j in (6, 9):  # layer 1's W_x: layer 0's kept outputs
                want = want[:, out0]
            np.testing.assert_array_equal(opt.state[first + j][name], want, err_msg=f"{j} {name}")
    for name, array in before[12].items():  # the output layer's weight: columns of layer 1
        np.testing.assert_array_equal(opt.state[first + 12][name], array[:, out1])
    for name, array in before[13].items():
        np.testing.assert_array_equal(opt.state[first + 13][name], array)
    assert all(a is b for a, b in zip(opt.params, model.parameters()))


def test_lstm_prune_with_p_zero_removes_nothing_and_training_stays_bit_identical():
    batches = _tag_batches(4, 4)
    models = []
    for p in (None, 0.0):
        model = _tagger(seed=5)
        opt = mp.Adam(model.parameters(), lr=1e-2)
        simplifier = None if p is None else Simplifier(model, opt, p=p)
        for batch in batches:
            _tag_step(model, opt, batch)
            if simplifier is not None:
                assert [r.size for r in simplifier.prune()] == [0]
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_array_equal(a, b)


def test_lstm_prune_removes_the_units_kept_at_fewer_than_p_of_the_steps():
    model = _tagger(hidden=10, k=1, seed=7)
    opt = mp.Adam(model.parameters(), lr=1e-2)
    simplifier = Simplifier(model, opt, p=0.3)
    for batch in _tag_batches(8, 3):
        _tag_step(model, opt, batch)
    counts, seen = simplifier.model.lstm.selection_counts[0], simplifier.model.lstm.counted_steps
    counts = counts.copy()
    assert seen == sum(int(b.lengths.sum()) for b in _tag_batches(8, 3))
    [removed] = simplifier.prune()
    np.testing.assert_array_equal(removed, np.flatnonzero(counts < 0.3 * seen))
    assert removed.size > 0, "the case must exercise a removal"
    assert model.lstm.hidden_sizes == [10 - removed.size]
    assert model.output.weight.shape == (5, 10 - removed.size)
    assert not model.lstm.selection_counts[0].any() and model.lstm.counted_steps == 0
