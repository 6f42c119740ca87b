"""Options against meProp's accuracy loss: sign-balanced selection, error feedback, the MLP default."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meprop_numba as mp
from meprop_numba import cli
from meprop_numba.nn import Dropout, Linear
from meprop_numba.tasks import TASKS
from meprop_numba.tasks.mlp import MEPROP_DROPOUT, MEPROP_ERROR_FEEDBACK, MLPConfig

from reference import (
    assert_close_scaled,
    balanced_topk_reference,
    error_feedback_reference,
    examples,
    masked_backward_reference,
    matrices,
    selection_mask,
    topk_reference,
    unified_topk_reference,
)


@st.composite
def gradient_and_k(draw, ties):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B = draw(st.integers(1, 4))
    n = draw(st.integers(1, 300))
    g = draw(matrices(dtype, (B, n), ties=ties))
    return g, draw(st.integers(1, n))


@settings(deadline=None, max_examples=examples(150))
@given(case=gradient_and_k(ties=False))
def test_balanced_indices_match_reference(case):
    g, k = case
    np.testing.assert_array_equal(mp.balanced_indices(g, k), balanced_topk_reference(g, k))


@settings(deadline=None, max_examples=examples(150))
@given(case=gradient_and_k(ties=True))
def test_balanced_indices_match_reference_with_ties_and_zeros(case):
    g, k = case
    np.testing.assert_array_equal(mp.balanced_indices(g, k), balanced_topk_reference(g, k))


def test_balanced_indices_keep_both_signs_where_top_k_would_not():
    g = np.array([[9.0, 8.0, 7.0, 6.0, -0.1, -0.2, 0.0, -0.3]], dtype=np.float32)
    assert set(mp.topk_indices(g, 4)[0]) == {0, 1, 2, 3}
    np.testing.assert_array_equal(mp.balanced_indices(g, 4), [[0, 1, 7, 5]])


def test_balanced_indices_errors():
    with pytest.raises(ValueError, match="k"):
        mp.balanced_indices(np.ones((2, 3)), 4)
    with pytest.raises(TypeError):
        mp.balanced_indices(np.ones((2, 3), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="NaN|finite"):
        mp.balanced_indices(np.array([[1.0, np.nan]]), 1)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_balanced_backward_against_masked_reference(dtype, rtol):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 40)).astype(dtype)
    W = rng.normal(size=(70, 40)).astype(dtype)
    g = rng.normal(size=(6, 70)).astype(dtype)
    g[g > 0.4] *= 5   # large positives: plain top-k would take mostly those
    for need_dx in (True, False):
        dx, dW, db = mp.linear_backward(x, W, g, 12, balanced=True, need_dx=need_dx)
        mask = selection_mask(g.shape, balanced_topk_reference(g, 12))
        rdx, rdW, rdb, bdx, bdW, bdb = masked_backward_reference(x, W, g, mask)
        if need_dx:
            assert_close_scaled(dx, rdx, bdx, rtol, "dx")
        else:
            assert dx is None
        assert_close_scaled(dW.to_dense(), rdW, bdW, rtol, "dW")
        assert_close_scaled(db, rdb, bdb, rtol, "db")


def test_balanced_with_k_equal_n_is_dense():
    rng = np.random.default_rng(1)
    x, W, g = rng.normal(size=(5, 7)), rng.normal(size=(9, 7)), rng.normal(size=(5, 9))
    g[0, :4] = 0.0
    dx, dW, db = mp.linear_backward(x, W, g, 9, balanced=True)
    np.testing.assert_allclose(dx, g @ W, rtol=1e-12)
    np.testing.assert_allclose(dW.to_dense(), g.T @ x, rtol=1e-12)


def test_balanced_argument_errors():
    x, W, g = np.ones((2, 3)), np.ones((4, 3)), np.ones((2, 4))
    with pytest.raises(ValueError, match="balanced"):
        mp.linear_backward(x, W, g, 2, balanced=True, unified=True)
    with pytest.raises(ValueError, match="balanced"):
        mp.linear_backward(x, W, g, balanced=True, indices=np.array([[0], [1]]))


def _topk_select(g, k):
    return topk_reference(g, k)


def _unified_select(g, k):
    return unified_topk_reference(g, k)


@pytest.mark.parametrize("mode,select", [("topk", _topk_select), ("unified", _unified_select),
                                         ("balanced", balanced_topk_reference)])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_error_feedback_matches_reference_over_steps(mode, select, dtype, rtol):
    rng = np.random.default_rng(2)
    layer = Linear(15, 30, k=4, selection=mode, dtype=dtype, rng=3, error_feedback=0.8)
    x = rng.normal(size=(5, 15)).astype(dtype)
    grads = []
    for _ in range(4):
        g = rng.normal(size=(5, 30)).astype(dtype)
        g[rng.random(g.shape) < 0.4] = 0.0   # inactive units
        grads.append(g)
    expected = error_feedback_reference(x, layer.weight, grads, 4, 0.8, select)
    for step, (g, (rdx, rdW, rdb)) in enumerate(zip(grads, expected)):
        layer.forward(x, train=True)
        dx = layer.backward(g)
        dW, db = layer.grads()
        scale = np.abs(rdx).max() + np.abs(rdW).max()
        np.testing.assert_allclose(dx, rdx, rtol=rtol, atol=rtol * scale, err_msg=f"dx, step {step}")
        np.testing.assert_allclose(dW.to_dense(), rdW, rtol=rtol, atol=rtol * scale, err_msg=f"dW, step {step}")
        np.testing.assert_allclose(db, rdb, rtol=rtol, atol=rtol * np.abs(g).sum())
    # The memory changed the later steps: without it the selection differs.
    plain = Linear(15, 30, k=4, selection=mode, dtype=dtype, rng=3)
    for g in grads:
        plain.forward(x, train=True)
        plain.backward(g)
    assert not np.allclose(plain.grads()[0].to_dense(), layer.grads()[0].to_dense())


@pytest.mark.parametrize("beta", [0.0, 0.8])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_score_memory_matches_reference_over_steps(beta, dtype, rtol):
    rng = np.random.default_rng(5)
    layer = Linear(12, 40, k=3, selection="unified", dtype=dtype, rng=1, error_feedback=beta,
                   score_memory=0.9)
    x = rng.normal(size=(6, 12)).astype(dtype)
    # Columns 0-2 dominate every step: plain unified top-k keeps only them.
    grads = []
    for _ in range(8):
        g = rng.normal(size=(6, 40)).astype(dtype)
        g[:, :3] *= 4
        g[rng.random(g.shape) < 0.3] = 0.0
        grads.append(g)
    expected = error_feedback_reference(x, layer.weight, grads, 3, beta, None, score_memory=0.9)
    kept = set()
    for step, (g, (rdx, rdW, rdb)) in enumerate(zip(grads, expected)):
        layer.forward(x, train=True)
        dx = layer.backward(g)
        dW, db = layer.grads()
        kept.update(dW.rows.tolist())
        scale = np.abs(rdx).max() + np.abs(rdW).max()
        np.testing.assert_allclose(dx, rdx, rtol=rtol, atol=rtol * scale, err_msg=f"dx, step {step}")
        np.testing.assert_allclose(dW.to_dense(), rdW, rtol=rtol, atol=rtol * scale, err_msg=f"dW, step {step}")
        np.testing.assert_allclose(db, rdb, rtol=rtol, atol=rtol * np.abs(g).sum())
    assert len(kept) > 3   # the memory brought other columns in
    layer.reset_error_feedback()
    layer.forward(x, train=True)
    layer.backward(grads[0])
    np.testing.assert_allclose(layer.grads()[0].to_dense(), expected[0][1], rtol=rtol,
                               atol=rtol * np.abs(expected[0][1]).max())


def test_score_memory_argument_errors():
    with pytest.raises(ValueError, match="score_memory"):
        Linear(6, 10, k=2, selection="topk", score_memory=0.5)
    with pytest.raises(ValueError, match="score_memory"):
        Linear(6, 10, k=2, selection="unified", score_memory=1.0)


def test_error_feedback_zero_is_plain_and_dense_layer_ignores_it():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6))
    g = rng.normal(size=(3, 10))
    with_memory = Linear(6, 10, k=10, dtype=np.float64, rng=0, error_feedback=0.5)  # k == n: dense
    with_memory.forward(x, train=True)
    np.testing.assert_allclose(with_memory.backward(g), g @ with_memory.weight, rtol=1e-12)
    with pytest.raises(ValueError, match="error_feedback"):
        Linear(6, 10, k=2, error_feedback=1.0)
    layer = Linear(6, 10, k=2, dtype=np.float64, rng=0, error_feedback=0.5)
    layer.forward(x, train=True)
    with pytest.raises(ValueError, match="NaN|finite"):
        layer.backward(np.full((3, 10), np.nan))


# ------------------------------------------------ the MLP task's default
def _hidden_layers(model):
    linears = [m for m in model.layers if isinstance(m, Linear)][:-1]
    drops = [m.p for m in model.layers if isinstance(m, Dropout)]
    return [(m.k, m.error_feedback) for m in linears], drops


def _task_model(argv):
    args = cli.build_parser().parse_args(["train"] + argv)
    config = TASKS["mlp"].config_from_args(args, cli._shared_fields(args)).validate()
    model = TASKS["mlp"].build_model(config, {"n_features": 12, "n_classes": 3}, np.random.default_rng(0))
    return config, _hidden_layers(model)


def test_mlp_task_default_is_meprop_with_dropout_and_error_feedback():
    config, (layers, drops) = _task_model(["--hidden", "8", "--k", "2"])
    assert layers == [(2, MEPROP_ERROR_FEEDBACK)] * 2 and drops == [MEPROP_DROPOUT] * 2
    # The dense network of --compare keeps no dropout unless it is asked for.
    assert TASKS["mlp"].dense_config(config).hidden_dropout == 0.0
    assert TASKS["mlp"].dense_config(dataclasses.replace(config, dropout=0.3)).hidden_dropout == 0.3


def test_mlp_task_plain_meprop_flag_is_the_papers_meprop():
    _, (layers, drops) = _task_model(["--hidden", "8", "--k", "2", "--plain-meprop"])
    assert layers == [(2, 0.0)] * 2 and drops == []
    _, (layers, drops) = _task_model(["--hidden", "8", "--k", "2", "--plain-meprop", "--dropout", "0.1"])
    assert layers == [(2, 0.0)] * 2 and drops == [0.1, 0.1]
    _, (layers, drops) = _task_model(["--hidden", "8", "--k", "none"])
    assert layers == [(None, 0.0)] * 2 and drops == []
    with pytest.raises(ValueError, match="error_feedback"):
        MLPConfig(error_feedback=1.0).validate()
