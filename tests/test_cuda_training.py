"""Training on the GPU: the layers' CUDA kernels and whole training steps against the CPU path.

Runs on a real GPU when one is present and under the CUDA simulator
otherwise, with tiny launches (see ``cuda_helpers.small_launch_settings``) so
that the tiny shapes here span several blocks and the grid-stride loops run.
The forward product, ReLU, dropout's scaling and the loss are compared with
NumPy references; a few training steps of an MLP whose parameters were moved
to the device (:meth:`Module.to`) with the one training step
(:func:`meprop_numba.training.train_step`) must give the CPU model's weights.
"""
import dataclasses

import numpy as np
import pytest

import meprop_numba as mp
from meprop_numba import _cuda, gpu
from meprop_numba._cuda import mlp as cuda_mlp
from meprop_numba.nn import MLP, Linear, Sequential, softmax_cross_entropy
from meprop_numba.training import TrainingDiverged, train_step

if not _cuda.cuda_available():  # pragma: no cover - the simulator is always there
    pytest.skip("no CUDA GPU and the CUDA simulator is off", allow_module_level=True)

from cuda_helpers import InterfaceArray, dev, host, small_launch_settings  # noqa: E402
from reference import cross_entropy_reference  # noqa: E402

DTYPES = (np.float32, np.float64)
#: Weights after a few steps: float64 to rounding, float32 loosely (sums in another order).
WEIGHT_TOL = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    yield from small_launch_settings()


# ------------------------------------------------------------------ the layers' kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 2), (13, 6, 9)])
def test_linear_forward_matches_numpy(dtype, shape):
    # (13, 6, 9) with 2x2-thread blocks (8x8 outputs) and 3 row blocks: the grid-stride loop in y runs.
    batch, m, n = shape
    rng = np.random.default_rng(batch + m + n)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in ((batch, m), (n, m), (n,)))
    y = cuda_mlp.linear_forward(dev(x), dev(W), dev(b))
    expected = x.astype(np.float64) @ W.T.astype(np.float64) + b
    assert y.dtype == dtype
    np.testing.assert_allclose(host(y), expected, rtol=10 * WEIGHT_TOL[dtype], atol=10 * WEIGHT_TOL[dtype])


