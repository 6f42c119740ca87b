"""meprop_numba.torch: MePropLinear, convert, the lazy optimizers, torch.compile.

The references here are pure PyTorch (autograd with a masked output
gradient, torch's own optimizers) or plain loops, sharing no code with the
package.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'meprop_numba[torch]')")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from meprop_numba.torch import MePropLinear, convert, optim  # noqa: E402
from meprop_numba.torch.linear import linear_backward_op, linear_op  # noqa: E402
from reference import topk_reference  # noqa: E402

F = torch.nn.functional
DTYPES = (torch.float32, torch.float64)
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward densifies a sparse gradient (gradcheck wants dense ones)."""

    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        return grad.to_dense() if grad.is_sparse else grad


def masked_reference(x, W, b, g, k, selection, tie_free=True):
    """(dx, dW, db) of y = x W^T + b with the output gradient masked, by PyTorch autograd.

    Per example the k largest |g| (torch.topk, valid on tie-free data), or
    the k columns with the largest sum_b |g|; b's gradient is the full one.
    """
    x = x.detach().clone().requires_grad_(True)
    W = W.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    g2 = g.reshape(-1, g.shape[-1])
    if selection == "unified":
        mask = torch.zeros(g2.shape[1], dtype=g.dtype).index_fill_(0, g2.abs().sum(0).topk(k).indices, 1.0)
    else:
        mask = torch.zeros_like(g2).scatter_(1, g2.abs().topk(k, dim=1).indices, 1.0)
    y = x @ W.T
    # The bias is added after the mask, so its gradient is the full g.
    torch.autograd.backward([y, b], [(g2 * mask).reshape(g.shape), g2.sum(0)])
    return x.grad, W.grad, b.grad


