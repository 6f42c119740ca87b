"""Compiled CPU kernels of the top-k selection (GPU twin: :mod:`meprop_numba._cuda.topk`).

Every function here trusts its arguments (C-contiguous arrays of one float
dtype, valid k); the public wrappers in :mod:`meprop_numba.topk` and
:mod:`meprop_numba.backward` check them first.  Each kernel comes as a
serial version and, where large inputs pay for the thread pool, a
``_parallel`` twin with the same arithmetic.
"""
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT_OPTIONS
from .simd import (int_eq_mask32, int_eq_mask64, int_gt_mask32, int_gt_mask64, lowest_bit,
                   masked_ge_mask64, popcount)

# --------------------------------------------------------------------------- top-k
#: Candidate counts up to this are placed by counting ranks (O(c^2) but
#: branch-free and vectorised); above it a radix sort of them is cheaper.
RANK_MAX_CANDIDATES = 256
#: Most lanes whose maxima bound the k-th largest entry in :func:`topk_row`.
LANES_MAX = 1024


def magnitude_bits(a):
    """View a finite float array as integers that order like its magnitudes.

    For IEEE floats, clearing the sign bit of the bit pattern gives an
    integer that increases with |x|, so selection can run on integer
    compares (vectorisable, no NaN semantics).  Returns ``(bits, mask)``:
    the integer view and the mask that clears the sign bit.
    """
    if a.dtype == np.float32:
        return a.view(np.int32), np.int32(0x7FFFFFFF)
    return a.view(np.int64), np.int64(0x7FFFFFFFFFFFFFFF)


