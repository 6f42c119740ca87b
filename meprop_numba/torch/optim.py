"""Lazy optimizers for PyTorch parameters, updated in place by the compiled kernels.

Each is a ``torch.optim.Optimizer`` (param groups, ``state_dict`` in
torch's format with torch's state names, ``torch.optim.lr_scheduler``).
A row-sparse gradient (a COO tensor with one sparse dimension, the layout
of :class:`~meprop_numba.torch.MePropLinear` and
``nn.Embedding(sparse=True)``) updates only its rows: the parameter and
optimizer state of the other rows are left as they are.  A dense gradient
updates every element, as torch's own optimizer does.

How the lazy updates differ from torch's sparse ones:

- :class:`Adam` with a dense gradient is ``torch.optim.Adam`` (eps added to
  the bias-corrected ``sqrt(v)``).  With a row-sparse gradient the
  touched rows take that same update and the others are skipped, moments
  included.  ``torch.optim.SparseAdam`` also skips them, but adds eps to
  the uncorrected ``sqrt(v)`` (a larger effective eps early in training).
  The step count for bias correction counts the steps in which the
  parameter had a gradient, as in both torch optimizers.
- :class:`SGD` with momentum keeps a dense velocity; a row-sparse gradient
  decays and applies the velocity of its rows only.  torch's ``SGD`` with
  a sparse gradient keeps a sparse velocity that grows to every row ever
  touched and moves all of them at every step.
- :class:`AdaGrad`: a zero gradient changes nothing, so lazy and dense
  updates agree (as torch's ``Adagrad`` with a sparse gradient).

Moments below the dtype's smallest normal number are flushed to zero
(subnormal arithmetic is ~100x slower on x86); that changes no value by
more than 1.2e-38 in float32.
"""
import functools
import math

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer

from . import _backend

K = _backend.optim_kernels
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_TINY = _backend.SMALLEST_NORMAL
#: The kernels' NaN/Inf bound (``_backend.LARGEST``) keyed by torch dtype.
_BIG = {torch_dtype: _backend.LARGEST[np.dtype(t)] for torch_dtype, t in _NUMPY_DTYPES.items()}


def _betas(betas):
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (_backend.unit_interval(betas[0], "betas[0]"), _backend.unit_interval(betas[1], "betas[1]"))


def _name(i, j, p):
    return f"param_groups[{i}]['params'][{j}] (shape {tuple(p.shape)})"


def _check_param(p, i, j, device):
    """Refuse a parameter the kernels cannot update in place; `device` is the type of the others' ('cpu', 'cuda')."""
    if p.dtype not in _NUMPY_DTYPES:
        raise TypeError(f"{_name(i, j, p)} has dtype {p.dtype}; these optimizers update float32/float64 "
                        "parameters")
    if p.device.type != device:
        raise TypeError(f"{_name(i, j, p)} is on {p.device}; these optimizers update CPU or CUDA tensors, "
                        f"all on one kind of device ({device} here)")
    if not p.is_contiguous():
        raise ValueError(f"{_name(i, j, p)} must be contiguous (it is updated in place)")


def _check_grad(p, g, i, j):
    """``(rows, values)`` tensors of a row-sparse gradient or ``(None, g)`` of a dense one, after the checks of any device.

    `g` is the gradient of the checked parameter `p`
    (``param_groups[i]['params'][j]``).  The rows are as stored: their order
    and range, and the values' finiteness, are the device's to check.
    """
    if g.dtype != p.dtype or g.device != p.device:
        raise TypeError(f"the gradient of {_name(i, j, p)} is {g.dtype} on {g.device}, "
                        f"expected {p.dtype} on {p.device}")
    if g.layout == torch.sparse_coo:
        if p.dim() != 2 or g.sparse_dim() != 1:
            raise ValueError(f"the gradient of {_name(i, j, p)} is sparse in {g.sparse_dim()} dimension(s); "
                             "only row-sparse gradients (sparse_dim 1) of 2-D parameters are taken")
        values = g._values()
        if values.shape[1:] != p.shape[1:]:
            raise ValueError(f"the gradient of {_name(i, j, p)} has values of shape {tuple(values.shape)}, "
                             f"expected rows of {p.shape[1]}")
        return g._indices()[0], values
    if g.layout != torch.strided:
        raise TypeError(f"the gradient of {_name(i, j, p)} has layout {g.layout}; expected dense or sparse COO")
    if g.numel() != p.numel():
        raise ValueError(f"the gradient of {_name(i, j, p)} has {g.numel()} elements, expected {p.numel()}")
    return None, g


