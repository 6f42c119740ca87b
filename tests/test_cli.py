"""The meprop-numba command on tiny runs: train, compare, resume, evaluate, predict, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from meprop_numba import cli
from meprop_numba.data import write_idx
from meprop_numba.tasks import TASKS
from meprop_numba.training import load_checkpoint


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
    assert cli.main(_tiny(idx_dir, "--out", str(out), "--selection", "unified",
                          "--dropout", "0.1")) == 0
    text = capsys.readouterr().out
    assert "meProp k=4 unified" in text and "backward s" in text and "best dev" in text
    assert "88 train / 8 dev / 24 test" in text
    results = json.loads(out.read_text())
    assert len(results["epochs"]) == 2 and results["config"]["dropout"] == 0.1
    assert results["config"]["selection"] == "unified" and results["finished"] is True
    # The test accuracy at the best dev epoch is printed, not only stored.
    best = results["best"]
    assert f"test accuracy there {100 * best['test_accuracy']:.2f}%" in text


def test_dev_size_and_evals_per_epoch(idx_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(_tiny(idx_dir, "--dev-size", "16", "--evals-per-epoch", "2",
                          "--out", str(out))) == 0
    assert "80 train / 16 dev / 24 test" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert [e["step"] for e in results["evaluations"]] == [5, 10, 5, 10]


def test_compare_prints_speedups(idx_dir, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli.main(_tiny(idx_dir, "--compare", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "dense" in text and "speed-up of meProp k=4 topk over dense" in text
    both = json.loads(out.read_text())
    assert both["dense"]["config"]["k"] is None and both["meprop"]["config"]["k"] == 4
    assert both["speedup"]["backward"] > 0


def test_resume_evaluate_and_predict_through_the_command(idx_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt), "--epochs", "1",
                          "--optimizer", "adagrad")) == 0
    capsys.readouterr()
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--epochs", "2",
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming from epoch 1" in text
    state = load_checkpoint(ckpt / "last.npz")
    assert state["epoch"] == 2 and state["config"]["optimizer"] == "adagrad"
    assert state["config"]["lr"] == 0.1

    # evaluate: the best checkpoint by default, its dev accuracy as recorded in training.
    best = load_checkpoint(ckpt / "best.npz")
    assert cli.main(["evaluate", "--checkpoint-dir", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert f"dev accuracy {100 * best['best']['dev_accuracy']:.2f}%" in text
    assert cli.main(["evaluate", "--checkpoint-dir", str(ckpt), "--split", "test"]) == 0
    assert "test accuracy" in capsys.readouterr().out

    # predict: IDX and .npy input give the same labels as the model itself.
    model, config, _ = __import__("meprop_numba.training", fromlist=["load_model"]).load_model(
        TASKS["mlp"], ckpt)
    images = np.random.default_rng(1).integers(0, 255, (7, 28, 28)).astype(np.uint8)
    expected = model.predict((images.reshape(7, -1) / 255.0).astype(np.float32))
    np.save(tmp_path / "x.npy", images)
    write_idx(tmp_path / "x-idx3-ubyte", images)
    for name in ("x.npy", "x-idx3-ubyte"):
        assert cli.main(["predict", "--checkpoint-dir", str(ckpt), str(tmp_path / name)]) == 0
        lines = capsys.readouterr().out.split()
        assert [int(v) for v in lines] == expected.tolist()
    out = tmp_path / "labels.txt"
    assert cli.main(["predict", "--checkpoint-dir", str(ckpt), str(tmp_path / "x.npy"),
                     "--out", str(out)]) == 0
    assert [int(v) for v in out.read_text().split()] == expected.tolist()
    np.save(tmp_path / "wrong.npy", np.zeros((2, 10, 10), np.uint8))
    assert cli.main(["predict", "--checkpoint-dir", str(ckpt), str(tmp_path / "wrong.npy")]) == 2
    assert "do not give the model's 784 features" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--device", "cuda"], "error feedback and selection='balanced' run on the host only"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--k", "none", "--compare"], "--compare needs a meProp --k"),
    (["--k", "17"], "k must be at most 16"),
    (["--k", "4,4,4"], "k lists 3 values for 2 hidden layers"),
    (["--batch-size", "500"], "batch_size 500 exceeds the 88 training images"),
    (["--threads", "100000"], "threads must be at most"),
    (["--dev-size", "-1"], "dev_size"),
])
def test_errors_exit_with_status_2(idx_dir, capsys, argv, message):
    assert cli.main(_tiny(idx_dir, *argv)) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "epoch" not in captured.out  # refused before any training


def test_output_paths_are_refused_before_training(idx_dir, tmp_path, capsys):
    ckpt = tmp_path / "ck"
    assert cli.main(_tiny(idx_dir, "--out", str(tmp_path))) == 2
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(tmp_path / "f"))) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert cli.main(_tiny(idx_dir, "--epochs", "1", "--checkpoint-dir", str(ckpt))) == 0
    capsys.readouterr()
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt), "--out",
                          str(ckpt / "last.npz"), "--overwrite")) == 2
    assert "checkpoint file" in capsys.readouterr().err
    # Another run into the same directory: refused unless --overwrite.
    before = (ckpt / "last.npz").read_bytes()
    assert cli.main(_tiny(idx_dir, "--epochs", "1", "--checkpoint-dir", str(ckpt))) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (ckpt / "last.npz").read_bytes() == before
    assert cli.main(_tiny(idx_dir, "--epochs", "1", "--seed", "5", "--checkpoint-dir", str(ckpt),
                          "--overwrite")) == 0
    assert load_checkpoint(ckpt / "last.npz")["config"]["seed"] == 5


def test_damaged_checkpoints_exit_2_naming_the_file(idx_dir, tmp_path, capsys):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "last.npz").write_bytes(b"")
    (ckpt / "best.npz").write_bytes(b"PK\x03\x04 truncated")
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--no-progress"]) == 2
    assert f"{ckpt / 'last.npz'}: not a usable checkpoint (the file is empty)" in \
        capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint-dir", str(ckpt)]) == 2
    assert f"{ckpt / 'best.npz'}: not a usable checkpoint" in capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint-dir", str(tmp_path / "none")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_bad_option_values_are_refused(capsys):
    for argv in (["train", "--k", "-3"], ["train", "--k", "0"], ["train", "--lr", "0"],
                 ["train", "--dropout", "1.5"], ["train", "--selection", "best"],
                 ["train", "--mode", "unified"], ["train", "--threads", "0"],
                 ["train", "--task", "pos", "--k", "0"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2


def test_missing_dataset_is_reported(tmp_path, capsys):
    assert cli.main(["train", "--dataset", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "cannot use the data" in capsys.readouterr().err


def test_diverging_run_exits_with_status_3_and_keeps_the_checkpoint(idx_dir, tmp_path, capsys,
                                                                     monkeypatch):
    task = TASKS["mlp"]
    original = task.loss
    calls = {"n": 0}

    def inf_in_epoch_2(model, batch):
        calls["n"] += 1
        loss, grad = original(model, batch)
        return (float("inf"), grad) if calls["n"] > 1 + 11 else (loss, grad)  # warm-up + 11

    monkeypatch.setattr(task, "loss", inf_in_epoch_2)
    ckpt = tmp_path / "ckpt"
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt))) == 3
    assert "training diverged: loss is inf at epoch 2" in capsys.readouterr().err
    assert load_checkpoint(ckpt / "last.npz")["epoch"] == 1


def test_real_divergence_exits_3(idx_dir, tmp_path, capsys):
    assert cli.main(_tiny(idx_dir, "--optimizer", "sgd", "--lr", "1e30")) == 3
    captured = capsys.readouterr()
    assert "training diverged" in captured.err and "Traceback" not in captured.err


def test_ctrl_c_prints_one_line_and_exits_130(idx_dir, tmp_path, capsys, monkeypatch):
    task = TASKS["mlp"]
    original = task.loss
    calls = {"n": 0}

    def interrupt(model, batch):
        calls["n"] += 1
        if calls["n"] == 1 + 11 + 2:
            raise KeyboardInterrupt
        return original(model, batch)

    monkeypatch.setattr(task, "loss", interrupt)
    ckpt = tmp_path / "ck"
    assert cli.main(_tiny(idx_dir, "--checkpoint-dir", str(ckpt))) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"interrupted: interrupted at epoch 2, step 2/11; last "
                                        f"checkpoint (epoch 1) at {ckpt / 'last.npz'}"]
    assert load_checkpoint(ckpt / "last.npz")["epoch"] == 1


def test_every_task_gets_the_shared_options_and_its_own_defaults(capsys):
    for name, task in TASKS.items():
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--task", name, "--help"])
        assert info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for option in ("--compare", "--threads", "--overwrite", "--evals-per-epoch",
                       "--eval-test", "--out", "--checkpoint-dir"):
            assert option in text, (name, option)
        defaults = task.config_class()
        assert f"minibatch size (default {defaults.batch_size})" in text
        assert f"adagrad {defaults.DEFAULT_LR['adagrad']:g}" in text
    args = cli.build_parser("pos").parse_args(["train", "--task", "pos"])
    assert args.batch_size == 1 and args.k == 10


def test_a_new_task_is_one_registry_entry(monkeypatch, capsys):
    from meprop_numba.tasks.mlp import MLPTask

    class Toy(MLPTask):
        name = "toy"
        help = "a toy task"

        def add_arguments(self, parser):
            super().add_arguments(parser)
            parser.add_argument("--tags", type=int, default=17)

    monkeypatch.setitem(TASKS, "toy", Toy())
    args = cli.build_parser("toy").parse_args(["train", "--task", "toy", "--tags", "5"])
    assert args.tags == 5 and args.optimizer == "adam"
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "toy", "--help"])
    assert "--tags" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_help():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "meprop_numba", "train", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0
    for option in ("--dataset", "--compare", "--dense-update", "--resume", "--task", "--threads",
                   "--selection", "--dev-size", "--simplify", "--simplify-cycle"):
        assert option in proc.stdout
    for command in ("evaluate", "predict"):
        proc = subprocess.run([sys.executable, "-m", "meprop_numba", command, "--help"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and "--checkpoint-dir" in proc.stdout


def test_per_layer_k_trains_resumes_and_predicts(idx_dir, tmp_path, capsys):
    ckpt = tmp_path / "ck"
    assert cli.main(_tiny(idx_dir, "--k", "4,none", "--epochs", "1",
                          "--checkpoint-dir", str(ckpt))) == 0
    assert "meProp k=4,none topk" in capsys.readouterr().out
    state = load_checkpoint(ckpt / "last.npz")
    assert state["config"]["k"] == [4, None]
    from meprop_numba.training import load_model

    model, config, _ = load_model(TASKS["mlp"], ckpt)
    assert config.k == (4, None)
    assert [layer.k for layer in model.linear_layers] == [4, None, None]
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--epochs", "2",
                     "--no-progress"]) == 0
    assert load_checkpoint(ckpt / "last.npz")["epoch"] == 2


def test_a_full_disk_is_one_clear_message_and_the_old_checkpoint_survives(idx_dir, tmp_path,
                                                                          capsys, monkeypatch):
    ckpt = tmp_path / "ck"
    assert cli.main(_tiny(idx_dir, "--epochs", "1", "--checkpoint-dir", str(ckpt))) == 0
    before = (ckpt / "last.npz").read_bytes()
    capsys.readouterr()

    def full_disk(fh, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--epochs", "2",
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert (ckpt / "last.npz").read_bytes() == before
    assert sorted(os.listdir(ckpt)) == ["best.npz", "last.npz"]


def test_simplify_trains_resumes_and_predicts_through_the_command(idx_dir, tmp_path, capsys):
    from meprop_numba.training import load_model

    ckpt = tmp_path / "ck"
    options = ("--simplify", "0.2", "--simplify-cycle", "1", "--simplify-parts", "3")
    assert cli.main(_tiny(idx_dir, *options, "--epochs", "1", "--checkpoint-dir", str(ckpt))) == 0
    state = load_checkpoint(ckpt / "last.npz")
    sizes = state["simplify"]["hidden_sizes"]
    assert state["config"]["simplify"] == 0.2 and state["config"]["simplify_parts"] == 3
    assert sizes != [16, 16], "the case must exercise a removal"
    weights = sorted((k for k in state["params"] if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
    assert state["params"][weights[1]].shape == (sizes[1], sizes[0])
    # Epoch 2 is in an odd cycle (no prune): resuming keeps the widths; epoch 3 prunes again.
    assert cli.main(["train", "--checkpoint-dir", str(ckpt), "--resume", "--epochs", "3",
                     "--no-progress"]) == 0
    history = load_checkpoint(ckpt / "last.npz")["history"]
    assert history[1]["hidden_sizes"] == sizes
    capsys.readouterr()
    model, _, _ = load_model(TASKS["mlp"], ckpt, "last")
    assert model.hidden_sizes == history[2]["hidden_sizes"]
    images = np.random.default_rng(2).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    assert cli.main(["predict", "--checkpoint-dir", str(ckpt), "--which", "last",
                     str(tmp_path / "x.npy")]) == 0
    expected = model.predict((images.reshape(5, -1) / 255.0).astype(np.float32))
    assert [int(v) for v in capsys.readouterr().out.split()] == expected.tolist()
    assert cli.main(["evaluate", "--checkpoint-dir", str(ckpt)]) == 0  # best.npz, its own widths
