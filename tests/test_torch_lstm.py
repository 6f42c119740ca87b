"""meprop_numba.torch.MePropLSTM against torch.nn.LSTM and a pure-PyTorch meProp reference.

Dense cases (k=None, k = h per gate, k = 4h concatenated) must give
``torch.nn.LSTM``'s outputs and autograd gradients; k < h must give the
gradients of :func:`reference.torch_meprop_lstm`, an LSTM written in
PyTorch whose gate pre-activation gradient is masked to its top-k (float64,
random normal data: no ties).
"""
import pathlib
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from meprop_numba.torch import MePropLSTM  # noqa: E402
from reference import torch_meprop_lstm  # noqa: E402

F64 = torch.float64


def _pair(d, h, layers, bi, dtype=F64, batch_first=True, bias=True, seed=0, **meprop):
    """A torch.nn.LSTM and a MePropLSTM with the same weights."""
    torch.manual_seed(seed)
    ref = nn.LSTM(d, h, layers, bias=bias, batch_first=batch_first, bidirectional=bi,
                  dtype=dtype)
    return ref, MePropLSTM.from_lstm(ref, **meprop)


def _ref_padded(ref, x, lengths):
    """torch.nn.LSTM over a padded batch-first x with lengths, output padded with zeros."""
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, (h_n, c_n) = ref(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h_n, c_n


def _loss(out, h_n, seed=1):
    """A loss with a distinct weight on every output and final-state entry."""
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    w_h = torch.randn(h_n.shape, generator=g, dtype=out.dtype)
    return (out * w_out).sum() + (h_n * w_h).sum()


def _run(mep, x, lengths):
    """Output, h_n, c_n of `mep` and the gradients [dx, *parameters] of :func:`_loss`."""
    out, (h_n, c_n) = mep(x, lengths=lengths)
    _loss(out, h_n).backward()
    grads = [x.grad] + [p.grad for p in mep.parameters()]
    x.grad = None
    return out, h_n, c_n, grads


def _dense(g):
    return g.to_dense() if g.layout == torch.sparse_coo else g


CASES = [(1, False), (1, True), (2, False), (2, True)]


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("layers,bi", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_equals_nn_lstm(layers, bi, dtype):
    ref, mep = _pair(5, 7, layers, bi, dtype, k=3)
    x = torch.randn(4, 6, 5, dtype=dtype, requires_grad=True)
    lengths = [6, 3, 1, 5]
    out, (h_n, c_n) = mep(x, lengths=lengths)
    r_out, r_h, r_c = _ref_padded(ref, x, lengths)
    tol = dict(rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-13)
    torch.testing.assert_close(out, r_out, **tol)
    torch.testing.assert_close(h_n, r_h, **tol)
    torch.testing.assert_close(c_n, r_c, **tol)
    assert out.grad_fn is not None and out.dtype == dtype
    assert out[2, 1:].abs().max() == 0  # zero beyond the length


def test_forward_time_major_packed_and_unbatched():
    ref, mep = _pair(3, 4, 2, True, batch_first=False)
    x = torch.randn(5, 2, 3, dtype=F64)  # (T, B, d)
    out, (h_n, _) = mep(x)
    r_out, (r_h, _) = ref(x)
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(h_n, r_h, rtol=0, atol=1e-13)
    packed = pack_padded_sequence(x, torch.tensor([2, 5]), enforce_sorted=False)
    out, (h_n, _) = mep(packed)
    r_out, (r_h, _) = ref(packed)
    assert torch.equal(out.batch_sizes, r_out.batch_sizes)
    assert torch.equal(out.sorted_indices, r_out.sorted_indices)
    torch.testing.assert_close(out.data, r_out.data, rtol=0, atol=1e-13)
    torch.testing.assert_close(h_n, r_h, rtol=0, atol=1e-13)
    out, (h_n, _) = mep(x[:, 0])  # unbatched (T, d)
    r_out, (r_h, _) = ref(x[:, 0])
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-13)
    assert h_n.shape == r_h.shape == (4, 4)


def test_eval_and_no_grad_are_nn_lstm_exactly():
    ref, mep = _pair(5, 6, 2, True, torch.float32, k=2)
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        r_out, (r_h, r_c) = ref(x)
        out, (h_n, c_n) = mep(x)
    assert torch.equal(out, r_out) and torch.equal(h_n, r_h) and torch.equal(c_n, r_c)
    mep.eval()
    out, _ = mep(x, lengths=[4, 2, 3])
    r_out, _, _ = _ref_padded(ref, x, [4, 2, 3])
    assert torch.equal(out, r_out)


# ------------------------------------------------------ dense gradients
@pytest.mark.parametrize("layers,bi", CASES)
@pytest.mark.parametrize("meprop", [dict(), dict(k=6), dict(k=24, scope="concat")],
                         ids=["k=None", "k=h", "k=4h-concat"])
def test_dense_gradients_equal_nn_lstm_autograd(layers, bi, meprop):
    ref, mep = _pair(5, 6, layers, bi, **meprop)
    x = torch.randn(3, 5, 5, dtype=F64, requires_grad=True)
    lengths = [5, 2, 4]
    ours = _run(mep, x, lengths)[3]
    r_out, r_h, _ = _ref_padded(ref, x, lengths)
    _loss(r_out, r_h).backward()
    for a, b in zip(ours, [x.grad] + [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(_dense(a), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("meprop", [dict(), dict(k=3)], ids=["k=None", "k=h"])
def test_gradcheck_float64(meprop):
    _, mep = _pair(2, 3, 2, True, **meprop)
    names = [n for n, _ in mep.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)

    def fn(x, *params):
        out, (h_n, _) = torch.func.functional_call(mep, dict(zip(names, params)), (x,),
                                                   {"lengths": [3, 2]})
        return out, h_n

    params = [p.detach().clone().requires_grad_() for p in mep.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------- meProp, k < h
@pytest.mark.parametrize("layers,bi", CASES)
@pytest.mark.parametrize("scope,k", [("per_gate", 2), ("concat", 5)])
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_meprop_gradients_equal_masked_reference(layers, bi, scope, k, sparse_grad):
    ref, mep = _pair(4, 6, layers, bi, k=k, scope=scope, sparse_grad=sparse_grad)
    x = torch.randn(3, 5, 4, dtype=F64, requires_grad=True)
    lengths = [5, 1, 3]
    out, h_n, c_n, ours = _run(mep, x, lengths)
    params = dict(ref.named_parameters())
    r_out, r_h, r_c = torch_meprop_lstm(torch, params, x, lengths, num_layers=layers,
                                        bidirectional=bi, k=k, per_gate=scope == "per_gate")
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(c_n, r_c, rtol=0, atol=1e-13)
    _loss(r_out, r_h).backward()
    for (name, p), a in zip(ref.named_parameters(), ours[1:]):
        if sparse_grad and name.startswith("weight"):
            assert a.layout == torch.sparse_coo
        else:
            assert a.layout == torch.strided
        torch.testing.assert_close(_dense(a), p.grad, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(ours[0], x.grad, rtol=1e-10, atol=1e-12)


@settings(deadline=None, max_examples=25)
@given(st.data())
def test_meprop_property_against_masked_reference(data):
    h = data.draw(st.integers(1, 5), label="h")
    layers, bi = data.draw(st.sampled_from(CASES), label="layers, bi")
    scope = data.draw(st.sampled_from(["per_gate", "concat"]), label="scope")
    k = data.draw(st.integers(1, h if scope == "per_gate" else 4 * h), label="k")
    B, T = data.draw(st.integers(1, 3), label="B"), data.draw(st.integers(1, 5), label="T")
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B), label="lengths")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    ref, mep = _pair(2, h, layers, bi, seed=seed, k=k, scope=scope)
    x = torch.randn(B, T, 2, dtype=F64, requires_grad=True)
    out, h_n, _, ours = _run(mep, x, lengths)
    r_out, r_h, _ = torch_meprop_lstm(torch, dict(ref.named_parameters()), x, lengths,
                                      num_layers=layers, bidirectional=bi, k=k,
                                      per_gate=scope == "per_gate")
    _loss(r_out, r_h).backward()
    torch.testing.assert_close(out, r_out, rtol=0, atol=1e-12)
    for a, b in zip(ours, [x.grad] + [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_reference_dense_equals_nn_lstm():
    """The reference itself, with nothing masked, is torch.nn.LSTM."""
    ref, _ = _pair(3, 4, 2, True)
    x = torch.randn(2, 4, 3, dtype=F64)
    out, h_n, _ = torch_meprop_lstm(torch, dict(ref.named_parameters()), x, [4, 2],
                                    num_layers=2, bidirectional=True)
    r_out, r_h, _ = _ref_padded(ref, x, [4, 2])
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(h_n, r_h)


def test_random_selection_all_entries_is_dense_and_follows_torch_seed():
    ref, mep = _pair(4, 5, 1, False, k=5, selection="random")
    x = torch.randn(2, 4, 4, dtype=F64)
    out, _ = mep(x)
    out.sum().backward()
    ref(x)[0].sum().backward()
    torch.testing.assert_close(mep.weight_hh_l0.grad, ref.weight_hh_l0.grad)
    mep.k = 1
    grads = []
    for _ in range(2):
        torch.manual_seed(7)
        mep.zero_grad()
        mep(x)[0].sum().backward()
        grads.append(mep.weight_hh_l0.grad.clone())
    assert torch.equal(grads[0], grads[1])
    rows = int((grads[0].abs().sum(1) > 0).sum())
    assert 1 <= rows <= 4 * 8  # 4 gates x 1 entry x 8 steps at most


# ---------------------------------------------------------- state dicts
def test_state_dict_round_trip_with_nn_lstm():
    ref, _ = _pair(5, 6, 2, True, torch.float32)
    mep = MePropLSTM(5, 6, 2, bidirectional=True, k=3)
    assert list(mep.state_dict()) == list(ref.state_dict())
    mep.load_state_dict(ref.state_dict())
    back = nn.LSTM(5, 6, 2, batch_first=True, bidirectional=True)
    back.load_state_dict(mep.state_dict())
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        assert torch.equal(back(x)[0], ref(x)[0])
        assert torch.equal(mep(x)[0], ref(x)[0])
    assert "weight_hh_l1_reverse" in mep.state_dict()


def test_no_bias_and_optimizer_step():
    ref, mep = _pair(3, 4, 1, False, bias=False, k=2, sparse_grad=True)
    assert [n for n, _ in mep.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    opt = torch.optim.SGD(mep.parameters(), lr=0.1)
    before = mep.weight_hh_l0.detach().clone()
    out, _ = mep(torch.randn(2, 3, 3, dtype=F64))
    out.sum().backward()
    grad = mep.weight_hh_l0.grad.to_dense()
    opt.step()
    torch.testing.assert_close(mep.weight_hh_l0.detach(), before - 0.1 * grad)


def test_concurrent_backward_from_threads():
    _, mep = _pair(4, 8, 1, True, k=2)
    xs = [torch.randn(2, 6, 4, dtype=F64, requires_grad=True) for _ in range(4)]
    expected = []
    for x in xs:
        mep(x)[0].sum().backward()
        expected.append(x.grad.clone())
        x.grad = None
    errors = []

    def work(i):
        x = xs[i]
        try:
            out, _ = mep(x)
            (dx,) = torch.autograd.grad(out.sum(), x)
            if not torch.equal(dx, expected[i]):
                errors.append("different dx")
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- errors
def test_constructor_validation():
    with pytest.raises(TypeError, match="dtype"):
        MePropLSTM(3, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="k must be in"):
        MePropLSTM(3, 4, k=5)
    MePropLSTM(3, 4, k=16, scope="concat")
    with pytest.raises(TypeError, match="k must be an integer"):
        MePropLSTM(3, 4, k=True)
    with pytest.raises(ValueError, match="scope"):
        MePropLSTM(3, 4, k=2, scope="gates")
    with pytest.raises(ValueError, match="selection"):
        MePropLSTM(3, 4, k=2, selection="unified")
    with pytest.raises(ValueError, match="dropout"):
        MePropLSTM.from_lstm(nn.LSTM(3, 4, 2, dropout=0.5))
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        MePropLSTM.from_lstm(nn.GRU(3, 4))


def test_training_forward_validation():
    mep = MePropLSTM(3, 4, k=2)
    x = torch.randn(2, 5, 3)
    with pytest.raises(TypeError, match="input has dtype torch.float64"):
        mep(x.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        mep.half()(x.half())
    mep.float()
    with pytest.raises(ValueError, match="hx"):
        mep(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="lengths must lie"):
        mep(x, lengths=[6, 2])
    with pytest.raises(ValueError, match="lengths must have shape"):
        mep(x, lengths=[5])
    with pytest.raises(ValueError, match="features per step"):
        mep(torch.randn(2, 5, 4))
    meta = MePropLSTM(3, 4, k=2, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        meta(torch.randn(2, 5, 3, device="meta"))


def test_gradient_through_c_n_raises():
    mep = MePropLSTM(3, 4, k=2)
    _, (h_n, c_n) = mep(torch.randn(2, 5, 3))
    h_n.sum().backward()  # h_n alone is fine
    _, (_, c_n) = mep(torch.randn(2, 5, 3))
    with pytest.raises(RuntimeError, match="c_n"):
        c_n.sum().backward()


def test_in_place_change_of_output_is_caught():
    mep = MePropLSTM(3, 4, k=2)
    out, _ = mep(torch.randn(2, 5, 3))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_extra_repr():
    assert "k=2, scope='per_gate', selection='topk'" in repr(MePropLSTM(3, 4, k=2))
    assert "dense" in repr(MePropLSTM(3, 4))
    assert isinstance(np.asarray(MePropLSTM(3, 4).weight_ih_l0.detach()), np.ndarray)


def test_howto_runs_as_written():
    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "howto" / "torch_lstm.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, str(doc), "exec"), namespace)
    assert namespace["out_packed"].data.shape == (13, 500)