def test_linear_forward_takes_interface_arrays_and_refuses_mismatches():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal(2)
    y = cuda_mlp.linear_forward(InterfaceArray(dev(x)), InterfaceArray(dev(W)), dev(b))
    np.testing.assert_allclose(host(y), x @ W.T + b, rtol=1e-12)
    with pytest.raises(ValueError, match="W must be"):
        cuda_mlp.linear_forward(dev(x), dev(rng.standard_normal((2, 4))), dev(b))
    with pytest.raises(ValueError, match="W must be"):
        cuda_mlp.linear_forward(dev(x), dev(W.astype(np.float32)), dev(b))
    with pytest.raises(ValueError, match="b must be"):
        cuda_mlp.linear_forward(dev(x), dev(W), dev(rng.standard_normal(3)))
    with pytest.raises(TypeError, match="CUDA array"):
        cuda_mlp.linear_forward(dev(x), W, dev(b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_multiply_kernels(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 11)).astype(dtype)
    x[0, 0], x[1, 1] = np.nan, 0.0
    g = rng.standard_normal((5, 11)).astype(dtype)
    y = host(cuda_mlp.relu_forward(dev(x)))
    np.testing.assert_array_equal(y, np.where(np.isnan(x), np.nan, np.maximum(x, 0)))
    np.testing.assert_array_equal(host(cuda_mlp.relu_backward(dev(g), dev(y))), np.where(y > 0, g, 0))
    np.testing.assert_array_equal(host(cuda_mlp.multiply(dev(g), dev(x))), g * x)
    with pytest.raises(ValueError, match="y must be"):
        cuda_mlp.relu_backward(dev(g[:, :3]), dev(y))
    with pytest.raises(ValueError, match="b must be"):
        cuda_mlp.multiply(dev(g), dev(x.astype(np.float64 if dtype == np.float32 else np.float32)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_on_device_matches_reference(dtype):
    rng = np.random.default_rng(2)
    logits = (3 * rng.standard_normal((9, 4))).astype(dtype)
    labels = rng.integers(0, 4, 9)
    ref_loss, ref_grad = cross_entropy_reference(logits, labels)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for given in (labels, dev(labels), dev(labels.astype(np.int32))):
        loss, grad = softmax_cross_entropy(dev(logits), given)
        assert isinstance(loss, float) and grad.dtype == dtype
        np.testing.assert_allclose(loss, ref_loss, rtol=tol)
        np.testing.assert_allclose(host(grad), ref_grad, rtol=10 * tol, atol=10 * tol)


def test_cross_entropy_on_device_refuses_bad_labels():
    logits = dev(np.zeros((3, 4)))
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        softmax_cross_entropy(logits, dev(np.array([0, 4, 1])))  # checked on the device
    with pytest.raises(IndexError):
        softmax_cross_entropy(logits, np.array([0, -1, 1]))  # checked on the host
    with pytest.raises(ValueError, match="shape"):
        softmax_cross_entropy(logits, dev(np.array([0, 1])))
    with pytest.raises(TypeError, match="integer"):
        softmax_cross_entropy(logits, dev(np.zeros(3)))


# ------------------------------------------------------------------ moving a model
def test_module_to_moves_every_parameter_and_back():
    model = MLP(5, 6, 3, k=2, rng=0)
    before = model.state_dict()
    assert model.to("cuda") is model
    assert all(gpu.is_cuda_array(p) for p in model.parameters())
    model.to("cpu")
    assert all(isinstance(p, np.ndarray) for p in model.parameters())
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p, before[name])
    with pytest.raises(ValueError, match="device"):
        model.to("gpu")


def test_module_to_refuses_what_it_cannot_move_and_changes_nothing():
    from meprop_numba.nn import LSTM

    net = Sequential([Linear(3, 4, rng=0), LSTM(4, 2, rng=0)])
    with pytest.raises(TypeError, match="LSTM"):
        net.to("cuda")
    assert isinstance(net.layers[0].weight, np.ndarray)


def test_a_layer_refuses_input_on_the_other_side_and_keeps_nothing():
    layer = Linear(3, 2, rng=0)
    with pytest.raises(TypeError, match=r"to\('cuda'\)"):
        layer.forward(dev(np.ones((1, 3), np.float32)), train=True)
    assert layer._x is None
    layer.to("cuda")
    with pytest.raises(TypeError, match="on the GPU"):
        layer.forward(np.ones((1, 3), np.float32), train=True)
    assert layer._x is None


def test_predict_on_a_device_model_matches_the_host_model():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    model = MLP(5, 6, 3, k=2, rng=0)
    expected = model.predict(x, batch_size=3)
    np.testing.assert_array_equal(model.to("cuda").predict(x, batch_size=3), expected)


# ------------------------------------------------------------------ training steps
def _loss(model, batch):
    x, y = batch
    return softmax_cross_entropy(model.forward(x, train=True), y)


def _train_both(dtype, steps, optimizer, **mlp_args):
    """The same MLP trained `steps` steps on the host and, moved to the device, on the GPU."""
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((4, 5)).astype(dtype), rng.integers(0, 3, 4)) for _ in range(steps)]
    host_model = MLP(5, 6, 3, dtype=dtype, rng=5, **mlp_args)
    device_model = MLP(5, 6, 3, dtype=dtype, rng=5, **mlp_args).to("cuda")
    host_opt, device_opt = optimizer(host_model.params()), optimizer(device_model.params())
    losses = []
    for x, y in batches:
        host_loss = train_step(host_model, host_opt, _loss, (x, y))
        device_loss = train_step(device_model, device_opt, _loss, (dev(x), dev(y)))
        losses.append((host_loss, device_loss))
    return host_model, device_model, losses


