"""The meProp LSTM and the embedding layer against an independent NumPy reference.

The reference below runs one sentence at a time with plain vector maths in
float64 and shares no code with the library. Its backward takes a ``keep``
rule that masks dL/da_t at every step, so dense BPTT (keep everything) and
meProp BPTT (keep the selected entries, the masked gradient flowing on to
h_{t-1}) are the same function.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from meprop_numba.nn.embedding import Embedding
from meprop_numba.nn.lstm import LSTM


# ----------------------------------------------------------------- reference
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def ref_cell_forward(x, W_x, W_h, b):
    """One direction over one sentence x (L, d); returns outputs (L, h) and the tape."""
    h = W_h.shape[1]
    hs, cs, tape = [np.zeros(h)], [np.zeros(h)], []
    for t in range(x.shape[0]):
        a = W_x @ x[t] + W_h @ hs[-1] + b
        i, f = _sigmoid(a[:h]), _sigmoid(a[h:2 * h])
        g, o = np.tanh(a[2 * h:3 * h]), _sigmoid(a[3 * h:])
        c = f * cs[-1] + i * g
        tape.append((x[t], hs[-1], cs[-1], i, f, g, o, c))
        cs.append(c)
        hs.append(o * np.tanh(c))
    return np.array(hs[1:]), tape


def ref_cell_backward(dy, tape, W_x, W_h, keep, memory=None, dropped=None):
    """BPTT of one direction; keep(t, da) returns the bool mask of kept entries of da.

    With `memory` (error feedback, already scaled by beta) it is added to da
    after the bias gradient and before `keep`; the entries not kept are
    added to `dropped`.
    """
    h = W_h.shape[1]
    dW_x, dW_h = np.zeros(W_x.shape), np.zeros(W_h.shape)
    db = np.zeros(4 * h)
    dx = np.zeros((len(tape), W_x.shape[1]))
    dh_next, dc_next = np.zeros(h), np.zeros(h)
    for t in range(len(tape) - 1, -1, -1):
        x_t, h_prev, c_prev, i, f, g, o, c = tape[t]
        dh = dy[t] + dh_next
        dc = dc_next + dh * o * (1 - np.tanh(c) ** 2)
        da = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                             dc * i * (1 - g ** 2), dh * np.tanh(c) * o * (1 - o)])
        db += da
        if memory is not None:
            da = da + memory
        mask = keep(t, da)
        if dropped is not None:
            dropped += np.where(mask, 0.0, da)
        da = da * mask
        dW_x += np.outer(da, x_t)
        dW_h += np.outer(da, h_prev)
        dx[t] = W_x.T @ da
        dh_next = W_h.T @ da
        dc_next = dc * f
    return dx, dW_x, dW_h, db


def keep_all(t, da):
    return np.ones(da.shape, dtype=bool)


def keep_topk(k, per_gate):
    """Top-k of |da| per gate block or overall; stable sort keeps the lower index on ties."""
    def keep(t, da):
        mask = np.zeros(da.shape, dtype=bool)
        blocks = np.split(np.arange(da.size), 4) if per_gate else [np.arange(da.size)]
        for block in blocks:
            order = np.argsort(-np.abs(da[block]), kind="stable")
            mask[block[order[:k]]] = True
        return mask
    return keep


def ref_lstm(params, num_layers, bidirectional, x, lengths, dout, keep_for):
    """Stacked (bi)LSTM, example by example. keep_for(layer, direction, b) -> keep rule.

    Returns outputs (B, T, H), dx (B, T, d) and the summed parameter gradients.
    """
    dirs = 2 if bidirectional else 1
    B, T, _ = x.shape
    grads = [np.zeros(p.shape) for p in params]
    out = np.zeros((B, T, params[1].shape[1] * dirs))
    dx_all = np.zeros(x.shape)
    for b in range(B):
        L = lengths[b]
        inputs, tapes = [x[b, :L].astype(np.float64)], []
        for layer in range(num_layers):
            outs, layer_tapes = [], []
            for d in range(dirs):
                W_x, W_h, bias = (p.astype(np.float64) for p in params[3 * (layer * dirs + d):][:3])
                seq = inputs[-1] if d == 0 else inputs[-1][::-1]
                y, tape = ref_cell_forward(seq, W_x, W_h, bias)
                outs.append(y if d == 0 else y[::-1])
                layer_tapes.append(tape)
            inputs.append(np.concatenate(outs, axis=1))
            tapes.append(layer_tapes)
        out[b, :L] = inputs[-1]
        d_layer = dout[b, :L].astype(np.float64)
        for layer in range(num_layers - 1, -1, -1):
            d_in = 0
            for d in range(dirs):
                base = 3 * (layer * dirs + d)
                W_x, W_h = params[base].astype(np.float64), params[base + 1].astype(np.float64)
                h = W_h.shape[1]
                dy = d_layer[:, d * h:(d + 1) * h]
                if d == 1:
                    dy = dy[::-1]
                dxs, gW_x, gW_h, g_b = ref_cell_backward(dy, tapes[layer][d], W_x, W_h,
                                                         keep_for(layer, d, b))
                d_in = d_in + (dxs if d == 0 else dxs[::-1])
                grads[base] += gW_x
                grads[base + 1] += gW_h
                grads[base + 2] += g_b
            d_layer = d_in
        dx_all[b, :L] = d_layer
    return out, dx_all, grads


def dense_grad(g):
    return g.to_dense() if isinstance(g, mp.RowSparse) else np.asarray(g)


def make_case(dtype, B=3, T=6, d=5, lengths=(6, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, d)).astype(dtype)
    return x, np.array(lengths[:B])


def tol(dtype):
    if dtype == np.float32:
        return {"rtol": 2e-4, "atol": 2e-5}
    return {"rtol": 1e-9, "atol": 1e-11}


def run_layer(layer, x, lengths, dout):
    y = layer.forward(x, train=True, lengths=lengths)
    dx = layer.backward(dout)
    return y, dx, [dense_grad(g) for g in layer.grads()]


DTYPES = [np.float32, np.float64]


# ------------------------------------------------------------ dense BPTT
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_dense_bptt_matches_reference(dtype, bidirectional, num_layers):
    x, lengths = make_case(dtype)
    layer = LSTM(5, 4, num_layers, bidirectional=bidirectional, dtype=dtype, rng=1)
    dout = np.random.default_rng(2).standard_normal((3, 6, layer.output_size)).astype(dtype)
    y, dx, grads = run_layer(layer, x, lengths, dout)
    ry, rdx, rgrads = ref_lstm(layer.params(), num_layers, bidirectional, x, lengths, dout,
                               lambda *_: keep_all)
    np.testing.assert_allclose(y, ry, **tol(dtype))
    np.testing.assert_allclose(dx, rdx, **tol(dtype))
    for g, rg in zip(grads, rgrads):
        np.testing.assert_allclose(g, rg, **tol(dtype))
    assert all(isinstance(g, np.ndarray) for g in layer.grads())


def ref_feedback_passes(params, bidirectional, passes, k, per_gate, beta):
    """One-layer (bi)LSTM backward passes with error feedback, example by example.

    passes: list of (x, lengths, dout). The memory of each direction is the
    mean, over the valid steps of a pass, of the entries it dropped (memory
    included); the next pass adds beta times it to da at every valid step.
    Returns per pass dx and the parameter gradients.
    """
    dirs = 2 if bidirectional else 1
    h = params[1].shape[1]
    memory = [np.zeros(4 * h) for _ in range(dirs)]
    results = []
    for x, lengths, dout in passes:
        grads = [np.zeros(p.shape) for p in params]
        dx = np.zeros(x.shape)
        dropped = [np.zeros(4 * h) for _ in range(dirs)]
        for b in range(x.shape[0]):
            L = lengths[b]
            for d in range(dirs):
                W_x, W_h, bias = (p.astype(np.float64) for p in params[3 * d:3 * d + 3])
                seq = x[b, :L] if d == 0 else x[b, :L][::-1]
                _, tape = ref_cell_forward(seq.astype(np.float64), W_x, W_h, bias)
                dy = dout[b, :L, d * h:(d + 1) * h]
                dy = dy if d == 0 else dy[::-1]
                dxs, gW_x, gW_h, g_b = ref_cell_backward(dy, tape, W_x, W_h,
                                                         keep_topk(k, per_gate),
                                                         beta * memory[d], dropped[d])
                dx[b, :L] += dxs if d == 0 else dxs[::-1]
                for i, g in enumerate((gW_x, gW_h, g_b)):
                    grads[3 * d + i] += g
        memory = [m / lengths.sum() for m in dropped]
        results.append((dx, grads))
    return results


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), beta=st.floats(0.0, 0.95),
       bidirectional=st.booleans(), concat=st.booleans())
def test_error_feedback_matches_reference(seed, k, beta, bidirectional, concat):
    """float64, three backward passes in a row: the memory each pass leaves changes the next."""
    rng = np.random.default_rng(seed)
    layer = LSTM(5, 6, bidirectional=bidirectional, k=2 * k if concat else k,
                 scope="concat" if concat else "per_gate", error_feedback=beta,
                 dtype=np.float64, rng=seed)
    passes = []
    for _ in range(3):
        lengths = rng.integers(1, 6, size=3)
        lengths[0] = 5
        passes.append((rng.standard_normal((3, 5, 5)), lengths,
                       rng.standard_normal((3, 5, layer.output_size))))
    expected = ref_feedback_passes(layer.params(), bidirectional, passes,
                                   2 * k if concat else k, not concat, beta)
    for (x, lengths, dout), (rdx, rgrads) in zip(passes, expected):
        _, dx, grads = run_layer(layer, x, lengths, dout)
        np.testing.assert_allclose(dx, rdx, **tol(np.float64))
        for g, rg in zip(grads, rgrads):
            np.testing.assert_allclose(g, rg, **tol(np.float64))


def test_error_feedback_reset_and_no_effect_when_everything_is_kept():
    x, lengths = make_case(np.float64)
    dout = np.random.default_rng(3).standard_normal((3, 6, 8))
    plain = LSTM(5, 4, bidirectional=True, k=2, dtype=np.float64, rng=4)
    fed = LSTM(5, 4, bidirectional=True, k=2, error_feedback=0.8, dtype=np.float64, rng=4)
    first = [run_layer(m, x, lengths, dout)[1] for m in (plain, fed)]
    np.testing.assert_array_equal(first[0], first[1])  # no memory yet
    second = [run_layer(m, x, lengths, dout)[1] for m in (plain, fed)]
    assert not np.allclose(second[0], second[1])       # the memory acts
    fed.reset_error_feedback()
    np.testing.assert_array_equal(run_layer(fed, x, lengths, dout)[1], first[0])
    # k = h keeps every entry: nothing is dropped, so the memory stays zero.
    dense = LSTM(5, 4, bidirectional=True, dtype=np.float64, rng=4)
    full = LSTM(5, 4, bidirectional=True, k=4, error_feedback=0.8, dtype=np.float64, rng=4)
    for _ in range(2):
        _, rdx, rgrads = run_layer(dense, x, lengths, dout)
        _, dx, grads = run_layer(full, x, lengths, dout)
        np.testing.assert_allclose(dx, rdx, **tol(np.float64))
        for g, rg in zip(grads, rgrads):
            np.testing.assert_allclose(g, rg, **tol(np.float64))
    with pytest.raises(ValueError, match="error_feedback"):
        LSTM(5, 4, k=2, error_feedback=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,k", [("per_gate", 4), ("concat", 16)])
def test_k_covering_everything_equals_dense(dtype, mode, k):
    x, lengths = make_case(dtype)
    dout = np.random.default_rng(3).standard_normal((3, 6, 8)).astype(dtype)
    full = LSTM(5, 4, bidirectional=True, k=k, scope=mode, dtype=dtype, rng=1)
    dense = LSTM(5, 4, bidirectional=True, dtype=dtype, rng=1)
    y, dx, grads = run_layer(full, x, lengths, dout)
    y0, dx0, grads0 = run_layer(dense, x, lengths, dout)
    np.testing.assert_allclose(y, y0, **tol(dtype))
    np.testing.assert_allclose(dx, dx0, **tol(dtype))
    for g, g0 in zip(grads, grads0):
        np.testing.assert_allclose(g, g0, **tol(dtype))
    assert isinstance(full.grads()[0], mp.RowSparse)
    assert full.grads()[0].rows.tolist() == list(range(16))


@pytest.mark.parametrize("k", [None, 4])
def test_finite_differences(k):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3))
    lengths = np.array([4, 2])
    layer = LSTM(3, 4, bidirectional=True, k=k, dtype=np.float64, rng=6)
    weights = rng.standard_normal((2, 4, 8))

    def loss(x_):
        return float((layer.forward(x_, lengths=lengths) * weights).sum())

    layer.forward(x, train=True, lengths=lengths)
    dx = layer.backward(weights)
    grads = [dense_grad(g) for g in layer.grads()]
    eps = 1e-6
    for p, g in zip(layer.params(), grads):
        numeric = np.zeros(p.shape)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = loss(x)
            p[idx] = old - eps
            down = loss(x)
            p[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)
    numeric = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric[idx] = (loss(xp) - loss(xm)) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------ meProp BPTT
@pytest.mark.parametrize("mode,k", [("per_gate", 2), ("per_gate", 1), ("concat", 3)])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
def test_meprop_equals_masked_dense_bptt(mode, k, bidirectional, num_layers):
    """float64: the library's selection is the reference's own top-k at every step."""
    x, lengths = make_case(np.float64, seed=7)
    layer = LSTM(5, 6, num_layers, bidirectional=bidirectional, k=k, scope=mode,
                 dtype=np.float64, rng=8)
    dout = np.random.default_rng(9).standard_normal((3, 6, layer.output_size))
    y, dx, grads = run_layer(layer, x, lengths, dout)
    ry, rdx, rgrads = ref_lstm(layer.params(), num_layers, bidirectional, x, lengths, dout,
                               lambda *_: keep_topk(k, mode == "per_gate"))
    np.testing.assert_allclose(y, ry, **tol(np.float64))
    np.testing.assert_allclose(dx, rdx, **tol(np.float64))
    for g, rg in zip(grads, rgrads):
        np.testing.assert_allclose(g, rg, **tol(np.float64))
    # The sparse weight gradients store exactly the rows some step selected.
    for i, sel in enumerate(layer.last_selected):
        rows = np.unique(sel[sel >= 0])
        assert layer.grads()[3 * i].rows.tolist() == rows.tolist()
        assert layer.grads()[3 * i + 1].rows.tolist() == rows.tolist()
        assert sel.shape[2] == (4 * k if mode == "per_gate" else k)
    # Genuinely sparse: some rows of W_h got no gradient.
    assert layer.grads()[1].rows.size < 24


def recording_keep_topk(k, record):
    """keep_topk(k, per gate) that also appends each step's kept indices, sorted."""
    rule = keep_topk(k, True)

    def keep(t, da):
        mask = rule(t, da)
        record.append((t, np.flatnonzero(mask).tolist()))
        return mask
    return keep


