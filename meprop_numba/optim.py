"""Optimizers that take meProp's row-sparse gradients without densifying them.

Each optimizer updates its parameters in place.  With ``lazy=True`` (the
default) a :class:`~meprop_numba.RowSparse` gradient touches only its rows:
parameters and optimizer state of the other rows are left as they are, so
the update costs O(k m) instead of O(n m).  With ``lazy=False`` the
gradient is expanded to a dense array and every element is updated, as the
original meProp code did; for Adam and SGD with momentum this also decays
the moments of the untouched rows.
"""
import numpy as np

from ._cpu import optim as K
from ._validation import finite, float_array, is_cuda_array, positive_float, shape_dtype, unit_interval
from .sparse import RowSparse


def _gpu():
    from . import _cuda

    return _cuda


class Optimizer:
    """Base class: parameter bookkeeping, gradient checks and checkpoints.

    Subclasses name their per-parameter state arrays in ``_state_names``
    and implement ``_update(param, grad, state)``.
    """

    _state_names = ()

    def __init__(self, params, lazy=True):
        if isinstance(params, np.ndarray) or is_cuda_array(params):
            raise TypeError("params must be a list of arrays, not a single array")
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one array")
        for j, p in enumerate(params):
            name = f"params[{j}]"
            if is_cuda_array(p):
                float_array(p, name, len(shape_dtype(p)[0]))
                continue
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name} must be a NumPy or CUDA array updated in place, got {type(p).__name__}")
            float_array(p, name, p.ndim)
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")
            if p.ndim not in (1, 2):
                raise ValueError(f"{name} must be 1-D or 2-D, got shape {p.shape}")
        self.params = params
        self.lazy = bool(lazy)
        self.step_count = 0
        self.state = [{s: self._zeros_like(p) for s in self._state_names} for p in params]

    @staticmethod
    def _zeros_like(p):
        return _gpu().zeros_like(p) if is_cuda_array(p) else np.zeros_like(p)

    def _hyper(self):
        raise NotImplementedError

    def _check_grads(self, grads):
        """Validate every gradient before any parameter is touched."""
        if isinstance(grads, (np.ndarray, RowSparse)) or is_cuda_array(grads):
            raise TypeError("grads must be a list aligned with params, not a single gradient")
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"grads must hold {len(self.params)} entries (one per parameter), got {len(grads)}")
        checked = []
        for j, (p, gr) in enumerate(zip(self.params, grads)):
            if gr is None:
                checked.append(None)
                continue
            if type(gr) is np.ndarray and type(p) is np.ndarray:
                # The common host case, checked without the generic helpers.
                if gr.shape == p.shape and gr.dtype == p.dtype and gr.flags.c_contiguous:
                    finite(gr, f"grads[{j}]")
                    checked.append(gr)
                    continue
            name = f"grads[{j}]"
            pshape, pdtype = shape_dtype(p)
            if isinstance(gr, RowSparse):
                if len(pshape) != 2:
                    raise ValueError(f"{name} is row-sparse but params[{j}] is {len(pshape)}-D; only 2-D parameters take RowSparse")
                if tuple(gr.shape) != tuple(pshape):
                    raise ValueError(f"{name} has shape {gr.shape}, expected {tuple(pshape)} like params[{j}]")
                if gr.dtype != pdtype:
                    raise TypeError(f"{name} has dtype {gr.dtype}, expected {pdtype} like params[{j}]")
                if is_cuda_array(gr.values) != is_cuda_array(p):
                    raise TypeError(f"{name} and params[{j}] must both be on the host or both on the GPU")
                if is_cuda_array(gr.values):
                    _gpu().check_finite(gr.values, name)
                else:
                    finite(gr.values, name)
                checked.append(gr)
                continue
            gr = float_array(gr, name, len(pshape))
            gshape, gdtype = shape_dtype(gr)
            if tuple(gshape) != tuple(pshape):
                raise ValueError(f"{name} has shape {tuple(gshape)}, expected {tuple(pshape)} like params[{j}]")
            if gdtype != pdtype:
                raise TypeError(f"{name} has dtype {gdtype}, expected {pdtype} like params[{j}]")
            if is_cuda_array(gr) != is_cuda_array(p):
                raise TypeError(f"{name} and params[{j}] must both be on the host or both on the GPU")
            if is_cuda_array(gr):
                _gpu().check_finite(gr, name)
            else:
                finite(gr, name)
            checked.append(gr)
        return checked

    def step(self, grads):
        """Apply one update to every parameter, in place.

        Parameters
        ----------
        grads : list
            One entry per parameter: a dense array of the parameter's shape
            and dtype, a :class:`~meprop_numba.RowSparse` (2-D parameters),
            or None to leave that parameter (and its state) unchanged.

        Raises
        ------
        TypeError, ValueError
            If an entry has the wrong shape, dtype or type, or holds
            NaN/Inf. Checked for all entries before anything changes.
        """
        grads = self._check_grads(grads)
        self.step_count += 1
        hyper = self._hyper()
        cast_hyper = {}  # the hyperparameters in each parameter dtype, cast once a step
        for p, gr, st in zip(self.params, grads, self.state):
            if gr is None:
                continue
            if is_cuda_array(p):
                self._update_gpu(p, gr, st, hyper)
                continue
            h = cast_hyper.get(p.dtype)
            if h is None:
                cast = p.dtype.type
                h = {key: cast(val) for key, val in hyper.items()}
                h["tiny"] = cast(np.finfo(p.dtype).tiny)
                cast_hyper[p.dtype] = h
            if isinstance(gr, RowSparse) and not self.lazy:
                gr = gr.to_dense()
            if isinstance(gr, RowSparse):
                self._update_rows(p, gr.rows, gr.values, st, h)
            else:
                self._update_flat(p.reshape(-1), gr.reshape(-1), {s: a.reshape(-1) for s, a in st.items()}, h)

    def state_dict(self):
        """Return a checkpointable copy of the optimizer state.

        Returns
        -------
        dict
            ``{"type", "step", "lazy", "hyper", "state"}``; ``state`` is a
            list (one per parameter) of dicts of host arrays (copies).
        """
        def host(a):
            return a.copy_to_host() if hasattr(a, "copy_to_host") else np.array(a, copy=True)

        return {
            "type": type(self).__name__,
            "step": self.step_count,
            "lazy": self.lazy,
            "hyper": self._config(),
            "state": [{s: host(a) for s, a in st.items()} for st in self.state],
        }

    def load_state_dict(self, state):
        """Restore a state produced by :meth:`state_dict`.

        Everything is checked before anything is copied, so a mismatched
        checkpoint leaves the optimizer unchanged.

        Raises
        ------
        ValueError
            If the optimizer type, the number of parameters, a state array's
            name or shape does not match.
        """
        if state.get("type") != type(self).__name__:
            raise ValueError(f"state is for {state.get('type')!r}, not {type(self).__name__!r}")
        entries = state["state"]
        if len(entries) != len(self.state):
            raise ValueError(f"state holds {len(entries)} parameters, this optimizer has {len(self.state)}")
        for j, (mine, theirs) in enumerate(zip(self.state, entries)):
            if set(mine) != set(theirs):
                raise ValueError(f"state[{j}] holds {sorted(theirs)}, expected {sorted(mine)}")
            for s, a in theirs.items():
                a = np.asarray(a)
                if a.shape != tuple(shape_dtype(mine[s])[0]):
                    raise ValueError(f"state[{j}][{s!r}] has shape {a.shape}, expected {shape_dtype(mine[s])[0]}")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for mine, theirs in zip(self.state, entries):
            for s, a in theirs.items():
                if is_cuda_array(mine[s]):
                    mine[s].copy_to_device(np.ascontiguousarray(a, dtype=shape_dtype(mine[s])[1]))
                else:
                    mine[s][...] = a
        self.step_count = step
        self.lazy = bool(state.get("lazy", self.lazy))


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum.

    ``v = momentum * v + g; p -= lr * v`` (plain ``p -= lr * g`` without
    momentum).

    Parameters
    ----------
    params : list of ndarray
        Float32/float64 arrays, 1-D or 2-D, C-contiguous; updated in place.
    lr : float
        Learning rate, > 0.
    momentum : float, optional
        Momentum factor in ``[0, 1)``; 0 (default) keeps no state.
    lazy : bool, optional
        Touch only the rows of a row-sparse gradient (default) or every
        element (the velocity of untouched rows then decays).

    Raises
    ------
    TypeError
        If `params` is a single array or holds something other than NumPy or
        CUDA float32/float64 arrays, or a hyperparameter is not a real number.
    ValueError
        If `params` is empty or an array is not writeable, C-contiguous, 1-D
        or 2-D; or a hyperparameter is out of range (lr finite and > 0, momentum in [0, 1)).

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> W = np.ones((3, 2))
    >>> opt = mp.SGD([W], lr=0.5)
    >>> opt.step([mp.RowSparse([1], np.ones((1, 2)), (3, 2))])
    >>> W
    array([[1. , 1. ],
           [0.5, 0.5],
           [1. , 1. ]])
    """

    def __init__(self, params, lr, momentum=0.0, lazy=True):
        self.lr = positive_float(lr, "lr")
        self.momentum = unit_interval(momentum, "momentum")
        self._state_names = ("velocity",) if self.momentum > 0 else ()
        super().__init__(params, lazy)

    def _config(self):
        return {"lr": self.lr, "momentum": self.momentum}

    def _hyper(self):
        return {"lr": self.lr, "mu": self.momentum}

    def _update_flat(self, p, g, st, h):
        if st:
            K.momentum_flat(p, st["velocity"], g, h["lr"], h["mu"], h["tiny"])
        else:
            K.sgd_flat(p, g, h["lr"])

    def _update_rows(self, p, rows, values, st, h):
        if st:
            K.momentum_rows(p, st["velocity"], rows, values, h["lr"], h["mu"], h["tiny"])
        else:
            K.sgd_rows(p, rows, values, h["lr"])

    def _update_gpu(self, p, gr, st, h):
        grad = (gr.rows, gr.values) if isinstance(gr, RowSparse) else gr
        _gpu().sgd_step(p, grad, st.get("velocity"), h["lr"], h["mu"], self.lazy, check=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected, with lazy row-sparse updates.

    With ``lazy=True`` only the gradient's rows update their moments and
    weights (as TensorFlow's LazyAdam and ``torch.optim.SparseAdam``); the
    step count used for bias correction is global.

    Parameters
    ----------
    params : list of ndarray
        Float32/float64 arrays, 1-D or 2-D, C-contiguous; updated in place.
    lr : float, optional
        Learning rate (default 1e-3).
    betas : tuple of float, optional
        Decay rates of the first and second moments, each in ``[0, 1)``.
    eps : float, optional
        Added to the denominator (default 1e-8).
    lazy : bool, optional
        Touch only the rows of a row-sparse gradient (default) or every
        element, decaying the moments of untouched rows.

    Raises
    ------
    TypeError
        If `params` is a single array or holds something other than NumPy or
        CUDA float32/float64 arrays, or a hyperparameter is not a real number.
    ValueError
        If `params` is empty or an array is not writeable, C-contiguous, 1-D
        or 2-D; or a hyperparameter is out of range (lr and eps finite and > 0, betas in [0, 1)).

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> W = np.zeros((3, 2))
    >>> opt = mp.Adam([W], lr=0.1)
    >>> opt.step([mp.RowSparse([0], np.ones((1, 2)), (3, 2))])
    >>> np.round(W, 6)
    array([[-0.1, -0.1],
           [ 0. ,  0. ],
           [ 0. ,  0. ]])
    """

    _state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, lazy=True):
        self.lr = positive_float(lr, "lr")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (unit_interval(betas[0], "betas[0]"), unit_interval(betas[1], "betas[1]"))
        self.eps = positive_float(eps, "eps")
        super().__init__(params, lazy)

    def _config(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps}

    def _hyper(self):
        b1, b2 = self.betas
        t = self.step_count
        c2 = np.sqrt(1.0 - b2**t)
        return {"step_size": self.lr * c2 / (1.0 - b1**t), "b1": b1, "b2": b2, "eps_hat": self.eps * c2}

    def _update_flat(self, p, g, st, h):
        K.adam_flat(p, st["m"], st["v"], g, h["step_size"], h["b1"], h["b2"], h["eps_hat"], h["tiny"])

    def _update_rows(self, p, rows, values, st, h):
        K.adam_rows(p, st["m"], st["v"], rows, values, h["step_size"], h["b1"], h["b2"], h["eps_hat"], h["tiny"])

    def _update_gpu(self, p, gr, st, h):
        grad = (gr.rows, gr.values) if isinstance(gr, RowSparse) else gr
        b1, b2 = self.betas
        _gpu().adam_step(p, grad, st["m"], st["v"], self.step_count, self.lr, b1, b2, self.eps, self.lazy, check=False)