def _coalesced(g):
    """`g` with sorted distinct rows, repeats summed (``g.coalesce()`` returns a tensor flagged coalesced as it is)."""
    return torch.sparse_coo_tensor(g._indices(), g._values(), g.shape, check_invariants=False).coalesce()


def _grad_arrays(p, P, g, i, j):
    """``(rows, values)`` of a row-sparse gradient or ``(None, flat)`` of a dense one, after every check.

    `P` is the NumPy view of the checked CPU parameter `p` (``param_groups[i]['params'][j]``).
    The general path: :func:`_gradient` takes the common layouts with fewer calls.
    """
    rows, values = _check_grad(p, g, i, j)
    if rows is None:
        flat = values.numpy(force=True).reshape(-1)  # a copy only if strided or a negative-bit view
        _finite(flat, p, i, j)
        return None, flat
    rows, values = rows.numpy(), values.numpy(force=True)
    # One pass over the rows: the range of every entry, then the order.  The autograd engine
    # drops the coalesced flag of the gradients it stores, and a tensor built with
    # check_invariants=False may claim it falsely, so only unordered rows are coalesced.
    status = K.check_rows(rows, P.shape[0])
    if status == 1:
        raise IndexError(f"the gradient of {_name(i, j, p)} has rows from {rows.min()} to {rows.max()}, "
                         f"outside [0, {P.shape[0]})")
    if status == 2:
        g = _coalesced(g)
        rows, values = g._indices().numpy()[0], g._values().numpy()
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    _finite(values, p, i, j)
    return rows, values


def _gradient(e, g, i, j):
    """:func:`_grad_arrays` of the gradient `g` of the parameter of :class:`_ParamViews` `e`.

    The layouts the layers and the autograd engine produce (a contiguous
    row-sparse COO tensor or a dense tensor of the parameter's dtype, on
    the CPU) are checked here by one compiled pass each (rows, then
    NaN/Inf); anything else, and every failure, goes through
    :func:`_grad_arrays`, which raises the error or takes the general path.
    """
    if g.dtype is e.dtype and g.is_cpu:
        if g.is_sparse:
            if e.width >= 0 and g.sparse_dim() == 1:
                values = g._values()
                if not values.requires_grad and not values.is_neg():
                    V = values.numpy()
                    if V.ndim == 2 and V.shape[1] == e.width and V.flags.c_contiguous:
                        rows = g._indices().numpy()[0]
                        if K.row_gradient_status(rows, e.nrows, V, e.big) == 0:
                            return rows, V
        elif g.layout is torch.strided and g.numel() == e.numel and not g.is_neg():
            flat = (g.detach() if g.requires_grad else g).numpy().reshape(-1)  # a copy only if strided
            if K.count_nonfinite(flat, e.big) == 0:
                return None, flat
    return _grad_arrays(e.param, e.array, g, i, j)


def _finite(a, p, i, j):
    try:
        _backend.finite(a, "the gradient")
    except ValueError:
        _backend.finite(a, f"the gradient of {_name(i, j, p)}")  # raises again, naming the parameter


#: Options of torch's optimizers these leave out, with the value that means "off".  They
#: are stored in the param groups (torch's optimizers need them to load the state) and
#: a state that turns one on is refused.
_TORCH_ONLY = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "nesterov": False, "dampening": 0.0}


_PRE_HOOKS = _torch_optimizer._global_optimizer_pre_hooks
_POST_HOOKS = _torch_optimizer._global_optimizer_post_hooks
_profiling = torch.autograd._profiler_enabled