@pytest.mark.parametrize("h", [64, 100, 160])
@pytest.mark.parametrize("k,ties", [(3, False), (10, False), (5, True)])
def test_per_gate_selection_matches_reference_at_wider_layers(h, k, ties):
    """float64, one sentence: the kept entries of every step are the reference's top-k.

    Widths of 64 and more take the per-gate selection's bit-mask scan; with
    ``ties`` the weights are zero and the output gradient constant, so whole
    gate blocks tie (the lower index must win) or are exactly zero.
    """
    T = 7
    layer = LSTM(5, h, k=k, dtype=np.float64, rng=h)
    x = np.random.default_rng(h + k).standard_normal((1, T, 5))
    dout = np.random.default_rng(k).standard_normal((1, T, h))
    if ties:
        for p in layer.params():
            p[...] = 0
        dout = np.round(dout * 2)
    y, dx, grads = run_layer(layer, x, np.array([T]), dout)
    record = []
    _, rdx, rgrads = ref_lstm(layer.params(), 1, False, x, np.array([T]), dout,
                              lambda *_: recording_keep_topk(k, record))
    np.testing.assert_allclose(dx, rdx, **tol(np.float64))
    for g, rg in zip(grads, rgrads):
        np.testing.assert_allclose(g, rg, **tol(np.float64))
    sel = layer.last_selected[0]
    for t, kept in record:
        assert sorted(sel[t, 0].tolist()) == kept


