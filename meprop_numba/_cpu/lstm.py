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
from .topk import topk_row
from .simd import lowest_bit

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


@njit(inline="always", **JIT_OPTIONS)
def _gather_rows_product(W, rows, coef, t, b, K, out):
    """out[b] = sum_p coef[t, b, p] * W[rows[t, b, p]] for p < K.

    Four rows per pass over ``out[b]``, so it is loaded and stored a quarter
    as often as with one row at a time (measured about 1.5x faster).
    """
    n = W.shape[1]
    for j in range(n):
        out[b, j] = 0
    p = 0
    while p + 4 <= K:
        r0, r1, r2, r3 = rows[t, b, p], rows[t, b, p + 1], rows[t, b, p + 2], rows[t, b, p + 3]
        c0, c1, c2, c3 = coef[t, b, p], coef[t, b, p + 1], coef[t, b, p + 2], coef[t, b, p + 3]
        for j in range(n):
            out[b, j] += c0 * W[r0, j] + c1 * W[r1, j] + c2 * W[r2, j] + c3 * W[r3, j]
        p += 4
    while p < K:
        r0 = rows[t, b, p]
        c0 = coef[t, b, p]
        for j in range(n):
            out[b, j] += c0 * W[r0, j]
        p += 1


@njit(**JIT_OPTIONS)
def meprop_bptt(dH, W_h, lengths, C, TC, G, k, per_gate, select, da_bits, mask):
    """meProp back propagation through time (the recurrence).

    :func:`meprop_bptt_feedback` without a memory; returns its first three
    outputs.
    """
    db, sel_out, val_out, _ = meprop_bptt_feedback(
        dH, W_h, lengths, C, TC, G, k, per_gate, select, da_bits, mask,
        np.zeros(0, dtype=dH.dtype), dH.dtype.type(0))
    return db, sel_out, val_out