def _hook_step(step):
    """`step` run through torch's profiler record and step hooks only when a profiler or a hook wants them."""
    traced = torch.optim.Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _PRE_HOOKS or _POST_HOOKS
                or _profiling()):
            return traced(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    return wrapper


class _ParamViews:
    """The checked NumPy views of one CPU parameter and of its optimizer state, with what they came from.

    Made (and the parameter checked) when the parameter is first stepped and
    again whenever its storage, dtype, shape or strides change; the state
    views are re-made whenever a state tensor is another object or its
    storage moved (a view costs ~1 us, and a step of a small model holds
    dozens of them).
    """

    __slots__ = ("param", "signature", "dtype", "array", "flat", "nrows", "width", "numel", "big",
                 "state", "tensors", "pointers", "views", "flats")

    def __init__(self, p, i, j):
        _check_param(p, i, j, "cpu")
        self.param, self.signature, self.dtype = p, (p.data_ptr(), p.dtype, p.shape, p.stride()), p.dtype
        self.array = p.detach().numpy()
        self.flat = self.array.reshape(-1)
        self.nrows = p.shape[0] if p.dim() else 1
        self.width = p.shape[1] if p.dim() == 2 else -1  # rows of a row-sparse gradient (2-D parameters only)
        self.numel = p.numel()
        self.big = _BIG[p.dtype]
        self.state, self.tensors, self.pointers, self.views, self.flats = None, (), (), (), ()


class _KernelOptimizer(torch.optim.Optimizer):
    """Shared step: check every gradient first, then update parameter by parameter.

    NumPy views of each parameter and of its state tensors are cached
    (:class:`_ParamViews`) while those tensors stay the same.
    """

    #: torch's names of the per-parameter state tensors, the ones shaped like the parameter first.
    _state_names = ()
    _param_shaped = 0

    #: The options of :data:`_TORCH_ONLY` that torch's optimizer of the same kind has.
    _torch_options = ("weight_decay", "maximize")

    def __init__(self, params, defaults):
        super().__init__(params, dict(defaults, **{key: _TORCH_ONLY[key] for key in self._torch_options}))

    def add_param_group(self, param_group):
        """Add a param group, as ``torch.optim.Optimizer.add_param_group``, refusing repeated parameters.

        torch's optimizers only warn on a parameter listed twice in a group
        (and then update it twice per step); these refuse it.

        Parameters
        ----------
        param_group : dict
            ``{"params": iterable of parameters (or of (name, parameter)), option: value, ...}``.

        Raises
        ------
        ValueError
            If a parameter appears twice in the group (or, from torch, in
            another group already).

        Examples
        --------
        >>> import torch
        >>> from meprop_numba.torch import optim
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> optim.SGD([w, w], lr=0.1)
        Traceback (most recent call last):
        ...
        ValueError: parameter 1 of the param group is parameter 0 again (shape (2,)); list each parameter once
        """
        if isinstance(param_group, dict) and not isinstance(param_group.get("params"), (torch.Tensor, set)):
            params = list(param_group["params"])  # as torch does (a generator is read once, here)
            seen = {}
            for j, entry in enumerate(params):
                p = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry
                if id(p) in seen:
                    raise ValueError(f"parameter {j} of the param group is parameter {seen[id(p)]} again "
                                     f"(shape {tuple(getattr(p, 'shape', ()))}); list each parameter once")
                seen[id(p)] = j
            param_group["params"] = params
        super().add_param_group(param_group)

    def _patch_step_function(self):
        # torch wraps step() in a profiler record and its hook loops (~10-30 us a step);
        # the wrapper here takes that path only when a profiler runs or a hook is registered.
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        cls = type(self)
        if not getattr(cls.step, "hooked", None):
            cls.step = _hook_step(cls.step)
            cls.step.hooked = True

    def zero_grad(self, set_to_none=True):
        """Reset the gradients, as ``torch.optim.Optimizer.zero_grad``.

        Parameters
        ----------
        set_to_none : bool, optional
            True (default): set every ``.grad`` to None; False: fill them with zeros.
        """
        if not set_to_none or _profiling():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = None

    def _work(self):
        """``(group, views, rows, grad)`` for every parameter with a gradient, all checked.

        `views` is the parameter's :class:`_ParamViews`; `rows` is None where
        the gradient `grad` is dense (then flat, 1-D).  Every parameter,
        gradient and existing state is checked here, before anything changes.
        """
        cache = self.__dict__.get("_views")
        if cache is None:
            cache = self.__dict__["_views"] = {}
        work = []
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                e = cache.get(id(p))
                # Identity alone is not enough: `p.data = ...` keeps the object and changes the tensor.
                if e is None or e.param is not p or e.signature != (p.data_ptr(), p.dtype, p.shape, p.stride()):
                    e = cache[id(p)] = _ParamViews(p, i, j)
                rows, grad = _gradient(e, g, i, j)
                state = self.state.get(p)  # not self.state[p]: a failed step makes no state
                if e.state is not state or not e.tensors:
                    self._check_state(e, state)
                else:
                    for name, tensor, pointer in zip(self._state_names, e.tensors, e.pointers):
                        t = state.get(name)
                        if t is not tensor or t.data_ptr() != pointer:  # replaced, or its storage moved
                            self._check_state(e, state)
                            break
                work.append((group, e, rows, grad))
        return work

    def _check_state(self, e, state):
        """Check `state` (if it holds any) against the parameter of `e` and store its NumPy views in `e`.

        A parameter without state yet keeps none (``e.tensors`` empty): its
        state is made by :meth:`_state_views`, once every check has passed.
        """
        e.state, e.tensors, e.pointers, e.views, e.flats = state, (), (), (), ()
        p = e.param
        if not state or self._state_names[0] not in state or state[self._state_names[0]] is None:
            return
        if "step" in state and not torch.is_tensor(state["step"]):
            state["step"] = torch.tensor(float(state["step"]))  # older torch checkpoints
        tensors = tuple([state[s] for s in self._state_names])
        for s, t in zip(self._state_names[:self._param_shaped], tensors):
            if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device or not t.is_contiguous():
                raise ValueError(f"optimizer state {s!r} is {t.dtype} {tuple(t.shape)} on {t.device}, "
                                 f"expected a contiguous {p.dtype} {tuple(p.shape)} like its parameter")
        views = tuple(t.numpy() for t in tensors)
        e.tensors, e.pointers = tensors, tuple(t.data_ptr() for t in tensors)
        e.views, e.flats = views, tuple(v.reshape(-1) for v in views)

    def _state_views(self, e, group, flat):
        """NumPy views of the state of `e`'s parameter in ``_state_names`` order (1-D if `flat`).

        The state is made here on first use (after :meth:`_work`'s checks).
        """
        if not e.tensors:
            state = self.state[e.param]
            state.pop(self._state_names[0], None)  # torch's SGD stores None without momentum
            self._init_state(state, e.param, group)
            self._check_state(e, state)
        return e.flats if flat else e.views

    def load_state_dict(self, state_dict):
        """Load a state from :meth:`state_dict` (or torch's optimizer of the same kind).

        The shape of every state tensor is checked against its parameter
        before anything is loaded.

        Raises
        ------
        ValueError
            If a state tensor does not match its parameter's shape (or
            torch's own checks fail: a different number of groups or parameters).
        """
        for group in state_dict["param_groups"]:
            for key, plain in _TORCH_ONLY.items():
                if group.get(key, plain) != plain:
                    raise ValueError(f"the state has {key}={group[key]!r} in a param group; "
                                     f"{type(self).__name__} implements only {key}={plain!r}")
        params = [p for group in self.param_groups for p in group["params"]]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        shaped = self._state_names[:self._param_shaped]
        for pid, p in zip(ids, params):
            for s, t in state_dict["state"].get(pid, {}).items():
                if s in shaped and torch.is_tensor(t) and t.shape != p.shape:
                    raise ValueError(f"state {s!r} of parameter {pid} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(p.shape)}")
        super().load_state_dict(state_dict)

    @staticmethod
    def _closure_loss(closure):
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


def _advance(step):
    """Add 1 to the one-element view `step` of a step-count tensor and return the new count as a float.

    ``step += 1`` does the same through a NumPy ufunc (~0.9 us); the count is
    stored in the array's own dtype and read back, exactly as that would.
    """
    if step.ndim:
        step[0] = float(step[0]) + 1.0
        return float(step[0])
    step[()] = float(step) + 1.0
    return float(step)


def _zeros(p):
    return torch.zeros_like(p, memory_format=torch.contiguous_format)


def _step_tensor():
    return torch.tensor(0.0)  # torch's format: a float32 scalar tensor


class Adam(_KernelOptimizer):
    """Adam whose row-sparse gradients update only their rows.

    With a dense gradient the update is ``torch.optim.Adam``'s (without
    weight decay or amsgrad).  State names are torch's (``step``,
    ``exp_avg``, ``exp_avg_sq``), so state dicts move between the two.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts, as ``torch.optim.Optimizer``.
        Float32/float64, contiguous, on the CPU.
    lr : float, optional
        Learning rate (default 1e-3), > 0.
    betas : tuple of float, optional
        Moment decay rates, each in ``[0, 1)``.
    eps : float, optional
        Added to the bias-corrected ``sqrt(v)`` (default 1e-8), > 0.

    Raises
    ------
    TypeError, ValueError
        From the constructor for bad hyperparameters; from :meth:`step` for
        a parameter or gradient of the wrong dtype, device or layout, or a
        gradient holding NaN/Inf (checked for every parameter before any
        is changed).

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import MePropLinear, optim
    >>> layer = MePropLinear(4, 3, k=1)
    >>> opt = optim.Adam(layer.parameters(), lr=0.01)
    >>> layer(torch.randn(2, 4)).sum().backward()
    >>> opt.step()
    >>> sorted(opt.state[layer.weight])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _state_names = ("exp_avg", "exp_avg_sq", "step")
    _torch_options = ("weight_decay", "amsgrad", "maximize")
    _param_shaped = 2

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        defaults = dict(lr=_backend.positive_float(lr, "lr"), betas=_betas(betas),
                        eps=_backend.positive_float(eps, "eps"))
        super().__init__(params, defaults)

    @staticmethod
    def _init_state(state, p, group):
        state.update(step=_step_tensor(), exp_avg=_zeros(p), exp_avg_sq=_zeros(p))

    def step(self, closure=None):
        """Update every parameter that has a gradient, in place.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss.

        Returns
        -------
        The closure's loss, or None.
        """
        loss = self._closure_loss(closure)
        table = self.__dict__.get("_table")
        if table is not None:
            status = table.step(self)
            if status == 0:
                return loss
            self._table = None
            if status > 0:  # a gradient the table's checks refused: the general path decides
                self._table_misses = min(self.__dict__.get("_table_misses", 0) + 1, 10)
                self._table_wait = 2 ** self._table_misses
        self._general_step()
        return loss

    @torch.no_grad()
    def _general_step(self):
        """:meth:`step` parameter by parameter, then (while the state allows) a new :class:`_AdamTable`."""
        if _backend.on_cuda(self.param_groups):
            _backend.cuda_step(self)
            return
        key = args = None
        for group, e, rows, grad in reversed(self._work()):  # the last checked first: its gradient is in cache
            M, V, step = self._state_views(e, group, rows is None)
            t = _advance(step)
            b1, b2 = group["betas"]
            if key != (t, group["lr"], b1, b2, group["eps"], e.dtype):  # parameters stepped together share them
                key = (t, group["lr"], b1, b2, group["eps"], e.dtype)
                c2 = math.sqrt(1.0 - b2**t)
                cast = e.array.dtype.type
                args = (cast(group["lr"] * c2 / (1.0 - b1**t)), cast(b1), cast(b2), cast(group["eps"] * c2),
                        _TINY[e.array.dtype])
            if rows is None:
                K.adam_flat(e.flat, M, V, grad, *args)
            else:
                K.adam_rows(e.array, M, V, rows, grad, *args)
        wait = self.__dict__.get("_table_wait", 0)
        if wait:
            self._table_wait = wait - 1
        else:
            self._table = _AdamTable.build(self)


#: A 0-length array of each kernel dtype: the type witness of ``adam_table``.
_LIKE = {torch_dtype: np.empty(0, t) for torch_dtype, t in _NUMPY_DTYPES.items()}


class _AdamTable:
    """:class:`Adam`'s step in one compiled call, for parameters and state that stay the same tensors.

    Built after a step of the general path when every parameter is a CPU
    tensor of one kernel dtype and every state a float32 step count with
    two moments; it holds, per parameter, the checked NumPy views and state
    tensors that step used.  :meth:`step` checks that each parameter, its
    state and the param groups are still those objects and storages, and
    each gradient a layout the general path would take without copying,
    then passes their addresses to ``adam_table``, which checks every
    gradient (rows, NaN/Inf) before it updates any parameter.  Anything
    else is the general path's, with its errors.
    """

    __slots__ = ("state", "groups", "dtype", "like", "big", "tiny", "hyper", "hyper_array")

    @classmethod
    def build(cls, optimizer):
        """The table of `optimizer`'s current parameters and state, or None where the general path must stay."""
        views = optimizer.__dict__.get("_views", {})
        state = optimizer.state
        groups = []
        dtype = None
        for group in optimizer.param_groups:
            entries = []
            for p in group["params"]:
                if dtype is None:
                    dtype = p.dtype
                if p.dtype is not dtype or not p.is_cpu:
                    return None
                e = views.get(id(p))
                st = state.get(p)
                if (e is None or e.param is not p or not e.tensors or e.state is not st
                        or e.signature != (p.data_ptr(), p.dtype, p.shape, p.stride())):
                    entries.append(None)  # no state yet (or not checked since it changed): a gradient ends the table
                    continue
                s = e.tensors[2]
                if s.dtype is not torch.float32 or not s.is_cpu or s.numel() != 1 or not s.is_contiguous():
                    return None
                # the table's views stay e's: a general step, which may re-make them, drops the table first
                entries.append((e, (e.nrows, e.width if e.width > 0 else 1, e.numel, e.array.ctypes.data,
                                    e.views[0].ctypes.data, e.views[1].ctypes.data, s.data_ptr())))
            groups.append(entries)
        if dtype not in _LIKE:
            return None
        table = cls()
        table.state, table.groups, table.dtype = state, groups, dtype
        table.like, table.big, table.tiny = _LIKE[dtype], _BIG[dtype], _TINY[_LIKE[dtype].dtype]
        table.hyper = table.hyper_array = None
        return table

    def step(self, optimizer):
        """Step `optimizer` (its own): 0 done; -1 nothing done, something changed; 1 + j gradient j refused."""
        groups = optimizer.param_groups
        if optimizer.state is not self.state or len(groups) != len(self.groups):
            return -1
        state, dtype = self.state, self.dtype
        table, hyper, keep = [], [], []
        for gi, (group, entries) in enumerate(zip(groups, self.groups)):
            params, betas, lr, eps = group["params"], group["betas"], group["lr"], group["eps"]
            if len(params) != len(entries) or type(betas) not in (tuple, list) or len(betas) != 2:
                return -1
            b1, b2 = betas
            if not (isinstance(lr, float) and isinstance(eps, float) and isinstance(b1, float)
                    and isinstance(b2, float)):
                return -1  # a tensor or float32 hyperparameter rounds otherwise: the general path's
            hyper.append((lr, b1, b2, eps))
            for p, entry in zip(params, entries):
                g = p.grad
                if entry is None:
                    if g is None:
                        continue
                    return -1
                e, head = entry
                if e.param is not p:
                    return -1
                if g is None:
                    continue
                st, (m, v, s) = e.state, e.tensors
                if ((p.data_ptr(), p.dtype, p.shape, p.stride()) != e.signature or state.get(p) is not st
                        or st.get("exp_avg") is not m or st.get("exp_avg_sq") is not v or st.get("step") is not s
                        or (m.data_ptr(), v.data_ptr(), s.data_ptr()) != e.pointers):
                    return -1
                if g.is_sparse:
                    values, rows = g._values(), g._indices()
                    if (values.dtype is not dtype or rows.dtype is not torch.int64 or not values.is_cpu
                            or values.dim() != 2 or values.shape[1] != e.width or rows.shape[0] != 1
                            or rows.shape[1] != values.shape[0] or not values.is_contiguous()
                            or not rows.is_contiguous() or values.is_neg()):
                        return -1
                    table.append((1, *head[:2], values.shape[0], *head[3:], values.data_ptr(), rows.data_ptr(), gi))
                    keep.append((values, rows))
                elif (g.layout is torch.strided and g.dtype is dtype and g.is_cpu and g.is_contiguous()
                      and g.numel() == e.numel and not g.is_neg()):  # a negative-bit view's memory is -g
                    table.append((0, *head, g.data_ptr(), 0, gi))
                    keep.append(g)
                else:
                    return -1
        if not table:
            return 0
        if hyper != self.hyper:  # schedulers change the rates now and then
            self.hyper, self.hyper_array = hyper, np.array(hyper, dtype=np.float64)
        # `keep` holds every gradient tensor addressed until the call returns
        return K.adam_table(np.array(table, dtype=np.int64), self.hyper_array, self.like, self.big, self.tiny)


class SGD(_KernelOptimizer):
    """SGD with optional momentum whose row-sparse gradients update only their rows.

    ``v = momentum * v + g; p -= lr * v`` (``p -= lr * g`` without
    momentum): ``torch.optim.SGD`` with dampening 0, no Nesterov, no weight
    decay.  The velocity is torch's ``momentum_buffer``.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts. Float32/float64, contiguous, CPU.
    lr : float, optional
        Learning rate (default 1e-3), > 0.
    momentum : float, optional
        In ``[0, 1)``; 0 (default) keeps no state.

    Raises
    ------
    TypeError, ValueError
        As :class:`Adam`.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import optim
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> w.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (3, 2), check_invariants=True)
    >>> optim.SGD([w], lr=0.5).step()
    >>> w.data
    tensor([[1.0000, 1.0000],
            [0.5000, 0.5000],
            [1.0000, 1.0000]])
    """

    _state_names = ("momentum_buffer",)
    _torch_options = ("weight_decay", "dampening", "nesterov", "maximize")
    _param_shaped = 1

    def __init__(self, params, lr=1e-3, momentum=0.0):
        defaults = dict(lr=_backend.positive_float(lr, "lr"), momentum=_backend.unit_interval(momentum, "momentum"))
        super().__init__(params, defaults)

    @staticmethod
    def _init_state(state, p, group):
        state["momentum_buffer"] = _zeros(p)

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient, in place (see :meth:`Adam.step`)."""
        loss = self._closure_loss(closure)
        if _backend.on_cuda(self.param_groups):
            _backend.cuda_step(self)
            return loss
        for group, e, rows, grad in reversed(self._work()):  # the last checked first: its gradient is in cache
            cast = e.array.dtype.type
            lr, mu = cast(group["lr"]), group["momentum"]
            if mu == 0:
                if rows is None:
                    K.sgd_flat(e.flat, grad, lr)
                else:
                    K.sgd_rows(e.array, rows, grad, lr)
                continue
            (V,) = self._state_views(e, group, rows is None)
            tiny = _TINY[e.array.dtype]
            if rows is None:
                K.momentum_flat(e.flat, V, grad, lr, cast(mu), tiny)
            else:
                K.momentum_rows(e.array, V, rows, grad, lr, cast(mu), tiny)
        return loss


class AdaGrad(_KernelOptimizer):
    """AdaGrad: ``s += g**2; p -= lr_t * g / (sqrt(s) + eps)``.

    ``torch.optim.Adagrad`` without weight decay; ``lr_t = lr / (1 + (t -
    1) lr_decay)`` at the parameter's t-th step.  State names are torch's
    (``step``, ``sum``).  A zero gradient changes nothing, so the lazy row
    update equals the dense one.

    Parameters
    ----------
    params : iterable
        Parameters or param-group dicts. Float32/float64, contiguous, CPU.
    lr : float, optional
        Learning rate (default 1e-2), > 0.
    lr_decay : float, optional
        >= 0 (default 0).
    initial_accumulator_value : float, optional
        Starting value of ``s``, >= 0 (default 0).
    eps : float, optional
        Added to the denominator (default 1e-10), > 0.

    Raises
    ------
    TypeError, ValueError
        As :class:`Adam`.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import optim
    >>> w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    >>> w.grad = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    >>> optim.AdaGrad([w], lr=0.5).step()
    >>> w.data
    tensor([[-0.5000,  0.0000],
            [ 0.0000,  0.5000]], dtype=torch.float64)
    """

    _state_names = ("sum", "step")
    _param_shaped = 1

    def __init__(self, params, lr=1e-2, lr_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        defaults = dict(lr=_backend.positive_float(lr, "lr"),
                        lr_decay=_backend.positive_float(lr_decay, "lr_decay", allow_zero=True),
                        initial_accumulator_value=_backend.positive_float(
                            initial_accumulator_value, "initial_accumulator_value", allow_zero=True),
                        eps=_backend.positive_float(eps, "eps"))
        super().__init__(params, defaults)
        for group in self.param_groups:  # torch's Adagrad makes its state at construction
            for p in group["params"]:
                self._init_state(self.state[p], p, group)

    @staticmethod
    def _init_state(state, p, group):
        state["step"] = _step_tensor()
        state["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.contiguous_format)

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient, in place (see :meth:`Adam.step`)."""
        loss = self._closure_loss(closure)
        if _backend.on_cuda(self.param_groups):
            _backend.cuda_step(self)
            return loss
        for group, e, rows, grad in reversed(self._work()):  # the last checked first: its gradient is in cache
            S, step = self._state_views(e, group, rows is None)
            t = _advance(step)
            cast = e.array.dtype.type
            lr = cast(group["lr"] / (1.0 + (t - 1.0) * group["lr_decay"]))
            if rows is None:
                K.adagrad_flat(e.flat, S, grad, lr, cast(group["eps"]))
            else:
                K.adagrad_rows(e.array, S, rows, grad, lr, cast(group["eps"]))
        return loss
