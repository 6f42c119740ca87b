"""Optimizers that take meProp's row-sparse gradients without densifying them.

Each optimizer updates its parameters in place.  With ``lazy=True`` (the
default) a :class:`~meprop_numba.RowSparse` gradient touches only its rows:
parameters and optimizer state of the other rows are left as they are, so
the update costs O(k m) instead of O(n m).  With ``lazy=False`` the
gradient is expanded to a dense array and every element is updated, as the
original meProp code did; for Adam and SGD with momentum this also decays
the moments of the untouched rows.

An optimizer owns the parameter list it was built with: replacing,
adding, reshaping or freezing a parameter afterwards makes the next
:meth:`~Optimizer.step` raise before anything changes.  Steps from several
threads are applied whole, one at a time (see the threads how-to).
"""
import math
import numbers
import threading
from collections.abc import Mapping

import numpy as np

from ._cpu import optim as K
from ._validation import (LARGEST, SMALLEST_NORMAL, finite, flag, float_array, is_cuda_array, kept_indices,
                          positive_float, shape_dtype, unit_interval)
from .sparse import RowSparse

_INF = float("inf")


def _gpu():
    from . import _cuda

    return _cuda


class Optimizer:
    """Base class: parameter bookkeeping, gradient checks and checkpoints.

    Subclasses name their per-parameter state arrays in ``_state_names``
    (those that must stay >= 0 in ``_nonnegative_state``), re-check their
    hyper-parameters in ``_validate()``, give the update's scalars for step
    t in ``_hyper(t)`` with a rule for each in ``_hyper_rules``, and
    implement the ``_update_*`` kernels calls.

    Thread contract: one optimizer may be used from several threads; each
    :meth:`step`, :meth:`state_dict` and :meth:`load_state_dict` holds the
    optimizer's lock, so steps are applied whole, one after another, in the
    order the threads take the lock.  Two optimizers sharing a parameter
    are not coordinated.
    """

    _state_names = ()
    _nonnegative_state = ()
    #: key of ``_hyper(t)`` -> (argument, "positive" or "unit", what it is)
    _hyper_rules = {}
    #: the hyper-parameter attributes, re-validated whenever one changes
    _hyper_attrs = ()
    #: whether ``_hyper(t)`` depends on the step (else its cast values are reused)
    _hyper_uses_step = False

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
        _check_distinct(params)
        self.params = params
        self.lazy = flag(lazy, "lazy")
        self._params = tuple(params)
        self._checked = (None, None)  # (hyper-parameters last validated, their cast values)
        self._layout = tuple(shape_dtype(p) for p in params)
        self._casts = tuple((dt, dt.type, float(LARGEST[dt]), SMALLEST_NORMAL[dt])
                            for dt in dict.fromkeys(dt for _, dt in self._layout))
        self._cast_hyper(1)
        self.step_count = 0
        self.state = [{s: self._zeros_like(p) for s in self._state_names} for p in params]
        self._state = tuple(tuple(st.items()) for st in self.state)
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        state.pop("_flat", None)  # views of the arrays: a copy must make its own
        state.pop("_workspace", None)  # device scratch: a copy makes its own
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _gpu_workspace(self):
        """Device scratch of the gradient checks and updates (status flags), allocated once, reused by every step."""
        ws = self.__dict__.get("_workspace")
        if ws is None:
            ws = self._workspace = _gpu().Workspace()
        return ws

    @staticmethod
    def _zeros_like(p):
        return _gpu().zeros_like(p) if is_cuda_array(p) else np.zeros_like(p)

    def _validate(self):
        """Re-check the hyper-parameter attributes (they may have been reassigned)."""
        raise NotImplementedError

    def _hyper(self, t):
        raise NotImplementedError

    def _cast_hyper(self, t):
        """The update's scalars for step `t` in each parameter dtype, checked after the cast.

        A value that is fine in float64 can overflow to Inf or round to 0
        in float32 (``lr=1e39``, ``eps=1e-46``); such a value is refused
        here, naming its argument, before any parameter changes.
        """
        key = tuple([getattr(self, a) for a in self._hyper_attrs] + [self.lazy])
        if key != self._checked[0]:
            self._validate()
            self.lazy = flag(self.lazy, "lazy")
            self._checked = (tuple([getattr(self, a) for a in self._hyper_attrs] + [self.lazy]), None)
        elif self._checked[1] is not None and not self._hyper_uses_step:
            return self._checked[1]
        hyper = self._hyper(t)
        rules = self._hyper_rules
        cast_hyper = {}
        for dtype, cast, largest, tiny in self._casts:
            h = {}
            for key, val in hyper.items():
                val = float(val)
                # Checked as Python floats: a cast beyond the largest value would warn.
                c = cast(val) if abs(val) <= largest else None
                cf = float(c) if c is not None else _INF
                arg, rule, what = rules[key]
                if not (0.0 < cf < _INF if rule == "positive" else 0.0 <= cf < 1.0):
                    need = "finite and > 0" if rule == "positive" else "in [0, 1)"
                    raise ValueError(
                        f"{arg} cannot be used with {dtype} parameters: the update's {what} is "
                        f"{val:.6g} at step {t}, which is {cf} in {dtype} (it must be {need}); "
                        f"change {arg} or use float64 parameters")
                h[key] = c
            h["tiny"] = tiny
            cast_hyper[dtype] = h
        self._checked = (self._checked[0], cast_hyper)
        return cast_hyper

    def _check_owned(self):
        """Raise unless params and state are still the arrays, shapes and dtypes built with.

        Run at every step, so written as plain loops: NumPy arrays are
        recognised by type before any probe for a CUDA interface.
        """
        params = self.params
        if type(params) is not list or len(params) != len(self._params):
            n = len(params) if isinstance(params, list) else type(params).__name__
            raise ValueError(
                f"params holds {n} arrays but this optimizer was built with {len(self._params)}; "
                "build a new optimizer for another parameter list")
        for j, (p, mine, (shape, dtype)) in enumerate(zip(params, self._params, self._layout)):
            if p is not mine:
                raise ValueError(
                    f"params[{j}] was replaced after the optimizer was built; update the array in "
                    "place (p[...] = new) or build a new optimizer")
            if type(p) is np.ndarray:
                ok = p.shape == shape and p.dtype == dtype
                if ok:
                    flags = p.flags
                    if not (flags.writeable and flags.c_contiguous):
                        raise ValueError(f"params[{j}] is no longer a writeable C-contiguous array")
            else:
                ok = shape_dtype(p) == (shape, dtype)
            if not ok:
                now = shape_dtype(p)
                raise ValueError(f"params[{j}] now has shape {now[0]} and dtype {now[1]}; it was built "
                                 f"with shape {shape} and dtype {dtype}")
        state = self.state
        if type(state) is not list or len(state) != len(self._state):
            raise ValueError("the optimizer state was replaced; restore a state with load_state_dict")
        for j, (st, mine) in enumerate(zip(state, self._state)):
            if type(st) is not dict or len(st) != len(mine):
                raise ValueError("the optimizer state was replaced; restore a state with load_state_dict")
            shape, dtype = self._layout[j]
            for s, a in mine:
                if st.get(s) is not a:
                    raise ValueError("the optimizer state was replaced; restore a state with load_state_dict")
                if type(a) is np.ndarray:
                    bad = a.shape != shape or a.dtype != dtype or not a.flags.writeable
                else:
                    bad = shape_dtype(a) != (shape, dtype)
                if bad:
                    raise ValueError(f"state[{j}][{s!r}] was reshaped or made read-only; "
                                     "restore a state with load_state_dict")

    def _check_grads(self, grads):
        """Validate every gradient before any parameter is touched."""
        if isinstance(grads, (np.ndarray, RowSparse)) or is_cuda_array(grads):
            raise TypeError("grads must be a list aligned with params, not a single gradient")
        grads = list(grads)
        if len(grads) != len(self._params):
            raise ValueError(f"grads must hold {len(self._params)} entries (one per parameter), got {len(grads)}")
        checked = []
        for j, (p, gr) in enumerate(zip(self._params, grads)):
            if gr is None:
                checked.append(None)
                continue
            if type(gr) is np.ndarray and type(p) is np.ndarray:
                # The common host case, checked without the generic helpers.
                if gr.shape == p.shape and gr.dtype == p.dtype and gr.flags.c_contiguous:
                    _finite_named(gr, j)
                    checked.append(gr)
                    continue
            if type(gr) is RowSparse and type(p) is np.ndarray:
                # The common host case: the rows were checked (and frozen) when gr was built,
                # against gr's shape; the values are the caller's array and may have changed.
                values = gr._values
                if (gr._shape == p.shape and type(values) is np.ndarray and values.dtype == p.dtype
                        and values.shape == (gr._rows.shape[0], p.shape[1]) and values.flags.c_contiguous):
                    _finite_named(values, j)
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
                # values are the caller's array: re-check what may have changed since construction
                vshape = tuple(shape_dtype(gr.values)[0])
                if vshape != (gr.nnz_rows, pshape[1]):
                    raise ValueError(f"{name}.values has shape {vshape}, expected {(gr.nnz_rows, pshape[1])}")
                if is_cuda_array(gr.values):
                    # rows too (sorted, distinct, in range), on the device, before any parameter changes
                    _gpu().check_gradient((gr.rows, gr.values), pshape[0], name, workspace=self._gpu_workspace())
                else:
                    finite(np.ascontiguousarray(gr.values), name)
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
                _gpu().check_finite(gr, name, workspace=self._gpu_workspace())
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
            NaN/Inf; if ``params`` was replaced, extended, reshaped or made
            read-only since construction; if a hyper-parameter (possibly
            reassigned) is out of range in the parameters' dtype.  Everything
            is checked before anything changes (``step_count`` included).
        """
        with self._lock:
            self._check_owned()
            grads = self._check_grads(grads)
            t = self.step_count + 1
            cast_hyper = self._cast_hyper(t)
            hyper = None
            self.step_count = t
            flat = self.__dict__.get("_flat")
            if flat is None:  # 1-D views of each parameter and its state, made once (see shrink)
                flat = self._flat = [(p.reshape(-1), {s: a.reshape(-1) for s, a in st.items()})
                                     if type(p) is np.ndarray else None for p, st in zip(self._params, self.state)]
            for p, gr, st, pst in zip(self._params, grads, self.state, flat):
                if gr is None:
                    continue
                if pst is None:  # a CUDA array
                    hyper = self._hyper(t) if hyper is None else hyper
                    self._update_gpu(p, gr, st, hyper)
                    continue
                h = cast_hyper[p.dtype]
                sparse = isinstance(gr, RowSparse)
                if sparse and not self.lazy:
                    gr, sparse = gr.to_dense(), False
                if sparse:
                    values = gr.values
                    if not values.flags.c_contiguous:
                        values = np.ascontiguousarray(values)
                    self._update_rows(p, gr.rows, values, st, h)
                else:
                    self._update_flat(pst[0], gr.reshape(-1), pst[1], h)

    def shrink(self, cuts):
        """Keep only some rows or columns of parameters, and of their state: all cuts, or none.

        Model simplification removes neurons: rows of a weight and of its
        bias, columns of the next weight. This builds the smaller arrays
        (copies of the kept entries, C-contiguous) for the parameters and
        for every state array of theirs (moments, velocity, sums of
        squares), and makes them the arrays this optimizer updates from
        now on; ``step_count`` and the hyper-parameters are unchanged, so
        the surviving entries continue exactly as before. The model must
        then hold the returned arrays in place of the old ones
        (:class:`meprop_numba.simplify.Simplifier` does both).

        Parameters
        ----------
        cuts : sequence of (ndarray, array_like of int, int)
            ``(param, keep, axis)``: one of this optimizer's parameters
            (the array itself), the indices to keep along `axis` (strictly
            increasing, at least one, each in range) and the axis (0 for
            rows, 1 for columns of a 2-D parameter). A parameter may appear
            more than once; its cuts apply in order.

        Returns
        -------
        list of ndarray
            The new array of each cut's parameter, aligned with `cuts` (for
            a parameter cut twice, the result after both at each entry).

        Raises
        ------
        TypeError
            If `cuts` is not a sequence of triples, a `keep` is not
            integer, or a parameter is a CUDA array (shrinking is host only).
        ValueError
            If a parameter is not one of this optimizer's, an axis is not
            one of the parameter's, or a `keep` is empty, not strictly
            increasing, or out of range. Nothing changes then.

        Examples
        --------
        >>> import numpy as np
        >>> import meprop_numba as mp
        >>> W = np.arange(6.0).reshape(3, 2)
        >>> opt = mp.Adam([W], lr=0.1)
        >>> opt.step([np.ones((3, 2))])
        >>> [W2] = opt.shrink([(W, [0, 2], 0)])
        >>> W2.shape, opt.state[0]["m"].shape
        ((2, 2), (2, 2))
        >>> opt.params[0] is W2
        True
        """
        if isinstance(cuts, (str, bytes)) or not hasattr(cuts, "__iter__"):
            raise TypeError(f"cuts must be a sequence of (param, keep, axis), got {type(cuts).__name__}")
        cuts = list(cuts)
        with self._lock:
            self._check_owned()
            index = {id(p): j for j, p in enumerate(self._params)}
            shapes = {}
            plan = []
            for c, cut in enumerate(cuts):
                if not isinstance(cut, (tuple, list)) or len(cut) != 3:
                    raise TypeError(f"cuts[{c}] must be a triple (param, keep, axis), got {cut!r}")
                param, keep, axis = cut
                j = index.get(id(param))
                if j is None:
                    raise ValueError(f"cuts[{c}]: the array is not one of this optimizer's parameters")
                if is_cuda_array(param):
                    raise TypeError(f"cuts[{c}]: shrinking CUDA parameters is not supported")
                shape = shapes.get(j, self._layout[j][0])
                if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral) \
                        or not 0 <= axis < len(shape):
                    raise ValueError(f"cuts[{c}]: axis must be an axis of the {len(shape)}-D parameter, got {axis!r}")
                keep = kept_indices(keep, shape[axis], f"cuts[{c}] keep")
                shapes[j] = shape[:axis] + (keep.size,) + shape[axis + 1:]
                plan.append((j, keep, int(axis)))
            # Build everything first, then swap it in: nothing changes on an error above.
            params = list(self._params)
            states = [dict(st) for st in self.state]
            for j, keep, axis in plan:
                params[j] = np.ascontiguousarray(np.take(params[j], keep, axis=axis))
                for s in states[j]:
                    states[j][s] = np.ascontiguousarray(np.take(states[j][s], keep, axis=axis))
            layout = list(self._layout)
            for j in shapes:
                layout[j] = shape_dtype(params[j])
            self.params = params
            self._params = tuple(params)
            self._layout = tuple(layout)
            self.state = states
            self._state = tuple(tuple(st.items()) for st in states)
            self.__dict__.pop("_flat", None)
            return [params[j] for j, _, _ in plan]

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

        with self._lock:
            return {
                "type": type(self).__name__,
                "step": self.step_count,
                "lazy": self.lazy,
                "hyper": self._config(),
                "state": [{s: host(a) for s, a in st.items()} for st in self.state],
            }

    def load_state_dict(self, state):
        """Restore a state produced by :meth:`state_dict`.

        A checkpoint restores the optimizer's state (its moments and step
        count), not its configuration: the saved ``lazy`` flag and
        hyper-parameters must equal this optimizer's (build it with the
        checkpoint's ``state["hyper"]``; change ``lr`` afterwards if
        wanted).  Everything is checked before anything is copied, so a
        bad checkpoint leaves the optimizer unchanged.

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict`.

        Raises
        ------
        TypeError
            If `state` is not a dict, ``step`` not an integer, ``lazy`` not
            a bool, or a state entry not a dict of real arrays.
        ValueError
            If a key is missing, the optimizer type, ``lazy``, a
            hyper-parameter, the number of parameters or a state array's
            name or shape does not match, ``step`` is negative, or a state
            array holds NaN/Inf (after the cast to the parameter dtype) or
            a negative second moment.
        """
        with self._lock:
            self._check_owned()
            step, arrays = self._checked_checkpoint(state)
            for mine, theirs in zip(self.state, arrays):
                for s, a in theirs.items():
                    if is_cuda_array(mine[s]):
                        mine[s].copy_to_device(a)
                    else:
                        mine[s][...] = a
            self.step_count = step

    def _checked_checkpoint(self, state):
        """``(step, arrays)`` of a validated checkpoint; arrays cast to the parameter dtypes."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict returned by state_dict(), got {type(state).__name__}")
        missing = [key for key in ("type", "step", "lazy", "hyper", "state") if key not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(map(repr, missing))}")
        if state["type"] != type(self).__name__:
            raise ValueError(f"state is for {state['type']!r}, not {type(self).__name__!r}")
        step = state["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise TypeError(f"state['step'] must be an integer, got {step!r} of type {type(step).__name__}")
        if step < 0:
            raise ValueError(f"state['step'] must be >= 0, got {step}")
        if not isinstance(state["lazy"], (bool, np.bool_)):
            raise TypeError(f"state['lazy'] must be a bool, got {state['lazy']!r}")
        if bool(state["lazy"]) != self.lazy:
            raise ValueError(f"state['lazy'] is {bool(state['lazy'])} but this optimizer has lazy={self.lazy}; "
                             "build it with the checkpoint's setting")
        _same_hyper(state["hyper"], self._config())
        entries = state["state"]
        if not isinstance(entries, (list, tuple)):
            raise TypeError(f"state['state'] must be a list of dicts, got {type(entries).__name__}")
        if len(entries) != len(self.state):
            raise ValueError(f"state holds {len(entries)} parameters, this optimizer has {len(self.state)}")
        arrays = []
        for j, (mine, theirs) in enumerate(zip(self.state, entries)):
            if not isinstance(theirs, Mapping):
                raise TypeError(f"state['state'][{j}] must be a dict of arrays, got {type(theirs).__name__}")
            if set(mine) != set(theirs):
                raise ValueError(f"state['state'][{j}] holds {sorted(map(str, theirs))}, expected {sorted(mine)}")
            shape, dtype = self._layout[j]
            cast = {}
            for s in mine:
                name = f"state['state'][{j}][{s!r}]"
                a = theirs[s]
                a = a if isinstance(a, np.ndarray) else np.asarray(a) if isinstance(a, (list, tuple)) else None
                if a is None or a.dtype.kind not in "fiu":
                    raise TypeError(f"{name} must be an array of real numbers, got {type(theirs[s]).__name__}")
                if a.shape != shape:
                    raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
                with np.errstate(over="ignore", invalid="ignore"):
                    a = np.array(a, dtype=dtype, order="C", copy=True)
                if not np.isfinite(a).all():
                    raise ValueError(f"{name} holds NaN or Inf (in {dtype})")
                if s in self._nonnegative_state and (a < 0).any():
                    raise ValueError(f"{name} holds negative values; a sum of squares is >= 0")
                cast[s] = a
            arrays.append(cast)
        return int(step), arrays


def _finite_named(a, j):
    """:func:`finite` for ``grads[j]``, the name built only for the error."""
    try:
        finite(a, "grads")
    except ValueError:
        finite(a, f"grads[{j}]")  # raises again, naming the entry


def _same_hyper(theirs, mine):
    """Raise unless the checkpoint's hyper-parameters equal this optimizer's."""
    if not isinstance(theirs, Mapping):
        raise TypeError(f"state['hyper'] must be a dict, got {type(theirs).__name__}")
    if set(theirs) != set(mine):
        raise ValueError(f"state['hyper'] holds {sorted(map(str, theirs))}, expected {sorted(mine)}")
    for key, value in mine.items():
        saved = theirs[key]
        try:
            same = np.array_equal(np.asarray(saved, dtype=np.float64), np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"state['hyper'][{key!r}] must be a number or a list of numbers, got {saved!r}") from None
        if not same:
            raise ValueError(f"state['hyper'][{key!r}] is {saved!r} but this optimizer has {key}={value!r}; "
                             "build it with the checkpoint's hyper-parameters (state['hyper'])")


def _check_distinct(params):
    """Refuse a parameter listed twice or two parameters sharing memory (each would be updated twice)."""
    for j, p in enumerate(params):
        for i in range(j):
            q = params[i]
            same = p is q
            if not same and not is_cuda_array(p) and not is_cuda_array(q):
                same = np.may_share_memory(p, q)  # exact for C-contiguous arrays
            elif not same and hasattr(p, "__cuda_array_interface__") and hasattr(q, "__cuda_array_interface__"):
                same = p.__cuda_array_interface__["data"][0] == q.__cuda_array_interface__["data"][0]
            if same:
                raise ValueError(f"params[{j}] is (or shares memory with) params[{i}]; list each parameter once")


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
        CUDA float32/float64 arrays, a hyperparameter is not a real number,
        or `lazy` is not a bool.
    ValueError
        If `params` is empty, lists an array twice (or two arrays sharing
        memory), or an array is not writeable, C-contiguous, 1-D or 2-D; or
        a hyperparameter is out of range, also after the cast to the
        parameters' dtype (e.g. ``lr=1e39`` overflows float32) (lr finite and > 0, momentum in [0, 1)).

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

    _hyper_rules = {"lr": ("lr", "positive", "learning rate"), "mu": ("momentum", "unit", "momentum")}
    _hyper_attrs = ("lr", "momentum")

    def __init__(self, params, lr, momentum=0.0, lazy=True):
        self.lr, self.momentum = lr, momentum
        self._validate()
        self._state_names = ("velocity",) if self.momentum > 0 else ()
        super().__init__(params, lazy)

    def _validate(self):
        self.lr = positive_float(self.lr, "lr")
        momentum = unit_interval(self.momentum, "momentum")
        if "_state_names" in self.__dict__ and (momentum > 0) != bool(self._state_names):
            raise ValueError("momentum cannot be switched between 0 and > 0 after construction "
                             "(the velocity state exists only with momentum); build a new optimizer")
        self.momentum = momentum

    def _config(self):
        return {"lr": self.lr, "momentum": self.momentum}

    def _hyper(self, t):
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
        _gpu().sgd_step(p, grad, st.get("velocity"), h["lr"], h["mu"], self.lazy, check=False,
                        workspace=self._gpu_workspace(), check_rows=False)


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
        CUDA float32/float64 arrays, a hyperparameter is not a real number,
        or `lazy` is not a bool.
    ValueError
        If `params` is empty, lists an array twice (or two arrays sharing
        memory), or an array is not writeable, C-contiguous, 1-D or 2-D; or
        a hyperparameter is out of range, also after the cast to the
        parameters' dtype (e.g. ``lr=1e39`` overflows float32) (lr and eps finite and > 0, betas in [0, 1)).

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
    _nonnegative_state = ("v",)
    _hyper_rules = {
        "step_size": ("lr", "positive", "step size lr*sqrt(1-beta2**t)/(1-beta1**t)"),
        "b1": ("betas[0]", "unit", "beta1"),
        "b2": ("betas[1]", "unit", "beta2"),
        "eps_hat": ("eps", "positive", "denominator term eps*sqrt(1-beta2**t)"),
    }
    _hyper_attrs = ("lr", "betas", "eps")
    _hyper_uses_step = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, lazy=True):
        self.lr, self.betas, self.eps = lr, betas, eps
        self._validate()
        super().__init__(params, lazy)

    def _validate(self):
        self.lr = positive_float(self.lr, "lr")
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (unit_interval(betas[0], "betas[0]"), unit_interval(betas[1], "betas[1]"))
        self.eps = positive_float(self.eps, "eps")

    def _config(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps}

    def _hyper(self, t):
        b1, b2 = self.betas
        c2 = math.sqrt(1.0 - b2**t)  # a Python float: np.sqrt's scalar costs more and rounds the same
        return {"step_size": self.lr * c2 / (1.0 - b1**t), "b1": b1, "b2": b2, "eps_hat": self.eps * c2}

    def _update_flat(self, p, g, st, h):
        K.adam_flat(p, st["m"], st["v"], g, h["step_size"], h["b1"], h["b2"], h["eps_hat"], h["tiny"])

    def _update_rows(self, p, rows, values, st, h):
        K.adam_rows(p, st["m"], st["v"], rows, values, h["step_size"], h["b1"], h["b2"], h["eps_hat"], h["tiny"])

    def _update_gpu(self, p, gr, st, h):
        grad = (gr.rows, gr.values) if isinstance(gr, RowSparse) else gr
        b1, b2 = self.betas
        _gpu().adam_step(p, grad, st["m"], st["v"], self.step_count, self.lr, b1, b2, self.eps, self.lazy, check=False,
                         workspace=self._gpu_workspace(), check_rows=False)


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
        CUDA float32/float64 arrays, a hyperparameter is not a real number,
        or `lazy` is not a bool.
    ValueError
        If `params` is empty, lists an array twice (or two arrays sharing
        memory), or an array is not writeable, C-contiguous, 1-D or 2-D; or
        a hyperparameter is out of range, also after the cast to the
        parameters' dtype (e.g. ``lr=1e39`` overflows float32) (lr and eps finite and > 0).

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
    _nonnegative_state = ("sum_sq",)
    _hyper_rules = {"lr": ("lr", "positive", "learning rate"), "eps": ("eps", "positive", "eps")}
    _hyper_attrs = ("lr", "eps")

    def __init__(self, params, lr=1e-2, eps=1e-10, lazy=True):
        self.lr, self.eps = lr, eps
        self._validate()
        super().__init__(params, lazy)

    def _validate(self):
        self.lr = positive_float(self.lr, "lr")
        self.eps = positive_float(self.eps, "eps")

    def _config(self):
        return {"lr": self.lr, "eps": self.eps}

    def _hyper(self, t):
        return {"lr": self.lr, "eps": self.eps}

    def _update_flat(self, p, g, st, h):
        K.adagrad_flat(p, st["sum_sq"], g, h["lr"], h["eps"])

    def _update_rows(self, p, rows, values, st, h):
        K.adagrad_rows(p, st["sum_sq"], rows, values, h["lr"], h["eps"])

    def _update_gpu(self, p, gr, st, h):
        grad = (gr.rows, gr.values) if isinstance(gr, RowSparse) else gr
        _gpu().adagrad_step(p, grad, st["sum_sq"], self.lr, self.eps, self.lazy, check=False,
                            workspace=self._gpu_workspace(), check_rows=False)