def run_layer(layer, x, g):
    """(dx, dense dW, db) from one forward/backward of `layer` with output gradient g."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(g)
    dW = layer.weight.grad
    return x.grad, (dW.to_dense() if dW.is_sparse else dW), layer.bias.grad


# ------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("sparse_grad", [True, False])
@pytest.mark.parametrize("selection", ["topk", "unified", "random"])
def test_gradcheck_with_k_equal_n(selection, sparse_grad):
    torch.manual_seed(0)
    layer = MePropLinear(5, 4, k=4, selection=selection, sparse_grad=sparse_grad, dtype=torch.float64)
    x = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)

    def f(x, W, b):
        return torch.func.functional_call(layer, {"weight": _DenseGrad.apply(W), "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, layer.weight, layer.bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparse_grad", [True, False])
@pytest.mark.parametrize("selection", ["topk", "unified"])
@pytest.mark.parametrize("shape,k", [((7, 30), 3), ((2, 5, 30), 1), ((1, 30), 29), ((64, 30), 8)])
def test_gradients_equal_masked_reference(shape, k, selection, sparse_grad, dtype):
    gen = torch.Generator().manual_seed(sum(shape) + k)
    layer = MePropLinear(12, shape[-1], k=k, selection=selection, sparse_grad=sparse_grad, dtype=dtype)
    x = torch.randn(*shape[:-1], 12, generator=gen, dtype=dtype)
    g = torch.randn(shape, generator=gen, dtype=dtype)
    dx, dW, db = run_layer(layer, x, g)
    rx, rW, rb = masked_reference(x, layer.weight, layer.bias, g, k, selection)
    assert layer.weight.grad.layout == (torch.sparse_coo if sparse_grad else torch.strided)
    for got, want in ((dx, rx), (dW, rW), (db, rb)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=RTOL[dtype])


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 6), n=st.integers(1, 9), m=st.integers(1, 5), data=st.data())
def test_gradients_equal_reference_for_any_shape(B, n, m, data):
    k = data.draw(st.integers(1, n))
    selection = data.draw(st.sampled_from(["topk", "unified"]))
    seed = data.draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    layer = MePropLinear(m, n, k=k, selection=selection, dtype=torch.float64)
    x, g = torch.randn(B, m, generator=gen, dtype=torch.float64), torch.randn(B, n, generator=gen, dtype=torch.float64)
    for got, want in zip(run_layer(layer, x, g), masked_reference(x, layer.weight, layer.bias, g, k, selection)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("selection", ["topk", "unified"])
def test_contiguous_and_other_gradient_layouts_give_the_same_bits(selection, dtype, monkeypatch):
    # A C-contiguous output gradient goes to the kernels directly, any other layout
    # (here a transposed one, and sum()'s expanded one) through linear_backward's checks.
    from meprop_numba.torch import _backend

    general, fused = [], []
    checked, one_call = _backend.linear_backward_selected, _backend.fused_backward
    monkeypatch.setattr(_backend, "linear_backward_selected", lambda *a: general.append(1) or checked(*a))
    monkeypatch.setattr(_backend, "fused_backward", lambda *a: fused.append(1) or one_call(*a))
    gen = torch.Generator().manual_seed(3)
    layer = MePropLinear(9, 12, k=4, selection=selection, dtype=dtype)
    x = torch.randn(5, 9, generator=gen, dtype=dtype)
    g = torch.randn(12, 5, generator=gen, dtype=dtype).t()
    for other in (g, torch.ones(1, 1, dtype=dtype).expand(5, 12)):
        direct = run_layer(layer, x, other.contiguous())
        assert fused and not general
        fused.clear()
        through_checks = run_layer(layer, x, other)
        assert general and not fused
        general.clear()
        for a, b in zip(direct, through_checks):
            assert torch.equal(a, b)
    for got, want in zip(run_layer(layer, x, g.contiguous()), masked_reference(x, layer.weight, layer.bias, g, 4,
                                                                              selection)):
        torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=RTOL[dtype])


def test_ties_go_to_the_lower_index():
    # Integer-valued gradients with many equal magnitudes: the rule, not torch.topk, decides.
    g = torch.tensor([[1.0, -2.0, 2.0, 1.0, -2.0], [3.0, 3.0, -3.0, 0.0, 3.0]], dtype=torch.float64)
    x = torch.eye(2, dtype=torch.float64)  # dW[i, b] = masked g[b, i]
    layer = MePropLinear(2, 5, k=2, dtype=torch.float64)
    _, dW, _ = run_layer(layer, x, g)
    want = torch.zeros(2, 5, dtype=torch.float64)
    for b, row in enumerate(topk_reference(g.numpy(), 2)):  # stable sort: ties to the lower index
        want[b, row] = g[b, row]
    assert topk_reference(g.numpy(), 2).tolist() == [[1, 2], [0, 1]]
    torch.testing.assert_close(dW.T, want, rtol=0, atol=0)
    # unified: column sums 4, 5, 5, 1, 5 -> columns 1 and 2
    layer.selection = "unified"
    _, dW, _ = run_layer(layer, x, g)
    assert torch.nonzero(dW.abs().sum(1)).flatten().tolist() == [1, 2]


def test_random_selection_keeps_k_random_entries_per_example():
    layer = MePropLinear(4, 10, k=3, selection="random", dtype=torch.float64)
    x = torch.randn(1, 4, dtype=torch.float64)
    g = torch.randn(1, 10, dtype=torch.float64)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        dx, dW, db = run_layer(layer, x, g)
        rows = torch.nonzero(dW.abs().sum(1)).flatten()
        assert len(rows) == 3
        mask = torch.zeros(10, dtype=torch.float64).index_fill_(0, rows, 1.0)
        torch.testing.assert_close(dx, (g * mask) @ layer.weight.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(db, g[0])
        seen.add(tuple(rows.tolist()))
        torch.manual_seed(seed)  # the draw comes from torch's generator: reproducible
        assert torch.equal(run_layer(layer, x, g)[1], dW)
    assert len(seen) > 6


def test_first_layer_input_needs_no_gradient():
    layer = MePropLinear(6, 5, k=2)
    x = torch.randn(4, 6)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is None


def test_empty_batch():
    layer = MePropLinear(6, 5, k=2)
    x = torch.zeros(0, 6, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.shape == (0, 6) and layer.weight.grad.to_dense().abs().sum() == 0


# ------------------------------------------------------------------------ the module
def test_eval_no_grad_and_dense_k_are_exactly_linear():
    torch.manual_seed(0)
    layer = MePropLinear(8, 6, k=2)
    x = torch.randn(3, 4, 8)
    want = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), want)
    layer.eval()
    assert torch.equal(layer(x), want)
    assert layer(x).grad_fn is not None and "SparseGrad" not in type(layer(x).grad_fn).__name__
    layer.train()
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    layer.k = None
    assert type(layer(x).grad_fn).__name__ == type(want.grad_fn).__name__


def test_state_dicts_move_between_linear_and_meprop_linear():
    dense = torch.nn.Linear(7, 5, dtype=torch.float64)
    sparse = MePropLinear(7, 5, k=2, dtype=torch.float64)
    sparse.load_state_dict(dense.state_dict())
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    back = torch.nn.Linear(7, 5, dtype=torch.float64)
    back.load_state_dict(sparse.state_dict())
    for key, value in dense.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    nobias = MePropLinear(7, 5, bias=False, k=1)
    nobias.load_state_dict(torch.nn.Linear(7, 5, bias=False).state_dict())
    assert nobias.bias is None


def test_repr_and_factory_arguments():
    layer = MePropLinear(3, 4, k=2, selection="unified", sparse_grad=False, dtype=torch.float64, device="cpu")
    assert repr(layer) == ("MePropLinear(in_features=3, out_features=4, bias=True, k=2, selection='unified', "
                           "sparse_grad=False)")
    assert layer.weight.dtype == torch.float64 and isinstance(layer, torch.nn.Linear)


@pytest.mark.parametrize("kwargs,error", [
    (dict(k=5), ValueError), (dict(k=0), ValueError), (dict(k=2.0), TypeError), (dict(k=True), TypeError),
    (dict(k=2, selection="per_gate"), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        MePropLinear(3, 4, **kwargs)
    layer = MePropLinear(3, 4, k=1)
    if "k" in kwargs and len(kwargs) == 1:
        with pytest.raises(error):
            layer.k = kwargs["k"]
        assert layer.k == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_refuse_to_train(dtype):
    layer = MePropLinear(3, 4, k=2, dtype=dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(torch.randn(2, 3, dtype=dtype))
    layer.eval()
    assert layer(torch.randn(2, 3, dtype=dtype)).dtype == dtype  # eval is plain F.linear


def test_autocast_refuses_to_train():
    layer = MePropLinear(3, 4, k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="autocast"):
            layer(torch.randn(2, 3))


def test_dense_gradients_work_with_torch_adam_and_clip_grad_norm():
    torch.manual_seed(0)
    layer = MePropLinear(6, 5, k=2, sparse_grad=False)
    opt = torch.optim.Adam(layer.parameters())
    layer(torch.randn(3, 6)).sum().backward()
    norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    assert torch.isfinite(norm)
    before = layer.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, layer.weight)


def test_sparse_gradients_accumulate_over_two_backward_passes():
    torch.manual_seed(0)
    layer = MePropLinear(6, 8, k=2, dtype=torch.float64)
    x1, x2 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    g1, g2 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    layer(x1).backward(g1)
    layer(x2).backward(g2)
    want = (masked_reference(x1, layer.weight, layer.bias, g1, 2, "topk")[1]
            + masked_reference(x2, layer.weight, layer.bias, g2, 2, "topk")[1])
    torch.testing.assert_close(layer.weight.grad.to_dense(), want, rtol=1e-12, atol=1e-12)
    # The lazy optimizer coalesces the accumulated (repeated) rows.
    w0 = layer.weight.detach().clone()
    optim.SGD([layer.weight], lr=0.1).step()
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.1 * want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ convert
def mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 16, dtype=dtype), torch.nn.ReLU(),
                               torch.nn.Linear(16, 16, dtype=dtype), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3, dtype=dtype))


def test_convert_swaps_hidden_layers_and_keeps_parameters():
    model = mlp()
    params = list(model.parameters())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    assert convert(model, k=4, selection="unified") is model
    assert [type(m).__name__ for m in model] == ["MePropLinear", "ReLU", "MePropLinear", "ReLU", "Linear"]
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model[0].k == 4 and model[0].selection == "unified"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert isinstance(convert(mlp(), k=2, keep_output_dense=False)[4], MePropLinear)


def test_convert_filters_by_name_type_and_callable():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(8, 8)
            self.decoder = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 2)

    model = convert(Block(), k=2, include="enc*")
    assert type(model.encoder) is MePropLinear and type(model.decoder) is torch.nn.Linear
    model = convert(Block(), k=2, exclude=["decoder"])
    assert type(model.encoder) is MePropLinear and type(model.decoder) is torch.nn.Linear
    model = convert(Block(), k=2, include=lambda name, m: m.in_features == 8, keep_output_dense=False)
    assert all(type(m) is MePropLinear for m in (model.encoder, model.decoder, model.head))
    model = convert(Block(), k=2, exclude=torch.nn.Linear)
    assert type(model.encoder) is torch.nn.Linear
    with pytest.raises(TypeError, match="include"):
        convert(Block(), k=2, include=3)


def test_convert_checks_every_layer_before_changing_any():
    model = mlp()
    with pytest.raises(ValueError, match="'0'"):
        convert(model, k=17, keep_output_dense=False)  # fits nothing; layer 0 named
    model = torch.nn.Sequential(torch.nn.Linear(4, 30), torch.nn.Linear(30, 5), torch.nn.Linear(5, 2))
    with pytest.raises(ValueError, match="'1'"):
        convert(model, k=10)
    assert all(type(m) is torch.nn.Linear for m in model)


def test_convert_shared_module_and_lone_linear():
    shared = torch.nn.Linear(6, 6)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(6, 2))
    convert(model, k=2)
    assert model[0] is model[2] and type(model[0]) is MePropLinear
    lone = torch.nn.Linear(5, 4)
    assert convert(lone, k=2) is lone  # its own output layer: left dense
    new = convert(lone, k=2, keep_output_dense=False)
    assert type(new) is MePropLinear and new.weight is lone.weight


def test_from_linear_keeps_mode_and_refuses_other_modules():
    dense = torch.nn.Linear(5, 3).eval()
    new = MePropLinear.from_linear(dense, k=1)
    assert not new.training and new.weight is dense.weight and new.bias is dense.bias
    with pytest.raises(TypeError):
        MePropLinear.from_linear(torch.nn.ReLU(), k=1)


# ------------------------------------------------------------------------ optimizers
def lazy_reference(kind, params, grads_per_step, lr, **h):
    """Plain-loop lazy optimizers: only the rows listed in a (rows, values) gradient change."""
    params = [p.detach().numpy().astype(np.float64).copy() for p in params]
    states = [dict(m=np.zeros_like(p), v=np.zeros_like(p), t=0) for p in params]
    for grads in grads_per_step:
        for p, s, grad in zip(params, states, grads):
            rows, values = grad if isinstance(grad, tuple) else (range(p.shape[0]), grad)
            s["t"] += 1
            for r, gv in zip(rows, values):
                if kind == "adam":
                    b1, b2 = h["betas"]
                    s["m"][r] = b1 * s["m"][r] + (1 - b1) * gv
                    s["v"][r] = b2 * s["v"][r] + (1 - b2) * gv * gv
                    mhat, vhat = s["m"][r] / (1 - b1 ** s["t"]), s["v"][r] / (1 - b2 ** s["t"])
                    p[r] -= lr * mhat / (np.sqrt(vhat) + h["eps"])
                elif kind == "sgd":
                    s["m"][r] = h["momentum"] * s["m"][r] + gv
                    p[r] -= lr * s["m"][r]
                else:
                    s["v"][r] += gv * gv
                    p[r] -= lr * gv / (np.sqrt(s["v"][r]) + h["eps"])
    return params


def sparse_grad(rows, values, shape):
    return torch.sparse_coo_tensor(torch.as_tensor(rows).reshape(1, -1), values, shape, check_invariants=True)


OPTIMIZERS = {
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3)),
    "sgd": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "adagrad": (optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.1, eps=1e-3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_lazy_updates_equal_reference(kind, dtype):
    ours, _, hyper = OPTIMIZERS[kind]
    rng = np.random.default_rng(1)
    W0, b0 = rng.normal(size=(6, 4)), rng.normal(size=6)
    W = torch.nn.Parameter(torch.tensor(W0, dtype=dtype))
    b = torch.nn.Parameter(torch.tensor(b0, dtype=dtype))
    opt = ours([W, b], **hyper)
    steps = []
    for _ in range(6):
        rows = np.sort(rng.choice(6, size=rng.integers(1, 4), replace=False))
        values, gb = rng.normal(size=(len(rows), 4)), rng.normal(size=6)
        W.grad = sparse_grad(rows, torch.tensor(values, dtype=dtype), (6, 4))
        b.grad = torch.tensor(gb, dtype=dtype)
        opt.step()
        steps.append([(rows, values), gb])
    h = {key: val for key, val in hyper.items() if key != "lr"}
    want_W, want_b = lazy_reference(kind, [torch.tensor(W0), torch.tensor(b0)], steps, hyper["lr"], **h)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(W.detach().numpy(), want_W, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.detach().numpy(), want_b, rtol=tol, atol=tol)
    untouched = sorted(set(range(6)) - {int(r) for (rows, _), _ in steps for r in rows})
    np.testing.assert_array_equal(W.detach().numpy()[untouched], W0.astype(W.detach().numpy().dtype)[untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["dense", "all_rows_sparse"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizers_equal_torch_when_every_row_is_touched(kind, layout, dtype):
    ours, theirs, hyper = OPTIMIZERS[kind]
    torch.manual_seed(3)
    start = [torch.randn(5, 3, dtype=dtype), torch.randn(5, dtype=dtype)]
    a = [torch.nn.Parameter(t.clone()) for t in start]
    c = [torch.nn.Parameter(t.clone()) for t in start]
    opt_a, opt_c = ours(a, **hyper), theirs(c, **hyper)
    for _ in range(8):
        gW, gb = torch.randn(5, 3, dtype=dtype), torch.randn(5, dtype=dtype)
        a[0].grad = gW.to_sparse(1) if layout == "all_rows_sparse" else gW.clone()
        a[1].grad, c[0].grad, c[1].grad = gb.clone(), gW.clone(), gb.clone()
        opt_a.step()
        opt_c.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for x, y in zip(a, c):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=tol, atol=tol)


def test_meprop_linear_with_k_equal_n_and_lazy_adam_trains_like_torch_adam():
    torch.manual_seed(0)
    dense = mlp(torch.float64)
    ours = convert(mlp(torch.float64), k=16, keep_output_dense=True)
    opt_d, opt_o = torch.optim.Adam(dense.parameters(), lr=0.01), optim.Adam(ours.parameters(), lr=0.01)
    x, y = torch.randn(32, 20, dtype=torch.float64), torch.randint(0, 3, (32,))
    for _ in range(5):
        for model, opt in ((dense, opt_d), (ours, opt_o)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert ours[0].weight.grad.is_sparse
    for p, q in zip(dense.parameters(), ours.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_param_groups_and_lr_scheduler():
    torch.manual_seed(0)
    start = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    a = [torch.nn.Parameter(t.clone()) for t in start]
    c = [torch.nn.Parameter(t.clone()) for t in start]
    opt_a = optim.Adam([{"params": [a[0]]}, {"params": [a[1]], "lr": 0.1}], lr=0.01)
    opt_c = torch.optim.Adam([{"params": [c[0]]}, {"params": [c[1]], "lr": 0.1}], lr=0.01)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sched_c = torch.optim.lr_scheduler.StepLR(opt_c, step_size=2, gamma=0.5)
    for _ in range(6):
        grads = [torch.randn_like(t) for t in start]
        for params, opt, sched in ((a, opt_a, sched_a), (c, opt_c, sched_c)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
            sched.step()
    assert opt_a.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5**3)
    for x, y in zip(a, c):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_state_dict_round_trips_with_torch_optimizers(kind):
    ours, theirs, hyper = OPTIMIZERS[kind]
    torch.manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.float64)
    p_ours, p_torch = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_ours, opt_torch = ours([p_ours], **hyper), theirs([p_torch], **hyper)
    grads = [torch.randn(4, 3, dtype=torch.float64) for _ in range(6)]
    for g in grads[:3]:  # three steps by ours, then the state moves to torch's (and back)
        p_ours.grad = g.clone()
        opt_ours.step()
    p_torch.data.copy_(p_ours.data)
    # state_dict() holds references to the live state tensors (as torch's): copy to move it.
    opt_torch.load_state_dict(copy.deepcopy(opt_ours.state_dict()))
    again = ours([torch.nn.Parameter(p_ours.detach().clone())], **hyper)
    again.load_state_dict(copy.deepcopy(opt_torch.state_dict()))
    for g in grads[3:]:
        for p, opt in ((p_ours, opt_ours), (p_torch, opt_torch), (again.param_groups[0]["params"][0], again)):
            p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(p_ours.detach(), p_torch.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.param_groups[0]["params"][0].detach(), p_torch.detach(), rtol=1e-12,
                               atol=1e-12)
    assert set(opt_ours.state_dict()["state"][0]) == set(opt_torch.state_dict()["state"][0])


def test_load_state_dict_checks_shapes_first():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = optim.Adam([p])
    p.grad = torch.ones(4, 3)
    opt.step()
    state = opt.state_dict()
    other = optim.Adam([torch.nn.Parameter(torch.zeros(5, 3))])
    with pytest.raises(ValueError, match="exp_avg"):
        other.load_state_dict(state)
    assert not other.state


def test_optimizer_checks_every_gradient_before_changing_anything():
    a = torch.nn.Parameter(torch.zeros(3, 2))
    b = torch.nn.Parameter(torch.zeros(3, 2))
    opt = optim.Adam([a, b])
    a.grad = torch.ones(3, 2)
    b.grad = torch.tensor([[1.0, float("nan")], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        opt.step()
    assert torch.equal(a, torch.zeros(3, 2)) and not opt.state
    b.grad = torch.ones(3, 2).to_sparse()  # sparse in both dimensions
    with pytest.raises(ValueError, match="sparse_dim 1"):
        opt.step()
    assert torch.equal(a, torch.zeros(3, 2))


@pytest.mark.parametrize("make", [optim.Adam, lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), optim.AdaGrad])
@pytest.mark.parametrize("rows", [[3], [-1], [0, 7], [-2, 1]])
def test_optimizer_refuses_gradient_rows_outside_the_parameter(make, rows):
    # A COO tensor built without invariant checks may hold any index; before the check
    # a row past the end was written outside the parameter and -1 updated the last row.
    a = torch.nn.Parameter(torch.zeros(3, 2))
    b = torch.nn.Parameter(torch.zeros(3, 2))
    opt = make([a, b])
    a.grad = torch.ones(3, 2)
    b.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.ones(len(rows), 2), (3, 2), check_invariants=False)
    before = {k: v.clone() for k, v in opt.state[a].items()}
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        opt.step()
    assert torch.equal(a, torch.zeros(3, 2)) and torch.equal(b, torch.zeros(3, 2))
    assert all(torch.equal(v, before[k]) for k, v in opt.state[a].items())


@pytest.mark.parametrize("make", [optim.Adam, lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), optim.AdaGrad])
def test_optimizer_checks_rows_of_a_gradient_falsely_flagged_coalesced(make):
    # torch's coalesce() returns such a tensor as it is: before, its first and last row
    # were taken for the range (a row in between could lie past the end) and repeats
    # reached the kernel unsummed.
    a = torch.nn.Parameter(torch.zeros(4, 2))
    opt = make([a])
    a.grad = torch.sparse_coo_tensor(torch.tensor([[1, 10**6, 0]]), torch.ones(3, 2), (4, 2), is_coalesced=True,
                                     check_invariants=False)
    with pytest.raises(IndexError, match=r"from 0 to 1000000, outside \[0, 4\)"):
        opt.step()
    assert torch.equal(a, torch.zeros(4, 2))
    rows, values = torch.tensor([[3, 1, 3]]), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    a.grad = torch.sparse_coo_tensor(rows, values, (4, 2), is_coalesced=True, check_invariants=False)
    reference = torch.nn.Parameter(torch.zeros(4, 2))
    ref_opt = make([reference])
    reference.grad = sparse_grad([1, 3], torch.tensor([[3.0, 4.0], [6.0, 8.0]]), (4, 2))  # summed, sorted
    opt.step()
    ref_opt.step()
    assert torch.equal(a, reference)


@settings(deadline=None, max_examples=60)
@given(rows=st.lists(st.integers(-3, 12), max_size=8), nrows=st.integers(0, 10))
def test_check_rows_kernel_equals_reference(rows, nrows):
    from meprop_numba._cpu.optim import check_rows

    expected = (1 if any(r < 0 or r >= nrows for r in rows)
                else 2 if any(b <= a for a, b in zip(rows, rows[1:])) else 0)
    assert check_rows(np.array(rows, dtype=np.int64), nrows) == expected


BAD_VALUES = st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.0e38, -3.4e38, 1e-45, 0.0, 1.0])


@settings(deadline=None, max_examples=60)
@given(rows=st.lists(st.integers(-2, 9), max_size=6), nrows=st.integers(0, 8), width=st.integers(1, 5),
       bad=st.lists(st.tuples(st.integers(0, 100), BAD_VALUES), max_size=3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_nan_inf_kernels_equal_reference(rows, nrows, width, bad, dtype):
    from meprop_numba._cpu.optim import count_nonfinite, row_gradient_status

    values = np.ones((len(rows), width), dtype=dtype)
    flat = values.reshape(-1)
    for position, value in bad:
        if flat.size:
            flat[position % flat.size] = value
    big = np.finfo(dtype).max
    assert count_nonfinite(flat, big) == np.count_nonzero(~np.isfinite(flat))
    rows = np.array(rows, dtype=np.int64)
    expected = (1 if any(r < 0 or r >= nrows for r in rows)
                else 2 if any(b <= a for a, b in zip(rows, rows[1:]))
                else 3 if not np.isfinite(values).all() else 0)
    assert row_gradient_status(rows, nrows, values, big) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("make", [optim.Adam, lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), optim.AdaGrad])
def test_optimizer_refuses_nan_or_inf_in_any_gradient_layout(make, layout, bad):
    a, b = torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(4, 3))
    opt = make([a, b])
    a.grad = sparse_grad([0, 2], torch.ones(2, 3), (4, 3))
    values = torch.ones(2, 3)
    values[1, 2] = bad
    dense = torch.ones(4, 3).index_copy_(0, torch.tensor([1, 3]), values)
    b.grad = sparse_grad([1, 3], values, (4, 3)) if layout == "sparse" else dense
    states = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in (a, b)}
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\].*NaN or Inf"):
        opt.step()
    assert torch.equal(a, torch.zeros(4, 3)) and torch.equal(b, torch.zeros(4, 3))
    assert all(torch.equal(v, states[p][k]) for p in (a, b) for k, v in opt.state[p].items())


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_takes_gradients_off_the_common_layouts(kind):
    # Non-contiguous values, values and dense gradients that require grad, a strided dense
    # gradient: the general path, with the same result as the common layouts.
    ours, _, hyper = OPTIMIZERS[kind]
    torch.manual_seed(0)
    start = torch.randn(5, 3, dtype=torch.float64)
    values, dense = torch.randn(2, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    variants = {
        "common": (sparse_grad([1, 4], values, (5, 3)), dense),
        "odd": (torch.sparse_coo_tensor(torch.tensor([[1, 4]]), values.T.contiguous().T, (5, 3), check_invariants=True),
                dense.T.contiguous().T),
        "requires_grad": (sparse_grad([1, 4], values.clone().requires_grad_(True), (5, 3)),
                          dense.clone().requires_grad_(True)),
        "negative_bit": (sparse_grad([1, 4], values, (5, 3)), (-dense)._neg_view()),  # COO resolves the bit
    }
    results = {}
    for name, (gW, gV) in variants.items():
        W, V = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
        opt = ours([W, V], **hyper)
        for _ in range(2):
            W.grad, V.grad = gW, gV
            opt.step()
        results[name] = (W.detach().clone(), V.detach().clone())
    assert not variants["odd"][0]._values().is_contiguous() and not variants["odd"][1].is_contiguous()
    assert variants["negative_bit"][1].is_neg()
    for name in ("odd", "requires_grad", "negative_bit"):
        assert torch.equal(results[name][0], results["common"][0])
        assert torch.equal(results[name][1], results["common"][1])


class _CountingKernels:
    """The optimizer's kernel module with calls of `name` counted (a proxy: the module stays as it is)."""

    def __init__(self, kernels, name):
        self.kernels, self.name, self.calls = kernels, name, 0

    def __getattr__(self, attr):
        fn = getattr(self.kernels, attr)
        if attr != self.name:
            return fn

        def counted(*args):
            self.calls += 1
            return fn(*args)

        return counted