def keep_selected(layer, lengths):
    """Keep rule from the library's own selections (float32, where near-ties may differ).

    Selections are stored in each direction's processing order, which is the
    order the reference walks the (reversed) sentence in.
    """
    def keep_for(layer_i, d, b):
        sel = layer.last_selected[layer_i * layer.num_directions + d]

        def keep(t, da):
            mask = np.zeros(da.shape, dtype=bool)
            mask[sel[t, b]] = True
            return mask
        return keep
    return keep_for


@pytest.mark.parametrize("mode", ["per_gate", "concat"])
def test_meprop_float32_matches_reference_with_its_selection(mode):
    x, lengths = make_case(np.float32, seed=11)
    layer = LSTM(5, 6, bidirectional=True, k=2, scope=mode, dtype=np.float32, rng=12)
    dout = np.random.default_rng(13).standard_normal((3, 6, 12)).astype(np.float32)
    y, dx, grads = run_layer(layer, x, lengths, dout)
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
    _, rdx, rgrads = ref_lstm(layer.params(), 1, True, x, lengths, dout,
                              keep_selected(layer, lengths))
    np.testing.assert_allclose(dx, rdx, **tol(np.float32))
    for g, rg in zip(grads, rgrads):
        np.testing.assert_allclose(g, rg, **tol(np.float32))


