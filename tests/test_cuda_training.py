"""Training on the GPU: the layers' CUDA kernels and whole training steps against the CPU path.

Runs on a real GPU when one is present and under the CUDA simulator
otherwise, with tiny launches (see ``cuda_helpers.small_launch_settings``) so
that the tiny shapes here span several blocks and the grid-stride loops run.
The forward product, ReLU, dropout's scaling and the loss are compared with
NumPy references; a few training steps of an MLP whose parameters were moved
to the device (:meth:`Module.to`) with the one training step
(:func:`meprop_numba.training.train_step`) must give the CPU model's weights.
"""
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
