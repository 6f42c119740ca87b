"""meProp linear layer for PyTorch: forward by PyTorch, backward by the compiled kernels."""
import fnmatch
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _backend

#: Which output-gradient entries the backward keeps (the package's one vocabulary).
SELECTIONS = ("topk", "unified", "random")
_KERNEL_DTYPES = (torch.float32, torch.float64)
#: id(weight) -> (weight, callable(kept, grad)) given each backward's selection (model
#: simplification's counting, :mod:`meprop_numba.torch.simplify`); NumPy arrays, `kept` as
#: ``linear_backward`` selects. A plain dict: the lookup runs in every training forward.
selection_counters = {}


def _check_k(k, out_features):
    return None if k is None else _backend.integer_k(k, out_features)


def _check_selection(selection):
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    return selection


def _check_inputs(x, weight):
    """Refuse, before the forward runs, what the sparse backward cannot differentiate."""
    if x.dtype not in _KERNEL_DTYPES or weight.dtype != x.dtype:
        raise TypeError(
            f"MePropLinear's sparse backward takes float32 or float64 input and weight of one dtype, "
            f"got input {x.dtype} and weight {weight.dtype}; cast the model (.float()) or set k=None"
        )
    if x.is_cpu and weight.is_cpu:  # the common case, without building device objects
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError(_AUTOCAST_ERROR)
        return
    device = x.device.type
    if device not in ("cpu", "cuda", "meta") or weight.device != x.device:
        raise TypeError(
            f"MePropLinear's sparse backward runs on CPU or CUDA tensors of one device, got input on "
            f"{x.device} and weight on {weight.device}"
        )
    if device != "meta" and torch.is_autocast_enabled(device):
        raise RuntimeError(_AUTOCAST_ERROR)


_AUTOCAST_ERROR = ("MePropLinear does not run under autocast (its backward has float32/float64 kernels only); "
                   "leave it outside the autocast region or set k=None")


def _random_indices(grad, n, k):
    """k distinct random output entries per example, drawn from PyTorch's generator."""
    keys = torch.rand(grad.reshape(-1, n).shape, device=grad.device)
    return keys.topk(k, dim=1).indices


def _backward_tensors(x, weight, grad, k, unified, indices, need_dx, counter=None):
    """meProp backward of ``F.linear(x, weight, b)`` by :func:`meprop_numba.linear_backward`.

    Returns ``(dx or None, rows, values, db)`` as tensors: ``dW`` is zero
    outside the sorted distinct `rows`, ``dW[rows] = values``.
    """
    n, m = weight.shape
    if indices is not None:
        k = None
    if x.is_cuda:
        x2 = x.detach().reshape(-1, m)
        if x2.shape[0] == 0:
            return _empty_backward(x, weight, need_dx)
        return _backward_cuda(x, x2, weight.detach(), grad.detach().reshape(-1, n), k, unified, indices, need_dx)
    out = _host_backward(x, weight, grad, k, unified, indices, need_dx, counter)
    if out is None:
        return _empty_backward(x, weight, need_dx)
    dx, rows, values, db = out
    return dx, torch.from_numpy(rows), torch.from_numpy(values), torch.from_numpy(db)


