"""``MePropLSTM``: a ``torch.nn.LSTM`` trained with meProp BPTT on CPU.

The module is a subclass of :class:`torch.nn.LSTM` with the same gate order
(i, f, g, o), weight layout and parameter names, so state dicts move freely
between the two. In training mode (with autograd recording) the forward and
the backward run through this package's compiled LSTM loops
(:mod:`meprop_numba._cpu.lstm`) inside one
:class:`torch.autograd.Function`, on zero-copy NumPy views of the tensors;
the package's layout (``W_x`` (4h, in), ``W_h`` (4h, h), gates i, f, g, o)
is ``torch.nn.LSTM``'s, so nothing is converted but the two biases, which
are summed once per forward. In eval mode, or under ``torch.no_grad()``,
the forward is ``torch.nn.LSTM``'s own.
"""
import threading

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .._cpu.topk import magnitude_bits
from .._validation import integer_k
from .._cpu import lstm as K
from ..nn.lstm import _SCOPES
from ..nn.lstm import _SELECTIONS, _check_batch, _check_lengths, _reverse_index, _time_gather

__all__ = ["MePropLSTM"]

_DTYPES = (torch.float32, torch.float64)


def _check_tensor(t, name, dtype=None):
    """Raise unless `t` is a CPU float32/float64 tensor (of `dtype` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32 or float64 for the meProp kernels, got {t.dtype}; "
                        "cast the module and its input with .float() or .double()")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the module's parameters are {dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; MePropLSTM trains on CPU only (its kernels "
                         "are CPU loops); its eval-mode forward is torch.nn.LSTM's on any device")


def _numpy(t):
    """A C-contiguous NumPy array over the tensor's memory (a copy only if strided)."""
    a = t.detach().numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class _Settings:
    """What the autograd function needs from the module, fixed for one forward."""

    __slots__ = ("h", "num_layers", "num_directions", "bias", "k", "per_gate", "select",
                 "sparse_grad", "workspaces", "lock")


def _direction_weights(weights, settings, idx):
    """(W_x, W_h, (b_ih, b_hh) or None) of layer/direction `idx` from the flat weights."""
    per = 4 if settings.bias else 2
    biases = (weights[per * idx + 2], weights[per * idx + 3]) if settings.bias else None
    return weights[per * idx], weights[per * idx + 1], biases


def _forward(X, lengths, weights, s):
    """All layers and directions over time-major X (T, B, d); returns outputs and caches."""
    T, B, _ = X.shape
    h, D = s.h, s.num_directions
    dtype = X.dtype
    rev = _reverse_index(lengths, T) if D == 2 else None
    padding = np.arange(T)[:, None] >= lengths[None, :] if lengths.min() < T else None
    h_n = np.empty((s.num_layers * D, B, h), dtype=dtype)
    c_n = np.empty_like(h_n)
    cache = []
    layer_in = X
    for layer in range(s.num_layers):
        outs = []
        for direction in range(D):
            idx = layer * D + direction
            W_x, W_h, biases = _direction_weights(weights, s, idx)
            Xd = layer_in if direction == 0 else _time_gather(layer_in, rev)
            xw = (Xd.reshape(T * B, -1) @ W_x.T).reshape(T, B, 4 * h)
            if biases is not None:
                xw += biases[0] + biases[1]
            H = np.empty((T + 1, B, h), dtype=dtype)
            C = np.empty((T + 1, B, h), dtype=dtype)
            TC = np.empty((T, B, h), dtype=dtype)
            G = np.empty((T, B, 4 * h), dtype=dtype)
            K.lstm_forward(xw, W_h, lengths, H, C, TC, G)
            # Padded steps carry the state, so H[T] / C[T] are the states at each length.
            h_n[idx] = H[T]
            c_n[idx] = C[T]
            cache.append((Xd, H, C, TC, G))
            outs.append(H[1:] if direction == 0 else _time_gather(H[1:], rev))
        layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        if padding is not None:
            layer_in[padding] = 0  # outputs at padded steps are zero, as pad_packed_sequence gives
    return layer_in, h_n, c_n, cache, rev