OPTIMIZERS = {
    "adam-lazy": lambda params: mp.Adam(params, lr=0.05),
    "sgd-momentum": lambda params: mp.SGD(params, lr=0.2, momentum=0.9),
    "adam-dense": lambda params: mp.Adam(params, lr=0.05, lazy=False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("selection,k,optimizer", [
    ("topk", 2, "adam-lazy"),
    ("unified", 2, "sgd-momentum"),
    ("topk", None, "adam-dense"),
])
def test_training_steps_on_device_match_the_cpu(dtype, selection, k, optimizer):
    host_model, device_model, losses = _train_both(dtype, 3, OPTIMIZERS[optimizer], k=k, selection=selection)
    tol = WEIGHT_TOL[dtype]
    for host_loss, device_loss in losses:
        np.testing.assert_allclose(device_loss, host_loss, rtol=tol)
    for (name, p), q in zip(host_model.named_parameters(), device_model.parameters()):
        np.testing.assert_allclose(host(q), p, rtol=tol, atol=tol, err_msg=name)
    # The weights moved: the comparison is not between two untouched initialisations.
    assert not np.allclose(host_model.parameters()[0], MLP(5, 6, 3, dtype=dtype, rng=5).parameters()[0])


def test_training_with_dropout_and_random_selection_on_device_matches_the_cpu():
    # The masks and the random selections are drawn on the host from the model's generator.
    host_model, device_model, _ = _train_both(np.float64, 2, OPTIMIZERS["adam-lazy"], k=2, selection="random",
                                              dropout=0.3)
    for p, q in zip(host_model.parameters(), device_model.parameters()):
        np.testing.assert_allclose(host(q), p, rtol=1e-12, atol=1e-12)


def test_a_nan_batch_on_device_diverges_and_updates_nothing():
    model = MLP(5, 6, 3, k=2, rng=0).to("cuda")
    opt = mp.Adam(model.params(), lr=0.05)
    before = [host(p) for p in model.parameters()]
    x = np.ones((2, 5), dtype=np.float32)
    x[1, 2] = np.nan
    with pytest.raises(TrainingDiverged):
        train_step(model, opt, _loss, (dev(x), dev(np.array([0, 1]))))
    for p, q in zip(before, model.parameters()):
        np.testing.assert_array_equal(host(q), p)


# ------------------------------------------------------------------ reused device buffers
@pytest.fixture
def device_allocations(monkeypatch):
    """Count every device and pinned allocation of numba's CUDA API (non-empty ones), whoever makes it."""
    from meprop_numba._cuda import device as cuda_device

    counts = {"n": 0}
    api = cuda_device.cuda
    for name in ("device_array", "device_array_like", "to_device", "pinned_array", "mapped_array"):
        real = getattr(api, name)

        def counting(*args, _real=real, **kwargs):
            out = _real(*args, **kwargs)
            counts["n"] += int(np.prod(out.shape)) > 0
            return out
        monkeypatch.setattr(api, name, counting)
    return counts


def test_workspace_hands_out_one_buffer_per_name_shape_and_dtype():
    ws = _cuda.Workspace()
    a = ws.empty("y", (2, 3), np.float32)
    assert ws.empty("y", (2, 3), np.float32) is a
    b, c = ws.empty("y", (3, 3), np.float32), ws.empty("y", (2, 3), np.float64)
    layer = ws.scope(0)
    d = layer.empty("y", (2, 3), np.float32)
    assert len({id(a), id(b), id(c), id(d)}) == 4
    assert layer.empty("y", (2, 3), np.float32) is d and ws.scope(0).empty("y", (2, 3), np.float32) is d
    assert ws.allocations == layer.allocations == 4 and ws.nbytes == 4 * 6 + 4 * 9 + 8 * 6 + 4 * 6
    ws.clear()
    assert len(ws) == 0 and ws.empty("y", (2, 3), np.float32) is not a


def _train_two_ways(steps, dtype, optimizer, **mlp_args):
    """One MLP trained with reused buffers, a twin with fresh ones; the reusing model's allocations per step."""
    rng = np.random.default_rng(6)
    batches = [(rng.standard_normal((b, 5)).astype(dtype), rng.integers(0, 3, b)) for b in steps]
    reusing = MLP(5, 6, 3, dtype=dtype, rng=5, **mlp_args).to("cuda", reuse_buffers=True)
    fresh = MLP(5, 6, 3, dtype=dtype, rng=5, **mlp_args).to("cuda")
    opt_reusing, opt_fresh = optimizer(reusing.params()), optimizer(fresh.params())

    def loss(model, batch):
        return softmax_cross_entropy(model.forward(batch[0], train=True), batch[1], workspace=model.workspace)

    allocations = []
    for x, y in batches:
        before = reusing.workspace.allocations + opt_reusing._gpu_workspace().allocations
        for model, opt in ((reusing, opt_reusing), (fresh, opt_fresh)):
            # Host batches: the reusing model copies them into its buffers through pinned memory.
            train_step(model, opt, loss, (dev(x), dev(y)) if model is fresh else
                       (_cuda.copy_in(x, 0, model.workspace, "x"), _cuda.copy_in(y, 0, model.workspace, "y")))
        allocations.append(reusing.workspace.allocations + opt_reusing._gpu_workspace().allocations - before)
    return reusing, fresh, allocations


@pytest.mark.parametrize("dtype,selection,optimizer,extra", [
    (np.float32, "topk", "adam-lazy", dict(dropout=0.3)),
    (np.float64, "unified", "sgd-momentum", {}),
])
def test_reused_buffers_allocate_once_per_shape_and_train_like_fresh_ones(dtype, selection, optimizer, extra):
    # Batches of 4, 4, 3, 4 examples: the second step and the fourth reuse what the first and third allocated.
    reusing, fresh, allocations = _train_two_ways((4, 4, 3, 4), dtype, OPTIMIZERS[optimizer], k=2,
                                                  selection=selection, **extra)
    assert allocations[0] > 0 and allocations[2] > 0
    assert allocations[1] == 0 and allocations[3] == 0
    for p, q in zip(fresh.parameters(), reusing.parameters()):
        np.testing.assert_array_equal(host(q), host(p))  # the same kernels in the same order: bitwise equal
    assert not np.array_equal(host(reusing.parameters()[0]),
                              MLP(5, 6, 3, dtype=dtype, rng=5, k=2, selection=selection, **extra).parameters()[0])


def test_a_repeated_step_makes_no_device_allocation_at_all(device_allocations):
    # Counted at numba's API, so an allocation that bypasses the workspaces is caught too.
    model = MLP(5, 6, 3, k=2, selection="random", rng=0).to("cuda", reuse_buffers=True)
    opt = mp.Adam(model.params(), lr=0.05)
    x, y = np.ones((4, 5), np.float32), np.array([0, 1, 2, 0])

    def step():
        batch = (_cuda.copy_in(x, 0, model.workspace, "x"), _cuda.copy_in(y, 0, model.workspace, "y"))
        train_step(model, opt, lambda m, b: softmax_cross_entropy(m.forward(b[0], train=True), b[1],
                                                                  workspace=m.workspace), batch)
    step()
    assert device_allocations["n"] > 0
    device_allocations["n"] = 0
    step()
    assert device_allocations["n"] == 0


def test_reuse_buffers_is_checked_and_moving_back_drops_the_buffers():
    model = MLP(5, 6, 3, k=2, rng=0)
    with pytest.raises(TypeError, match="reuse_buffers"):
        model.to("cuda", reuse_buffers=1)
    with pytest.raises(ValueError, match="reuse_buffers"):
        model.to("cpu", reuse_buffers=True)
    assert isinstance(model.parameters()[0], np.ndarray) and model.workspace is None
    model.to("cuda", reuse_buffers=True)
    assert all(m.workspace is not None for m in model.movable_modules())
    model.to("cpu")
    assert all(m.workspace is None for m in model.movable_modules())


@pytest.fixture
def launches(monkeypatch):
    from meprop_numba._cuda import device as cuda_device

    calls = []
    real = cuda_device.launch
    monkeypatch.setattr(cuda_device, "launch", lambda *args: (calls.append(args[0]), real(*args)))
    return calls


def test_out_receives_the_result(launches):
    rng = np.random.default_rng(7)
    x, W, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    out = gpu.zeros((3, 5), np.float64)
    y = cuda_mlp.linear_forward(dev(x), dev(W), dev(b), out=InterfaceArray(out))
    np.testing.assert_allclose(host(out), x @ W.T + b, rtol=1e-12)
    assert host(y).tolist() == host(out).tolist()
    relu_out = gpu.zeros((3, 5), np.float64)
    cuda_mlp.relu_forward(out, out=relu_out)
    np.testing.assert_array_equal(host(relu_out), np.maximum(host(out), 0))
    idx = gpu.zeros((3, 2), np.int64)
    cuda_topk_out = _cuda.topk_indices(dev(x), 2, False, out=idx)
    from reference import topk_reference

    np.testing.assert_array_equal(host(idx), topk_reference(x, 2))
    np.testing.assert_array_equal(host(cuda_topk_out), host(idx))
    assert launches


@pytest.mark.parametrize("bad,error,match", [
    (lambda: np.zeros((3, 5)), TypeError, "CUDA array"),
    (lambda: gpu.zeros((3, 4), np.float64), ValueError, r"shape \(3, 5\)"),
    (lambda: gpu.zeros((3, 5), np.float32), TypeError, "dtype float64"),
    (lambda: gpu.zeros((5, 3), np.float64).T, ValueError, "C-contiguous"),
])
def test_a_wrong_out_is_refused_before_any_launch(launches, bad, error, match):
    rng = np.random.default_rng(8)
    x, W, b = dev(rng.standard_normal((3, 4))), dev(rng.standard_normal((5, 4))), dev(rng.standard_normal(5))
    y = dev(rng.standard_normal((3, 5)))
    out = bad()
    launches.clear()
    calls = [lambda: cuda_mlp.linear_forward(x, W, b, out=out), lambda: cuda_mlp.relu_forward(y, out=out),
             lambda: cuda_mlp.relu_backward(y, y, out=out), lambda: cuda_mlp.multiply(y, y, out=out)]
    for call in calls:
        with pytest.raises(error, match=match):
            call()
    with pytest.raises((TypeError, ValueError)):
        _cuda.topk_indices(y, 5, False, out=out)  # int64 (3, 5) wanted
    assert launches == []


# ------------------------------------------------------------------ fit(device='cuda')
def _tiny_data(dtype):
    from meprop_numba.data.datasets import Dataset

    rng = np.random.default_rng(9)
    centers = 2 * rng.standard_normal((3, 5))

    def draw(n):
        y = rng.integers(0, 3, n)
        return (centers[y] + rng.standard_normal((n, 5))).astype(dtype), y.astype(np.int64)

    return Dataset("tiny", *draw(12), *draw(4), *draw(4), n_classes=3, source="test")


@pytest.mark.slow
@pytest.mark.parametrize("selection,optimizer", [("topk", "adam"), ("unified", "sgd")])
def test_fit_on_the_device_matches_the_cpu_fit(tmp_path, launches, selection, optimizer):
    from meprop_numba.tasks import TASKS
    from meprop_numba.training import fit

    task = TASKS["mlp"]
    config = task.config_class(dataset="tiny", hidden=6, k=2, selection=selection, optimizer=optimizer,
                               error_feedback=0.0, dropout=0.25, epochs=1, batch_size=4, dtype="float64",
                               seed=1)
    data = _tiny_data(np.float64)
    cpu = fit(task, config, data, progress=False)
    assert launches == []
    gpu_run = fit(task, dataclasses.replace(config, device="cuda"), data, progress=False,
                  checkpoint_dir=tmp_path / "ck")
    model = gpu_run["model"]
    assert launches  # it trained through the CUDA kernels
    assert all(isinstance(p, np.ndarray) for p in model.parameters())  # the weights come back to the host
    for (name, p), q in zip(cpu["model"].named_parameters(), model.parameters()):
        np.testing.assert_allclose(q, p, rtol=1e-12, atol=1e-12, err_msg=name)
    assert not np.allclose(model.parameters()[0], task.build_model(config, task.extra_state(data),
                                                                   np.random.default_rng(0)).parameters()[0])
    np.testing.assert_allclose(gpu_run["epochs"][0]["train_loss"], cpu["epochs"][0]["train_loss"], rtol=1e-12)
    assert gpu_run["epochs"][0]["dev_accuracy"] == cpu["epochs"][0]["dev_accuracy"]
    # The checkpoint holds host arrays and loads into a host model.
    from meprop_numba.training import load_model

    loaded, _, _ = load_model(task, tmp_path / "ck")
    for p, q in zip(loaded.parameters(), model.parameters()):
        np.testing.assert_array_equal(p, q)


def test_fit_on_the_device_refuses_what_runs_on_the_host_only(tmp_path):
    from meprop_numba.tasks import TASKS
    from meprop_numba.training import fit

    task = TASKS["mlp"]
    base = dict(dataset="tiny", hidden=6, k=2, epochs=1, batch_size=4, device="cuda")
    data = _tiny_data(np.float32)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.npz").write_bytes(b"kept")
    for bad, match in ((dict(error_feedback=0.5), "error feedback"), (dict(selection="balanced"), "balanced"),
                       (dict(simplify=0.1, error_feedback=0.0), "simplify")):
        with pytest.raises(ValueError, match=match):
            fit(task, task.config_class(**base, **bad), data, progress=False, checkpoint_dir=tmp_path / "ck",
                overwrite=True)
    assert (tmp_path / "ck" / "last.npz").read_bytes() == b"kept"  # refused before any file was touched