def _host_backward(x, weight, grad, k, unified, indices, need_dx, counter):
    """The CPU part of :func:`_backward_tensors`: ``dx`` and NumPy ``rows, values, db``.

    `dx` is a tensor of `x`'s shape, or None.  None for an empty batch.  `rows` is writeable (torch warns on
    read-only arrays).
    """
    n, m = weight.shape
    x2, g2, W = _host_view(x, m), _host_view(grad, n), weight.numpy(force=True)
    if x2.shape[0] == 0:
        return None
    if (indices is None and k is not None and k <= n and g2.dtype == x2.dtype and g2.shape[0] == x2.shape[0]
            and x2.flags.c_contiguous and g2.flags.c_contiguous and W.flags.c_contiguous):
        # the forward checked the dtypes of x and W, and `k` fits this weight: only NaN/Inf are left to check
        if _backend.fused_case(g2, k, unified, n, m):  # the common training cases, in one kernel call
            dx, rows, values, db, kept = _backend.fused_backward(x2, W, g2, k, unified, need_dx)
        else:
            dx, dW, db, kept = _backend.linear_backward_checked(x2, W, g2, k, None, unified, need_dx)
            rows, values = np.array(dW.rows), dW.values  # a copy: RowSparse's rows are read-only
    else:
        idx = None if indices is None else indices.cpu().numpy()
        dx, dW, db, kept = _backend.linear_backward_selected(x2, W, g2, k, idx, unified, need_dx)
        rows, values = np.array(dW.rows), dW.values
    if counter is not None:
        counter(kept, g2)
    if need_dx:
        dx = torch.from_numpy(dx)
        if x.dim() != 2:
            dx = dx.reshape(x.shape)
    return dx, rows, values, db


def _host_view(t, width):
    """The CPU tensor `t` as a 2-D NumPy view ``(-1, width)`` (a copy only where a reshape needs one)."""
    a = t.numpy(force=True)  # detaches in one call; shares memory with a CPU tensor (copies only conj/neg views)
    return a if a.ndim == 2 else a.reshape(-1, width)


def _empty_backward(x, weight, need_dx):
    rows = torch.zeros(0, dtype=torch.int64, device=x.device)
    m = weight.shape[1]
    return (torch.zeros_like(x) if need_dx else None), rows, weight.new_zeros((0, m)), weight.new_zeros(weight.shape[0])


def _backward_cuda(x, x2, weight, g2, k, unified, indices, need_dx):
    """CUDA twin: this package's kernels on PyTorch's current stream, through ``__cuda_array_interface__``."""
    dx, rows, values, db = _backend.linear_backward_cuda(x2, weight, g2, k, unified, indices, need_dx)
    return (dx.reshape(x.shape) if need_dx else None), rows, values, db


def _dense_rows(rows, values, shape):
    """The (n, m) matrix that is `values` in `rows` and zero elsewhere."""
    if rows.shape[0] == shape[0]:
        return values  # rows are sorted and distinct: all of them, in order
    return values.new_zeros(shape).index_copy_(0, rows, values)


class _SparseGradLinear(torch.autograd.Function):
    """``F.linear`` whose weight gradient is a row-sparse COO tensor."""

    @staticmethod
    def forward(ctx, x, weight, bias, k, selection):
        ctx.save_for_backward(x, weight)
        counter = None
        if selection_counters:
            entry = selection_counters.get(id(weight))
            counter = entry[1] if entry is not None and entry[0] is weight else None
        ctx.settings = (k, selection, counter)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        k, selection, counter = ctx.settings
        if selection == "random" or x.is_cuda:
            indices = _random_indices(grad, weight.shape[0], k) if selection == "random" else None
            dx, rows, values, db = _backward_tensors(x, weight, grad, k, selection == "unified", indices, need_dx,
                                                     counter)
            dW = _row_sparse(rows.unsqueeze(0), values, weight.shape, need_dw)
            return dx, dW, (db if need_db else None), None, None
        out = _host_backward(x, weight, grad, k, selection == "unified", None, need_dx, counter)
        if out is None:
            dx, rows, values, db = _empty_backward(x, weight, need_dx)
            indices = rows.unsqueeze(0)
        else:
            dx, rows, values, db = out
            indices, values, db = torch.from_numpy(rows.reshape(1, -1)), torch.from_numpy(values), torch.from_numpy(db)
        return dx, _row_sparse(indices, values, weight.shape, need_dw), (db if need_db else None), None, None


def _row_sparse(indices, values, shape, needed=True):
    """The weight gradient: `values` in the sorted distinct rows `indices` ``(1, nnz)``, COO; None unless `needed`."""
    if not needed:
        return None
    # the kernels' rows are sorted and distinct: coalesced
    return torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)


