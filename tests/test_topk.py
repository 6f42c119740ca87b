"""Property tests of top-k and random-k selection against NumPy references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from reference import (
    examples,
    FLOAT_DTYPES,
    is_valid_topk,
    layouts,
    matrices,
    topk_reference,
    unified_scores,
    unified_topk_reference,
)

SETTINGS = settings(deadline=None, max_examples=examples(100))


@st.composite
def topk_problems(draw, ties=None, max_batch=6, max_n=40):
    """(g, k): g in a random layout and dtype, 1 <= k <= n."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(1, max_n))
    if ties is None:
        ties = draw(st.booleans())
    g = draw(matrices(dtype, (batch, n), ties=ties))
    k = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    return draw(layouts(g)), k


def _check_per_example(g, k):
    expected = topk_reference(g, k)
    got = mp.topk_indices(g, k)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.int64
    assert got.shape == (g.shape[0], k)
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- per example
@SETTINGS
@given(topk_problems())
def test_topk_matches_stable_sort_reference(problem):
    g, k = problem
    before = g.copy()
    _check_per_example(g, k)
    np.testing.assert_array_equal(g, before)  # input untouched


@SETTINGS
@given(topk_problems(ties=True))
def test_topk_heavy_ties_go_to_lower_index(problem):
    g, k = problem
    _check_per_example(g, k)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_topk_all_zeros_is_first_k_columns(dtype):
    g = np.zeros((3, 17), dtype=dtype)
    got = mp.topk_indices(g, 5)
    np.testing.assert_array_equal(got, np.tile(np.arange(5), (3, 1)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_topk_equal_magnitudes_of_opposite_sign_tie(dtype):
    g = np.array([[1.0, -3.0, 3.0, -0.0, 0.0, -3.0]], dtype=dtype)
    np.testing.assert_array_equal(mp.topk_indices(g, 4), [[1, 2, 5, 0]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_topk_single_column_and_single_row(dtype):
    g = np.array([[-4.0], [2.0], [0.0]], dtype=dtype)
    np.testing.assert_array_equal(mp.topk_indices(g, 1), [[0], [0], [0]])
    row = np.array([[0.1, -5.0, 2.0, 5.0]], dtype=dtype)
    np.testing.assert_array_equal(mp.topk_indices(row, 1), [[1]])
    np.testing.assert_array_equal(mp.topk_indices(row, 4), [[1, 3, 2, 0]])


def test_topk_accepts_numpy_integer_k():
    g = np.arange(12, dtype=np.float64).reshape(2, 6)
    np.testing.assert_array_equal(mp.topk_indices(g, np.int64(2)), [[5, 4], [5, 4]])
    np.testing.assert_array_equal(mp.topk_indices(g, np.int32(1)), [[5], [5]])


# Selection kernels often switch algorithm with n, k or the batch size (a heap
# for small k, threshold or radix selection for large n, threads for large B):
# check sizes on both sides of any plausible switch.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "batch, n, k",
    [(1, 5000, 1), (3, 5000, 32), (3, 5000, 600), (2, 5000, 4999), (2, 5000, 5000),
     (64, 8192, 32), (64, 8192, 1024), (257, 500, 20), (100, 500, 128), (1024, 64, 8)],
)
def test_topk_large_shapes(dtype, batch, n, k):
    rng = np.random.default_rng(batch * 7919 + n * 31 + k)
    g = rng.standard_normal((batch, n)).astype(dtype)
    _check_per_example(g, k)
    # Quantised copy of the same data: many exact ties at every size.
    ties = np.round(g * 4.0) / 4.0
    _check_per_example(ties.astype(dtype), k)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_topk_large_magnitudes_and_tiny_values(dtype):
    info = np.finfo(dtype)
    g = np.array([[info.tiny, -info.max, info.max, -info.tiny, 1.0, 0.0]], dtype=dtype)
    np.testing.assert_array_equal(mp.topk_indices(g, 6), [[1, 2, 4, 0, 3, 5]])


# ------------------------------------------------------------------- unified
@SETTINGS
@given(topk_problems(ties=True))
def test_unified_topk_exact_on_exactly_summable_data(problem):
    # TIE_VALUES sums are exact in any order, so the result is unique.
    g, k = problem
    got = mp.topk_indices(g, k, unified=True)
    assert got.dtype == np.int64
    assert got.shape == (k,)
    np.testing.assert_array_equal(got, unified_topk_reference(g, k))


@SETTINGS
@given(topk_problems(ties=False))
def test_unified_topk_is_a_valid_selection(problem):
    # General floats: the library may sum in another order/precision, so only
    # near-ties (within a few rounding errors) may be resolved differently.
    g, k = problem
    got = mp.topk_indices(g, k, unified=True)
    assert got.dtype == np.int64
    rtol = 8 * g.shape[0] * np.finfo(g.dtype).eps
    message = is_valid_topk(unified_scores(g), got, k, rtol)
    assert message is None, message


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_unified_topk_uses_sum_of_magnitudes_not_sum(dtype):
    # Column 0 sums to 0 but has the largest sum of magnitudes.
    g = np.array([[5.0, 1.0, -2.0], [-5.0, 1.0, -2.0]], dtype=dtype)
    np.testing.assert_array_equal(mp.topk_indices(g, 3, unified=True), [0, 2, 1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "batch, n, k", [(1, 5000, 7), (50, 500, 20), (1024, 4096, 64), (64, 2000, 400), (300, 70, 70)]
)
def test_unified_topk_large_shapes(dtype, batch, n, k):
    rng = np.random.default_rng(batch + n + k)
    g = rng.integers(-8, 9, size=(batch, n)).astype(dtype) / 4  # exact sums
    np.testing.assert_array_equal(mp.topk_indices(g, k, unified=True),
                                  unified_topk_reference(g, k))


# ------------------------------------------------------------------ random-k
@settings(deadline=None, max_examples=examples(60))
@given(n=st.integers(1, 300), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_indices_distinct_in_range_and_seeded(n, data, seed):
    k = data.draw(st.integers(1, n))
    batch = data.draw(st.one_of(st.none(), st.integers(1, 5)))
    got = mp.random_indices(n, k, batch=batch, rng=seed)
    assert got.dtype == np.int64
    rows = got.reshape(1, k) if batch is None else got
    assert got.shape == ((k,) if batch is None else (batch, k))
    for row in rows:
        assert len(np.unique(row)) == k
        assert row.min() >= 0 and row.max() < n
    # Same seed (int or a fresh Generator from it): the same draw.
    np.testing.assert_array_equal(mp.random_indices(n, k, batch=batch, rng=seed), got)
    again = mp.random_indices(n, k, batch=batch, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(
        again, mp.random_indices(n, k, batch=batch, rng=np.random.default_rng(seed))
    )


def test_random_indices_generator_advances_and_seeds_differ():
    rng = np.random.default_rng(0)
    first = mp.random_indices(1000, 10, rng=rng)
    second = mp.random_indices(1000, 10, rng=rng)
    assert not np.array_equal(first, second)
    assert not np.array_equal(mp.random_indices(1000, 10, rng=1),
                              mp.random_indices(1000, 10, rng=2))
    assert mp.random_indices(1000, 10).shape == (10,)  # rng=None works


def test_random_indices_rows_differ_within_a_batch():
    got = mp.random_indices(1000, 10, batch=4, rng=3)
    assert len({tuple(row) for row in got}) == 4


def test_random_indices_is_uniform():
    # Every index is equally likely: frequency k/n per row; 20000 rows give
    # a binomial standard deviation of ~0.003, the bound is > 6 sigma.
    n, k, batch = 10, 3, 20000
    got = mp.random_indices(n, k, batch=batch, rng=12345)
    freq = np.bincount(got.ravel(), minlength=n) / batch
    np.testing.assert_allclose(freq, k / n, atol=0.02)


def test_random_indices_k_equals_n_is_a_permutation():
    got = mp.random_indices(7, 7, batch=3, rng=0)
    for row in got:
        np.testing.assert_array_equal(np.sort(row), np.arange(7))


# The CPU kernel bounds the k-th largest entry by lane maxima when the row
# holds at least k lanes (2k rounded up to a multiple of 64, at most 1024),
# places up to 32 or whole words of 64 candidates by compare masks, and
# falls back to plain compares or an exact selection otherwise: sizes on
# both sides of each switch, on rows that are hard for lane maxima.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "n, k",
    [(31, 31), (32, 17), (63, 32), (64, 1), (64, 32), (64, 33), (65, 64), (127, 64), (128, 65),
     (129, 33), (191, 96), (500, 31), (500, 32), (500, 33), (500, 100), (2048, 512),
     (2048, 1024), (2048, 1025), (3000, 700)],
)
@pytest.mark.parametrize("kind", ["normal", "ties", "sorted", "spikes"])
def test_topk_lane_boundaries(dtype, n, k, kind):
    rng = np.random.default_rng(n * 131 + k)
    g = rng.standard_normal((3, n))
    if kind == "ties":
        g = np.round(g * 2.0) / 2.0
    elif kind == "sorted":
        # Every large entry in the last lanes' rows: the bound is at its loosest.
        g = np.sort(np.abs(g), axis=1) * np.where(rng.random((3, n)) < 0.5, -1.0, 1.0)
    elif kind == "spikes":
        g[:, rng.integers(0, n, 5)] = 1e30
        g[0] = 0.0
    _check_per_example(g.astype(dtype), k)