def adam_steps(monkeypatch, dtype, one_call):
    """Two param groups stepped 7 times by lazy Adam; one-call steps only if `one_call` (else the general path)."""
    if not one_call:
        monkeypatch.setattr(optim._AdamTable, "build", classmethod(lambda cls, opt: None))
    torch.manual_seed(0)
    model = mlp(dtype)
    convert(model, k=3, selection="topk")
    params = list(model.parameters())
    opt = optim.Adam([{"params": params[:4]}, {"params": params[4:], "lr": 0.02, "betas": (0.8, 0.9)}], lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    for t in range(7):
        opt.zero_grad()
        x, y = torch.randn(6, 20, dtype=dtype), torch.randint(0, 3, (6,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if t == 3:
            model[2].bias.grad = None  # a parameter without a gradient in one step
        if t == 5:  # rows in reverse order: the general path sums them
            g = model[0].weight.grad
            model[0].weight.grad = torch.sparse_coo_tensor(g._indices().flip(1), g._values().flip(0), g.shape,
                                                             check_invariants=True)
        opt.step()
        scheduler.step()
    return model, opt


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_one_call_step_equals_the_general_path(dtype, monkeypatch):
    counting = _CountingKernels(optim.K, "adam_table")
    monkeypatch.setattr(optim, "K", counting)
    fast, fast_opt = adam_steps(monkeypatch, dtype, one_call=True)
    assert counting.calls >= 4  # steps 2-5 and 7 (after the reordered rows of step 6, the general path)
    calls = counting.calls
    general, general_opt = adam_steps(monkeypatch, dtype, one_call=False)
    assert counting.calls == calls
    for p, q in zip(fast.parameters(), general.parameters()):
        assert torch.equal(p, q)
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fast_opt.state[p][name], general_opt.state[q][name])


@pytest.mark.parametrize("bad", ["nan", "rows", "unordered-nan"])
def test_adam_one_call_step_checks_every_gradient_before_changing_anything(bad):
    a, b = torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(5, 3))
    opt = optim.Adam([a, b], lr=0.1)
    for _ in range(2):  # the second step is a one-call step
        a.grad, b.grad = sparse_grad([0, 2], torch.ones(2, 3), (5, 3)), torch.ones(5, 3)
        opt.step()
    assert opt.__dict__.get("_table") is not None
    before = {p: (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in (a, b)}
    a.grad = torch.ones(5, 3)
    if bad == "nan":
        b.grad = sparse_grad([1, 4], torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 6.0]]), (5, 3))
        error, match = ValueError, r"param_groups\[0\]\['params'\]\[1\].*NaN or Inf"
    elif bad == "rows":
        b.grad = torch.sparse_coo_tensor(torch.tensor([[1, 5]]), torch.ones(2, 3), (5, 3), check_invariants=False)
        error, match = IndexError, "outside"
    else:
        b.grad = sparse_grad([4, 1], torch.tensor([[1.0, 2.0, 3.0], [4.0, float("inf"), 6.0]]), (5, 3))
        error, match = ValueError, "NaN or Inf"
    with pytest.raises(error, match=match):
        opt.step()
    for p in (a, b):
        assert torch.equal(p, before[p][0])
        assert all(torch.equal(v, before[p][1][k]) for k, v in opt.state[p].items())
    b.grad = torch.ones(5, 3)
    opt.step()
    assert float(opt.state[a]["step"]) == float(opt.state[b]["step"]) == 3.0