@njit(**JIT_OPTIONS)
def _min_chunk_max(vals, mask, count, k, maxima):
    """Smallest of the maxima of k disjoint sets of entries of ``vals[:count] & mask``.

    Set c holds entries c, c + k, c + 2k, ... of the first ``k * (count // k)``
    (strided so that the maxima update as one vector of k lanes).  Each
    set's maximum is a distinct entry, so the result is a lower bound on the
    k-th largest entry.  Requires ``count >= k``; `maxima` is scratch of k.
    """
    for c in range(k):
        maxima[c] = vals[c] & mask
    for r in range(1, count // k):
        # A slice, not vals[r * k + c]: numba wraps negative indices, which
        # LLVM turned into gathers (1.05-1.25x slower top-k).
        seg = vals[r * k:(r + 1) * k]
        for c in range(k):
            maxima[c] = max(maxima[c], seg[c] & mask)
    thr = maxima[0]
    for c in range(1, k):
        thr = min(thr, maxima[c])
    return thr


@intrinsic
def _borrowed(typingctx, a):
    """`a` without its reference count: the same view, with a null meminfo.

    Reference counting an array costs two atomic operations, and numba
    keeps them for every array argument of a function as large as
    :func:`_topk_row` (~0.1 us a row of the top-k, more than a third of
    it).  Only for arrays that something else keeps alive while the view is
    used: a function's arguments, during the call.  Never to be returned or
    stored.
    """
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return a(a), codegen


@njit(**JIT_OPTIONS)
def _lane_maxima(row, mask, lanes, lm):
    """lm[c] = the largest ``row[j] & mask`` over the entries j = c (mod lanes), c < lanes.

    Requires ``row.shape[0] >= lanes``.  The row is read as rows of `lanes`
    through slices (see :func:`_min_chunk_max`), four at a time reduced in
    registers before `lm` is updated, the last partial row into the first
    lanes.
    """
    n = row.shape[0]
    rows = n // lanes
    for c in range(lanes):
        lm[c] = row[c] & mask
    r = 1
    while r + 4 <= rows:
        a0 = row[r * lanes:(r + 1) * lanes]
        a1 = row[(r + 1) * lanes:(r + 2) * lanes]
        a2 = row[(r + 2) * lanes:(r + 3) * lanes]
        a3 = row[(r + 3) * lanes:(r + 4) * lanes]
        for c in range(lanes):
            x = max(max(a0[c] & mask, a1[c] & mask), max(a2[c] & mask, a3[c] & mask))
            lm[c] = max(lm[c], x)
        r += 4
    while r < rows:
        seg = row[r * lanes:(r + 1) * lanes]
        for c in range(lanes):
            lm[c] = max(lm[c], seg[c] & mask)
        r += 1
    tail = row[rows * lanes:]
    for c in range(n - rows * lanes):
        lm[c] = max(lm[c], tail[c] & mask)


@njit(**JIT_OPTIONS)
def _lane_bound(lm, lanes, k):
    """A lower bound on the k-th largest of lm[:lanes], within a 256th of their range.

    `lanes` a multiple of 64, k <= lanes.  A search on the value: at least
    k entries are at or above ``lo``, and ``hi`` is at or above the k-th
    largest.  Each step counts the entries at or above three pivots
    splitting ``(lo, hi]`` in quarters (popcounts of 64-lane compares,
    independent of one another) and keeps the quarter holding the k-th
    largest.  Four steps leave ``lo`` next to it (the row then keeps ~1%
    more candidates) at a fraction of the cost of ranking every lane.
    """
    lo = lm[0]
    hi = lm[0]
    for c in range(lanes):
        lo = min(lo, lm[c])
        hi = max(hi, lm[c])
    for _ in range(4):
        d = hi - lo
        # ceil(d / 4) and pivots in (lo, hi], without overflow for int64 bits.
        q = (d >> 2) + ((d & 3) != 0)
        p1 = lo + q
        p2 = p1 + min(q, hi - p1)
        p3 = p2 + min(q, hi - p2)
        n1 = 0
        n2 = 0
        n3 = 0
        for w in range(lanes >> 6):
            n1 += popcount(int_gt_mask64(lm, w * 64, p1 - 1))
            n2 += popcount(int_gt_mask64(lm, w * 64, p2 - 1))
            n3 += popcount(int_gt_mask64(lm, w * 64, p3 - 1))
        if n3 >= k:
            lo = p3
        elif n2 >= k:
            lo, hi = p2, p3 - 1
        elif n1 >= k:
            lo, hi = p1, p2 - 1
        else:
            hi = p1 - 1
    return lo


@njit(inline="always", **JIT_OPTIONS)
def _append_set_bits(row, mask, bits, base, vals, idx, count):
    """Append j = base + each set bit of `bits` (ascending) to `idx` and ``row[j] & mask`` to `vals`."""
    while bits:
        j = base + lowest_bit(bits)
        idx[count] = j
        vals[count] = row[j] & mask
        count += 1
        bits &= bits - np.uint64(1)
    return count


@njit(**JIT_OPTIONS)
def _collect(row, mask, thr, vals, idx):
    """Entries with ``row[j] & mask >= thr``, in index order: j into `idx`, the bits into `vals`.

    64 entries per compare mask; the last partial group is read as the
    final 64 entries, shifted.  Requires ``row.shape[0] >= 64``.  Returns
    their count.
    """
    n = row.shape[0]
    count = 0
    for w in range(n >> 6):
        count = _append_set_bits(row, mask, masked_ge_mask64(row, w * 64, mask, thr), w * 64,
                                 vals, idx, count)
    tail = n & 63
    if tail:
        bits = masked_ge_mask64(row, n - 64, mask, thr) >> np.uint64(64 - tail)
        count = _append_set_bits(row, mask, bits, n - tail, vals, idx, count)
    return count


@njit(**JIT_OPTIONS)
def _place_by_masks(vals, idx, count, k, out):
    """out[rank] = idx[i] for the ranks below k of vals[:count].

    Rank: greater values first, equal ones by position.  Counted with
    popcounts of compares over the candidates padded with -1 (below any
    magnitude bits) to 32 lanes, or to whole words of 64 (`vals` must hold
    them).  A first pass counts only the greater values: these are the
    ranks unless values repeat, which shows as a sum of ranks below
    count (count - 1) / 2 (later copies of a value rank too low), and only
    then a second pass adds the equal ones before each.
    """
    one = np.uint64(1)
    total = 0
    if count <= 32:
        vals[count:32] = -1
        for i in range(count):
            r = popcount(int_gt_mask32(vals, 0, vals[i]))
            if r < k:
                out[r] = idx[i]
            total += r
        if 2 * total != count * (count - 1):
            for i in range(count):
                x = vals[i]
                before = (one << np.uint64(i)) - one
                r = popcount(int_gt_mask32(vals, 0, x)) + popcount(int_eq_mask32(vals, 0, x) & before)
                if r < k:
                    out[r] = idx[i]
    else:
        words = (count + 63) >> 6
        vals[count:words * 64] = -1
        for i in range(count):
            x = vals[i]
            r = 0
            for w in range(words):
                r += popcount(int_gt_mask64(vals, w * 64, x))
            if r < k:
                out[r] = idx[i]
            total += r
        if 2 * total != count * (count - 1):
            for i in range(count):
                x = vals[i]
                own = i >> 6
                r = popcount(int_eq_mask64(vals, own * 64, x) & ((one << np.uint64(i & 63)) - one))
                for w in range(own):
                    r += popcount(int_eq_mask64(vals, w * 64, x))
                for w in range(words):
                    r += popcount(int_gt_mask64(vals, w * 64, x))
                if r < k:
                    out[r] = idx[i]


@njit(**JIT_OPTIONS)
def topk_row(row, k, mask, out, vals, idx, ranks, maxima):
    """Write the indices of the k largest ``row & mask`` into `out`, descending.

    Ties go to the lower index.  `row` holds magnitude bits (see
    :func:`magnitude_bits`); `vals` (the row's dtype), `idx` (int64) and
    `ranks` (int32) are scratch of the row's length, `maxima` (the row's
    dtype) scratch of length k.

    First a lower bound on the k-th largest entry.  With ``lanes`` = 2k
    rounded up to a multiple of 64 (at most :data:`LANES_MAX` and the row
    length), and if that is at least k, it is (nearly) the k-th largest of
    the lane maxima, the maxima of the entries equal mod lanes
    (:func:`_lane_maxima`, :func:`_lane_bound`), since k distinct entries
    reach it, and the entries at or above it are taken 64 at a time through
    compare masks (:func:`_collect`); otherwise it is the smallest maximum
    of k sets (:func:`_min_chunk_max`) and one branch-free pass keeps the
    entries at or above it.  Either way they are kept in index order (1.1k
    to 1.5k of them in random rows) and the bound is tightened on them while
    they number at least 2k.  Each is then placed by its rank (greater
    values first, equal values by position), counted with compare masks
    (:func:`_place_by_masks`) or plain compares, or, above
    :data:`RANK_MAX_CANDIDATES` of them, by a radix sort
    (:func:`_place_by_sort`).  The work runs on borrowed views of the
    arguments (:func:`_borrowed`).
    """
    _topk_row(_borrowed(row), k, mask, _borrowed(out), _borrowed(vals), _borrowed(idx),
              _borrowed(ranks), _borrowed(maxima))


# Inlined into topk_row, so that the null meminfos of the borrowed views
# are constants and their reference counting folds away.
@njit(inline="always", **JIT_OPTIONS)
def _topk_row(row, k, mask, out, vals, idx, ranks, maxima):
    """The body of :func:`topk_row`."""
    n = row.shape[0]
    lanes = min(64 * ((k + 31) >> 5), LANES_MAX, n - (n & 63))
    if lanes >= k:
        _lane_maxima(row, mask, lanes, vals)
        count = _collect(row, mask, _lane_bound(vals, lanes, k), vals, idx)
    else:
        thr = _min_chunk_max(row, mask, n, k, maxima)
        count = 0
        for j in range(n):
            v = row[j] & mask
            vals[count] = v
            idx[count] = j
            count += v >= thr
    for _ in range(4):
        if count < 2 * k:
            break
        thr = _min_chunk_max(vals, mask, count, k, maxima)
        kept = 0
        for j in range(count):
            v = vals[j]
            vals[kept] = v
            idx[kept] = idx[j]
            kept += v >= thr
        if kept == count:
            break
        count = kept
    if count > RANK_MAX_CANDIDATES:
        _place_by_sort(vals, idx, count, k, out, ranks)
    elif (32 if count <= 32 else (count + 63) & ~63) <= n:
        _place_by_masks(vals, idx, count, k, out)
    else:
        for i in range(count):
            ranks[i] = 0
        for j in range(count):
            vj = vals[j]
            for i in range(count):
                vi = vals[i]
                ranks[i] += (vj > vi) | ((vj == vi) & (j < i))
        for i in range(count):
            if ranks[i] < k:
                out[ranks[i]] = idx[i]


@njit(**JIT_OPTIONS)
def _place_by_sort(vals, idx, count, k, out, order):
    """out[:k] = the first k of idx[:count] by descending vals[:count], ties in order.

    A stable LSD radix sort of the positions on the 8-bit digits of the
    values, with the buckets of greater digits first (so values descend and
    equal ones keep their order), skipping the digits that all candidates
    share: O(count) per digit.  `order` is int32 scratch of count.
    """
    other = np.empty(count, dtype=np.int32)
    starts = np.empty(256, dtype=np.int64)
    for i in range(count):
        order[i] = i
    src, dst = order, other
    for shift in range(0, 8 * vals.itemsize, 8):
        starts[:] = 0
        for i in range(count):
            starts[255 - ((vals[i] >> shift) & 255)] += 1
        total = 0
        spread = True
        for d in range(256):
            c = starts[d]
            starts[d] = total
            total += c
            spread &= c != count
        if not spread:
            continue
        for i in range(count):
            p = src[i]
            d = 255 - ((vals[p] >> shift) & 255)
            dst[starts[d]] = p
            starts[d] += 1
        src, dst = dst, src
    for j in range(k):
        out[j] = idx[src[j]]


@njit(**JIT_OPTIONS)
def topk_rows(bits, k, mask, out):
    """Row-wise top-k of (B, n) magnitude bits into the int64 (B, k) array `out`."""
    n = bits.shape[1]
    vals = np.empty(n, dtype=bits.dtype)
    idx = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int32)
    maxima = np.empty(k, dtype=bits.dtype)
    # Rows of borrowed views: a row of `bits` or `out` would otherwise
    # take and drop a reference to it.
    rows, dest = _borrowed(bits), _borrowed(out)
    for b in range(bits.shape[0]):
        topk_row(rows[b], k, mask, dest[b], vals, idx, ranks, maxima)


