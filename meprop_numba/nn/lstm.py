"""A meProp LSTM layer: back propagation through time with sparsified gate gradients.

For every layer and direction the cell computes the gate pre-activations
``a_t = W_x x_t + W_h h_{t-1} + b`` (4 gates of h units, order i, f, g, o).
In back propagation meProp keeps, at every step, only k entries of
``dL/da_t`` by magnitude: k in each gate block (``scope="per_gate"``, the
default: the meProp paper's "top-k among 500" for h = 500) or k of the
whole 4h vector (``scope="concat"``). Only the kept entries feed
``dh_{t-1}``, ``dx_t`` and the rows of ``dW_x`` and ``dW_h``, which are
returned as :class:`meprop_numba.RowSparse`. The bias gradient is dense
(from the full ``dL/da_t``), as for the linear layers. ``k=None`` is exact
dense BPTT. With ``error_feedback=beta`` the mean of the entries dropped in
one backward is kept per layer and direction, and ``beta`` times it is
added to every step's ``dL/da_t`` of the next backward before the selection
(as :class:`meprop_numba.nn.Linear` does); the backward stays k entries a
gate per step.

The time loops run in compiled code (:mod:`meprop_numba._cpu.lstm`); the input
products of all steps are one BLAS call per layer and direction.
"""
import numbers
import time

import numpy as np

from .._cpu import lstm as K
from .._cpu.topk import magnitude_bits
from .._validation import choice, float_array, integer_k, unit_interval
from ..sparse import RowSparse
from .layers import _NO_TRAINING_FORWARD, Module

__all__ = ["LSTM"]

_SCOPES = ("per_gate", "concat")
_SELECTIONS = {"topk": K.SELECT_TOPK, "random": K.SELECT_RANDOM}


def _check_lengths(lengths, B, T):
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one per example, got {lengths.shape}")
    if B and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got "
                         f"min {lengths.min()} and max {lengths.max()}")
    return np.ascontiguousarray(lengths, dtype=np.int64)


def _check_batch(features, input_size, B, T, lengths, name):
    """Check an input of B examples, T steps and `features` per step; return its lengths."""
    if features != input_size:
        raise ValueError(f"{name} must have {input_size} features per step, got {features}")
    if B == 0 or T == 0:
        raise ValueError(f"{name} must hold at least one example and one step, got {B} "
                         f"examples of {T} steps")
    return _check_lengths(lengths, B, T)