def _apply_sparse_grad(x, weight, bias, k, selection):
    """``_SparseGradLinear.apply(x, weight, bias, k, selection)``, without the Python layer of ``apply``.

    ``torch.autograd.Function.apply`` is a Python classmethod (~6 us a call
    here) that, outside functorch transforms, only unwraps dead functorch
    wrappers and calls the C++ ``apply``; this does exactly that.  Under a
    transform (``torch.func``) it is ``Function.apply`` itself.
    """
    if _FUNCTORCH_ACTIVE():
        return _SparseGradLinear.apply(x, weight, bias, k, selection)
    return _APPLY(_UNWRAP(x), _UNWRAP(weight), None if bias is None else _UNWRAP(bias), k, selection)


try:  # private torch names (torch 2.x): without them, the public apply
    _FUNCTORCH_ACTIVE = torch._C._are_functorch_transforms_active
    _UNWRAP = torch._C._functorch.unwrap_if_dead
    _APPLY = super(torch.autograd.Function, _SparseGradLinear).apply  # torch._C._FunctionBase.apply, bound
except AttributeError:  # pragma: no cover - other torch versions
    _apply_sparse_grad = _SparseGradLinear.apply  # noqa: F811


# ------------------------------------------------------------- custom ops (torch.compile, dense gradients)
@torch.library.custom_op("meprop_numba::linear_backward", mutates_args=())
def linear_backward_op(x: Tensor, weight: Tensor, grad: Tensor, k: int, unified: bool,
                       indices: Optional[Tensor], need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
    """meProp backward of ``F.linear`` with a dense weight gradient: ``(dx, dW, db)``.

    `dx` is an empty tensor when not `need_dx`; `indices` (per-example
    ``(B, k)``) overrides the top-k selection.
    """
    dx, rows, values, db = _backward_tensors(x, weight, grad, k, unified, indices, need_dx)
    if dx is None:
        dx = x.new_empty(0)
    return dx, _dense_rows(rows, values, tuple(weight.shape)), db


@linear_backward_op.register_fake
def _linear_backward_fake(x, weight, grad, k, unified, indices, need_dx):
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    return dx, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


@torch.library.custom_op("meprop_numba::linear", mutates_args=())
def linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], k: int, selection: str) -> Tensor:
    """``F.linear(x, weight, bias)`` whose backward is meProp's (dense weight gradient)."""
    return F.linear(x, weight, bias).contiguous()


@linear_op.register_fake
def _linear_fake(x, weight, bias, k, selection):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, k, selection = inputs
    ctx.save_for_backward(x, weight)
    ctx.k, ctx.selection = k, selection


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_dx, _, need_db = ctx.needs_input_grad[:3]
    indices = _random_indices(grad, weight.shape[0], ctx.k) if ctx.selection == "random" else None
    dx, dW, db = linear_backward_op(x, weight, grad, ctx.k, ctx.selection == "unified", indices, need_dx)
    return (dx if need_dx else None), dW, (db if need_db else None), None, None


linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


