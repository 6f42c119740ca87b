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
from .._simd import abs_ge_mask64, eq_mask32, gt_mask32, lowest_bit, popcount

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


#: Sets per gate block whose maxima bound the k-th largest entry in the
#: per-gate top-k (:func:`_gate_topk`), and the most candidates it ranks
#: (beyond, it falls back to ``topk_row``). 16 was slower at h=500, k=10
#: (a looser bound), 24 no faster. Fixed at 32: the rank counts compare all
#: of it at once (``gt_mask32``).
_LANES = 32


@njit(inline="always", **JIT_OPTIONS)
def _lane_maxima(a, nl, neg, lm):
    """lm[c] = max |a[j]| over the entries j = c (mod nl) (disjoint sets), c < nl; neg after.

    Row by row over a as (rows, nl): element-wise maxima, which vectorise
    (a float max reduction does not without fast-math's no-NaN flag). Four
    rows are reduced in registers before each update of `lm`, whose store
    and reload otherwise bound the loop, and rows are read through slices:
    with ``a[base + c]`` numba wraps negative indices, which LLVM turned
    into gathers. Together: 0.16 -> 0.05 us for a block of 500 float32.
    """
    n = a.shape[0]
    rows = n // nl
    for c in range(nl):
        lm[c] = abs(a[c])
    r = 1
    while r + 4 <= rows:
        base = r * nl
        a0 = a[base:base + nl]
        a1 = a[base + nl:base + 2 * nl]
        a2 = a[base + 2 * nl:base + 3 * nl]
        a3 = a[base + 3 * nl:base + 4 * nl]
        for c in range(nl):
            x0 = abs(a0[c])
            x1 = abs(a1[c])
            x2 = abs(a2[c])
            x3 = abs(a3[c])
            x01 = x0 if x0 > x1 else x1
            x23 = x2 if x2 > x3 else x3
            x = x01 if x01 > x23 else x23
            y = lm[c]
            lm[c] = x if x > y else y
        r += 4
    while r < rows:
        a0 = a[r * nl:(r + 1) * nl]
        for c in range(nl):
            x = abs(a0[c])
            y = lm[c]
            lm[c] = x if x > y else y
        r += 1
    a0 = a[rows * nl:]
    for c in range(n - rows * nl):
        x = abs(a0[c])
        y = lm[c]
        lm[c] = x if x > y else y
    for c in range(nl, lm.shape[0]):
        lm[c] = neg


@njit(inline="always", **JIT_OPTIONS)
def _kth_largest(v, n, k):
    """The k-th largest of v[:n]; v holds _LANES (32) entries, those from n on all smaller.

    Each entry's count of greater ones is one vector compare to a bit mask
    and a popcount (:mod:`meprop_numba._simd`).
    """
    thr = v[0]
    for i in range(1, n):
        x = v[i]
        thr = x if x > thr else thr
    for i in range(n):
        x = v[i]
        thr = x if (popcount(gt_mask32(v, 0, x)) < k) & (x < thr) else thr
    return thr


@njit(inline="always", **JIT_OPTIONS)
def _take_bits(bits, base, cand, count):
    """Append base + the set bit positions of `bits`, ascending, to cand[count:]; -1 if they do not fit."""
    while bits:
        if count == cand.shape[0]:
            return -1
        cand[count] = base + lowest_bit(bits)
        count += 1
        bits &= bits - np.uint64(1)
    return count


@njit(inline="always", **JIT_OPTIONS)
def _collect(a, thr, cand):
    """Indices of the entries with ``|a| >= thr``, ascending, into `cand`; -1 if more than fit.

    64 entries at a time as one bit mask; the last partial group is read as
    the final 64 entries, shifted (a short `a` falls back to a scalar loop).
    """
    n = a.shape[0]
    count = 0
    for w in range(n >> 6):
        count = _take_bits(abs_ge_mask64(a, w * 64, thr), w * 64, cand, count)
        if count < 0:
            return -1
    tail = n & 63
    if tail:
        if n >= 64:
            bits = abs_ge_mask64(a, n - 64, thr) >> np.uint64(64 - tail)
        else:
            bits = np.uint64(0)
            for c in range(n):
                bits |= np.uint64(abs(a[c]) >= thr) << np.uint64(c)
        count = _take_bits(bits, n - tail, cand, count)
    return count


@njit(inline="always", **JIT_OPTIONS)
def _place(a, k, count, neg, cand, cvals, sel_out, t, b, pos, off):
    """sel_out[t, b, pos + r] = cand[i] + off for the candidates of rank r < k.

    Rank: greater |a| first, equal ones by position (ties to the lower
    index): the greater candidates plus the equal ones before it, each a
    popcount of a vector compare over the _LANES (32) entries of `cvals`.
    """
    for i in range(count):
        cvals[i] = abs(a[cand[i]])
    for i in range(count, cvals.shape[0]):
        cvals[i] = neg
    for i in range(count):
        x = cvals[i]
        before = (np.uint64(1) << np.uint64(i)) - np.uint64(1)
        r = popcount(gt_mask32(cvals, 0, x)) + popcount(eq_mask32(cvals, 0, x) & before)
        if r < k:
            sel_out[t, b, pos + r] = cand[i] + off