@njit(**JIT_OPTIONS)
def meprop_bptt_feedback(dH, W_h, lengths, C, TC, G, k, per_gate, select, da_bits, mask,
                         memory, beta):
    """meProp back propagation through time (the recurrence), with error feedback.

    At every valid (t, b) the full gate gradient da (4h) is formed from the
    carried dh, dc; the bias gradient accumulates it densely. Then only k entries per
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
    da_bits : (4h,) scratch of the integer type matching dH's float type,
        and `mask` the sign-clearing mask: the gate gradient is formed in
        ``da_bits.view(float)``, so the top-k runs on its magnitude bits
        (:func:`meprop_numba._cpu.topk.topk_row`).
    memory : (4h,) error-feedback memory, or (0,) for none; `beta` times it
        is added to the gate gradient at every valid step before the
        selection (after the bias gradient has taken the gradient as given).

    Returns
    -------
    db : (4h,) the bias gradient.
    sel_out : (T, B, K) int64, the kept entries (-1 at padded steps), K = 4k
        per gate or k.
    val_out : (T, B, K), dL/da_t at the kept entries (0 at padded steps),
        the memory included.
    dropped : (4h,) the sum over the valid steps of the entries not kept
        (memory included), zeros without a memory.

    The outputs are allocated here rather than by the caller: at one
    sentence per minibatch the interpreter's share of the layer's backward
    is otherwise about a tenth. The top-k of each gate block (or of the 4h
    entries) is :func:`meprop_numba._cpu.topk.topk_row` on its magnitude
    bits. The cell loop fuses dh, the gate gradient, the bias gradient and
    dc and indexes the full arrays.
    """
    T, B, h = dH.shape
    four_h = 4 * h
    K = 4 * k if per_gate else k
    db = np.zeros(four_h, dtype=dH.dtype)
    sel_out = np.empty((T, B, K), dtype=np.int64)
    val_out = np.empty((T, B, K), dtype=dH.dtype)
    dh_next = np.zeros((B, h), dtype=dH.dtype)
    dc_next = np.zeros((B, h), dtype=dH.dtype)
    da = da_bits.view(dH.dtype)
    one = np.ones(1, dtype=dH.dtype)[0]  # a literal 1 would widen float32 maths to float64
    cand_vals = np.empty(four_h, dtype=da_bits.dtype)
    cand_idx = np.empty(four_h, dtype=np.int64)
    ranks = np.empty(four_h, dtype=np.int32)
    maxima = np.empty(k, dtype=da_bits.dtype)
    perm = np.empty(four_h, dtype=np.int64)
    feedback = memory.shape[0] == four_h
    dropped = np.zeros(four_h, dtype=dH.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if t >= lengths[b]:
                for p in range(K):
                    sel_out[t, b, p] = -1
                    val_out[t, b, p] = 0
                continue
            # Gate gradient of the cell, bias gradient and dL/dc_{t-1}.
            for j in range(h):
                gi = G[t, b, j]
                gf = G[t, b, h + j]
                gg = G[t, b, 2 * h + j]
                go = G[t, b, 3 * h + j]
                tc = TC[t, b, j]
                dhj = dH[t, b, j] + dh_next[b, j]
                dc = dc_next[b, j] + dhj * go * (one - tc * tc)
                a0 = dc * gg * gi * (one - gi)
                a1 = dc * C[t, b, j] * gf * (one - gf)
                a2 = dc * gi * (one - gg * gg)
                a3 = dhj * tc * go * (one - go)
                da[j] = a0
                da[h + j] = a1
                da[2 * h + j] = a2
                da[3 * h + j] = a3
                db[j] += a0
                db[h + j] += a1
                db[2 * h + j] += a2
                db[3 * h + j] += a3
                dc_next[b, j] = dc * gf
            if feedback:
                for j in range(four_h):
                    da[j] += beta * memory[j]
            if per_gate:
                for q in range(4):
                    if select == SELECT_TOPK:
                        out = sel_out[t, b, q * k:(q + 1) * k]
                        topk_row(da_bits[q * h:(q + 1) * h], k, mask, out,
                                 cand_vals, cand_idx, ranks, maxima)
                        for p in range(k):
                            out[p] += q * h
                    else:
                        _random_select(h, k, q * h, sel_out[t, b], q * k, perm)
            elif select == SELECT_TOPK:
                topk_row(da_bits, k, mask, sel_out[t, b], cand_vals, cand_idx, ranks, maxima)
            else:
                _random_select(four_h, k, 0, sel_out[t, b], 0, perm)
            for p in range(K):
                val_out[t, b, p] = da[sel_out[t, b, p]]
            if feedback:  # da is free now (val_out holds the kept values)
                for p in range(K):
                    da[sel_out[t, b, p]] = 0
                for j in range(four_h):
                    dropped[j] += da[j]
            if t > 0:  # dh_{-1} is not needed
                _gather_rows_product(W_h, sel_out, val_out, t, b, K, dh_next)
    return db, sel_out, val_out, dropped


@njit(**JIT_OPTIONS)
def _rows_combo(out, i, M, s0, s1, s2, s3, c0, c1, c2, c3, g, init):
    """out[i] = (or += unless `init`) the sum of the first g of ``c_p * M[s_p]`` (g <= 4).

    Up to four source rows per pass, so the output row is loaded and stored
    once per four terms instead of once per term. (Inlined at its three call
    sites it was about 5% faster but compiled 1.6 s slower per dtype.)
    """
    n = M.shape[1]
    if g == 4:
        if init:
            for j in range(n):
                out[i, j] = c0 * M[s0, j] + c1 * M[s1, j] + c2 * M[s2, j] + c3 * M[s3, j]
        else:
            for j in range(n):
                out[i, j] += c0 * M[s0, j] + c1 * M[s1, j] + c2 * M[s2, j] + c3 * M[s3, j]
    elif g == 3:
        if init:
            for j in range(n):
                out[i, j] = c0 * M[s0, j] + c1 * M[s1, j] + c2 * M[s2, j]
        else:
            for j in range(n):
                out[i, j] += c0 * M[s0, j] + c1 * M[s1, j] + c2 * M[s2, j]
    elif g == 2:
        if init:
            for j in range(n):
                out[i, j] = c0 * M[s0, j] + c1 * M[s1, j]
        else:
            for j in range(n):
                out[i, j] += c0 * M[s0, j] + c1 * M[s1, j]
    elif init:
        for j in range(n):
            out[i, j] = c0 * M[s0, j]
    else:
        for j in range(n):
            out[i, j] += c0 * M[s0, j]


@njit(**JIT_OPTIONS)
def meprop_weight_grads(X, H, W_x, sel_out, val_out, out_x, out_h):
    """dx_t and the row-sparse dW_x, dW_h from the kept entries of :func:`meprop_bptt`.

    Returns ``dX`` (T, B, d) with ``dX[t, b] = sum over the kept (t, b, r)
    of da[r] * W_x[r]`` (zero at padded steps, marked -1) and two copies of
    the n sorted rows that any step kept (one for each gradient); their
    gradient rows, ``sum over (t, b) keeping r of da[r] * x_t`` (and ``*
    h_{t-1}``), go to ``out_x[:n]`` and ``out_h[:n]``.

    The kept entries are first grouped by row (a counting sort), so each
    output row is built while it sits in cache and written once; the output
    needs no zero fill. Both the gradient rows and dx_t take up to four
    terms per pass over their output row (:func:`_rows_combo`); dx_t is
    formed step by step from the step's kept rows of W_x (measured 10%
    faster than adding each kept entry into its step's dx_t while the
    gradient row is built).
    """
    T, B, K = sel_out.shape
    n_rows = out_x.shape[0]
    d = X.shape[2]
    h = H.shape[2]
    dX = np.empty((T, B, d), dtype=X.dtype)
    rows_out = np.empty(n_rows, dtype=np.int64)
    # Kept entries per row and a bit set of the rows kept at all: the sorted
    # rows then come from a scan of n_rows / 64 words (not of n_rows).
    count = np.zeros(n_rows, dtype=np.int64)
    words = np.zeros((n_rows + 63) >> 6, dtype=np.uint64)
    for t in range(T):
        for b in range(B):
            for p in range(K):
                r = sel_out[t, b, p]
                if r >= 0:
                    count[r] += 1
                    words[r >> 6] |= np.uint64(1) << np.uint64(r & 63)
    offsets = np.empty(n_rows + 1, dtype=np.int64)
    fill = np.empty(n_rows, dtype=np.int64)
    n = 0
    total = 0
    for w in range(words.shape[0]):
        bits = words[w]
        while bits:
            r = w * 64 + lowest_bit(bits)
            rows_out[n] = r
            offsets[n] = total
            fill[r] = total
            total += count[r]
            n += 1
            bits &= bits - np.uint64(1)
    offsets[n] = total
    step = np.empty(total, dtype=np.int64)
    coef = np.empty(total, dtype=val_out.dtype)
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
        q = offsets[i]
        end = offsets[i + 1]
        init = True
        while q < end:
            g = min(4, end - q)
            s0, c0 = step[q], coef[q]
            s1, c1 = (step[q + 1], coef[q + 1]) if g > 1 else (s0, c0)
            s2, c2 = (step[q + 2], coef[q + 2]) if g > 2 else (s0, c0)
            s3, c3 = (step[q + 3], coef[q + 3]) if g > 3 else (s0, c0)
            _rows_combo(out_x, i, Xf, s0, s1, s2, s3, c0, c1, c2, c3, g, init)
            _rows_combo(out_h, i, Hf, s0, s1, s2, s3, c0, c1, c2, c3, g, init)
            init = False
            q += g
    # dx_t: the kept rows of W_x of each step, four per pass over dx_t.
    for t in range(T):
        for b in range(B):
            if sel_out[t, b, 0] < 0:
                dX[t, b, :] = 0
                continue
            s = t * B + b
            p = 0
            while p < K:
                g = min(4, K - p)
                r0, c0 = sel_out[t, b, p], val_out[t, b, p]
                r1, c1 = (sel_out[t, b, p + 1], val_out[t, b, p + 1]) if g > 1 else (r0, c0)
                r2, c2 = (sel_out[t, b, p + 2], val_out[t, b, p + 2]) if g > 2 else (r0, c0)
                r3, c3 = (sel_out[t, b, p + 3], val_out[t, b, p + 3]) if g > 3 else (r0, c0)
                _rows_combo(dXf, s, W_x, r0, r1, r2, r3, c0, c1, c2, c3, g, p == 0)
                p += g
    return dX, rows_out[:n], rows_out[:n].copy()


@njit(**JIT_OPTIONS)
def seed_random(seed):
    """Seed numba's own generator (used by the random-k selection)."""
    np.random.seed(seed)
