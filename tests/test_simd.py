"""The vector-compare intrinsics of meprop_numba._cpu.simd against plain NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from meprop_numba._cpu.simd import (int_eq_mask32, int_eq_mask64, int_gt_mask32, int_gt_mask64,
                                lowest_bit, masked_ge_mask64, popcount)
from reference import examples

SETTINGS = settings(deadline=None, max_examples=examples(100))


@njit
def _bits(x):
    return popcount(x), lowest_bit(x)


def _as_mask(flags):
    return sum(1 << c for c, f in enumerate(flags) if f)


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_popcount_and_lowest_bit(x):
    count, low = _bits(np.uint64(x))
    assert count == bin(x).count("1")
    assert low == (64 if x == 0 else (x & -x).bit_length() - 1)


# ------------------------------------------------------------ integer masks
@njit
def _int_masks(a, start, m, x):
    return (masked_ge_mask64(a, start, m, x), int_gt_mask64(a, start, x),
            int_eq_mask64(a, start, x), int_gt_mask32(a, start, x), int_eq_mask32(a, start, x))


@st.composite
def _int_arrays_and_offsets(draw):
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    info = np.iinfo(dtype)
    n = draw(st.integers(64, 100))
    # Few distinct values (ties), the extremes and -1 among them.
    values = st.one_of(st.integers(-3, 3), st.sampled_from([int(info.min), int(info.max), -1]),
                       st.integers(int(info.min), int(info.max)))
    pool = draw(st.lists(values, min_size=1, max_size=6))
    a = np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=dtype)
    start = draw(st.integers(0, n - 64))
    x = draw(st.one_of(st.sampled_from(pool), values))
    m = draw(st.sampled_from([-1, int(info.max), 0, 0x0F0F]))
    return a, start, dtype(m), dtype(x)


@SETTINGS
@given(_int_arrays_and_offsets())
def test_integer_masks_match_numpy_compares(case):
    a, start, m, x = case
    ge, gt, eq, gt32, eq32 = _int_masks(a, start, m, x)
    lanes = a[start:start + 64]
    assert int(ge) == _as_mask((lanes & m) >= x)
    assert int(gt) == _as_mask(lanes > x)
    assert int(eq) == _as_mask(lanes == x)
    assert int(gt32) == _as_mask(lanes[:32] > x)
    assert int(eq32) == _as_mask(lanes[:32] == x)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_masks_read_only_their_lanes(dtype):
    a = np.zeros(128, dtype=dtype)
    a[64:] = 5
    ge, gt, eq, gt32, eq32 = _int_masks(a, 0, dtype(-1), dtype(1))
    assert (int(ge), int(gt), int(eq), int(gt32), int(eq32)) == (0, 0, 0, 0, 0)
    ge, gt, eq, gt32, eq32 = _int_masks(a, 1, dtype(-1), dtype(1))
    assert int(ge) == int(gt) == 1 << 63 and int(gt32) == 0


def test_integer_masks_take_scalars_of_other_widths():
    # Masked bits computed in numba are int64 even for int32 rows: the
    # scalars are truncated to the array's dtype.
    a = np.arange(-32, 96, dtype=np.int32)
    ge, gt, eq, _, _ = _int_masks(a, 0, np.int64(0x7FFFFFFF), np.int64(40))
    assert int(ge) == _as_mask((a[:64] & 0x7FFFFFFF) >= 40)
    assert int(gt) == _as_mask(a[:64] > 40) and int(eq) == _as_mask(a[:64] == 40)


# ------------------------------------------------------------ gathered-row sums
@st.composite
def _gather_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    m = draw(st.integers(1, 300))
    n_src = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(0, 30), min_size=1, max_size=8))  # both orders (_few_sources)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    which = np.array(draw(st.lists(st.integers(0, n_src - 1), min_size=int(offsets[-1]),
                                   max_size=int(offsets[-1]))), dtype=np.int64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # src starts a chosen number of elements into a buffer: C-contiguous, its rows starting
    # anywhere within a 64-byte line, all alike when a row is a multiple of 64 bytes
    skip = draw(st.integers(0, 15))
    buffer = rng.standard_normal(n_src * m + skip).astype(dtype)
    src = buffer[skip:].reshape(n_src, m)
    coef = rng.standard_normal(which.shape[0]).astype(dtype)
    return src, which, coef, offsets


@SETTINGS
@given(_gather_problems(), st.booleans())
def test_gather_rows_matches_numpy(problem, parallel):
    from meprop_numba._cpu.linear import _gather_rows, _gather_rows_parallel
    src, which, coef, offsets = problem
    R, m = offsets.shape[0] - 1, src.shape[1]
    out = np.full((R, m), np.nan, dtype=src.dtype)
    (_gather_rows_parallel if parallel else _gather_rows)(out, src, which, coef, offsets, False)
    expected = np.zeros((R, m))
    for r in range(R):
        for e in range(offsets[r], offsets[r + 1]):
            expected[r] += float(coef[e]) * src[which[e]].astype(np.float64)
    tol = 1e-5 if src.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max(initial=0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [16, 72, 2400])
@pytest.mark.parametrize("parallel", [False, True])
def test_gather_rows_on_rows_that_start_inside_a_line(dtype, m, parallel):
    # rows of 64-byte multiples from every offset within a line: the tiled path with its head tile
    from meprop_numba._cpu.linear import _gather_rows, _gather_rows_parallel
    rng = np.random.default_rng(m)
    which = rng.integers(0, 6, 40).astype(np.int64)
    offsets = np.array([0, 7, 7, 20, 40], dtype=np.int64)
    coef = rng.standard_normal(40).astype(dtype)
    for skip in range(16):
        src = rng.standard_normal(6 * m + skip).astype(dtype)[skip:].reshape(6, m)
        out = np.empty((4, m), dtype=dtype)
        (_gather_rows_parallel if parallel else _gather_rows)(out, src, which, coef, offsets, False)
        expected = np.stack([coef[a:b].astype(np.float64) @ src[which[a:b]].astype(np.float64)
                             for a, b in zip(offsets[:-1], offsets[1:])])
        np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_gather_rows_in_source_blocks_equals_one_pass_to_the_bit(dtype, parallel):
    # more source rows than a block (1,024): ordered sources go block by block, added up
    from meprop_numba._cpu.linear import _BLOCK_ROWS, _gather_rows, _gather_rows_parallel
    rng = np.random.default_rng(7)
    n_src, m = 2 * _BLOCK_ROWS + 300, 50
    src = rng.standard_normal(n_src * m + 3).astype(dtype)[3:].reshape(n_src, m)  # rows inside a line
    segments = [np.sort(rng.choice(n_src, size, replace=False)) for size in (0, 1, 900, 2000, 40)]
    segments.append(np.arange(_BLOCK_ROWS - 2, _BLOCK_ROWS + 2))  # across a block boundary
    which = np.concatenate(segments).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in segments])]).astype(np.int64)
    coef = rng.standard_normal(which.shape[0]).astype(dtype)
    gather = _gather_rows_parallel if parallel else _gather_rows
    blocked, whole = (np.full((len(segments), m), np.nan, dtype=dtype) for _ in range(2))
    gather(blocked, src, which, coef, offsets, True)
    gather(whole, src, which, coef, offsets, False)
    assert blocked.tobytes() == whole.tobytes()
    expected = np.stack([coef[a:b].astype(np.float64) @ src[which[a:b]].astype(np.float64)
                         for a, b in zip(offsets[:-1], offsets[1:])])
    np.testing.assert_allclose(blocked, expected, rtol=1e-4 if dtype == np.float32 else 1e-11, atol=1e-3)
