"""Layers following the module convention of :mod:`meprop_numba.nn`."""
import time
from collections.abc import Mapping

import numpy as np

from .. import balanced_indices, random_indices, topk_indices
from .._cpu import mlp as _mlp_kernels
from .._cpu.linear import count_kept_nonzero as _count_kept_nonzero
from .._cpu.topk import top_columns
from .._validation import _FLOAT_DTYPES, choice, finite, flag, integer_k, is_cuda_array, shape_dtype, unit_interval
from ..backward import _linear_backward, _per_example_backward, _shared_products
from ..topk import _balanced_host, _topk_host

__all__ = ["Dropout", "Linear", "Module", "ReLU", "Sequential", "array_module"]

#: The values of ``selection``: which entries of the output gradient are kept.
SELECTIONS = ("topk", "unified", "random", "balanced")

_NO_TRAINING_FORWARD = ("backward called before forward(x, train=True); calling the module, "
                        "module(x), runs inference and keeps nothing for backward")


def array_module(x):
    """The array namespace (``numpy`` or ``cupy``) that `x` belongs to.

    Every layer creates arrays through the namespace of its inputs or
    parameters, so one code path serves host and device arrays.

    Parameters
    ----------
    x : array_like
        A NumPy array, a CuPy array, or anything else (treated as NumPy).

    Returns
    -------
    module
        ``cupy`` for CuPy arrays, else ``numpy``. Never raises (CuPy is
        imported only when `x` is a CuPy array).

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import array_module
    >>> array_module(np.zeros(3)) is np
    True
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _on_device(x):
    """Whether the layers compute on `x` with the package's CUDA kernels.

    True for numba device arrays and other CUDA-interface objects; CuPy
    arrays go through CuPy's own operators (:func:`array_module`) instead.
    """
    return is_cuda_array(x) and array_module(x) is np


def _cuda_mlp():
    from .._cuda import mlp

    return mlp


def _device_out(module, name, x, width):
    """`module`'s reused device buffer for a (B, width) result of 2-D `x`; None (a new array) without a workspace."""
    ws = module.workspace
    if ws is None:
        return None
    shape, dtype = shape_dtype(x)
    if len(shape) != 2:
        return None
    return ws.empty(name, (shape[0], width), dtype)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Module:
    """Base class of the layers and models; see :mod:`meprop_numba.nn` for the convention.

    Subclasses implement :meth:`forward` and :meth:`backward`, name their
    own parameter arrays in ``_parameter_names`` (or override
    ``_own_parameters``) and implement :meth:`grads` when they hold
    parameters. Sub-modules stored as attributes are found by
    :meth:`named_children` (in assignment order), so a model made of
    layers gets :meth:`parameters`, :meth:`named_parameters`,
    :meth:`state_dict` and :meth:`load_state_dict` without writing them.
    Calling a module, ``module(x)``, is ``module.forward(x)``: inference
    (see :mod:`meprop_numba.nn` for why). The base class takes no
    parameters.

    Raises
    ------
    NotImplementedError
        From :meth:`forward` and :meth:`backward` unless a subclass
        implements them.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Module
    >>> class Scale(Module):
    ...     def forward(self, x, train=False):
    ...         return 2 * x
    ...     def backward(self, grad_out):
    ...         return 2 * grad_out
    >>> Scale()(np.ones(2))
    array([2., 2.])
    """

    #: Attribute names of the module's own parameter arrays, in order.
    _parameter_names = ()
    #: Device buffers reused between calls (a ``meprop_numba._cuda.Workspace`` scope), set by
    #: ``to("cuda", reuse_buffers=True)``; None: every device call allocates its results.
    workspace = None

    def forward(self, x, train=False):
        """Compute the output; with ``train=True`` keep what :meth:`backward` needs.

        Parameters
        ----------
        x : ndarray
            The input.
        train : bool, optional
            Training mode (cache for backward, dropout on).

        Returns
        -------
        ndarray
            The output.

        Raises
        ------
        NotImplementedError
            In the base class.
        """
        raise NotImplementedError

    def backward(self, grad_out):
        """Back-propagate `grad_out`; store the parameter gradients for :meth:`grads`.

        Parameters
        ----------
        grad_out : ndarray
            Gradient of the loss with respect to the last training forward's output.

        Returns
        -------
        ndarray or None
            Gradient with respect to the input, or None when the input needs none.

        Raises
        ------
        NotImplementedError
            In the base class.
        """
        raise NotImplementedError

    def named_children(self):
        """The direct sub-modules with their names.

        Returns
        -------
        list of (str, Module)
            Every attribute holding a :class:`Module`, in assignment order
            (:class:`Sequential` names its layers by index instead).
        """
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def _own_parameters(self):
        return [(name, getattr(self, name)) for name in self._parameter_names]

    def named_parameters(self):
        """Every parameter array with its dotted name, as ``torch.nn.Module`` names them.

        Returns
        -------
        list of (str, ndarray)
            The module's own parameters (``"weight"``, ``"bias"``), then each
            child's under ``"<child>."`` (``"0.weight"`` for the first layer
            of a :class:`Sequential`, ``"lstm.weight_ih_l0"`` for a model's
            ``lstm`` attribute). The arrays themselves, not copies.

        Examples
        --------
        >>> from meprop_numba.nn import MLP
        >>> [(name, p.shape) for name, p in MLP(4, 3, 2, layers=1, rng=0).named_parameters()]
        [('0.weight', (3, 4)), ('0.bias', (3,)), ('2.weight', (2, 3)), ('2.bias', (2,))]
        """
        named = list(self._own_parameters())
        for child_name, child in self.named_children():
            named += [(f"{child_name}.{name}", p) for name, p in child.named_parameters()]
        return named

    def parameters(self):
        """The parameter arrays, in the order of :meth:`named_parameters`.

        Optimizers update them in place (``Adam(model.parameters())``), so
        a module never rebinds them after construction.

        Returns
        -------
        list of ndarray
            The arrays themselves, aligned with :meth:`grads`.
        """
        return [p for _, p in self.named_parameters()]

    def params(self):
        """Same as :meth:`parameters` (the shorter name the optimizers' examples use).

        Returns
        -------
        list of ndarray
            The parameter arrays.
        """
        return self.parameters()

    def grads(self):
        """Gradients from the last :meth:`backward`, aligned with :meth:`parameters`.

        A module holding parameters of its own overrides this; the base
        concatenates the children's gradients.

        Returns
        -------
        list
            Per parameter a dense array, a :class:`~meprop_numba.RowSparse`
            or None (no gradient this step).
        """
        return [g for _, child in self.named_children() for g in child.grads()]

    def state_dict(self):
        """Copies of the parameters keyed by their names (see :meth:`named_parameters`).

        Unlike ``torch.nn.Module.state_dict`` the arrays are copies, so a
        saved state does not change as training goes on.

        Returns
        -------
        dict of str to ndarray
            Name -> copy of the parameter, in the order of :meth:`named_parameters`.

        Examples
        --------
        >>> import numpy as np
        >>> from meprop_numba.nn import Linear
        >>> a, b = Linear(3, 2, rng=0), Linear(3, 2, rng=1)
        >>> sorted(a.state_dict())
        ['bias', 'weight']
        >>> b.load_state_dict(a.state_dict())
        >>> bool(np.array_equal(a.weight, b.weight))
        True
        """
        return {name: _cuda_host(p) if _on_device(p) else p.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict):
        """Copy `state_dict` into the parameters, in place: all of them, or none.

        Every key, shape and dtype is checked before any parameter changes,
        so on an error the module is left as it was. The arrays are copied
        into the existing parameters, so an optimizer built on
        :meth:`parameters` keeps updating them (its own state is separate:
        :meth:`meprop_numba.Adam.load_state_dict`).

        Parameters
        ----------
        state_dict : mapping of str to ndarray
            Exactly the names of :meth:`named_parameters` (as
            :meth:`state_dict` returns them), each an array of the
            parameter's shape and dtype.

        Returns
        -------
        None
            The parameters hold the new values.

        Raises
        ------
        TypeError
            If `state_dict` is not a mapping, a value is not an array, or a
            value's dtype differs from its parameter's (no silent cast).
        ValueError
            If a name is missing or unexpected, or a shape differs; the
            message names the key.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        named = self.named_parameters()
        names = [name for name, _ in named]
        missing = [name for name in names if name not in state_dict]
        unexpected = [key for key in state_dict if key not in set(names)]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match this {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        values = []
        for name, param in named:
            value = state_dict[name]
            if not isinstance(value, (np.ndarray, type(param))):
                raise TypeError(f"state_dict[{name!r}] must be an array like the parameter "
                                f"({type(param).__name__}), got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, "
                                 f"the parameter {param.shape}")
            if value.dtype != param.dtype:
                raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}, "
                                f"the parameter {param.dtype}; cast it with .astype")
            # A copy, so values that alias other parameters cannot change mid-way.
            values.append(array_module(param).array(value, copy=True))
        for (_, param), value in zip(named, values):
            param[...] = value

    def to(self, device, reuse_buffers=False):
        """Move every parameter to the GPU (``"cuda"``) or back to the host (``"cpu"``), in place.

        The parameters become new arrays (numba device arrays on the GPU),
        so build the optimizer after moving the model. Every layer then
        computes on the device through the package's CUDA kernels when its
        input is a device array, and :func:`~meprop_numba.training.train_step`
        trains the model there unchanged. All arrays are copied before any
        is rebound, so a failure leaves the module as it was.

        Parameters
        ----------
        device : {'cuda', 'cpu'}
            Where the parameters go.
        reuse_buffers : bool, optional
            ``"cuda"`` only: give every sub-module a scope of one
            :class:`meprop_numba._cuda.Workspace` (:attr:`workspace`), so
            each layer's device outputs and scratch are allocated on the
            first call of a shape and reused after: a training step of a
            shape seen before allocates no device memory. A layer's output
            then stays valid only until that layer's next call of the same
            kind (forward or backward), as in a training loop; keep a copy
            of anything needed longer.

        Returns
        -------
        Module
            The module itself.

        Raises
        ------
        ValueError
            If `device` is neither.
        TypeError
            If a sub-module keeps parameters other than in
            ``_parameter_names`` (it cannot be moved).
        RuntimeError
            For ``"cuda"`` when no CUDA GPU (or the simulator) is available.

        Examples
        --------
        >>> from meprop_numba.nn import MLP
        >>> model = MLP(4, 8, 3, k=2, rng=0).to("cuda")  # doctest: +SKIP
        >>> type(model.parameters()[0]).__name__  # doctest: +SKIP
        'DeviceNDArray'
        """
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        reuse_buffers = flag(reuse_buffers, "reuse_buffers")
        if reuse_buffers and device != "cuda":
            raise ValueError("reuse_buffers=True needs device='cuda'")
        modules = self.movable_modules()
        if device == "cuda":
            from .. import _cuda

            def move(a):
                return a if is_cuda_array(a) else _cuda.to_device(a)
        else:
            def move(a):
                return _cuda_host(a) if is_cuda_array(a) else a
        moved = [(module, name, move(value)) for module in modules for name, value in module._own_parameters()]
        workspace = _cuda.Workspace() if reuse_buffers else None
        for module, name, value in moved:
            setattr(module, name, value)
        for j, module in enumerate(modules):
            module.workspace = None if workspace is None else workspace.scope(j)
        return self

    def movable_modules(self):
        """The module and its sub-modules, every one of which :meth:`to` can move.

        Returns
        -------
        list of Module
            Depth first, the module itself first.

        Raises
        ------
        TypeError
            If a sub-module keeps parameters other than in
            ``_parameter_names`` (such as the LSTM).

        Examples
        --------
        >>> from meprop_numba.nn import MLP
        >>> len(MLP(4, 8, 3, rng=0).movable_modules()) > 1
        True
        """
        modules, stack = [], [self]
        while stack:
            module = stack.pop()
            if type(module)._own_parameters is not Module._own_parameters:
                raise TypeError(f"{type(module).__name__} keeps its parameters its own way and cannot be moved")
            modules.append(module)
            stack.extend(child for _, child in module.named_children())
        return modules

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def _cuda_host(a):
    from .. import _cuda

    return _cuda.as_device(a, "parameter").copy_to_host()


def add_selection_counts(counts, kept, g):
    """Add to `counts` (n,), per output neuron, the examples that kept a non-zero entry of `g` (B, n).

    `kept` is the selection back propagation made: (B, k) per example,
    (k,) shared by the minibatch, or None (every entry). Model
    simplification's counting (:meth:`Linear.count_selections` and the
    PyTorch layers' twin) in one place.
    """
    if kept is None:
        counts += np.count_nonzero(g, axis=0)
    elif kept.ndim == 1:
        counts[kept] += np.count_nonzero(g[:, kept], axis=0)
    else:
        _count_kept_nonzero(counts, np.ascontiguousarray(kept, dtype=np.int64), np.ascontiguousarray(g))


class Linear(Module):
    """Fully connected layer ``y = x @ W.T + b`` with meProp back propagation.

    The forward pass is one BLAS product. The backward pass keeps only `k`
    entries of the output gradient per example (``selection='topk'``), `k`
    columns shared by the minibatch (``'unified'``) or `k` random entries
    per example (``'random'``, the paper's baseline), or the ``k // 2``
    largest positive and ``k - k // 2`` largest-magnitude negative entries
    per example (``'balanced'``, see :func:`~meprop_numba.balanced_indices`),
    so only those rows of `W` receive a gradient (a
    :class:`~meprop_numba.RowSparse`). The bias gradient stays dense, as in
    the paper.

    Parameters
    ----------
    in_features : int
        Input size, m.
    out_features : int
        Output size, n.
    k : int or None, optional
        Entries kept in back propagation, in ``[1, out_features]``; None
        (default) or ``k == out_features`` gives exact dense back
        propagation (stored as ``k=None``).
    selection : {'topk', 'unified', 'random', 'balanced'}, optional
        Per-example top-k (default), top-k columns shared by the minibatch,
        k random entries per example, or sign-balanced top-k per example.
    dtype : {numpy.float32, numpy.float64}, optional
        Parameter dtype (default float32).
    rng : numpy.random.Generator or int, optional
        Initialises the weights uniformly in ``±1/sqrt(in_features)`` (the
        ``torch.nn.Linear`` default) and draws the random-k selections.
    input_grad : bool, optional
        Whether :meth:`backward` returns the input gradient. The first layer
        of a network does not need it; the dense path then skips that
        product (as autograd frameworks do).
    error_feedback : float, optional
        Memory decay ``beta`` in ``[0, 1)`` of error feedback (0, the
        default, turns it off; needs `k`). The batch mean of the output
        gradient's dropped entries is kept as one vector of `out_features`;
        the next backward adds ``beta`` times it to the entries of its
        output gradient that are non-zero (inactive ReLU units stay zero)
        before selecting, so the backward stays k entries per example. The
        bias gradient is taken from the output gradient as given.
    score_memory : float, optional
        Decay ``gamma`` in ``[0, 1)`` of a memory of the dropped columns'
        scores, ``selection='unified'`` only (0, the default, turns it off;
        needs `k`). The columns are chosen by their score plus the memory;
        then the memory becomes ``gamma`` times that sum for the dropped
        columns and 0 for the kept ones, so a column left out for long
        enough is kept for a step. O(n) extra work per step.

    Attributes
    ----------
    weight : numpy.ndarray
        ``(out_features, in_features)``.
    bias : numpy.ndarray
        ``(out_features,)``.
    backward_seconds : float
        Wall time spent in the weight/input gradient computation (including
        the top-k selection) since creation; the training loop reads it.
    selection_counts : numpy.ndarray of int64 or None
        While counting (:meth:`count_selections`): per output neuron, how
        many examples kept its gradient entry, non-zero, in back
        propagation since counting started.
    counted_examples : int
        Examples back-propagated since counting started.
    column_scores_hook : callable or None
        With ``selection='unified'``: called in :meth:`backward` with the
        float64 column scores ``sum_b |g[b, i]|`` (shape ``(out_features,)``)
        and returning the scores to select from; data-parallel training
        (:mod:`meprop_numba.training.distributed`) sums them over the ranks
        so that every rank keeps the same k columns. None (default): the
        layer's own scores.

    Raises
    ------
    TypeError
        If a size or `k` is not an integer, or `dtype` is not float32/float64.
    ValueError
        If a size is not positive, `k` is outside ``[1, out_features]`` (the
        same check as :func:`~meprop_numba.linear_backward`), `selection`
        is unknown, `error_feedback` or `score_memory` is outside
        ``[0, 1)``, or `score_memory` is set for a selection other than
        ``'unified'``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Linear
    >>> layer = Linear(4, 6, k=2, rng=0)
    >>> x = np.ones((3, 4), dtype=np.float32)
    >>> layer.forward(x, train=True).shape
    (3, 6)
    >>> dx = layer.backward(np.ones((3, 6), dtype=np.float32))
    >>> dW, db = layer.grads()
    >>> len(dW.rows) <= 6, db.shape
    (True, (6,))
    """

    _parameter_names = ("weight", "bias")
    column_scores_hook = None

    def __init__(self, in_features, out_features, k=None, selection="topk", *,
                 dtype=np.float32, rng=None, input_grad=True, error_feedback=0.0,
                 score_memory=0.0):
        in_features = integer_k(in_features, np.iinfo(np.int64).max, "in_features")
        out_features = integer_k(out_features, np.iinfo(np.int64).max, "out_features")
        if k is not None and integer_k(k, out_features) == out_features:
            k = None
        selection = choice(selection, SELECTIONS, "selection")
        dtype = _float_dtype(dtype)
        error_feedback = unit_interval(error_feedback, "error_feedback")
        score_memory = unit_interval(score_memory, "score_memory")
        if score_memory and selection != "unified":
            raise ValueError(f"score_memory needs selection='unified', got {selection!r}")
        self.rng = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = self.rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        self.bias = self.rng.uniform(-bound, bound, out_features).astype(dtype)
        self.k = None if k is None else int(k)
        self.selection, self.input_grad = selection, bool(input_grad)
        self.backward_seconds = 0.0
        self.selection_counts = None
        self.counted_examples = 0
        self.error_feedback = error_feedback
        self._memory = None
        self.score_memory = score_memory
        self._scores = None
        self._x = None
        self._grads = [None, None]

    @property
    def in_features(self):
        """Input size, m (the weight's second dimension)."""
        return self.weight.shape[1]

    @property
    def out_features(self):
        """Output size, n (the weight's first dimension)."""
        return self.weight.shape[0]

    def forward(self, x, train=False):
        """Compute ``x @ W.T + b``; with ``train=True`` keep `x` for :meth:`backward`.

        Parameters
        ----------
        x : ndarray, shape (..., in_features)
            The input, of the layer's dtype.
        train : bool, optional
            Keep `x` (not a copy) for the backward pass.

        Returns
        -------
        ndarray, shape (..., out_features)
            The output (for 2-D `x` a Fortran-ordered array; a device array
            for a CUDA `x`, see :meth:`Module.to`).

        Raises
        ------
        TypeError
            If `x` is a CUDA array and the parameters are on the host, or
            the other way round.
        """
        if (type(x) is not np.ndarray or type(self.weight) is not np.ndarray) and (
                is_cuda_array(x) != is_cuda_array(self.weight)):
            where = "the GPU" if is_cuda_array(self.weight) else "the host"
            raise TypeError(f"x is a {'CUDA' if is_cuda_array(x) else 'host'} array but the layer's parameters are "
                            f"on {where}; move the model with .to('cuda') / .to('cpu') or the input with "
                            "meprop_numba.gpu.to_device / to_host")
        if train:
            self._x = x
        if _on_device(x):
            return _cuda_mlp().linear_forward(x, self.weight, self.bias,
                                              out=_device_out(self, "forward", x, self.out_features))
        if x.ndim == 2:
            # (W @ x.T).T rather than x @ W.T: OpenBLAS is 1.2-1.5x slower when
            # the large operand is the transposed one (scripts/forward_gemm.py).
            # The result is a transposed (Fortran-ordered) view; ReLU returns C order.
            y = (self.weight @ x.T).T
        else:
            y = x @ self.weight.T
        y += self.bias
        return y

    def backward(self, grad_out):
        """Back-propagate keeping `k` entries of `grad_out` (see `selection`); set :meth:`grads`.

        Parameters
        ----------
        grad_out : ndarray, shape (B, out_features)
            Gradient of the loss with respect to the last training forward's output.

        Returns
        -------
        ndarray, shape (B, in_features), or None
            Gradient with respect to the input; None when `input_grad` is False.

        Raises
        ------
        RuntimeError
            If no training forward preceded it.
        TypeError, ValueError
            From :func:`~meprop_numba.linear_backward` (dtype or shape of
            `grad_out`, NaN or Inf in it); TypeError too while counting
            selections on CUDA parameters (counting is host only).
        """
        if self._x is None:
            raise RuntimeError(_NO_TRAINING_FORWARD)
        x, W = self._x, self.weight
        if self.selection_counts is not None and not isinstance(W, np.ndarray):
            raise TypeError("counting selections (count_selections) needs host (NumPy) "
                            "parameters; stop it with count_selections(False)")
        start = time.perf_counter()
        unified = self.selection == "unified"
        memory = self.k is not None and (self.error_feedback or self.score_memory)
        if memory and not is_cuda_array(grad_out):  # a device array is refused by _feedback_ready
            x, grad_out = np.ascontiguousarray(x), np.ascontiguousarray(grad_out)
        if memory and self._feedback_ready(x, grad_out):
            dx, dW, db, kept = self._feedback_backward(x, grad_out)
        elif self.k is not None and unified and self.column_scores_hook is not None:
            scores = self.column_scores_hook(np.abs(grad_out).sum(axis=0, dtype=np.float64))
            cols = np.sort(top_columns(scores, self.k))
            dx, dW, db, kept = _linear_backward(x, W, grad_out, None, cols, True, self.input_grad)
        elif self.k is not None and self.selection == "random":
            indices = random_indices(W.shape[0], self.k, batch=x.shape[0], rng=self.rng)
            dx, dW, db, kept = _linear_backward(x, W, grad_out, None, indices, False,
                                                self.input_grad, workspace=self.workspace)
        else:
            dx, dW, db, kept = _linear_backward(x, W, grad_out, self.k, None, unified, self.input_grad,
                                                balanced=self.selection == "balanced" and self.k is not None,
                                                workspace=self.workspace)
        if self.selection_counts is not None:
            self._count(kept, grad_out)
        self.backward_seconds += time.perf_counter() - start
        self._x = None
        self._grads = [dW, db]
        xp = array_module(grad_out)
        if dx is not None and xp is not np and array_module(dx) is np:
            dx = xp.asarray(dx)  # a CuPy input gets a CuPy dx (the kernels return numba arrays)
        return dx if self.input_grad else None

    def count_selections(self, enable=True):
        """Start (from zero) or stop counting how often each output neuron is kept.

        While counting, every :meth:`backward` adds to
        :attr:`selection_counts`, per output neuron, the number of examples
        of the minibatch that kept its gradient entry and found it non-zero:
        with ``selection='topk'`` or ``'random'`` the examples whose k
        entries include it; with ``'unified'`` the examples of the
        minibatch at the k shared columns; dense back propagation
        (``k=None``) keeps every entry. A zero entry (a ReLU that was off)
        updates nothing and does not count, so whether it was kept (a tie
        among zeros) does not matter, and a layer narrowed to k or fewer
        neurons counts exactly as if the removed neurons were still there
        with zero gradients. :attr:`counted_examples` adds the minibatch
        size. Model simplification
        (:class:`meprop_numba.simplify.Simplifier`) reads both. Counting
        uses the selection the backward pass makes anyway, so it changes no
        result (host arrays only).

        Parameters
        ----------
        enable : bool, optional
            True (default): reset the counts to zero and count; False: stop
            and drop them (``selection_counts`` becomes None).

        Returns
        -------
        None
            The layer counts from now on (or no longer).

        Examples
        --------
        >>> import numpy as np
        >>> from meprop_numba.nn import Linear
        >>> layer = Linear(3, 4, k=1, rng=0)
        >>> layer.count_selections()
        >>> _ = layer.forward(np.ones((2, 3), dtype=np.float32), train=True)
        >>> _ = layer.backward(np.array([[0, 5, 0, 1], [0, 0, -7, 1]], dtype=np.float32))
        >>> layer.selection_counts, layer.counted_examples
        (array([0, 1, 1, 0]), 2)
        """
        self.counted_examples = 0
        self.selection_counts = (np.zeros(self.out_features, dtype=np.int64) if enable
                                 else None)

    def _count(self, kept, g):
        if self.selection_counts.shape != (self.out_features,):  # the layer was shrunk: start again
            self.selection_counts = np.zeros(self.out_features, dtype=np.int64)
            self.counted_examples = 0
        add_selection_counts(self.selection_counts, kept, g)
        self.counted_examples += g.shape[0]

    def select(self, g):
        """The entries of an output gradient `g` that this layer's backward keeps.

        Parameters
        ----------
        g : ndarray, shape (B, out_features)
            Output gradient (with error feedback: after the memory is added).

        Returns
        -------
        ndarray of int64 or None
            ``(B, k)`` indices per example, ``(k,)`` for ``selection='unified'``,
            None when the layer is dense. ``'random'`` draws from :attr:`rng`.

        Examples
        --------
        >>> import numpy as np
        >>> from meprop_numba.nn import Linear
        >>> Linear(3, 4, k=2, selection="balanced", rng=0).select(np.array([[3.0, 2.0, 1.0, -1.0]]))
        array([[0, 3]])
        """
        if self.k is None:
            return None
        if self.selection == "random":
            return random_indices(self.out_features, self.k, batch=g.shape[0], rng=self.rng)
        if self.selection == "balanced":
            return balanced_indices(g, self.k)
        return topk_indices(g, self.k, unified=self.selection == "unified")

    def _feedback_ready(self, x, g):
        """Whether `g` (and `x`) can take the compiled error-feedback path; raises on NaN/Inf."""
        W = self.weight
        if is_cuda_array(g) or is_cuda_array(x) or array_module(g) is not np or array_module(x) is not np:
            raise TypeError("error_feedback takes host (NumPy) arrays")
        ok = (type(g) is np.ndarray and type(x) is np.ndarray and g.ndim == 2 and x.ndim == 2
              and g.dtype == W.dtype and x.dtype == W.dtype and g.flags.c_contiguous
              and x.flags.c_contiguous and g.shape == (x.shape[0], W.shape[0])
              and x.shape[1] == W.shape[1])
        if ok:
            finite(g, "grad_out")
            finite(x, "x")
        return ok

    def reset_error_feedback(self):
        """Forget the error-feedback memory: the next backward starts as plain meProp.

        The memory is not part of :meth:`state_dict`; a training loop that
        resets it where it checkpoints (the MLP task: at each epoch start)
        resumes exactly.
        """
        self._memory = None
        self._scores = None

    def _with_memory(self, g):
        if self._memory is None:
            return g
        return _mlp_kernels.add_memory(g, self._memory, g.dtype.type(self.error_feedback))

    def _feedback_backward(self, x, grad_out):
        """Select on grad_out plus the memory, back-propagate that, keep what was dropped.

        The memory enters in the passes the selection makes anyway (column
        sums, or one copy of the gradient per example), so the backward
        stays O(B n + B k m).
        """
        W, k, B = self.weight, self.k, grad_out.shape[0]
        beta = grad_out.dtype.type(self.error_feedback)
        memory = self._memory
        if memory is None or memory.shape != (W.shape[0],):  # none yet, or the layer was shrunk
            memory = np.zeros(W.shape[0], W.dtype)
        if self.selection == "unified":
            db, scores, total = _mlp_kernels.feedback_columns(grad_out, memory, beta)
            if self.column_scores_hook is not None:
                scores = self.column_scores_hook(scores)
            if self.score_memory:
                if self._scores is not None and self._scores.shape == scores.shape:
                    scores += self._scores
                cols = np.sort(top_columns(scores, k))
                scores *= self.score_memory
                scores[cols] = 0.0
                self._scores = scores
            else:
                cols = np.sort(top_columns(scores, k))
            g_sel = _mlp_kernels.gather_feedback_columns(grad_out, memory, beta, cols)
            dx, dW, _ = _shared_products(x, W, cols, g_sel, db, self.input_grad)
            self._memory = _mlp_kernels.next_memory(total, g_sel, cols[None, :], True, W)
            return dx, dW, db, cols
        g, db, total = _mlp_kernels.feedback_rows(grad_out, memory, beta)
        if self.selection == "random":
            indices = random_indices(W.shape[0], k, batch=B, rng=self.rng)
        elif self.selection == "balanced":
            indices = _balanced_host(g, k)
        else:
            indices = _topk_host(g, k, False)
        dx, dW, _, _ = _per_example_backward(x, W, g, indices, self.input_grad)
        self._memory = _mlp_kernels.next_memory(total, g, indices, False, W)
        return dx, dW, db, indices
    def grads(self):
        """Gradients ``[dW, db]`` from the last :meth:`backward`.

        Returns
        -------
        list
            ``dW`` a :class:`~meprop_numba.RowSparse` (only the selected rows),
            ``db`` a dense array; ``[None, None]`` before any backward.
        """
        return list(self._grads)

    def __repr__(self):
        sparsity = "dense" if self.k is None else f"k={self.k}, selection={self.selection!r}"
        return f"Linear({self.in_features}, {self.out_features}, {sparsity})"


class ReLU(Module):
    """Rectified linear unit ``max(x, 0)``.

    Takes no parameters. A training forward keeps its output for
    :meth:`backward` (as PyTorch's ReLU does), so that output must not be
    modified in place before the backward pass.

    Raises
    ------
    RuntimeError
        From :meth:`backward` if no training forward preceded it.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import ReLU
    >>> relu = ReLU()
    >>> relu.forward(np.array([[-1.0, 2.0]]), train=True)
    array([[0., 2.]])
    >>> relu.backward(np.array([[5.0, 5.0]]))
    array([[0., 5.]])
    """

    def __init__(self):
        self._y = None

    def forward(self, x, train=False):
        """Compute ``max(x, 0)``; with ``train=True`` keep the output for :meth:`backward`.

        Parameters
        ----------
        x : ndarray
            The input.
        train : bool, optional
            Keep the output for the backward pass.

        Returns
        -------
        ndarray
            ``max(x, 0)``, C-ordered for 2-D float input.
        """
        xp = array_module(x)
        if _on_device(x):
            y = _cuda_mlp().relu_forward(x, out=_device_out(self, "forward", x, shape_dtype(x)[0][-1]))
        elif xp is np and x.ndim == 2 and x.dtype in _FLOAT_DTYPES:
            # C order whatever the input's layout (Linear returns a transposed view).
            y = _mlp_kernels.relu_forward(x)
        else:
            y = xp.maximum(x, x.dtype.type(0))
        if train:
            self._y = y
        return y

    def backward(self, grad_out):
        """Pass `grad_out` where the last training forward's output was positive.

        Parameters
        ----------
        grad_out : ndarray
            Gradient with respect to the output.

        Returns
        -------
        ndarray
            Gradient with respect to the input.

        Raises
        ------
        RuntimeError
            If no training forward preceded it.
        """
        if self._y is None:
            raise RuntimeError(_NO_TRAINING_FORWARD)
        y, self._y = self._y, None
        if _on_device(y):
            return _cuda_mlp().relu_backward(grad_out, y, out=_device_out(self, "backward", y, y.shape[1]))
        if (type(grad_out) is np.ndarray and grad_out.dtype == y.dtype
                and grad_out.shape == y.shape and grad_out.flags.c_contiguous):
            return _mlp_kernels.relu_backward(grad_out, y)
        return grad_out * (y > 0)

    def __repr__(self):
        return "ReLU()"


class Dropout(Module):
    """Inverted dropout, the identity at evaluation.

    In training each entry is zeroed with probability `p` and the rest are
    scaled by ``1 / (1 - p)``.

    Parameters
    ----------
    p : float
        Drop probability in ``[0, 1)``.
    rng : numpy.random.Generator or int, optional
        Source of the masks (shared with the model so that one state
        captures all of its randomness).

    Raises
    ------
    ValueError
        If `p` is outside ``[0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Dropout
    >>> drop = Dropout(0.5, rng=0)
    >>> x = np.ones((2, 4), dtype=np.float32)
    >>> y = drop.forward(x, train=True)
    >>> sorted(set(y.ravel().tolist()))   # dropped, or scaled by 1 / (1 - p)
    [0.0, 2.0]
    >>> drop.forward(x) is x              # identity at evaluation
    True
    """

    def __init__(self, p, rng=None):
        self.p = unit_interval(p, "p")
        self.rng = np.random.default_rng(rng)
        self._scale = None

    def forward(self, x, train=False):
        """Drop and scale entries of `x` in training; return `x` itself otherwise.

        Parameters
        ----------
        x : ndarray
            The input.
        train : bool, optional
            Draw a mask from :attr:`rng` and keep it for :meth:`backward`.

        Returns
        -------
        ndarray
            The masked, scaled input, or `x` when not training or ``p == 0``.
        """
        if not train or self.p == 0.0:
            self._scale = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        self._scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        if _on_device(x):  # the mask is drawn on the host, from the model's generator
            from .. import _cuda

            self._scale = _cuda.copy_in(self._scale, 0, self.workspace, "scale")
            return _cuda_mlp().multiply(x, self._scale, out=_device_out(self, "forward", x, x.shape[1]))
        return x * self._scale

    def backward(self, grad_out):
        """Apply the last training forward's mask and scale to `grad_out`.

        Parameters
        ----------
        grad_out : ndarray
            Gradient with respect to the output.

        Returns
        -------
        ndarray
            Gradient with respect to the input (`grad_out` itself when no
            mask was drawn).
        """
        if self._scale is None:
            return grad_out
        if _on_device(grad_out):
            grad = _cuda_mlp().multiply(grad_out, self._scale,
                                        out=_device_out(self, "backward", grad_out, self._scale.shape[1]))
        else:
            grad = grad_out * self._scale
        self._scale = None
        return grad

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Parameters
    ----------
    layers : iterable of Module
        The layers, input to output, named ``"0"``, ``"1"``, ... in
        :meth:`named_parameters` and :meth:`state_dict` (``"0.weight"``).
        :meth:`parameters` and :meth:`grads` concatenate theirs in that
        order. Backward stops early when a layer returns None (its input
        needs no gradient).

    Raises
    ------
    TypeError
        If `layers` is not iterable or holds something that is not a
        :class:`Module`.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import Linear, ReLU, Sequential
    >>> net = Sequential([Linear(4, 8, k=2, rng=0), ReLU(), Linear(8, 3, rng=0)])
    >>> net.forward(np.ones((5, 4), dtype=np.float32)).shape
    (5, 3)
    >>> len(net.params())      # weight and bias of each Linear
    4
    """

    def __init__(self, layers):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a meprop_numba.nn.Module, "
                                f"got {type(layer).__name__}")

    def forward(self, x, train=False):
        """Run the layers in order.

        Parameters
        ----------
        x : ndarray
            Input of the first layer.
        train : bool, optional
            Passed to every layer.

        Returns
        -------
        ndarray
            Output of the last layer.
        """
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, grad_out):
        """Back-propagate through the layers in reverse order.

        Parameters
        ----------
        grad_out : ndarray
            Gradient with respect to the last layer's output.

        Returns
        -------
        ndarray or None
            Gradient with respect to the input, or None once a layer's
            input needs no gradient.
        """
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
            if grad_out is None:  # a layer whose input needs no gradient
                break
        return grad_out

    def named_children(self):
        """The layers named by their index.

        Returns
        -------
        list of (str, Module)
            ``("0", first layer)``, ``("1", second layer)``, ...
        """
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n)"