def _reverse_index(lengths, T):
    """(T, B) time index that reverses every example within its own length."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


def _time_gather(a, index):
    """a (T, B, ...) gathered along time with a (T, B) index, per example."""
    B = a.shape[1]
    return np.ascontiguousarray(a[index, np.arange(B)[None, :]])


class LSTM(Module):
    """Multi-layer, uni- or bidirectional LSTM trained with meProp BPTT.

    Parameters
    ----------
    input_size : int
        Features per time step of the input.
    hidden_size : int
        Units per direction, h.
    num_layers : int, default 1
        Stacked layers; layer l > 0 reads the (concatenated) outputs of l - 1.
    bidirectional : bool, default False
        Add a right-to-left direction per layer; outputs are concatenated
        (forward first), so the output has ``2 * hidden_size`` features.
    k : int or None, default None
        Entries of ``dL/da_t`` kept per step: per gate block (``k <= h``) or
        in total (``k <= 4h``) depending on `scope`. None: dense BPTT; the
        largest k keeps every entry, which is dense BPTT too.
    scope : {"per_gate", "concat"}, default "per_gate"
        Where the top-k is taken: in each gate block of h, or over the
        concatenated 4h vector.
    selection : {"topk", "random"}, default "topk"
        ``"random"`` keeps k uniformly random entries instead (the meProp
        paper's random-k baseline), drawn from `rng`.
    error_feedback : float, default 0
        Memory decay ``beta`` in ``[0, 1)`` of error feedback (0 turns it
        off; no effect when k is None): per layer and direction, the mean
        over the valid steps of the gate-gradient entries the last backward
        dropped (memory included) is kept, and the next backward adds
        ``beta`` times it to ``dL/da_t`` at every valid step before
        selecting. The bias gradient takes ``dL/da_t`` as given. The memory
        is not part of :meth:`state_dict` (:meth:`reset_error_feedback`).
    dtype : {numpy.float32, numpy.float64}, default float32
    rng : numpy.random.Generator or int, optional
        Initialisation: every weight and bias uniform in
        ``[-1/sqrt(h), 1/sqrt(h)]`` (the usual LSTM initialisation); the
        same generator (:attr:`rng`) then seeds the random-k selections.

    Attributes
    ----------
    backward_seconds : float
        Wall time spent in :meth:`backward` (BPTT, top-k selection and
        gradient assembly) since creation.
    last_selected : list of ndarray
        After a meProp backward: per layer and direction the (T, B, K) int64
        selected entries of ``dL/da_t`` (-1 at padded steps), in that
        direction's processing order.
    hidden_size : int
        The units per direction the LSTM was built with. Model
        simplification does not change it (it may leave each layer and
        direction a different width): read the widths in use from
        `hidden_sizes`, and the output width from :attr:`output_size`.
    hidden_sizes : list of int
        Units of each layer and direction in use: all `hidden_size`, or
        fewer after model simplification (:mod:`meprop_numba.simplify`).
    selection_counts : list of ndarray or None
        While counting (:meth:`count_selections`): per layer and direction
        (the order of :meth:`parameters`), per hidden unit, the valid steps
        at which back propagation kept at least one of its four gate
        entries.
    counted_steps : int
        Valid (non-padded) steps back-propagated since counting started.

    Raises
    ------
    TypeError
        If `k` is not an integer or `dtype` is not float32/float64.
    ValueError
        If a size is not a positive integer, `k` is outside ``[1, h]``
        (``[1, 4h]`` with ``scope="concat"``), `scope` / `selection` is
        unknown, or `error_feedback` is outside ``[0, 1)``.

    Notes
    -----
    :meth:`parameters` lists ``[W_x, W_h, b]`` for layer 0 forward, then
    layer 0 backward (if bidirectional), then layer 1, ...; W_x (4h, in),
    W_h (4h, h), b (4h,). :meth:`named_parameters` names them as
    ``torch.nn.LSTM`` does, ``weight_ih_l0``, ``weight_hh_l0``, with one
    bias ``bias_l0`` (torch keeps two that add up), and ``_reverse`` for the
    backward direction. :meth:`grads` is aligned with them after
    :meth:`backward`: RowSparse for W_x and W_h when k is set, dense arrays
    for k=None and for b.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn.lstm import LSTM
    >>> lstm = LSTM(8, 16, k=2, rng=0)
    >>> x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    >>> y = lstm.forward(x, train=True, lengths=[5, 3, 1])
    >>> y.shape
    (3, 5, 16)
    >>> dx = lstm.backward(np.ones_like(y))
    >>> dx.shape, lstm.grads()[0].rows.size <= 4 * 16
    ((3, 5, 8), True)
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bidirectional=False, k=None,
                 scope="per_gate", selection="topk", error_feedback=0.0, dtype=np.float32,
                 rng=None):
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        choice(scope, _SCOPES, "scope")
        choice(selection, _SELECTIONS, "selection")
        self.error_feedback = unit_interval(error_feedback, "error_feedback")
        self._memory = {}
        self.input_size = int(input_size)
        self.hidden_size = h = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.scope = scope
        self.selection = selection
        self.dtype = dtype
        self.k = None if k is None else integer_k(k, h if scope == "per_gate" else 4 * h)
        self.rng = rng = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(h)
        self._params = []
        for layer in range(self.num_layers):
            d_in = self.input_size if layer == 0 else h * self.num_directions
            for _ in range(self.num_directions):
                self._params.append(rng.uniform(-bound, bound, (4 * h, d_in)).astype(dtype))
                self._params.append(rng.uniform(-bound, bound, (4 * h, h)).astype(dtype))
                self._params.append(rng.uniform(-bound, bound, 4 * h).astype(dtype))
        self._grads = [None] * len(self._params)
        self.last_selected = []
        self._cache = None
        self._workspaces = {}
        self.backward_seconds = 0.0
        self.selection_counts = None
        self.counted_steps = 0

    # ------------------------------------------------------------------ helpers
    @property
    def hidden_sizes(self):
        """Units of each layer and direction (the order of :meth:`parameters`).

        All equal to `hidden_size` unless model simplification removed
        units (:mod:`meprop_numba.simplify`).
        """
        return [W_h.shape[1] for W_h in self._params[1::3]]

    @property
    def output_size(self):
        """Features per step of the output: the last layer's units, all directions."""
        return sum(self.hidden_sizes[-self.num_directions:])

    def _weights(self, layer, direction):
        base = 3 * (layer * self.num_directions + direction)
        return base, self._params[base], self._params[base + 1], self._params[base + 2]

    def _own_parameters(self):
        names = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names += [f"weight_ih{suffix}", f"weight_hh{suffix}", f"bias{suffix}"]
        return list(zip(names, self._params))

    def grads(self):
        """Gradients from the last :meth:`backward`, aligned with :meth:`parameters`.

        With meProp the RowSparse values of W_x and W_h are views of buffers
        that the next :meth:`backward` overwrites: apply (or copy) them first.

        Returns
        -------
        list
            RowSparse for W_x and W_h when k is set (dense arrays for
            k=None), a dense array for b; None entries before any backward.
        """
        return list(self._grads)

    # ------------------------------------------------------------------ forward
    def forward(self, x, train=False, *, lengths=None):
        """Run the LSTM over a padded minibatch.

        Parameters
        ----------
        x : ndarray, shape (B, T, input_size)
            Batch-first input of the layer's dtype; steps at or after an
            example's length are padding and are ignored.
        train : bool, default False
            Keep what :meth:`backward` needs.
        lengths : array_like of int, shape (B,), optional
            Valid steps per example, each in ``[1, T]``; default all T.

        Returns
        -------
        ndarray, shape (B, T, output_size)
            The hidden states; zero at padded steps.

        Raises
        ------
        TypeError
            If `x` is not float32/float64 of the layer's dtype, or `lengths`
            is not integer.
        ValueError
            If shapes or lengths are wrong.
        """
        x = float_array(x, "x", 3)
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer is {self.dtype}; cast with .astype")
        B, T, _ = x.shape
        lengths = _check_batch(x.shape[2], self.input_size, B, T, lengths, "x")
        rev = _reverse_index(lengths, T) if self.bidirectional else None
        padded = bool(lengths.min() < T)
        layer_in = np.ascontiguousarray(x.transpose(1, 0, 2))  # time-major (T, B, d)
        cache = []
        for layer in range(self.num_layers):
            outs = []
            layer_cache = []
            for direction in range(self.num_directions):
                _, W_x, W_h, b = self._weights(layer, direction)
                h = W_h.shape[1]
                X = layer_in if direction == 0 else _time_gather(layer_in, rev)
                xw = (X.reshape(T * B, -1) @ W_x.T).reshape(T, B, 4 * h)
                xw += b
                H = np.empty((T + 1, B, h), dtype=self.dtype)
                C = np.empty((T + 1, B, h), dtype=self.dtype)
                TC = np.empty((T, B, h), dtype=self.dtype)
                G = np.empty((T, B, 4 * h), dtype=self.dtype)
                K.lstm_forward(xw, W_h, lengths, H, C, TC, G)
                layer_cache.append((X, H, C, TC, G))
                out = H[1:]
                outs.append(out if direction == 0 else _time_gather(out, rev))
            cache.append(layer_cache)
            layer_in = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
            # Padded steps carry the last state; the output there is defined as zero.
            if padded:
                layer_in[np.arange(T)[:, None] >= lengths[None, :]] = 0
        self._cache = (cache, lengths, rev, (B, T), padded) if train else None
        return np.ascontiguousarray(layer_in.transpose(1, 0, 2))

    # ----------------------------------------------------------------- backward
    def backward(self, dout):
        """Back propagate through time; set :attr:`grads` and return dL/dx.

        Parameters
        ----------
        dout : ndarray, shape (B, T, output_size)
            Gradient of the loss with respect to the output of the last
            :meth:`forward`. Entries at padded steps are ignored.

        Returns
        -------
        ndarray, shape (B, T, input_size)
            Gradient with respect to the input; zero at padded steps.

        Raises
        ------
        RuntimeError
            If called before :meth:`forward`.
        TypeError, ValueError
            If `dout` has the wrong dtype or shape.
        """
        if self._cache is None:
            raise RuntimeError(_NO_TRAINING_FORWARD)
        cache, lengths, rev, (B, T), padded = self._cache
        dout = float_array(dout, "dout", 3)
        if dout.dtype != self.dtype:
            raise TypeError(f"dout has dtype {dout.dtype} but the layer is {self.dtype}")
        if dout.shape != (B, T, self.output_size):
            raise ValueError(f"dout must have shape {(B, T, self.output_size)}, got {dout.shape}")
        start = time.perf_counter()
        d_layer = np.ascontiguousarray(dout.transpose(1, 0, 2))
        if padded:
            d_layer[np.arange(T)[:, None] >= lengths[None, :]] = 0  # padding sends no gradient
        grads = [None] * len(self._params)
        selected = [None] * (len(self._params) // 3)
        for layer in range(self.num_layers - 1, -1, -1):
            d_in = None
            offset = 0
            for direction in range(self.num_directions):
                base, W_x, W_h, _ = self._weights(layer, direction)
                h = W_h.shape[1]
                X, H, C, TC, G = cache[layer][direction]
                dH = d_layer if self.num_directions == 1 else np.ascontiguousarray(
                    d_layer[:, :, offset:offset + h])
                offset += h
                if direction == 1:
                    dH = _time_gather(dH, rev)
                if self.k is None:
                    dX, gW_x, gW_h, g_b = self._dense(dH, X, H, C, TC, G, W_x, W_h, lengths)
                else:
                    dX, gW_x, gW_h, g_b, sel = self._meprop(base, dH, X, H, C, TC, G, W_x, W_h,
                                                            lengths)
                    selected[base // 3] = sel
                if direction == 1:
                    dX = _time_gather(dX, rev)
                d_in = dX if d_in is None else d_in + dX
                grads[base], grads[base + 1], grads[base + 2] = gW_x, gW_h, g_b
            d_layer = d_in
        self._grads = grads
        self.last_selected = selected if self.k is not None else []
        if self.selection_counts is not None:
            self._count(selected, lengths)
        self._cache = None
        dx = np.ascontiguousarray(d_layer.transpose(1, 0, 2))
        self.backward_seconds += time.perf_counter() - start
        return dx

    def count_selections(self, enable=True):
        """Start (from zero) or stop counting how often each hidden unit is kept.

        A hidden unit j owns four entries of the gate gradient (i, f, g, o
        at j). While counting, every :meth:`backward` adds, per layer,
        direction and unit, the valid steps at which meProp kept at least
        one of them (dense BPTT keeps all: every step counts), and adds the
        valid steps to :attr:`counted_steps`. The counts come from the
        selections the backward pass makes anyway (:attr:`last_selected`),
        so no result changes.

        Parameters
        ----------
        enable : bool, optional
            True (default): reset the counts to zero and count; False: stop
            (``selection_counts`` becomes None).

        Returns
        -------
        None
            The layer counts from now on (or no longer).

        Examples
        --------
        >>> import numpy as np
        >>> from meprop_numba.nn import LSTM
        >>> lstm = LSTM(3, 4, k=1, rng=0)
        >>> lstm.count_selections()
        >>> y = lstm.forward(np.ones((2, 5, 3), dtype=np.float32), train=True, lengths=[5, 2])
        >>> _ = lstm.backward(np.ones_like(y))
        >>> lstm.counted_steps, int(lstm.selection_counts[0].max()) <= 7
        (7, True)
        """
        self.counted_steps = 0
        self.selection_counts = ([np.zeros(h, dtype=np.int64) for h in self.hidden_sizes]
                                 if enable else None)

    def _count(self, selected, lengths):
        steps = int(lengths.sum())
        for counts, sel in zip(self.selection_counts, selected):
            h = counts.shape[0]
            if sel is None:  # dense BPTT: every unit at every step
                counts += steps
                continue
            T, B, K = sel.shape
            kept = np.zeros((T * B, h), dtype=bool)
            flat = sel.reshape(T * B, K)
            valid = flat >= 0
            kept[np.nonzero(valid)[0], flat[valid] % h] = True
            counts += kept.sum(axis=0)
        self.counted_steps += steps

    def reset_error_feedback(self):
        """Forget the error-feedback memory: the next backward starts as plain meProp.

        Returns
        -------
        None
            A training loop that resets it where it checkpoints (the POS
            task: at each epoch start) resumes exactly.
        """
        self._memory = {}

    def _dense(self, dH, X, H, C, TC, G, W_x, W_h, lengths):
        T, B, h = dH.shape
        dA = np.empty((T, B, 4 * h), dtype=self.dtype)
        K.dense_bptt(dH, W_h, lengths, C, TC, G, dA)
        flat = dA.reshape(T * B, 4 * h)
        gW_x = flat.T @ X.reshape(T * B, -1)
        gW_h = flat.T @ H[:-1].reshape(T * B, h)
        g_b = flat.sum(axis=0)
        dX = (flat @ W_x).reshape(T, B, -1)
        return dX, gW_x, gW_h, g_b

    def _replace_parameters(self, arrays):
        """Rebind parameters to smaller arrays (model simplification); `arrays` maps index -> array."""
        for index, array in arrays.items():
            self._params[index] = array
        self._grads = [None] * len(self._params)
        self._workspaces = {}
        self._memory = {}
        self._cache = None
        if self.selection_counts is not None:
            self.count_selections()

    def _workspace(self, base):
        # The row-sparse gradient values live in buffers reused by every
        # backward: fresh multi-megabyte arrays per sentence cost more in page
        # faults than the sparse arithmetic itself. The gate-gradient scratch
        # of meprop_bptt (and its magnitude-bits view) is kept alongside.
        # Parameters keep their shapes and dtype (checkpoints load in place).
        ws = self._workspaces.get(base)
        if ws is None:
            W_x, W_h = self._params[base], self._params[base + 1]
            da_bits, mask = magnitude_bits(np.empty(W_h.shape[0], dtype=self.dtype))
            ws = (np.empty_like(W_x), np.empty_like(W_h), da_bits, mask)
            self._workspaces[base] = ws
        return ws

    def _meprop(self, base, dH, X, H, C, TC, G, W_x, W_h, lengths):
        per_gate = self.scope == "per_gate"
        if self.selection == "random":
            K.seed_random(int(self.rng.integers(2**62)))
        ws_x, ws_h, da_bits, mask = self._workspace(base)
        # A direction narrowed by simplification to k or fewer units keeps them all.
        k = min(self.k, W_h.shape[1] if per_gate else W_h.shape[0])
        if self.error_feedback:
            memory = self._memory.get(base)
            if memory is None:
                memory = np.zeros(W_h.shape[0], dtype=self.dtype)
            g_b, sel, vals, dropped = K.meprop_bptt_feedback(
                dH, W_h, lengths, C, TC, G, k, per_gate, _SELECTIONS[self.selection], da_bits,
                mask, memory, self.dtype.type(self.error_feedback))
            dropped /= self.dtype.type(lengths.sum())
            self._memory[base] = dropped
        else:
            g_b, sel, vals = K.meprop_bptt(dH, W_h, lengths, C, TC, G, k, per_gate,
                                           _SELECTIONS[self.selection], da_bits, mask)
        dX, rows_x, rows_h = K.meprop_weight_grads(X, H, W_x, sel, vals, ws_x, ws_h)
        n = rows_x.shape[0]
        gW_x = RowSparse._trusted(rows_x, ws_x[:n], W_x.shape)
        gW_h = RowSparse._trusted(rows_h, ws_h[:n], W_h.shape)
        return dX, gW_x, gW_h, g_b, sel

    def __repr__(self):
        sparsity = ("dense" if self.k is None
                    else f"k={self.k}, scope={self.scope!r}, selection={self.selection!r}")
        if self.k is not None and self.error_feedback:
            sparsity += f", error_feedback={self.error_feedback:g}"
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, {sparsity})")