def test_adam_one_call_step_follows_a_loaded_or_replaced_state():
    torch.manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt, ref = optim.Adam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
    for t in range(6):
        g = torch.randn(4, 3, dtype=torch.float64)
        ours.grad, theirs.grad = g.clone(), g.clone()
        if t == 2:  # a new state object: the table must not write into the old one
            opt.load_state_dict(copy.deepcopy(ref.state_dict()))
        if t == 4:  # one state tensor replaced in place of the dict entry
            opt.state[ours]["exp_avg"] = ref.state[theirs]["exp_avg"].clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=1e-14)
    assert float(opt.state[ours]["step"]) == 6.0


def test_optimizer_checks_every_state_before_changing_anything():
    a, b = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(3, 2))
    opt = optim.Adam([a, b])
    a.grad, b.grad = torch.ones(3, 2), torch.ones(3, 2)
    opt.step()
    before = a.detach().clone()
    opt.state[b]["exp_avg"] = torch.zeros(2, 2)  # a broken state for the second parameter
    a.grad, b.grad = torch.ones(3, 2), torch.ones(3, 2)
    with pytest.raises(ValueError, match="exp_avg"):
        opt.step()
    assert torch.equal(a, before) and float(opt.state[a]["step"]) == 1.0


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_step_counts_equal_torch(kind):
    ours, theirs, hyper = OPTIMIZERS[kind]
    if kind == "sgd":
        return  # no step count
    a, c = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt_a, opt_c = ours([a], **hyper), theirs([c], **hyper)
    for _ in range(3):
        a.grad, c.grad = torch.ones(3), torch.ones(3)
        opt_a.step()
        opt_c.step()
    assert opt_a.state[a]["step"].dtype == opt_c.state[c]["step"].dtype
    assert float(opt_a.state[a]["step"]) == float(opt_c.state[c]["step"]) == 3.0


