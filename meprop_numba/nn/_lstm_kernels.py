"""Compiled time loops of the LSTM: forward, dense BPTT and meProp BPTT.

Layout: time-major, C-contiguous. ``xw`` (T, B, 4h) holds the input
products ``x_t W_x^T + b`` computed for all steps at once by one BLAS call;
the loops here add the recurrent product and run the cell. Gate order in the
4h axis is input, forget, cell candidate, output (i, f, g, o), as in
``torch.nn.LSTM``. Example ``b`` is valid at step ``t`` when
``t < lengths[b]``; padded steps carry the state unchanged and take no
gradient.

Every function trusts its arguments; :mod:`meprop_numba.nn.lstm` checks them.
"""
import numpy as np
from numba import njit

from .._config import JIT_OPTIONS
from .._kernels import topk_row

#: Selection rules of :func:`meprop_bptt`.
SELECT_TOPK = 0
SELECT_RANDOM = 1


@njit(**JIT_OPTIONS)
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(**JIT_OPTIONS)
def lstm_forward(xw, W_h, lengths, H, C, TC, G):
    """Run the cell over all steps.

    Parameters
    ----------
    xw : (T, B, 4h) input products plus bias.
    W_h : (4h, h) recurrent weights.
    lengths : (B,) int64 valid steps per example.
    H, C : (T + 1, B, h) outputs; row 0 is the (zero) initial state.
    TC : (T, B, h) output: tanh(c_t), kept for BPTT.
    G : (T, B, 4h) output: the gate activations (i, f, g, o) kept for BPTT.
    """
    T, B, four_h = xw.shape
    h = four_h // 4
    H[0, :, :] = 0
    C[0, :, :] = 0
    for t in range(T):
        a = np.dot(H[t], W_h.T)
        for b in range(B):
            if t >= lengths[b]:
                H[t + 1, b, :] = H[t, b, :]
                C[t + 1, b, :] = C[t, b, :]
                TC[t, b, :] = 0
                G[t, b, :] = 0
                continue
            for j in range(h):
                gi = _sigmoid(a[b, j] + xw[t, b, j])
                gf = _sigmoid(a[b, h + j] + xw[t, b, h + j])
                gg = np.tanh(a[b, 2 * h + j] + xw[t, b, 2 * h + j])
                go = _sigmoid(a[b, 3 * h + j] + xw[t, b, 3 * h + j])
                c = gf * C[t, b, j] + gi * gg
                tc = np.tanh(c)
                C[t + 1, b, j] = c
                TC[t, b, j] = tc
                H[t + 1, b, j] = go * tc
                G[t, b, j] = gi
                G[t, b, h + j] = gf
                G[t, b, 2 * h + j] = gg
                G[t, b, 3 * h + j] = go


@njit(**JIT_OPTIONS)
def _cell_backward(dh, dc_in, G, C, TC, t, b, h, da, dc_out):
    """Gate pre-activation gradient da (4h) of one cell and dL/dc_{t-1}."""
    one = np.ones(1, dtype=da.dtype)[0]  # a literal 1 would widen float32 maths to float64
    for j in range(h):
        gi = G[t, b, j]
        gf = G[t, b, h + j]
        gg = G[t, b, 2 * h + j]
        go = G[t, b, 3 * h + j]
        tc = TC[t, b, j]
        dhj = dh[j]
        dc = dc_in[j] + dhj * go * (one - tc * tc)
        da[j] = dc * gg * gi * (one - gi)
        da[h + j] = dc * C[t, b, j] * gf * (one - gf)
        da[2 * h + j] = dc * gi * (one - gg * gg)
        da[3 * h + j] = dhj * tc * go * (one - go)
        dc_out[j] = dc * gf