@njit(parallel=True, **JIT_OPTIONS)
def topk_rows_parallel(bits, k, mask, out):
    """Parallel twin of :func:`topk_rows`: blocks of rows over threads, scratch per block."""
    B, n = bits.shape
    # A fixed count: get_num_threads() here would keep the kernel out of the cache.
    blocks = min(B, 64)
    rows, dest = _borrowed(bits), _borrowed(out)
    for c in prange(blocks):
        vals = np.empty(n, dtype=bits.dtype)
        idx = np.empty(n, dtype=np.int64)
        ranks = np.empty(n, dtype=np.int32)
        maxima = np.empty(k, dtype=bits.dtype)
        for b in range(c * B // blocks, (c + 1) * B // blocks):
            topk_row(rows[b], k, mask, dest[b], vals, idx, ranks, maxima)


@njit(**JIT_OPTIONS)
def balanced_topk_rows(bits, k, mask, out):
    """Row-wise sign-balanced top-k of (B, n) magnitude bits into the int64 (B, k) `out`.

    Row b gets the ``k // 2`` largest positive entries (descending), then the
    ``k - k // 2`` largest-magnitude negative ones (descending); a sign with
    fewer entries than its share gives the rest to the other sign, and a row
    with fewer than k non-zero entries is padded with the lowest-index zero
    entries.  Each sign's share is one :func:`topk_row` on the row with the
    other sign's entries cleared, so the ties go to the lower index.
    """
    B, n = bits.shape
    vals = np.empty(n, dtype=bits.dtype)
    idx = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int32)
    maxima = np.empty(k, dtype=bits.dtype)
    part = np.empty(n, dtype=bits.dtype)
    zero = bits.dtype.type(0)
    for b in range(B):
        row = bits[b]
        n_pos = 0
        n_neg = 0
        for j in range(n):
            v = row[j]
            if v > zero:
                n_pos += 1
            elif v < zero and (v & mask) != zero:
                n_neg += 1
        k_pos = min(k // 2, n_pos)
        k_neg = min(k - k_pos, n_neg)
        k_pos = min(k - k_neg, n_pos)
        if k_pos > 0:
            for j in range(n):
                v = row[j]
                part[j] = v if v > zero else zero
            topk_row(part, k_pos, mask, out[b, :k_pos], vals, idx, ranks, maxima)
        if k_neg > 0:
            for j in range(n):
                v = row[j]
                part[j] = (v & mask) if v < zero else zero
            topk_row(part, k_neg, mask, out[b, k_pos:k_pos + k_neg], vals, idx, ranks, maxima)
        filled = k_pos + k_neg
        j = 0
        while filled < k:
            if (row[j] & mask) == zero:
                out[b, filled] = j
                filled += 1
            j += 1


@njit(**JIT_OPTIONS)
def column_sums_and_abs_sums(g):
    """``(sum_b g[b, i], sum_b |g[b, i]|)`` in one pass; the second in float64."""
    B, n = g.shape
    s = np.zeros(n, dtype=g.dtype)
    a = np.zeros(n, dtype=np.float64)
    for b in range(B):
        for i in range(n):
            v = g[b, i]
            s[i] += v
            a[i] += abs(v)
    return s, a


@njit(**JIT_OPTIONS)
def top_columns(abs_sums, k):
    """Indices of the k largest non-negative float64 scores, descending (ties to the lower index)."""
    n = abs_sums.shape[0]
    out = np.empty(k, dtype=np.int64)
    topk_row(abs_sums.view(np.int64), k, np.int64(0x7FFFFFFFFFFFFFFF), out,
             np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64),
             np.empty(n, dtype=np.int32), np.empty(k, dtype=np.int64))
    return out


@njit(**JIT_OPTIONS)
def select_and_gather_columns(g, abs_sums, k):
    """The k top-scoring columns, sorted, and ``g[:, cols]`` as a new (B, k) array."""
    cols = np.sort(top_columns(abs_sums, k))
    B = g.shape[0]
    g_sel = np.empty((B, k), dtype=g.dtype)
    for b in range(B):
        for j in range(k):
            g_sel[b, j] = g[b, cols[j]]
    return cols, g_sel