# ------------------------------------------------------------------------------- the layer
class MePropLinear(nn.Linear):
    """``torch.nn.Linear`` whose backward is meProp's sparse one.

    The forward is PyTorch's ``F.linear``.  In training mode the backward
    keeps only the `k` largest-magnitude entries of each example's output
    gradient (``selection='topk'``), the `k` output columns with the
    largest summed magnitude over the minibatch (``'unified'``) or `k`
    random entries per example (``'random'``, drawn from PyTorch's
    generator), and runs this package's compiled kernels on it, so only
    those rows of the weight are read and given a gradient.  The bias
    gradient is the full one.  Ties in magnitude go to the lower index.

    Parameters
    ----------
    in_features, out_features : int
        As ``torch.nn.Linear``.
    bias : bool, optional
        As ``torch.nn.Linear``.
    k : int or None
        Entries kept per example (per minibatch if unified), in
        ``[1, out_features]``; ``k == out_features`` is exact dense back
        propagation, None makes the layer a plain ``nn.Linear``.
    selection : {'topk', 'unified', 'random'}, optional
    sparse_grad : bool, optional
        True (default): ``weight.grad`` is a row-sparse COO tensor (the
        layout of ``nn.Embedding(sparse=True)``), for the optimizers of
        :mod:`meprop_numba.torch.optim`, ``torch.optim.SGD`` and
        ``Adagrad``.  False: a dense gradient (zero outside the selected
        rows), for ``torch.optim.Adam``, ``clip_grad_norm_`` and the like.
        Under ``torch.compile`` the gradient is always dense.
    device, dtype : optional
        Factory arguments, as ``torch.nn.Linear``.

    Raises
    ------
    TypeError
        If `k` is not an integer or None.
    ValueError
        If `k` is outside ``[1, out_features]`` or `selection` is unknown.

    Notes
    -----
    State dicts hold ``weight`` and ``bias`` only, so they load into and
    from ``nn.Linear``.  In eval mode, under ``torch.no_grad()`` or with
    ``k=None`` the layer is exactly ``F.linear``.  Training with k set
    needs float32/float64 input and weight on the CPU (or a CUDA device
    with this package's GPU kernels) and no autocast: anything else raises
    in the forward rather than giving a wrong gradient.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import MePropLinear
    >>> layer = MePropLinear(6, 4, k=2)
    >>> layer
    MePropLinear(in_features=6, out_features=4, bias=True, k=2, selection='topk', sparse_grad=True)
    >>> layer(torch.randn(3, 6)).sum().backward()
    >>> layer.weight.grad.layout, layer.weight.grad.to_dense().shape
    (torch.sparse_coo, torch.Size([4, 6]))
    """

    def __init__(self, in_features, out_features, bias=True, *, k, selection="topk", sparse_grad=True,
                 device=None, dtype=None):
        k = _check_k(k, out_features)
        selection = _check_selection(selection)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._k, self.selection, self.sparse_grad = k, selection, bool(sparse_grad)

    @property
    def k(self):
        """Entries kept per example (or per minibatch); None is dense."""
        return self._k

    @k.setter
    def k(self, value):
        self._k = _check_k(value, self.out_features)

    def forward(self, input):
        """Return ``F.linear(input, weight, bias)``; in training with autograd, a meProp backward.

        Parameters
        ----------
        input : torch.Tensor
            ``(..., in_features)``, float32 or float64 in training.

        Returns
        -------
        torch.Tensor
            ``(..., out_features)``.
        """
        if self._k is None or not self.training or not torch.is_grad_enabled():
            return F.linear(input, self.weight, self.bias)
        weight, bias = self.weight, self.bias
        _check_inputs(input, weight)
        if self.sparse_grad and not torch.compiler.is_compiling():
            return _apply_sparse_grad(input, weight, bias, self._k, self.selection)
        return linear_op(input, weight, bias, self._k, self.selection)

    def extra_repr(self):
        """Describe the layer: ``nn.Linear``'s description followed by the meProp settings.

        Returns
        -------
        str
            The text ``repr`` shows between the parentheses.
        """
        return f"{super().extra_repr()}, k={self._k}, selection={self.selection!r}, sparse_grad={self.sparse_grad}"

    @classmethod
    def from_linear(cls, layer, *, k, selection="topk", sparse_grad=True):
        """A MePropLinear sharing `layer`'s weight and bias parameters.

        Parameters
        ----------
        layer : torch.nn.Linear
            The layer whose parameters the new one shares.
        k : int or None
            As :class:`MePropLinear`.
        selection : {'topk', 'unified', 'random'}, optional
            As :class:`MePropLinear`.
        sparse_grad : bool, optional
            As :class:`MePropLinear`.

        Returns
        -------
        MePropLinear
            Holding the very ``Parameter`` objects of `layer` (an optimizer
            built on them keeps working), in `layer`'s train/eval mode.

        Raises
        ------
        TypeError
            If `layer` is not an ``nn.Linear``.
        ValueError
            If `k` or `selection` is invalid.

        Examples
        --------
        >>> import torch
        >>> from meprop_numba.torch import MePropLinear
        >>> dense = torch.nn.Linear(5, 3)
        >>> sparse = MePropLinear.from_linear(dense, k=1)
        >>> sparse.weight is dense.weight
        True
        """
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be a torch.nn.Linear, got {type(layer).__name__}")
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, k=k, selection=selection,
                  sparse_grad=sparse_grad, device="meta", dtype=layer.weight.dtype)
        new.weight = layer.weight
        if layer.bias is not None:
            new.bias = layer.bias
        new.train(layer.training)
        return new