@njit(**JIT_OPTIONS)
def _gate_topk(da, off, n, k, nl, neg, sel_out, t, b, pos, bm, cand, cvals):
    """Top-k of ``|da[off:off + n]|`` (one gate block), plus `off`, into ``sel_out[t, b, pos:pos + k]``.

    Selects exactly what :func:`meprop_numba._kernels.topk_row` selects, in
    the same order, but faster for a gate block of a few hundred entries:

    1. the maxima of the ``nl`` disjoint sets of entries equal mod ``nl``
       (:func:`_lane_maxima`); the k-th largest of them (:func:`_kth_largest`)
       is at most the k-th largest entry, as k distinct entries reach it;
    2. the entries reaching it (about 12 of 500 at k=10) are collected in
       index order through 64-bit masks of a vector compare
       (:func:`_collect`);
    3. each is placed by its rank: greater magnitude first, equal ones by
       position, so ties go to the lower index (:func:`_place`).

    Returns False, with nothing written, when more than ``_LANES`` entries
    reach the bound (many ties) or the bound is zero in a block that is not
    all zero; the caller then uses ``topk_row``. Requires ``2k <= nl <=
    _LANES`` and a finite gate block: magnitudes of finite floats order as
    their sign-cleared bits, which ``topk_row`` compares. `bm` and `cvals`
    are scratch of _LANES entries of da's dtype, `cand` of _LANES int64.
    """
    a = da[off:off + n]
    _lane_maxima(a, nl, neg, bm)
    thr = _kth_largest(bm, nl, k)
    if thr == 0:
        # Too few non-zero entries for the bound to help. An all-zero block
        # (the forget gate at t = 0, where c_{-1} = 0) keeps its first k
        # entries, as topk_row would; otherwise the caller falls back.
        for i in range(nl):
            if bm[i] != 0:
                return False
        for p in range(k):
            sel_out[t, b, pos + p] = off + p
        return True
    count = _collect(a, thr, cand)
    if count < 0:
        return False
    _place(a, k, count, neg, cand, cvals, sel_out, t, b, pos, off)
    return True


@njit(**JIT_OPTIONS)
def meprop_bptt(dH, W_h, lengths, C, TC, G, k, per_gate, select, da_bits, mask):
    """meProp back propagation through time (the recurrence).

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
        ``da_bits.view(float)``, so the fallback top-k runs on its magnitude
        bits (:func:`meprop_numba._kernels.topk_row`).

    Returns
    -------
    db : (4h,) the bias gradient.
    sel_out : (T, B, K) int64, the kept entries (-1 at padded steps), K = 4k
        per gate or k.
    val_out : (T, B, K), dL/da_t at the kept entries (0 at padded steps).

    The outputs are allocated here rather than by the caller: at one
    sentence per minibatch the interpreter's share of the layer's backward
    is otherwise about a tenth. The per-gate top-k goes through :func:`_gate_topk` when ``2k <=
    min(h, _LANES)`` and the step's gate gradient is finite, and through
    ``topk_row`` otherwise (or when _gate_topk declines); both select the
    same entries in the same order. The cell loop fuses dh, the gate
    gradient, the bias gradient and dc and indexes the full arrays.
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
    neg = -one
    cand_vals = np.empty(four_h, dtype=da_bits.dtype)
    cand_idx = np.empty(four_h, dtype=np.int64)
    ranks = np.empty(four_h, dtype=np.int32)
    maxima = np.empty(k, dtype=da_bits.dtype)
    perm = np.empty(four_h, dtype=np.int64)
    # _gate_topk bounds the k-th largest entry of a gate block by its maxima
    # over nl disjoint sets (entries equal mod nl).
    nl = min(h, _LANES)
    fast = per_gate and select == SELECT_TOPK and 2 * k <= nl
    bm = np.empty(_LANES, dtype=dH.dtype)
    cand = np.empty(_LANES, dtype=np.int64)
    cvals = np.empty(_LANES, dtype=dH.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if t >= lengths[b]:
                for p in range(K):
                    sel_out[t, b, p] = -1
                    val_out[t, b, p] = 0
                continue
            # Gate gradient of the cell, bias gradient and dL/dc_{t-1}; chk turns
            # non-finite with any non-finite entry (then the exact fallback top-k).
            chk = one - one
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
                chk += a0 + a1 + a2 + a3
                dc_next[b, j] = dc * gf
            if per_gate:
                finite = chk - chk == 0
                for q in range(4):
                    if select == SELECT_TOPK:
                        if fast and finite and _gate_topk(
                                da, q * h, h, k, nl, neg, sel_out, t, b, q * k,
                                bm, cand, cvals):
                            continue
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
            if t > 0:  # dh_{-1} is not needed
                _gather_rows_product(W_h, sel_out, val_out, t, b, K, dh_next)
    return db, sel_out, val_out


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