@njit(**JIT_OPTIONS)
def dense_bptt(dH, W_h, lengths, C, TC, G, dA):
    """Dense back propagation through time: fill dA (T, B, 4h) = dL/da_t.

    The weight and input gradients are then three large products taken by
    the caller (dW_x = dA^T X, dW_h = dA^T H_prev, dX = dA W_x).
    """
    T, B, h = dH.shape
    dh_next = np.zeros((B, h), dtype=dH.dtype)
    dc_next = np.zeros((B, h), dtype=dH.dtype)
    dh = np.empty(h, dtype=dH.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if t >= lengths[b]:
                dA[t, b, :] = 0
                continue
            for j in range(h):
                dh[j] = dH[t, b, j] + dh_next[b, j]
            _cell_backward(dh, dc_next[b], G, C, TC, t, b, h, dA[t, b], dc_next[b])
        if t > 0:
            dh_next[:, :] = np.dot(dA[t], W_h)


@njit(**JIT_OPTIONS)
def _random_select(n, k, offset, out, pos, perm):
    """k distinct indices drawn uniformly from [0, n), plus `offset`, into out[pos:pos + k]."""
    for j in range(n):
        perm[j] = j
    for j in range(k):
        r = j + np.random.randint(0, n - j)
        perm[j], perm[r] = perm[r], perm[j]
        out[pos + j] = perm[j] + offset


@njit(**JIT_OPTIONS)
def _gather_rows_product(W, rows, coef, out):
    """out = sum_p coef[p] * W[rows[p]].

    Four rows per pass over `out`, so `out` is loaded and stored a quarter
    as often as with one row at a time (measured about 1.5x faster).
    """
    K = rows.shape[0]
    n = W.shape[1]
    out[:] = 0
    p = 0
    while p + 4 <= K:
        w0, w1, w2, w3 = W[rows[p]], W[rows[p + 1]], W[rows[p + 2]], W[rows[p + 3]]
        c0, c1, c2, c3 = coef[p], coef[p + 1], coef[p + 2], coef[p + 3]
        for j in range(n):
            out[j] += c0 * w0[j] + c1 * w1[j] + c2 * w2[j] + c3 * w3[j]
        p += 4
    while p < K:
        w0 = W[rows[p]]
        c0 = coef[p]
        for j in range(n):
            out[j] += c0 * w0[j]
        p += 1


@njit(**JIT_OPTIONS)
def meprop_bptt(dH, W_h, lengths, C, TC, G, k, per_gate, select, db, sel_out, val_out, da_bits, mask):
    """meProp back propagation through time (the recurrence).

    At every valid (t, b) the full gate gradient da (4h) is formed from the
    carried dh, dc; ``db`` accumulates it densely. Then only k entries per
    gate block (``per_gate``) or k of the 4h entries are kept; these alone
    feed dh_{t-1}. The kept entries and their values are recorded for
    :func:`meprop_weight_grads`, which forms dx_t and the weight gradients
    (they are not needed by the recurrence).

    Parameters
    ----------
    dH : (T, B, h) gradient arriving at the outputs h_t.
    C : (T + 1, B, h) cell states;
    TC : (T, B, h) tanh of the new cell state; G : (T, B, 4h) gate activations.
    W_h : (4h, h).
    k : entries kept per gate (per_gate) or in total.
    select : SELECT_TOPK or SELECT_RANDOM.
    db : (4h,) accumulator.
    sel_out : (T, B, K) int64 output, the kept entries (-1 at padded steps).
    val_out : (T, B, K) output, dL/da_t at the kept entries.
    da_bits : (4h,) scratch of the integer type matching dH's float type,
        and `mask` the sign-clearing mask: the gate gradient is formed in
        ``da_bits.view(float)`` by the caller's choice of buffer, so top-k
        runs on its magnitude bits (:func:`meprop_numba._kernels.topk_row`).
    """
    T, B, h = dH.shape
    four_h = 4 * h
    K = 4 * k if per_gate else k
    dh_next = np.zeros((B, h), dtype=dH.dtype)
    dc_next = np.zeros((B, h), dtype=dH.dtype)
    dh = np.empty(h, dtype=dH.dtype)
    da = da_bits.view(dH.dtype)
    cand_vals = np.empty(four_h, dtype=da_bits.dtype)
    cand_idx = np.empty(four_h, dtype=np.int64)
    ranks = np.empty(four_h, dtype=np.int32)
    maxima = np.empty(k, dtype=da_bits.dtype)
    perm = np.empty(four_h, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            sel = sel_out[t, b]
            if t >= lengths[b]:
                sel[:] = -1
                val_out[t, b, :] = 0
                continue
            for j in range(h):
                dh[j] = dH[t, b, j] + dh_next[b, j]
            _cell_backward(dh, dc_next[b], G, C, TC, t, b, h, da, dc_next[b])
            for j in range(four_h):
                db[j] += da[j]
            if per_gate:
                for q in range(4):
                    if select == SELECT_TOPK:
                        out = sel[q * k:(q + 1) * k]
                        topk_row(da_bits[q * h:(q + 1) * h], k, mask, out,
                                 cand_vals, cand_idx, ranks, maxima)
                        for p in range(k):
                            out[p] += q * h
                    else:
                        _random_select(h, k, q * h, sel, q * k, perm)
            elif select == SELECT_TOPK:
                topk_row(da_bits, k, mask, sel, cand_vals, cand_idx, ranks, maxima)
            else:
                _random_select(four_h, k, 0, sel, 0, perm)
            for p in range(K):
                val_out[t, b, p] = da[sel[p]]
            _gather_rows_product(W_h, sel, val_out[t, b], dh_next[b])


@njit(**JIT_OPTIONS)
def meprop_weight_grads(X, H, W_x, sel_out, val_out, dX, rows_out, out_x, out_h):
    """dx_t and the row-sparse dW_x, dW_h from the kept entries of :func:`meprop_bptt`.

    Adds ``da[r] * W_x[r]`` into ``dX[t, b]`` (zeroed by the caller) for every
    kept (t, b, r); writes the sorted rows any step kept into
    ``rows_out[:n]`` and their gradient rows, ``sum over (t, b) keeping r of
    da[r] * x_t`` (and ``* h_{t-1}``), into ``out_x[:n]`` and ``out_h[:n]``;
    returns n.

    The kept entries are first grouped by row (a counting sort), so each
    output row is built in one pass while it sits in cache and written once;
    the output needs no zero fill.
    """
    T, B, K = sel_out.shape
    n_rows = out_x.shape[0]
    d = X.shape[2]
    h = H.shape[2]
    start = np.zeros(n_rows + 1, dtype=np.int64)
    for t in range(T):
        for b in range(B):
            for p in range(K):
                r = sel_out[t, b, p]
                if r >= 0:
                    start[r + 1] += 1
    n = 0
    for r in range(n_rows):
        if start[r + 1] > 0:
            rows_out[n] = r
            n += 1
        start[r + 1] += start[r]
    fill = start[:-1].copy()
    step = np.empty(start[n_rows], dtype=np.int64)
    coef = np.empty(start[n_rows], dtype=val_out.dtype)
    for t in range(T):
        for b in range(B):
            for p in range(K):
                r = sel_out[t, b, p]
                if r >= 0:
                    step[fill[r]] = t * B + b
                    coef[fill[r]] = val_out[t, b, p]
                    fill[r] += 1
    Xf = X.reshape(T * B, d)
    Hf = H[:T].reshape(T * B, h)
    dXf = dX.reshape(T * B, d)
    for i in range(n):
        r = rows_out[i]
        vx = out_x[i]
        vh = out_h[i]
        w_x = W_x[r]
        q = start[r]
        v = coef[q]
        x = Xf[step[q]]
        hp = Hf[step[q]]
        dx = dXf[step[q]]
        for j in range(d):
            vx[j] = v * x[j]
            dx[j] += v * w_x[j]
        for j in range(h):
            vh[j] = v * hp[j]
        for q in range(start[r] + 1, start[r + 1]):
            v = coef[q]
            x = Xf[step[q]]
            hp = Hf[step[q]]
            dx = dXf[step[q]]
            for j in range(d):
                vx[j] += v * x[j]
                dx[j] += v * w_x[j]
            for j in range(h):
                vh[j] += v * hp[j]
    return n


@njit(**JIT_OPTIONS)
def seed_random(seed):
    """Seed numba's own generator (used by the random-k selection)."""
    np.random.seed(seed)
