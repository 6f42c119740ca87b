"""Training loop: results, checkpoints, exact resume, divergence handling."""
import dataclasses
import json
import os

import numpy as np
import pytest

from meprop_numba import train as train_module
from meprop_numba.data import Dataset
from meprop_numba.train import TrainConfig, TrainingDiverged, compare, load_checkpoint, train


def _toy_dataset(n_train=120, n_dev=30, n_test=30, seed=0):
    """Three Gaussian blobs in 12 dimensions: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 12)) * 2

    def draw(n):
        y = rng.integers(0, 3, n)
        return (centers[y] + rng.normal(size=(n, 12))).astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(n_train)
    xdv, ydv = draw(n_dev)
    xte, yte = draw(n_test)
    return Dataset("toy", xtr, ytr, xdv, ydv, xte, yte, n_classes=3, source="test")


def _config(**overrides):
    base = dict(dataset="toy", hidden=16, layers=2, k=4, epochs=3, batch_size=10, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def test_training_learns_and_reports_everything(tmp_path):
    out = tmp_path / "results.json"
    results = train(_config(epochs=4, lr=0.01), _toy_dataset(), progress=False, out=out)
    epochs = results["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["dev_accuracy"] > 0.8
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    for e in epochs:
        for key in ("forward_s", "backward_s", "backward_linear_s", "optimizer_s", "train_s"):
            assert e[key] > 0
        assert e["backward_linear_s"] <= e["backward_s"]
    best = max(epochs, key=lambda e: e["dev_accuracy"])
    assert results["best_dev_accuracy"] == best["dev_accuracy"]
    saved = json.loads(out.read_text())
    assert saved["epochs"] == epochs and saved["config"]["k"] == 4 and saved["stopped"] is None


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(mode="random", dropout=0.3),
    dict(mode="unified", optimizer="adagrad", lazy=False),
    dict(k=None, optimizer="sgd", dtype="float64"),
])
def test_resume_gives_bit_identical_weights(tmp_path, overrides):
    data = _toy_dataset()
    full = train(_config(**overrides), data, checkpoint_dir=tmp_path / "full", progress=False)
    train(_config(epochs=1, **overrides), data, checkpoint_dir=tmp_path / "cut", progress=False)
    resumed = train(_config(**overrides), data, checkpoint_dir=tmp_path / "cut", resume=True,
                    progress=False)
    for a, b in zip(full["model"].params(), resumed["model"].params()):
        np.testing.assert_array_equal(a, b)
    strip = lambda r: [(e["train_loss"], e["dev_accuracy"], e["test_accuracy"]) for e in r["epochs"]]
    assert strip(full) == strip(resumed)
    one = load_checkpoint(tmp_path / "full")
    two = load_checkpoint(tmp_path / "cut")
    assert one["epoch"] == two["epoch"] == 3
    assert one["rng"] == two["rng"]
    for a, b in zip(one["optimizer"]["state"], two["optimizer"]["state"]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_resume_refuses_a_different_config(tmp_path):
    data = _toy_dataset()
    train(_config(epochs=1), data, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="k: checkpoint 4 vs 5"):
        train(_config(k=5), data, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(), data, checkpoint_dir=tmp_path / "none", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = _toy_dataset()
    checkpoint = tmp_path / "checkpoint.npz"
    original = train_module.softmax_cross_entropy
    calls = {"n": 0}
    steps_per_epoch = len(data.y_train) // 10

    def poisoned(logits, labels):
        calls["n"] += 1
        loss, grad = original(logits, labels)
        if calls["n"] > 1 + steps_per_epoch + 3:  # warm-up, epoch 1, then step 4 of epoch 2
            return float("nan"), grad
        return loss, grad

    monkeypatch.setattr(train_module, "softmax_cross_entropy", poisoned)
    out = tmp_path / "results.json"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 4/12.*epoch 1\) is kept") as info:
        train(_config(), data, checkpoint_dir=tmp_path, out=out, progress=False)
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert len(info.value.results["epochs"]) == 1
    assert "diverged" in json.loads(out.read_text())["stopped"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "results.json"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    data = _toy_dataset()
    train(_config(epochs=1), data, checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.npz").read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        train(_config(epochs=2), data, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_compare_runs_dense_and_meprop_with_the_same_seed():
    data = _toy_dataset()
    both = compare(_config(epochs=1), data, progress=False)
    assert both["dense"]["config"]["k"] is None and both["meprop"]["config"]["k"] == 4
    dense_first = both["dense"]["model"].linear_layers[0]
    assert dense_first.k is None
    assert set(both["speedup"]) == {"forward", "backward", "backward_linear", "optimizer", "train"}
    # Same seed: both models started from the same weights, so a fresh dense
    # model built from the config equals the meProp run's starting point.
    fresh = train_module.build_model(_config(k=None), 12, 3)
    start = train_module.build_model(_config(), 12, 3)
    for a, b in zip(fresh.params(), start.params()):
        np.testing.assert_array_equal(a, b)


def test_bad_configs_are_rejected():
    data = _toy_dataset()
    for bad in (dict(k=0), dict(mode="best"), dict(optimizer="rmsprop"), dict(lr=-1.0),
                dict(dropout=1.0), dict(dtype="float16"), dict(batch_size=0)):
        with pytest.raises(ValueError):
            train(dataclasses.replace(_config(), **bad), data, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(_config(batch_size=1000), data, progress=False)
    with pytest.raises(NotImplementedError, match="cuda"):
        train(_config(device="cuda"), data, progress=False)


def test_threads_limit_kernels_and_blas():
    import meprop_numba as mp

    threadpoolctl = pytest.importorskip("threadpoolctl", reason="BLAS threads are limited through threadpoolctl")

    def blas_count():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before, blas_before = mp.get_num_threads(), blas_count()
    try:
        results = train(_config(epochs=1, threads=1), _toy_dataset(), progress=False)
    finally:
        mp.set_num_threads(before)
    assert results["threads"] == 1 and results["blas_threads"] == 1
    assert set(blas_count()) == set(blas_before)  # the BLAS limit is lifted after training