def _matcher(spec, what):
    """A predicate ``(name, module) -> bool`` from a name pattern, a type, a callable or a list of them."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple, set, frozenset)):
        preds = [_matcher(s, what) for s in spec]
        return lambda name, module: any(p(name, module) for p in preds)
    if isinstance(spec, str):
        return lambda name, module: fnmatch.fnmatchcase(name, spec)
    if isinstance(spec, type):
        return lambda name, module: isinstance(module, spec)
    if callable(spec):
        return lambda name, module: bool(spec(name, module))
    raise TypeError(f"{what} must be a name pattern, a module type, a callable (name, module) -> bool, "
                    f"or a list of these; got {type(spec).__name__}")


def convert(model, *, k, selection="topk", sparse_grad=True, include=None, exclude=None, keep_output_dense=True):
    """Replace the ``nn.Linear`` modules of `model` by :class:`MePropLinear`, in place.

    The new layers share the old ones' parameters (an optimizer already
    built on ``model.parameters()`` keeps working) and train/eval mode.
    Only modules whose type is exactly ``nn.Linear`` are candidates
    (subclasses such as attention's output projection are left alone).

    Parameters
    ----------
    model : torch.nn.Module
        The model to convert in place (or an ``nn.Linear`` itself).
    k : int or None
        meProp k of every converted layer (see :class:`MePropLinear`).
    selection : {'topk', 'unified', 'random'}, optional
    sparse_grad : bool, optional
        Row-sparse (default) or dense weight gradients.
    include, exclude : optional
        Which layers to convert / leave: a qualified-name pattern
        (``fnmatch``, e.g. ``"encoder.*"``), a module type, a callable
        ``(name, module) -> bool``, or a list of these.  None: every
        candidate / none.
    keep_output_dense : bool, optional
        Leave the last ``nn.Linear`` registered in `model` (the output
        layer, as in the paper) dense.  Default True.

    Returns
    -------
    torch.nn.Module
        `model` itself; or, if `model` is itself an ``nn.Linear`` that is
        converted, the new layer.

    Raises
    ------
    TypeError
        If `model` is not a module or a filter has the wrong type.
    ValueError
        If `k` exceeds a converted layer's ``out_features`` (checked for
        every layer before any is replaced) or `selection` is unknown.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import convert
    >>> model = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(),
    ...                             torch.nn.Linear(500, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10))
    >>> model = convert(model, k=20)
    >>> [type(m).__name__ for m in model]
    ['MePropLinear', 'ReLU', 'MePropLinear', 'ReLU', 'Linear']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_selection(selection)
    keep, drop = _matcher(include, "include"), _matcher(exclude, "exclude")
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    if keep_output_dense and linears:
        linears.pop()
    chosen = [(name, m) for name, m in linears
              if (keep is None or keep(name, m)) and not (drop is not None and drop(name, m))]
    for name, m in chosen:  # everything is checked before anything is replaced
        try:
            _check_k(k, m.out_features)
        except ValueError as err:
            raise ValueError(f"layer {name or '(model)'!r}: {err}") from None
    new = {id(m): MePropLinear.from_linear(m, k=k, selection=selection, sparse_grad=sparse_grad)
           for _, m in chosen}
    if id(model) in new:
        return new[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):  # with repeats, unlike named_children()
            if child is not None and id(child) in new:
                setattr(parent, child_name, new[id(child)])
    return model