def test_layer_apply_is_the_function_and_refuses_functorch_transforms():
    layer = MePropLinear(5, 4, k=2)
    x = torch.randn(3, 5)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "_SparseGradLinearBackward"
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda x: layer(x).sum())(x)  # as torch.autograd.Function.apply refuses it


@pytest.mark.parametrize("make", [optim.Adam, optim.SGD, optim.AdaGrad])
def test_optimizer_refuses_a_parameter_listed_twice(make):
    a, b = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="parameter 2 of the param group is parameter 0 again"):
        make([a, b, a])
    with pytest.raises(ValueError, match="parameter 1 .* is parameter 0 again"):
        make([{"params": [("w", a), ("w2", a)]}])
    opt = make([b])
    group = {"params": iter([a, a]), "lr": 0.5}
    with pytest.raises(ValueError, match="again"):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1 and not isinstance(group["params"], list)  # nothing changed
    with pytest.raises(ValueError, match="more than one parameter group"):  # torch's own check, kept
        opt.add_param_group({"params": [b]})
    opt.add_param_group({"params": [a]})
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]


def test_cuda_step_uses_the_shared_checks():
    # The CUDA path's checks are the CPU path's (optim._check_param / _check_grad): CPU
    # tensors reach them and are refused before any device work.
    from meprop_numba.torch import _backend

    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(TypeError, match=r"one kind of device \(cuda here\)"):
        _backend.cuda_step(optim.Adam([p]))
    with pytest.raises(ValueError, match="sparse_dim 1"):
        optim._check_grad(p, torch.ones(3, 2).to_sparse(), 0, 0)
    with pytest.raises(ValueError, match="values of shape"):
        optim._check_grad(p, sparse_grad([0], torch.ones(1, 5), (3, 5)), 0, 0)
    with pytest.raises(TypeError, match="float64 on cpu, expected torch.float32"):
        optim._check_grad(p, torch.ones(3, 2, dtype=torch.float64), 0, 0)
    with pytest.raises(ValueError, match="5 elements, expected 6"):
        optim._check_grad(p, torch.ones(5), 0, 0)
    rows, values = optim._check_grad(p, sparse_grad([2], torch.ones(1, 2), (3, 2)), 0, 0)
    assert rows.tolist() == [2] and values.shape == (1, 2)