def test_per_gate_selection_has_k_in_every_gate():
    x, lengths = make_case(np.float64)
    layer = LSTM(5, 6, k=2, dtype=np.float64, rng=0)
    run_layer(layer, x, lengths, np.ones((3, 6, 6)))
    sel = layer.last_selected[0]
    for t in range(6):
        for b in range(3):
            if t >= lengths[b]:
                assert (sel[t, b] == -1).all()
            else:
                assert sorted(sel[t, b] // 6) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_random_selection_is_distinct_per_gate_and_seeded():
    x, lengths = make_case(np.float32)
    sels = []
    for _ in range(2):
        layer = LSTM(5, 6, k=3, selection="random", rng=4)
        run_layer(layer, x, lengths, np.ones((3, 6, 6), dtype=np.float32))
        sels.append(layer.last_selected[0])
        run_layer(layer, x, lengths, np.ones((3, 6, 6), dtype=np.float32))
        assert not np.array_equal(sels[-1], layer.last_selected[0])
    np.testing.assert_array_equal(sels[0], sels[1])
    sel = sels[0]
    for t in range(lengths[0]):
        for q in range(4):
            block = sel[t, 0, 3 * q:3 * q + 3]
            assert len(set(block.tolist())) == 3 and (block // 6 == q).all()


# ------------------------------------------------------------ padding and batching
@pytest.mark.parametrize("k", [None, 2])
def test_padding_never_leaks(k):
    """A padded minibatch gives each sentence exactly its own one-sentence result."""
    x, lengths = make_case(np.float64, seed=21)
    layer = LSTM(5, 4, 2, bidirectional=True, k=k, dtype=np.float64, rng=22)
    dout = np.random.default_rng(23).standard_normal((3, 6, 8))
    y, dx, grads = run_layer(layer, x, lengths, dout)
    # Garbage in the padding of x and dout changes nothing.
    pad = np.arange(6)[None, :] >= lengths[:, None]
    x2, dout2 = x.copy(), dout.copy()
    x2[pad] = 1e3
    dout2[pad] = -1e3
    y2, dx2, grads2 = run_layer(layer, x2, lengths, dout2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(g, g2)
    assert (y[pad] == 0).all() and (dx[pad] == 0).all()
    # Batch gradients are the sum of one-sentence minibatch gradients.
    total = [np.zeros(p.shape) for p in layer.params()]
    for b in range(3):
        L = lengths[b]
        yb, dxb, gb = run_layer(layer, x[b:b + 1, :L], None, dout[b:b + 1, :L])
        np.testing.assert_allclose(yb[0], y[b, :L], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dxb[0], dx[b, :L], rtol=1e-12, atol=1e-14)
        total = [s + g for s, g in zip(total, gb)]
    for g, s in zip(grads, total):
        np.testing.assert_allclose(g, s, rtol=1e-10, atol=1e-12)


def test_validation_errors():
    layer = LSTM(5, 4, k=2, rng=0)
    x = np.zeros((2, 3, 5), dtype=np.float32)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="x has dtype"):
        layer.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="x must have dtype"):
        layer.forward(x.astype(np.int32))
    with pytest.raises(ValueError, match="features"):
        layer.forward(np.zeros((2, 3, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(x, lengths=[3, 4])
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(x, lengths=[3, 0])
    with pytest.raises(TypeError, match="lengths"):
        layer.forward(x, lengths=[3.0, 1.0])
    with pytest.raises(ValueError, match="k must be in"):
        LSTM(5, 4, k=5)
    with pytest.raises(ValueError, match="scope"):
        LSTM(5, 4, k=2, scope="rows")
    LSTM(5, 4, k=16, scope="concat")
    layer.forward(x, train=True)
    with pytest.raises(ValueError, match="dout must have shape"):
        layer.backward(np.zeros((2, 3, 5), dtype=np.float32))


def test_training_reduces_loss_with_lazy_adam():
    """A meProp LSTM learns to copy the sign of its input's first feature."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((16, 5, 3)).astype(np.float32)
    target = (x[:, :, :1] > 0).astype(np.float32)
    layer = LSTM(3, 8, k=2, rng=32)
    opt = mp.Adam(layer.params(), lr=0.02)
    losses = []
    for _ in range(60):
        y = layer.forward(x, train=True)
        err = y[:, :, :1] - target
        losses.append(float((err ** 2).mean()))
        dout = np.zeros_like(y)
        dout[:, :, :1] = 2 * err / err.size
        layer.backward(dout)
        opt.step(layer.grads())
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------ embedding
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_gradient_and_lazy_update(dtype):
    rng = np.random.default_rng(41)
    emb = Embedding(12, 3, padding_idx=0, dtype=dtype, rng=42)
    ids = np.array([[4, 7, 4, 0], [2, 4, 0, 0]])
    y = emb.forward(ids, train=True)
    np.testing.assert_array_equal(y, emb.weight[ids])
    assert (y[ids == 0] == 0).all()
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert emb.backward(grad_out) is None
    (g,) = emb.grads()
    dense = np.zeros((12, 3))
    for (b, t), i in np.ndenumerate(ids):
        if i != 0:
            dense[i] += grad_out[b, t]
    assert g.rows.tolist() == [2, 4, 7]
    assert g.values.dtype == dtype
    np.testing.assert_allclose(g.to_dense(), dense, rtol=1e-6, atol=1e-6)
    # The lazy sparse Adam step equals the dense step on touched rows and leaves the rest.
    w_dense = emb.weight.copy()
    before = emb.weight.copy()
    mp.Adam([emb.weight], lr=0.1).step([g])
    mp.Adam([w_dense], lr=0.1, lazy=False).step([dense.astype(dtype)])
    touched = [2, 4, 7]
    np.testing.assert_allclose(emb.weight[touched], w_dense[touched], rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(12), touched)
    np.testing.assert_array_equal(emb.weight[untouched], before[untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 0, 5])
def test_embedding_gradient_sums_rows_in_order(dtype, padding_idx):
    # Against np.unique + np.add.at (which adds in occurrence order): the
    # same rows and bitwise the same sums, duplicates and padding included.
    rng = np.random.default_rng(43)
    emb = Embedding(9, 4, padding_idx=padding_idx, dtype=dtype, rng=44)
    ids = rng.integers(0, 9, (3, 17))
    ids[0, :3] = 5
    emb.forward(ids, train=True)
    grad_out = (rng.standard_normal(ids.shape + (4,)) * 10.0 ** rng.integers(-3, 4, ids.shape + (1,)))
    grad_out = grad_out.astype(dtype)
    emb.backward(grad_out)
    (g,) = emb.grads()
    flat_ids, flat_grad = ids.reshape(-1), grad_out.reshape(-1, 4)
    if padding_idx is not None:
        keep = flat_ids != padding_idx
        flat_ids, flat_grad = flat_ids[keep], flat_grad[keep]
    rows, inverse = np.unique(flat_ids, return_inverse=True)
    expected = np.zeros((rows.size, 4), dtype=dtype)
    np.add.at(expected, inverse, flat_grad)
    assert g.rows.dtype == np.int64 and g.rows.tolist() == rows.tolist()
    np.testing.assert_array_equal(g.values, expected)


def test_embedding_validation():
    emb = Embedding(5, 2)
    with pytest.raises(IndexError, match="ids"):
        emb.forward(np.array([1, 5]))
    with pytest.raises(TypeError, match="ids"):
        emb.forward(np.array([1.0]))
    with pytest.raises(RuntimeError, match="before forward"):
        emb.backward(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=5)