class AdaGrad(Optimizer):
    """AdaGrad: ``a += g**2; p -= lr * g / (sqrt(a) + eps)``.

    A zero gradient changes neither the accumulator nor the weight, so lazy
    and dense modes give the same result; they differ only in cost.

    Parameters
    ----------
    params : list of ndarray
        Float32/float64 arrays, 1-D or 2-D, C-contiguous; updated in place.
    lr : float, optional
        Learning rate (default 1e-2).
    eps : float, optional
        Added to the denominator (default 1e-10).
    lazy : bool, optional
        Touch only the rows of a row-sparse gradient (default) or every element.

    Raises
    ------
    TypeError
        If `params` is a single array or holds something other than NumPy or
        CUDA float32/float64 arrays, or a hyperparameter is not a real number.
    ValueError
        If `params` is empty or an array is not writeable, C-contiguous, 1-D
        or 2-D; or a hyperparameter is out of range (lr and eps finite and > 0).

    Examples
    --------
    >>> import numpy as np
    >>> import meprop_numba as mp
    >>> W = np.zeros((2, 2))
    >>> mp.AdaGrad([W], lr=0.5).step([np.array([[2.0, 0.0], [0.0, -1.0]])])
    >>> W
    array([[-0.5,  0. ],
           [ 0. ,  0.5]])
    """

    _state_names = ("sum_sq",)

    def __init__(self, params, lr=1e-2, eps=1e-10, lazy=True):
        self.lr = positive_float(lr, "lr")
        self.eps = positive_float(eps, "eps")
        super().__init__(params, lazy)

    def _config(self):
        return {"lr": self.lr, "eps": self.eps}

    def _hyper(self):
        return {"lr": self.lr, "eps": self.eps}

    def _update_flat(self, p, g, st, h):
        K.adagrad_flat(p, st["sum_sq"], g, h["lr"], h["eps"])

    def _update_rows(self, p, rows, values, st, h):
        K.adagrad_rows(p, st["sum_sq"], rows, values, h["lr"], h["eps"])

    def _update_gpu(self, p, gr, st, h):
        grad = (gr.rows, gr.values) if isinstance(gr, RowSparse) else gr
        _gpu().adagrad_step(p, grad, st["sum_sq"], self.lr, self.eps, self.lazy, check=False)