def test_step_hooks_profiler_and_zero_grad_keep_torch_behaviour():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.SGD([p], lr=0.5)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", float(p.detach()[0]))))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", float(p.detach()[0]))))
    p.grad = torch.ones(3)
    opt.step()
    assert calls == [("pre", 1.0), ("post", 0.5)]
    pre.remove()
    post.remove()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append("global"))
    try:
        opt.step()
    finally:
        handle.remove()
    assert calls[-1] == "global" and float(p.detach()[0]) == 0.0
    with torch.profiler.profile() as prof:
        opt.step()
        opt.zero_grad()
    names = {event.name for event in prof.events()}
    assert "Optimizer.step#SGD.step" in names and "Optimizer.zero_grad#SGD.zero_grad" in names
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_optimizer_rechecks_a_parameter_whose_tensor_was_replaced():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = optim.Adam([p])
    p.grad = torch.ones(4, 4)
    opt.step()
    p.data = torch.zeros(4, 4).T  # same object, same shape, not contiguous any more
    p.grad = torch.ones(4, 4)
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()
    p.data = torch.zeros(4, 4, dtype=torch.float64)  # same object, another dtype
    p.grad = torch.ones(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="exp_avg"):
        opt.step()
    assert torch.equal(p, torch.zeros(4, 4, dtype=torch.float64))
    p.data = torch.full((4, 4), 2.0)  # new storage, same layout: updated there, like torch.optim.Adam
    p.grad = torch.ones(4, 4)
    reference = torch.nn.Parameter(torch.full((4, 4), 2.0))
    ref_opt = torch.optim.Adam([reference])
    ref_opt.load_state_dict(opt.state_dict())
    reference.grad = torch.ones(4, 4)
    opt.step()
    ref_opt.step()
    assert torch.allclose(p.detach(), reference.detach())


