"""The meprop-numba command on tiny runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from meprop_numba import cli
from meprop_numba.data import write_idx


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A tiny MNIST-format dataset: class = which image quadrant is bright."""
    directory = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, 4, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, 14 * r:14 * r + 14, 14 * q:14 * q + 14] += 150
        return images, labels

    for prefix, n in (("train", 96), ("t10k", 24)):
        images, labels = make(n)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def _tiny(idx_dir, *extra):
    return ["train", "--dataset", str(idx_dir), "--hidden", "16", "--k", "4", "--epochs", "2",
            "--batch-size", "8", "--no-progress", *extra]


def test_train_prints_table_and_writes_json(idx_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(_tiny(idx_dir, "--out", str(out), "--mode", "unified", "--dropout", "0.1")) == 0
    text = capsys.readouterr().out
    assert "meProp k=4 unified" in text and "backward s" in text and "best dev" in text
    assert "88 train / 8 dev / 24 test" in text
    results = json.loads(out.read_text())
    assert len(results["epochs"]) == 2 and results["config"]["dropout"] == 0.1


def test_compare_prints_speedups(idx_dir, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli.main(_tiny(idx_dir, "--compare", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "dense" in text and "speed-up of meProp k=4 topk over dense" in text
    both = json.loads(out.read_text())
    assert both["dense"]["config"]["k"] is None and both["meprop"]["config"]["k"] == 4
    assert both["speedup"]["backward"] > 0


def test_resume_through_the_command(idx_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt), "--epochs", "1", "--optimizer", "adagrad")) == 0
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--epochs", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming meProp k=4 topk" in text
    from meprop_numba.train import load_checkpoint

    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and state["config"]["optimizer"] == "adagrad"


@pytest.mark.parametrize("argv,message", [
    (["--device", "cuda"], "not available yet"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--k", "none", "--compare"], "--compare needs a meProp --k"),
])
def test_errors_exit_with_status_2(idx_dir, capsys, argv, message):
    assert cli.main(_tiny(idx_dir, *argv)) == 2
    assert message in capsys.readouterr().err


def test_bad_option_values_are_refused(capsys):
    for argv in (["train", "--k", "-3"], ["train", "--lr", "0"], ["train", "--dropout", "1.5"],
                 ["train", "--mode", "best"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2


def test_missing_dataset_is_reported(tmp_path, capsys):
    assert cli.main(["train", "--dataset", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "cannot load dataset" in capsys.readouterr().err


def test_a_new_task_is_one_registry_entry(monkeypatch, capsys):
    seen = {}

    def add(parser):
        parser.add_argument("--tags", type=int, default=17)

    def run(args):
        seen.update(tags=args.tags, epochs=args.epochs, optimizer=args.optimizer)
        return 0

    monkeypatch.setitem(cli.TASKS, "toy", cli.Task("a toy task", add, run))
    assert cli.main(["train", "--task", "toy", "--tags", "5", "--epochs", "3"]) == 0
    assert seen == {"tags": 5, "epochs": 3, "optimizer": "adam"}


def test_python_dash_m_help():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "meprop_numba", "train", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0
    for option in ("--dataset", "--compare", "--dense-update", "--resume", "--task", "--threads"):
        assert option in proc.stdout


def test_pos_task_is_registered_with_its_own_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--task", "pos", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--pos-dir" in help_text and "--optimizer" in help_text
    assert "--compare" not in help_text  # an MLP-only option


def test_diverging_run_exits_with_status_3_and_keeps_the_checkpoint(idx_dir, tmp_path, capsys, monkeypatch):
    from meprop_numba import train as train_module

    original = train_module.softmax_cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_2(logits, labels):
        calls["n"] += 1
        loss, grad = original(logits, labels)
        return (float("inf"), grad) if calls["n"] > 1 + 11 else (loss, grad)  # warm-up + 11 steps

    monkeypatch.setattr(train_module, "softmax_cross_entropy", nan_in_epoch_2)
    ckpt = tmp_path / "ckpt"
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt))) == 3
    assert "training diverged: loss is inf at epoch 2" in capsys.readouterr().err
    from meprop_numba.train import load_checkpoint

    assert load_checkpoint(ckpt)["epoch"] == 1
