"""The one training loop: results, checkpoints, exact resume, divergence, bad input."""
import dataclasses
import io
import json
import os
import stat

import numpy as np
import pytest

from meprop_numba.data import Dataset
from meprop_numba.tasks import TASKS
from meprop_numba.tasks.mlp import MLPConfig
from meprop_numba.training import (CheckpointError, TrainingDiverged, TrainingInterrupted,
                                   check_outputs, compare, fit, load_checkpoint, load_model,
                                   train_step)
from meprop_numba.training import loop as loop_module
from meprop_numba.training.checkpoint import atomic_write, checkpoint_path, save_checkpoint, write_json

MLP_TASK = TASKS["mlp"]


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
    return MLPConfig(**base)


def _fit(config, data=None, **kwargs):
    kwargs.setdefault("progress", False)
    return fit(MLP_TASK, config, _toy_dataset() if data is None else data, **kwargs)


def test_training_learns_and_reports_everything(tmp_path):
    out = tmp_path / "results.json"
    results = _fit(_config(epochs=4, lr=0.01), out=out)
    epochs = results["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["dev_accuracy"] > 0.8
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    for e in epochs:
        for key in ("forward_s", "backward_s", "backward_linear_s", "optimizer_s", "train_s",
                    "eval_s"):
            assert e[key] > 0
        assert e["backward_linear_s"] <= e["backward_s"]
    best = max(epochs, key=lambda e: (e["dev_accuracy"], -e["epoch"]))
    assert results["best_epoch"] == best["epoch"]
    assert results["best_dev_accuracy"] == best["dev_accuracy"]
    # The test split is evaluated at each new best dev result: the value at the best epoch.
    assert results["test_accuracy_at_best_dev"] == best["test_accuracy"]
    saved = json.loads(out.read_text())
    assert saved["epochs"] == epochs and saved["config"]["k"] == 4 and saved["stopped"] is None
    assert saved["finished"] is True
    assert saved["config"]["lr"] == 0.01


def test_the_json_records_the_learning_rate_used(tmp_path):
    out = tmp_path / "r.json"
    _fit(_config(epochs=1, optimizer="adagrad"), out=out)
    assert json.loads(out.read_text())["config"]["lr"] == MLPConfig.DEFAULT_LR["adagrad"] == 0.1
    pos_config = TASKS["pos"].config_class(optimizer="adagrad")
    assert pos_config.learning_rate == 0.01 and pos_config.to_dict()["lr"] == 0.01


def test_test_split_only_with_eval_test():
    results = _fit(_config(epochs=2, eval_test=False))
    assert all("test_accuracy" not in e for e in results["epochs"])
    assert results["test_accuracy_at_best_dev"] is None


def test_evals_per_epoch_and_best_checkpoint(tmp_path):
    results = _fit(_config(epochs=2, evals_per_epoch=3, lr=0.01), checkpoint_dir=tmp_path)
    evals = results["evaluations"]
    assert [(e["epoch"], e["step"]) for e in evals] == [(1, 4), (1, 8), (1, 12),
                                                       (2, 4), (2, 8), (2, 12)]
    best = max(evals, key=lambda e: (e["dev_accuracy"], -e["epoch"], -e["step"]))
    assert (results["best"]["epoch"], results["best"]["step"]) == (best["epoch"], best["step"])
    # best.npz holds the model of that evaluation: evaluating it reproduces its dev accuracy.
    model, config, state = load_model(MLP_TASK, tmp_path, "best")
    again = MLP_TASK.evaluate(model, _toy_dataset(), "dev")["accuracy"]
    assert again == best["dev_accuracy"]
    last, _, _ = load_model(MLP_TASK, tmp_path, "last")
    for a, b in zip(last.params(), results["model"].params()):
        np.testing.assert_array_equal(a, b)
    assert load_checkpoint(checkpoint_path(tmp_path, "last"))["epoch"] == 2


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(selection="random", dropout=0.3),
    dict(selection="unified", optimizer="adagrad", lazy=False),
    dict(k=None, optimizer="sgd", dtype="float64"),
])
def test_resume_gives_bit_identical_weights(tmp_path, overrides):
    data = _toy_dataset()
    full = _fit(_config(**overrides), data, checkpoint_dir=tmp_path / "full")
    _fit(_config(epochs=1, **overrides), data, checkpoint_dir=tmp_path / "cut")
    resumed = _fit(_config(**overrides), data, checkpoint_dir=tmp_path / "cut", resume=True)
    for a, b in zip(full["model"].params(), resumed["model"].params()):
        np.testing.assert_array_equal(a, b)
    strip = lambda r: [(e["train_loss"], e["dev_accuracy"]) for e in r["epochs"]]
    assert strip(full) == strip(resumed)
    one = load_checkpoint(checkpoint_path(tmp_path / "full", "last"))
    two = load_checkpoint(checkpoint_path(tmp_path / "cut", "last"))
    assert one["epoch"] == two["epoch"] == 3
    assert one["rng"] == two["rng"]
    for a, b in zip(one["optimizer"]["state"], two["optimizer"]["state"]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_resume_of_a_finished_run_does_nothing_and_still_writes_json(tmp_path):
    data = _toy_dataset()
    _fit(_config(epochs=2), data, checkpoint_dir=tmp_path / "c")
    out = tmp_path / "again.json"
    again = _fit(_config(epochs=2), data, checkpoint_dir=tmp_path / "c", resume=True, out=out)
    saved = json.loads(out.read_text())
    assert saved["finished"] is True and len(saved["epochs"]) == 2
    assert again["best_epoch"] in (1, 2)


def test_resume_refuses_a_different_config_and_cleans_temporary_files(tmp_path):
    data = _toy_dataset()
    _fit(_config(epochs=1), data, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="k: checkpoint 4 vs 5"):
        _fit(_config(k=5), data, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _fit(_config(), data, checkpoint_dir=tmp_path / "none", resume=True)
    (tmp_path / ".tmp-killed-last.npz").write_bytes(b"half")
    _fit(_config(epochs=2), data, checkpoint_dir=tmp_path, resume=True)
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "last.npz"]


def test_a_new_run_does_not_replace_another_runs_checkpoint(tmp_path):
    data = _toy_dataset()
    _fit(_config(epochs=1), data, checkpoint_dir=tmp_path)
    before = (tmp_path / "last.npz").read_bytes()
    with pytest.raises(ValueError, match="already holds a run's checkpoint"):
        _fit(_config(epochs=1, seed=9), data, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.npz").read_bytes() == before
    _fit(_config(epochs=1, seed=9), data, checkpoint_dir=tmp_path, overwrite=True)
    assert load_checkpoint(tmp_path / "last.npz")["config"]["seed"] == 9


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = _toy_dataset()
    steps_per_epoch = len(data.y_train) // 10
    calls = {"n": 0}
    original = MLP_TASK.loss

    def poisoned(model, batch):
        calls["n"] += 1
        loss, grad = original(model, batch)
        if calls["n"] > 1 + steps_per_epoch + 3:  # warm-up, epoch 1, then step 4 of epoch 2
            return float("nan"), grad
        return loss, grad

    monkeypatch.setattr(MLP_TASK, "loss", poisoned)
    out = tmp_path / "results.json"
    with pytest.raises(TrainingDiverged,
                       match=r"loss is nan at epoch 2, step 4/12.*epoch 1\) is kept") as info:
        _fit(_config(), data, checkpoint_dir=tmp_path / "ck", out=out)
    assert load_checkpoint(tmp_path / "ck" / "last.npz")["epoch"] == 1
    assert len(info.value.results["epochs"]) == 1
    saved = json.loads(out.read_text())
    assert "diverged" in saved["stopped"] and saved["finished"] is False
    assert sorted(os.listdir(tmp_path / "ck")) == ["best.npz", "last.npz"]


@pytest.mark.parametrize("overrides", [dict(), dict(k=None), dict(selection="unified")])
def test_real_divergence_of_the_mlp_stops_cleanly(tmp_path, overrides):
    """SGD at lr 1e30 really overflows (no faked loss): a clean stop, nothing non-finite saved."""
    data = _toy_dataset()
    with pytest.raises(TrainingDiverged, match="training diverged: .* at epoch 1, step"):
        _fit(_config(optimizer="sgd", lr=1e30, **overrides), data, checkpoint_dir=tmp_path)
    assert not (tmp_path / "last.npz").exists()
    for name in os.listdir(tmp_path):
        state = load_checkpoint(tmp_path / name)
        assert all(np.isfinite(p).all() for p in state["params"].values())


def test_train_step_refuses_non_finite_gradients_without_updating():
    model = MLP_TASK.build_model(_config(), {"n_features": 12, "n_classes": 3},
                                 np.random.default_rng(0))
    from meprop_numba.training import build_optimizer

    optimizer = build_optimizer(_config(), model.parameters())
    before = [p.copy() for p in model.parameters()]
    x = np.full((4, 12), np.inf, dtype=np.float32)
    with pytest.raises(TrainingDiverged):
        train_step(model, optimizer, MLP_TASK.loss, (x, np.zeros(4, dtype=np.int64)))
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_stops_with_the_checkpoint_and_json_intact(tmp_path, monkeypatch):
    data = _toy_dataset()
    calls = {"n": 0}
    original = MLP_TASK.loss

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] == 1 + 12 + 5:
            raise KeyboardInterrupt
        return original(model, batch)

    monkeypatch.setattr(MLP_TASK, "loss", interrupted)
    out = tmp_path / "r.json"
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 2, step 5/12") as info:
        _fit(_config(), data, checkpoint_dir=tmp_path / "ck", out=out)
    assert len(info.value.results["epochs"]) == 1
    assert load_checkpoint(tmp_path / "ck" / "last.npz")["epoch"] == 1
    saved = json.loads(out.read_text())
    assert saved["stopped"].startswith("interrupted") and saved["finished"] is False


def test_checkpoint_write_is_atomic_and_a_full_disk_is_reported(tmp_path, monkeypatch):
    data = _toy_dataset()
    _fit(_config(epochs=1), data, checkpoint_dir=tmp_path)
    before = (tmp_path / "last.npz").read_bytes()

    def full_disk(fh, **arrays):
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*: No space left on device \(the previous"):
        _fit(_config(epochs=2), data, checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / "last.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "last.npz"]


def test_files_are_created_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _fit(_config(epochs=1), checkpoint_dir=tmp_path / "ck", out=tmp_path / "r.json")
    finally:
        os.umask(old)
    for path in (tmp_path / "ck" / "last.npz", tmp_path / "ck" / "best.npz", tmp_path / "r.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def _damaged(tmp_path, how):
    good = tmp_path / "good.npz"
    save_checkpoint(good, task="mlp", params={"0.weight": np.arange(2000.0)}, epoch=1,
                    config={}, extra_state={})
    raw = bytearray(good.read_bytes())
    bad = tmp_path / f"{how}.npz"
    if how == "empty":
        raw = b""
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "bitflip":
        raw[len(raw) // 3] ^= 0x10  # inside the parameter array's bytes
    elif how == "foreign":
        buf = io.BytesIO()
        np.savez(buf, weights=np.zeros(3))
        raw = buf.getvalue()
    elif how == "text":
        raw = b"not a zip file at all"
    bad.write_bytes(bytes(raw))
    return bad


@pytest.mark.parametrize("how,message", [
    ("empty", "the file is empty"),
    ("truncated", "truncated or damaged"),
    ("bitflip", "truncated or damaged"),
    ("foreign", "not a meprop_numba checkpoint"),
    ("text", "truncated or damaged"),
])
def test_unusable_checkpoints_give_a_clear_error_naming_the_file(tmp_path, how, message):
    bad = _damaged(tmp_path, how)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    save_checkpoint(path, task="pos", params={}, epoch=1)
    with pytest.raises(CheckpointError, match="a checkpoint of task 'pos', not 'mlp'"):
        load_checkpoint(path, task="mlp")


def test_compare_runs_dense_and_meprop_with_the_same_seed():
    data = _toy_dataset()
    both = compare(MLP_TASK, _config(epochs=1), data, progress=False)
    assert both["dense"]["config"]["k"] is None and both["meprop"]["config"]["k"] == 4
    assert both["dense"]["model"].linear_layers[0].k is None
    assert set(both["speedup"]) == {"forward", "backward", "backward_linear", "optimizer", "train"}
    assert all(v > 0 for v in both["speedup"].values())
    with pytest.raises(ValueError, match="meProp config"):
        compare(MLP_TASK, _config(k=None), data, progress=False)


def test_results_json_is_valid_with_missing_values(tmp_path):
    """No dev images (fewer than 12 training images): null, never NaN, in the JSON."""
    data = _toy_dataset(n_train=11, n_dev=0)
    out = tmp_path / "r.json"
    results = _fit(_config(epochs=1, batch_size=5), data, out=out)
    text = out.read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    assert saved["epochs"][0]["dev_accuracy"] is None and saved["best_epoch"] is None
    assert results["finished"] is True
    write_json(tmp_path / "n.json", {"x": float("nan"), "y": [float("inf")]})
    assert json.loads((tmp_path / "n.json").read_text()) == {"x": None, "y": [None]}


@pytest.mark.parametrize("bad", [
    dict(k=0), dict(k=17), dict(k=(4,)), dict(k=(4, 40)), dict(selection="best"),
    dict(optimizer="rmsprop"), dict(lr=-1.0), dict(lr=float("nan")), dict(dropout=1.0),
    dict(dtype="float16"), dict(batch_size=0), dict(threads=10 ** 6), dict(evals_per_epoch=0),
    dict(dev_size=-1),
])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        _fit(dataclasses.replace(_config(), **bad))


def test_bad_runs_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="batch_size 1000 exceeds the 120 training images"):
        _fit(_config(batch_size=1000))
    with pytest.raises(ValueError, match="error feedback"):  # host only; the MLP's default has it on
        _fit(_config(device="cuda"))
    with pytest.raises(ValueError, match="simplify"):
        _fit(_config(device="cuda", error_feedback=0.0, simplify=0.1))


@pytest.mark.parametrize("case", ["out_is_dir", "out_is_checkpoint", "out_missing_dir",
                                  "ckpt_is_file", "out_unwritable"])
def test_output_paths_are_checked_up_front(tmp_path, case):
    ck = tmp_path / "ck"
    kwargs = {}
    if case == "out_is_dir":
        kwargs = dict(out=tmp_path)
    elif case == "out_is_checkpoint":
        kwargs = dict(out=ck / "last.npz", checkpoint_dir=ck)
        ck.mkdir()
    elif case == "out_missing_dir":
        kwargs = dict(out=tmp_path / "nowhere" / "r.json")
    elif case == "ckpt_is_file":
        (tmp_path / "file").write_text("x")
        kwargs = dict(checkpoint_dir=tmp_path / "file")
    elif case == "out_unwritable":
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        kwargs = dict(out=locked / "r.json")
    with pytest.raises(ValueError, match="out:|checkpoint_dir:"):
        check_outputs(**kwargs)
    calls = {"n": 0}
    with pytest.raises(ValueError):
        _fit(_config(), **kwargs, log=lambda line: calls.update(n=calls["n"] + 1))
    assert calls["n"] == 0  # nothing trained


def test_atomic_write_leaves_no_temporary_file_on_error(tmp_path):
    def broken(fh):
        fh.write(b"x")
        raise OSError(5, "I/O error")

    with pytest.raises(OSError, match="cannot write"):
        atomic_write(tmp_path / "f", broken)
    assert os.listdir(tmp_path) == []


def test_simplify_prunes_on_schedule_and_resumes_bit_identically(tmp_path):
    data = _toy_dataset()
    over = dict(simplify=0.2, simplify_cycle=1, simplify_parts=3, epochs=3, lr=0.01)
    full = _fit(_config(**over), data, checkpoint_dir=tmp_path / "full")
    sizes = [e["hidden_sizes"] for e in full["epochs"]]
    assert sizes[0] != [16, 16], "the case must exercise a removal"
    assert sizes[1] == sizes[0]  # epoch 2: an odd cycle, no prune
    assert full["model"].hidden_sizes == sizes[2]
    _fit(_config(**{**over, "epochs": 1}), data, checkpoint_dir=tmp_path / "cut")
    resumed = _fit(_config(**over), data, checkpoint_dir=tmp_path / "cut", resume=True)
    for (name, a), (_, b) in zip(full["model"].named_parameters(),
                                 resumed["model"].named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    last, _, _ = load_model(MLP_TASK, tmp_path / "full", "last")
    for a, b in zip(last.parameters(), full["model"].parameters()):
        np.testing.assert_array_equal(a, b)
    best, _, state = load_model(MLP_TASK, tmp_path / "full", "best")
    assert MLP_TASK.evaluate(best, data, "dev")["accuracy"] == state["best"]["dev_accuracy"]


def test_simplify_with_p_zero_trains_exactly_as_without():
    data = _toy_dataset()
    plain = _fit(_config(epochs=2), data)
    simp = _fit(_config(epochs=2, simplify=0.0, simplify_cycle=1, simplify_parts=4), data)
    for a, b in zip(plain["model"].parameters(), simp["model"].parameters()):
        np.testing.assert_array_equal(a, b)


def test_simplify_is_refused_where_the_model_has_no_prunable_layer():
    from meprop_numba.nn import LSTM
    from meprop_numba import Adam

    lstm = LSTM(3, 4, rng=0)
    with pytest.raises(ValueError, match="simplify"):
        loop_module._simplifier(_config(simplify=0.1), lstm, Adam(lstm.parameters()), None)
    with pytest.raises(ValueError, match="simplify"):
        _config(simplify=1.0).validate()