def _workspace(workspaces, idx, W_x, W_h):
    ws = workspaces.get((idx, W_x.dtype))
    if ws is None:
        da_bits, mask = magnitude_bits(np.empty(W_h.shape[0], dtype=W_h.dtype))
        ws = (np.empty_like(W_x), np.empty_like(W_h), da_bits, mask)
        workspaces[(idx, W_x.dtype)] = ws
    return ws


def _row_grad(rows, values, shape, sparse):
    """The weight gradient with `values` at `rows`: sparse COO or scattered dense."""
    if sparse:
        index = torch.from_numpy(rows).unsqueeze(0)
        return torch.sparse_coo_tensor(index, torch.from_numpy(values.copy()), shape,
                                       is_coalesced=True, check_invariants=False)
    dense = np.zeros(shape, dtype=values.dtype)
    dense[rows] = values
    return torch.from_numpy(dense)


def _direction_backward(dH, cached, W_x, W_h, lengths, s, ws):
    """dX, dW_x, dW_h and db of one layer/direction from dH (T, B, h), in processing order."""
    X, H, C, TC, G = cached
    T, B, h = dH.shape
    if s.k is None:
        dA = np.empty((T, B, 4 * h), dtype=dH.dtype)
        K.dense_bptt(dH, W_h, lengths, C, TC, G, dA)
        flat = dA.reshape(T * B, 4 * h)
        gW_x = torch.from_numpy(flat.T @ X.reshape(T * B, -1))
        gW_h = torch.from_numpy(flat.T @ H[:-1].reshape(T * B, h))
        return (flat @ W_x).reshape(T, B, -1), gW_x, gW_h, flat.sum(axis=0)
    ws_x, ws_h, da_bits, mask = ws
    if s.select == K.SELECT_RANDOM:
        K.seed_random(int(torch.randint(2**62, (1,)).item()))  # follows torch.manual_seed
    db, sel, vals = K.meprop_bptt(dH, W_h, lengths, C, TC, G, s.k, s.per_gate, s.select,
                                  da_bits, mask)
    dX, rows_x, rows_h = K.meprop_weight_grads(X, H, W_x, sel, vals, ws_x, ws_h)
    n = rows_x.shape[0]
    gW_x = _row_grad(rows_x, ws_x[:n], W_x.shape, s.sparse_grad)
    gW_h = _row_grad(rows_h, ws_h[:n], W_h.shape, s.sparse_grad)
    return dX, gW_x, gW_h, db


def _backward(d_out, d_hn, ctx, weights):
    s, cache, lengths, rev = ctx.settings, ctx.cache, ctx.lengths, ctx.rev
    h, D = s.h, s.num_directions
    B = lengths.shape[0]
    last = (lengths - 1, np.arange(B))  # (time, example) of each example's final state
    d_layer = d_out
    grads = [None] * len(weights)
    per = 4 if s.bias else 2
    own = s.lock.acquire(blocking=False)  # a concurrent backward gets its own scratch
    workspaces = s.workspaces if own else {}
    try:
        for layer in range(s.num_layers - 1, -1, -1):
            d_in = None
            for direction in range(D):
                idx = layer * D + direction
                W_x, W_h, _ = _direction_weights(weights, s, idx)
                if D == 1:
                    dH = d_layer.copy() if d_hn is not None else d_layer
                else:
                    dH = np.ascontiguousarray(d_layer[:, :, direction * h:(direction + 1) * h])
                    if direction == 1:
                        dH = _time_gather(dH, rev)
                if d_hn is not None:
                    dH[last] += d_hn[idx]
                ws = None if s.k is None else _workspace(workspaces, idx, W_x, W_h)
                dX, gW_x, gW_h, db = _direction_backward(dH, cache[idx], W_x, W_h, lengths, s, ws)
                if direction == 1:
                    dX = _time_gather(dX, rev)
                d_in = dX if d_in is None else d_in + dX
                grads[per * idx], grads[per * idx + 1] = gW_x, gW_h
                if s.bias:
                    grads[per * idx + 2] = torch.from_numpy(db)
                    grads[per * idx + 3] = torch.from_numpy(db.copy())
            d_layer = d_in
    finally:
        if own:
            s.lock.release()
    return d_layer, grads


