"""The package's compiled kernels as the PyTorch layer reaches them (one import place).

Everything in :mod:`meprop_numba.torch` that calls a kernel goes through
these names, so a move of a kernel module changes only this file.
"""
from .._cpu import optim as optim_kernels  # noqa: F401  (the in-place optimizer updates)
from .._validation import LARGEST, SMALLEST_NORMAL, finite, integer_k, positive_float, unit_interval  # noqa: F401
from ..backward import linear_backward  # noqa: F401
from ..backward import _checked_backward as linear_backward_checked  # noqa: F401
from ..backward import _fused_backward as fused_backward, _fused_case as fused_case  # noqa: F401
from ..backward import _linear_backward as linear_backward_selected  # noqa: F401


# ------------------------------------------------------------------ CUDA tensors
# The kernels read and write PyTorch CUDA tensors in place through __cuda_array_interface__ and
# launch on PyTorch's current stream (meprop_numba._cuda picks it), so nothing waits for the
# device except the small status reads of the checks.

def linear_backward_cuda(x2, weight, g2, k, unified, indices, need_dx):
    """meProp backward of 2-D CUDA tensors: ``(dx or None, rows, values, db)`` as tensors on their device.

    `indices` is None or a CUDA ``(B, k)`` int64 tensor of distinct entries per row (then `k` is None).
    """
    import torch

    from .. import _cuda

    with torch.cuda.device(x2.device):
        dx, rows, values, db = _cuda.linear_backward(x2.contiguous(), weight.contiguous(), g2.contiguous(), k,
                                                     indices, unified, need_dx=need_dx)

    def tensor(a):  # zero-copy: a tensor of the inputs' library stays itself, a numba array is wrapped
        return a if isinstance(a, torch.Tensor) else torch.as_tensor(a, device=x2.device)

    return (tensor(dx) if need_dx else None), tensor(rows), tensor(values), tensor(db)


def on_cuda(param_groups):
    """Whether the optimizer's parameters are CUDA tensors (then :func:`cuda_step` updates them)."""
    return any(p.is_cuda for group in param_groups for p in group["params"])


def cuda_step(optimizer):
    """One step of a :mod:`meprop_numba.torch.optim` optimizer whose parameters are CUDA tensors.

    Every parameter and gradient is checked first, by the CPU step's own checks
    (``optim._check_param``, ``optim._check_grad``:
    dtype, device, layout, shapes), then on the device (NaN/Inf, the rows of a row-sparse
    one), so a bad one changes no parameter; then each parameter is updated in place by the
    :mod:`meprop_numba._cuda` kernels, only the rows of a row-sparse gradient.
    """
    import torch

    from .. import _cuda
    from .optim import _name, _check_grad, _check_param, _coalesced

    kind = {"Adam": "adam", "SGD": "sgd", "AdaGrad": "adagrad"}[type(optimizer).__name__]
    work = []
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            _check_param(p, i, j, "cuda")
            rows, values = _check_grad(p, g, i, j)
            if rows is None:
                grad = values.detach().reshape(p.shape).contiguous()
            else:
                if not g.is_coalesced():  # the engine drops the flag; the device check refuses unordered rows
                    g = _coalesced(g)
                    rows, values = g._indices()[0], g._values()
                grad = (rows, values.contiguous())
            with torch.cuda.device(p.device):
                _cuda.check_gradient(grad, p.shape[0] if p.dim() else 1, f"the gradient of {_name(i, j, p)}")
            work.append((group, p, grad))
    for group, p, grad in work:
        state = optimizer.state[p]
        if kind == "sgd":
            if group["momentum"] and state.get("momentum_buffer") is None:
                state.pop("momentum_buffer", None)  # torch stores None without momentum
                optimizer._init_state(state, p, group)
        elif not state:
            optimizer._init_state(state, p, group)
        data = p.detach()
        with torch.cuda.device(p.device):
            if kind == "adam":
                state["step"] += 1
                b1, b2 = group["betas"]
                _cuda.adam_step(data, grad, state["exp_avg"], state["exp_avg_sq"], float(state["step"]), group["lr"],
                                b1, b2, group["eps"], True, check=False)
            elif kind == "sgd":
                mu = group["momentum"]
                _cuda.sgd_step(data, grad, state["momentum_buffer"] if mu else None, group["lr"], mu, True,
                               check=False)
            else:
                state["step"] += 1
                lr = group["lr"] / (1.0 + (float(state["step"]) - 1.0) * group["lr_decay"])
                _cuda.adagrad_step(data, grad, state["sum"], lr, group["eps"], True, check=False)