def test_optimizer_refuses_parameters_it_cannot_update():
    p = torch.nn.Parameter(torch.zeros(3, 4).T)  # not contiguous
    p.grad = torch.ones(4, 3)
    with pytest.raises(ValueError, match="contiguous"):
        optim.SGD([p], lr=0.1).step()
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    q.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float16"):
        optim.SGD([q], lr=0.1).step()
    for bad in (dict(lr=0), dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=0.0), dict(lr="x")):
        with pytest.raises((TypeError, ValueError)):
            optim.Adam([p], **bad)


def test_sgd_without_momentum_keeps_no_state():
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = optim.SGD([p], lr=0.5)
    p.grad = sparse_grad([2], torch.ones(1, 2), (3, 2))
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]])) and not opt.state[p]


def test_closure_is_evaluated():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.AdaGrad([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(2.0)
    assert (p.detach() < 1).all()


# ------------------------------------------------------------------------ torch.library / torch.compile
@pytest.mark.parametrize("selection", ["topk", "unified"])
def test_opcheck(selection):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    W = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.library.opcheck(linear_op, (x, W, b, 2, selection))
    torch.library.opcheck(linear_op, (x, W, None, 2, selection))
    g = torch.randn(3, 2, 4, dtype=torch.float64, generator=gen)
    for need_dx in (True, False):
        torch.library.opcheck(linear_backward_op, (x.detach(), W.detach(), g, 2, selection == "unified", None,
                                                   need_dx))


@pytest.mark.slow
def test_fullgraph_compile_gradients_equal_eager():
    x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    eager = convert(mlp(), k=4, sparse_grad=False)
    compiled_model = convert(mlp(), k=4, sparse_grad=True)  # dense gradients under compile
    compiled = torch.compile(compiled_model, fullgraph=True)
    F.cross_entropy(compiled(x), y).backward()
    F.cross_entropy(eager(x), y).backward()
    for p, q in zip(eager.parameters(), compiled_model.parameters()):
        assert q.grad.layout == torch.strided
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7)
    assert compiled_model[0].weight.grad.abs().sum(1).count_nonzero() <= 8 * 4


# ------------------------------------------------------------------------ training
def _torch_mlp(hidden, dtype=torch.float32):
    return torch.nn.Sequential(torch.nn.Linear(784, hidden, dtype=dtype), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden, dtype=dtype), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10, dtype=dtype))