class _MePropLSTMFunction(torch.autograd.Function):
    """Time-major LSTM: (x, lengths, settings, *flat weights) -> (output, h_n, c_n)."""

    @staticmethod
    def forward(ctx, x, lengths, settings, *weights):
        ctx.set_materialize_grads(False)
        arrays = [_numpy(w) for w in weights]
        out, h_n, c_n, cache, rev = _forward(_numpy(x), lengths, arrays, settings)
        out = torch.from_numpy(out)
        # Saved so that autograd's version counters catch in-place changes of the
        # weights, the input or the output (which may share memory with the cache).
        ctx.save_for_backward(x, out, *weights)
        ctx.settings, ctx.cache, ctx.lengths, ctx.rev = settings, cache, lengths, rev
        return out, torch.from_numpy(h_n), torch.from_numpy(c_n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        saved = ctx.saved_tensors
        if d_cn is not None and bool(torch.any(d_cn != 0)):
            raise RuntimeError("MePropLSTM cannot back propagate a gradient through the final "
                               "cell state c_n (its kernels start BPTT from dc_T = 0); detach "
                               "c_n or use torch.nn.LSTM")
        s, lengths = ctx.settings, ctx.lengths
        T, B = ctx.cache[0][1].shape[0] - 1, lengths.shape[0]
        dtype = ctx.cache[0][1].dtype
        if d_out is None:
            d_out = np.zeros((T, B, s.h * s.num_directions), dtype=dtype)
        else:
            d_out = _numpy(d_out)
        d_hn = None if d_hn is None else _numpy(d_hn)
        dx, grads = _backward(d_out, d_hn, ctx, [_numpy(w) for w in saved[2:]])
        return (torch.from_numpy(dx) if ctx.needs_input_grad[0] else None, None, None, *grads)


class MePropLSTM(nn.LSTM):
    """``torch.nn.LSTM`` whose training-mode backward is meProp BPTT on CPU.

    At every step only k entries of the gate pre-activation gradient
    ``dL/da_t`` (4h) are kept: k per gate block (``scope="per_gate"``) or k
    of the whole vector (``scope="concat"``). Only those feed ``dh_{t-1}``,
    ``dx_t`` and the rows of the weight gradients; the bias gradients are
    the full ones. ``k=None`` (or k = h per gate, 4h concatenated) is exact
    dense BPTT.

    Parameters
    ----------
    input_size, hidden_size : int
        As for :class:`torch.nn.LSTM`.
    num_layers : int, default 1
        As for :class:`torch.nn.LSTM`.
    bias : bool, default True
        As for :class:`torch.nn.LSTM`.
    batch_first : bool, default True
        Input and output (B, T, features). Note: ``torch.nn.LSTM`` defaults
        to False; with False they are time-major (T, B, features), which
        the kernels use anyway (no transpose copy). Unbatched 2-D input
        (T, features) is taken as ``torch.nn.LSTM`` takes it.
    bidirectional : bool, default False
        As for :class:`torch.nn.LSTM`: a second LSTM runs backwards in time.
    k : int or None, default None
        Entries kept per step: ``1 <= k <= hidden_size`` per gate, or
        ``1 <= k <= 4 * hidden_size`` with ``scope="concat"``. None: dense.
    scope : {"per_gate", "concat"}, default "per_gate"
    selection : {"topk", "random"}, default "topk"
        ``"random"`` keeps k uniformly random entries (the meProp paper's
        baseline), drawn from a seed taken from torch's generator.
    sparse_grad : bool, default False
        With k set, hand the weight gradients to autograd as row-sparse
        COO tensors (the layout of ``nn.Embedding(sparse=True)``; only
        optimizers that take sparse gradients accept them) instead of
        dense tensors with zero rows.
    device, dtype : optional
        Factory arguments; dtype float32 or float64.

    Raises
    ------
    TypeError
        If `k` is not an integer or `dtype` is not float32/float64.
    ValueError
        If `k`, `scope` or `selection` is out of range.

    Notes
    -----
    ``forward(input, hx=None, *, lengths=None)``: `input` a tensor or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; `lengths` (B,) valid
    steps per example of a padded batch (outputs at padded steps are zero,
    ``h_n``/``c_n`` are the states at each example's length). Returns
    ``(output, (h_n, c_n))`` as ``torch.nn.LSTM`` does. The training path
    starts from the zero state (a given `hx` raises ValueError there), takes
    no gradient through ``c_n`` (a nonzero one raises RuntimeError in
    backward) and runs on CPU tensors of float32/float64 only (TypeError /
    ValueError otherwise). No double backward.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import MePropLSTM
    >>> _ = torch.manual_seed(0)
    >>> lstm = MePropLSTM(8, 16, k=2)
    >>> x = torch.randn(3, 5, 8, requires_grad=True)
    >>> out, (h_n, c_n) = lstm(x, lengths=[5, 3, 1])
    >>> out.shape, h_n.shape
    (torch.Size([3, 5, 16]), torch.Size([1, 3, 16]))
    >>> out.sum().backward()
    >>> int((lstm.weight_hh_l0.grad.abs().sum(1) > 0).sum()) <= 4 * 16
    True
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=True, *,
                 bidirectional=False, k=None, scope="per_gate", selection="topk",
                 sparse_grad=False, device=None, dtype=None):
        if dtype is not None and dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                         bidirectional=bidirectional, device=device, dtype=dtype)
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        if selection not in _SELECTIONS:
            raise ValueError(f"selection must be one of {tuple(_SELECTIONS)}, got {selection!r}")
        self.scope = scope
        self.selection = selection
        self.k = None if k is None else integer_k(
            k, hidden_size if scope == "per_gate" else 4 * hidden_size)
        self.sparse_grad = bool(sparse_grad)
        self._workspaces = {}
        self._workspace_lock = threading.Lock()

    @classmethod
    def from_lstm(cls, lstm, *, k=None, scope="per_gate", selection="topk", sparse_grad=False):
        """A MePropLSTM with the configuration and a copy of the weights of `lstm`.

        Parameters
        ----------
        lstm : torch.nn.LSTM
            Without dropout or projections; its ``batch_first`` is kept.
        k, scope, selection, sparse_grad
            As for :class:`MePropLSTM`.

        Returns
        -------
        MePropLSTM

        Raises
        ------
        TypeError
            If `lstm` is not a ``torch.nn.LSTM``.
        ValueError
            If it uses dropout or ``proj_size``.
        """
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"lstm must be a torch.nn.LSTM, got {type(lstm).__name__}")
        if lstm.dropout or lstm.proj_size:
            raise ValueError("MePropLSTM has no dropout between layers and no projections; got "
                             f"dropout={lstm.dropout}, proj_size={lstm.proj_size}")
        w = lstm.weight_ih_l0
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                  lstm.batch_first, bidirectional=lstm.bidirectional, k=k, scope=scope,
                  selection=selection, sparse_grad=sparse_grad, device=w.device, dtype=w.dtype)
        new.load_state_dict(lstm.state_dict())
        new.train(lstm.training)
        return new

    def _settings(self):
        if self.dropout or self.proj_size:
            raise ValueError("MePropLSTM has no dropout between layers and no projections")
        s = _Settings()
        s.h, s.num_layers, s.bias = self.hidden_size, self.num_layers, self.bias
        s.num_directions = 2 if self.bidirectional else 1
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")
        if self.selection not in _SELECTIONS:
            raise ValueError(f"selection must be one of {tuple(_SELECTIONS)}, "
                             f"got {self.selection!r}")
        s.per_gate = self.scope == "per_gate"
        k, n = self.k, (s.h if s.per_gate else 4 * s.h)
        if k is not None and not (type(k) is int and 1 <= k <= n):
            k = integer_k(k, n)  # k may have been set after construction
        s.k = k
        s.select = _SELECTIONS[self.selection]
        s.sparse_grad = bool(self.sparse_grad)
        s.workspaces, s.lock = self._workspaces, self._workspace_lock
        return s

    def _padded_input(self, input, lengths):
        """(x, lengths array or None) of a tensor or PackedSequence input."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("give lengths only with a padded tensor, not a PackedSequence")
            x, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            return x, lens.numpy()
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor or a PackedSequence, "
                            f"got {type(input).__name__}")
        if torch.is_tensor(lengths):
            lengths = lengths.detach().cpu().numpy()
        return input, lengths

    def forward(self, input, hx=None, *, lengths=None):
        """Run the LSTM; meProp kernels in training mode, ``torch.nn.LSTM`` otherwise.

        Parameters
        ----------
        input : Tensor or PackedSequence
            (B, T, input_size) with ``batch_first``, else (T, B, input_size);
            or (T, input_size) unbatched.
        hx : tuple of Tensor, optional
            Initial (h_0, c_0); eval mode / no-grad only.
        lengths : array_like or Tensor of int, shape (B,), optional
            Valid steps per example of a padded batch, each in [1, T].

        Returns
        -------
        output : Tensor or PackedSequence
        (h_n, c_n) : tuple of Tensor, shape (num_layers * directions, B, hidden_size)

        Raises
        ------
        TypeError
            If the input or a parameter is not float32/float64 or dtypes differ.
        ValueError
            If shapes or lengths are wrong, `hx` is given in training, or a
            tensor is not on the CPU.
        """
        if not (self.training and torch.is_grad_enabled()):
            return self._reference_forward(input, hx, lengths)
        x, lens = self._padded_input(input, lengths)
        if hx is not None:
            raise ValueError("hx: MePropLSTM trains from the zero initial state only; pass "
                             "hx=None (or run torch.nn.LSTM for a learned initial state)")
        settings = self._settings()
        weights = [getattr(self, name) for name in self._flat_weights_names]
        dtype = weights[0].dtype
        for name, w in zip(self._flat_weights_names, weights):
            _check_tensor(w, name)
            if w.dtype != dtype:
                raise TypeError(f"{name} has dtype {w.dtype} but weight_ih_l0 has {dtype}")
        _check_tensor(x, "input", dtype)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif x.dim() != 3:
            raise ValueError(f"input must be 3-D (batched) or 2-D (unbatched), got {x.dim()}-D")
        elif self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        lens = _check_batch(x.shape[2], self.input_size, B, T, lens, "input")
        out, h_n, c_n = _MePropLSTMFunction.apply(x, lens, settings, *weights)
        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        if isinstance(input, PackedSequence):
            out = self._repack(out, lens, input)
        return out, (h_n, c_n)

    def _repack(self, out, lens, packed):
        """Pack `out` with the batch sizes and sort order of the input `packed`."""
        if not self.batch_first:
            out = out.transpose(0, 1)
        lens = torch.from_numpy(lens)
        if packed.sorted_indices is not None:
            out, lens = out.index_select(0, packed.sorted_indices), lens[packed.sorted_indices]
        data = pack_padded_sequence(out, lens, batch_first=True, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices)

    def _reference_forward(self, input, hx, lengths):
        """``torch.nn.LSTM``'s forward, with `lengths` applied by packing."""
        if lengths is None:
            return super().forward(input, hx)
        x, lens = self._padded_input(input, lengths)
        if x.dim() != 3:
            raise ValueError("lengths needs a batched 3-D input")
        B, T = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        lens = torch.from_numpy(_check_lengths(lens, B, T))
        packed = pack_padded_sequence(x, lens, batch_first=self.batch_first, enforce_sorted=False)
        out, state = super().forward(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=T)
        return out, state

    def extra_repr(self):
        sparsity = "dense" if self.k is None else f"k={self.k}, scope={self.scope!r}, " \
            f"selection={self.selection!r}, sparse_grad={self.sparse_grad}"
        return f"{super().extra_repr()}, {sparsity}"