@pytest.mark.parametrize("selection,batch", [("topk", 10), ("unified", 50)])
def test_converted_model_steps_in_lockstep_with_the_native_mlp(selection, batch):
    """Same float64 weights and minibatches: the parameters agree to rounding after 30 steps."""
    import meprop_numba as mp
    from meprop_numba.data import load_dataset
    from meprop_numba.nn import MLP, softmax_cross_entropy

    data = load_dataset("embedded", dtype=np.float64)
    native = MLP(784, 64, 10, layers=2, k=20, dtype=np.float64, rng=0, selection=selection)
    native_opt = mp.Adam(native.params(), lr=1e-3)
    model = _torch_mlp(64, torch.float64)
    with torch.no_grad():
        for p, a in zip(model.parameters(), native.params()):
            p.copy_(torch.from_numpy(a))
    convert(model, k=20, selection=selection)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    for b in np.random.default_rng(0).integers(0, len(data.y_train), (30, batch)):
        _, grad = softmax_cross_entropy(native.forward(data.x_train[b], train=True), data.y_train[b])
        native.backward(grad)
        native_opt.step(native.grads())
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(data.x_train[b])), torch.from_numpy(data.y_train[b])).backward()
        opt.step()
    assert model[0].weight.grad.is_sparse
    for a, p in zip(native.params(), model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=0, atol=1e-12)


SELECTION, BATCH, HIDDEN, EPOCHS = "unified", 50, 128, 1


def _native_accuracy(seed):
    from meprop_numba.data import load_dataset
    from meprop_numba.tasks import TASKS
    from meprop_numba.training import fit

    task = TASKS["mlp"]
    config = task.config_class(dataset="embedded", hidden=HIDDEN, k=20, selection=SELECTION, epochs=EPOCHS,
                               batch_size=BATCH, seed=seed, threads=1)
    data = load_dataset("embedded")
    model = fit(task, config, data, progress=False)["model"]
    return float(model.accuracy(data.x_test, data.y_test))


def _torch_accuracy(seed):
    from meprop_numba.data import load_dataset

    data = load_dataset("embedded")
    torch.manual_seed(seed)
    model = convert(_torch_mlp(HIDDEN), k=20, selection=SELECTION)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    train_set = torch.utils.data.TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return float((predicted == data.y_test).mean())


@pytest.mark.slow
def test_converted_model_trains_to_the_native_accuracy():
    seeds = (0, 1, 2)
    native = np.array([_native_accuracy(s) for s in seeds])
    ours = np.array([_torch_accuracy(s) for s in seeds])
    noise = max(native.std(ddof=1), ours.std(ddof=1), 0.005)
    assert abs(ours.mean() - native.mean()) <= 0.01 + 3 * noise, (ours, native)
