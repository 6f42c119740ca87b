"""Data-parallel meProp over gloo processes on 127.0.0.1: PyTorch models (meprop_numba.torch.distributed)
and the package's own trainer (meprop_numba.training.distributed, through the command line)."""
import dataclasses
import json
import os
import sys

import numpy as np

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'meprop_numba[torch]')")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this PyTorch build has no torch.distributed gloo backend", allow_module_level=True)

from meprop_numba.tasks import TASKS  # noqa: E402
from meprop_numba.torch.distributed import MePropDataParallel, choose_reduction, launch_local  # noqa: E402
from meprop_numba.training import fit  # noqa: E402
from meprop_numba.training.checkpoint import load_checkpoint  # noqa: E402
from meprop_numba.training.distributed import DataParallel, torchrun_world  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
NATIVE_WORKER = os.path.join(os.path.dirname(__file__), "dist_native_worker.py")
ENV = {"PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                      os.environ.get("PYTHONPATH", "")])}
sys.path.insert(0, os.path.dirname(__file__))
import dist_worker  # noqa: E402  (the model, data and settings the ranks use)


def _run(scenario, world, tmp_path, timeout=240):
    procs = launch_local([WORKER, scenario, tmp_path], world, timeout=timeout, env=ENV)
    return procs, [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) if (tmp_path / f"rank{r}.pt").exists()
                   else None for r in range(world)]


@pytest.fixture(scope="module", params=[2, pytest.param(3, marks=pytest.mark.slow)], ids=["2ranks", "3ranks"])
def trained(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"dist{request.param}")
    procs, results = _run("equivalence", request.param, tmp)
    for p in procs:
        assert p.returncode == 0, p.stderr[-4000:]
    return request.param, results, tmp


def _max_diff(a, b):
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.parametrize("case", [("unified", "auto"), ("topk", "sparse"), ("topk", "dense"), ("topk", "auto")])
def test_ranks_with_batch_B_train_as_one_process_with_batch_NB(trained, case):
    world, results, _ = trained
    single = results[0][case]["single"]  # one process on the whole batch, the layers' own backward
    for r in range(world):
        assert results[r][case]["weights"].keys() == single.keys()
        assert _max_diff(results[r][case]["weights"], single) < 1e-12


@pytest.mark.parametrize("reduction", ["sparse", "dense"])
def test_lstm_row_sparse_gradients_are_reduced_over_the_union_of_rows(trained, reduction):
    world, results, _ = trained
    case = results[0]["lstm", reduction]
    assert _max_diff(case["weights"], case["single"]) < 1e-12
    for r in range(1, world):
        assert _max_diff(results[r]["lstm", reduction]["weights"], case["weights"]) < 1e-12
    assert case["choices"] == {reduction: 2 * dist_worker.STEPS}  # weight_ih and weight_hh, every step
    h, m3 = 8, dist_worker.SIZES[-1]
    assert case["bytes"]["dense"] == dist_worker.STEPS * (2 * 4 * h + m3 * h + m3) * 8  # biases, output layer


def test_replicas_stay_bitwise_equal_with_random_selection(trained):
    world, results, _ = trained
    for r in range(1, world):
        assert _max_diff(results[r]["random", "auto"]["weights"], results[0]["random", "auto"]["weights"]) == 0


def test_unified_sends_scores_and_k_rows_only(trained):
    world, results, _ = trained
    m0, m1, m2, m3 = dist_worker.SIZES
    k, steps, item = dist_worker.K, dist_worker.STEPS, 8  # float64
    sent = results[0]["unified", "auto"]["bytes"]
    assert sent["scores"] == steps * (2 * m1 + 2 * m2) * item  # |g| column sums and bias gradient
    assert sent["rows"] == steps * (k * m0 + k * m1) * item
    assert sent["dense"] == steps * (m3 * m2 + m3) * item  # the dense output layer
    assert set(sent) == {"scores", "rows", "dense", "broadcast"}


def test_auto_reduction_sends_no_more_than_either_choice(trained):
    world, results, _ = trained
    ring = {red: results[0]["topk", red]["ring"]["rows"] for red in ("sparse", "dense", "auto")}
    assert ring["auto"] <= min(ring["sparse"], ring["dense"])
    assert results[0]["topk", "sparse"]["choices"] == {"sparse": 2 * dist_worker.STEPS}


def test_checkpoint_written_by_rank_zero_only(trained):
    world, results, tmp = trained
    assert [results[r]["wrote"] for r in range(world)] == [True] + [False] * (world - 1)
    saved = torch.load(tmp / "checkpoint.pt", weights_only=True)["model"]
    model = dist_worker.make_model("unified")
    model.load_state_dict(saved)  # the wrapper adds no key: loads into the bare model
    assert _max_diff(dict(model.named_parameters()), results[0]["unified_dense_grad"]) == 0
    assert not list(tmp.glob("checkpoint.pt.tmp*"))


def test_a_torch_model_resumed_from_a_rank_zero_checkpoint_trains_as_without_the_stop(trained):
    world, results, _ = trained
    for r in range(world):
        case = results[r]["resume"]
        assert _max_diff(case["resumed"], case["straight"]) == 0  # model and lazy Adam state restored exactly
        assert _max_diff(case["resumed"], results[0]["resume"]["resumed"]) == 0  # every rank the same


def test_a_rank_that_raises_stops_the_others_with_a_clear_error(tmp_path):
    procs, results = _run("raise", 2, tmp_path, timeout=120)
    assert procs[1].returncode != 0 and "rank failure on purpose" in procs[1].stderr
    assert procs[0].returncode == 0, procs[0].stderr[-4000:]  # it stopped by itself, with our error
    message = results[0]["error"]
    assert "meProp data parallel" in message and "failed on rank 0 of 2" in message


def test_wrapper_refuses_bad_arguments_and_a_missing_process_group():
    model = dist_worker.make_model("unified")
    with pytest.raises(TypeError, match="module"):
        MePropDataParallel("model")
    with pytest.raises(ValueError, match="reduction"):
        MePropDataParallel(model, reduction="ring")
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            MePropDataParallel(model)


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 500), st.integers(2, 8), st.integers(1, 4096), st.data())
def test_choose_reduction_gathers_disjoint_rows_and_reduces_overlapping_ones(rows, world, width, data):
    counts = [rows] * world
    assert choose_reduction(counts, rows * world, width, world) == "sparse"  # disjoint: nothing to merge
    if world > 2:  # identical rows on every rank: gathering sends P-1 copies, a ring all-reduce 2(P-1)/P
        assert choose_reduction(counts, rows, width, world) == "dense"
    union = data.draw(st.integers(rows, rows * world))
    if choose_reduction(counts, union, width, world) == "dense":  # more overlap never goes back to gathering
        assert choose_reduction(counts, data.draw(st.integers(rows, union)), width, world) == "dense"


@pytest.fixture
def one_rank_group():
    import datetime

    dist = torch.distributed
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("selection", ["unified", "topk"])
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_one_rank_gives_the_layers_own_gradients_and_unwrap_restores_them(one_rank_group, selection, sparse_grad):
    x = torch.randn(7, dist_worker.SIZES[0], dtype=torch.float64)
    y = torch.randint(0, dist_worker.SIZES[-1], (7,))
    grads = {}
    for wrapped in (False, True):
        model = dist_worker.make_model(selection, sparse_grad=sparse_grad)
        net = MePropDataParallel(model) if wrapped else model
        torch.nn.functional.cross_entropy(net(x), y).backward()
        grads[wrapped] = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads[False].items():
        assert grads[True][name].layout == g.layout
        assert torch.allclose(grads[True][name].to_dense(), g.to_dense(), rtol=1e-12, atol=1e-14)
    model = net.unwrap()
    assert all("forward" not in vars(m) for m in model.modules())
    sent = dict(net.bytes_sent)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert dict(net.bytes_sent) == sent  # the unwrapped model no longer communicates
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad.to_dense(), grads[False][name].to_dense(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the native trainer

B = 10  # per-rank batch
MODEL = dict(hidden=16, layers=2, k=4, dropout=0.0, error_feedback=0.0, max_train=120, dtype="float64",
             eval_test=False)


def _cli_args(selection, epochs):
    return ["--task", "mlp", "--hidden", "16", "--layers", "2", "--k", "4", "--plain-meprop", "--max-train",
            "120", "--dtype", "float64", "--no-eval-test", "--selection", selection, "--epochs", str(epochs),
            "--dist-timeout", "60"]


def _launch(world, args, timeout=300, fail_at_step=None):
    pre = [] if fail_at_step is None else ["--fail-at-step", str(fail_at_step)]
    return launch_local([NATIVE_WORKER, *pre, "train", *args], world, timeout=timeout, env=ENV)


def _ok(runs):
    for rank, run in enumerate(runs):
        assert run.returncode == 0, f"rank {rank}: {run.stderr[-4000:]}"


def _single(tmp_path, selection, epochs, batch_size):
    """One process on the global batch, through fit (no process group)."""
    task = TASKS["mlp"]
    config = task.config_class(selection=selection, epochs=epochs, batch_size=batch_size, **MODEL)
    directory = tmp_path / f"single-{selection}-{batch_size}"
    results = fit(task, config, checkpoint_dir=directory, progress=False)
    return results, load_checkpoint(directory / "last.npz")


def _max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


@pytest.fixture(scope="module")
def two_ranks_resumed(tmp_path_factory):
    """Two ranks train epoch 1 of a unified run, then two ranks resume it to epoch 2."""
    tmp = tmp_path_factory.mktemp("native2")
    args = [*_cli_args("unified", 1), "--batch-size", str(B), "--checkpoint-dir", str(tmp / "run"),
            "--out", str(tmp / "first.json")]
    first = _launch(2, args)
    _ok(first)
    saved_first = load_checkpoint(tmp / "run" / "last.npz")
    args = [*_cli_args("unified", 2), "--batch-size", str(B), "--checkpoint-dir", str(tmp / "run"),
            "--resume", "--out", str(tmp / "resumed.json"), "--no-progress"]
    resumed = _launch(2, args)
    _ok(resumed)
    return tmp, first, saved_first, resumed


def test_two_ranks_of_batch_B_resumed_train_as_one_process_of_batch_2B(two_ranks_resumed, tmp_path):
    tmp, _, saved_first, _ = two_ranks_resumed
    single, saved = _single(tmp_path, "unified", 2, 2 * B)
    mine = load_checkpoint(tmp / "run" / "last.npz")
    assert saved_first["epoch"] == 1 and mine["epoch"] == 2
    assert mine["config"]["batch_size"] == 2 * B  # the run records the global batch
    assert mine["config"] == saved["config"]
    assert _max_abs_diff(mine["params"], saved["params"]) < 1e-12
    results = json.loads((tmp / "resumed.json").read_text())
    for a, b in zip(results["epochs"], single["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)  # every rank's examples
        assert a["dev_accuracy"] == b["dev_accuracy"]


def test_rank_zero_alone_prints_shows_progress_and_writes(two_ranks_resumed):
    tmp, first, _, resumed = two_ranks_resumed
    for runs in (first, resumed):
        assert "2 data-parallel ranks of batch 10" in runs[0].stdout
        assert "best dev accuracy" in runs[0].stdout
        assert runs[1].stdout == ""
    assert "epoch 1/1" in first[0].stderr and "epoch 1/1" not in first[1].stderr  # the progress bar
    assert "resuming from epoch 1" in resumed[0].stdout
    assert sorted(p.name for p in (tmp / "run").iterdir()) == ["best.npz", "last.npz"]


@pytest.mark.parametrize("selection, world", [
    ("topk", 2),
    pytest.param("topk", 3, marks=pytest.mark.slow),  # three ranks: the union reduction all-reduces
    pytest.param("unified", 3, marks=pytest.mark.slow),  # (two unified ranks: with resume above)
])
def test_ranks_equal_one_process_on_the_global_batch(tmp_path, world, selection):
    args = [*_cli_args(selection, 1), "--batch-size", str(B), "--checkpoint-dir", str(tmp_path / "run"),
            "--no-progress"]
    runs = _launch(world, args)
    _ok(runs)
    if selection == "topk":  # each rank keeps most of the 16 rows: gathered at 2 ranks, all-reduced at 3
        steps = 120 // (world * B)
        assert f"union reductions: {2 * steps} {'sparse' if world == 2 else 'dense'}" in runs[0].stdout
    _, saved = _single(tmp_path, selection, 1, world * B)
    assert _max_abs_diff(load_checkpoint(tmp_path / "run" / "last.npz")["params"], saved["params"]) < 1e-12


def test_a_trainer_rank_that_raises_stops_the_others_with_a_clear_error(tmp_path):
    args = [*_cli_args("unified", 2), "--batch-size", str(B), "--checkpoint-dir", str(tmp_path / "run"),
            "--no-progress", "--dist-timeout", "30"]
    runs = _launch(2, args, timeout=240, fail_at_step=8)  # in epoch 2 (6 steps an epoch)
    assert runs[1].returncode not in (0, -9) and "rank failure on purpose" in runs[1].stderr
    assert runs[0].returncode == 4, runs[0].stderr[-4000:]  # stopped by itself, not killed at the timeout
    assert "meProp data parallel" in runs[0].stderr and "failed on rank 0 of 2" in runs[0].stderr
    assert load_checkpoint(tmp_path / "run" / "last.npz")["epoch"] == 1  # the last good epoch is kept


def test_the_trainer_refuses_what_it_cannot_train_data_parallel_before_training(tmp_path):
    args = [*_cli_args("unified", 1), "--batch-size", str(B), "--simplify", "0.1", "--checkpoint-dir",
            str(tmp_path / "run")]
    (run,) = _launch(1, args, timeout=120)
    assert run.returncode == 2, run.stderr[-4000:]
    assert "simplify: model simplification cannot be trained data-parallel" in run.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_world_reads_the_environment():
    assert torchrun_world({"RANK": "0", "WORLD_SIZE": "3"}) == (0, 3)
    assert torchrun_world({"WORLD_SIZE": "3"}) is None
    with pytest.raises(ValueError, match="RANK=3"):
        torchrun_world({"RANK": "3", "WORLD_SIZE": "3"})
    with pytest.raises(ValueError, match="integers"):
        torchrun_world({"RANK": "a", "WORLD_SIZE": "3"})


def test_data_parallel_refuses_what_it_cannot_split(one_rank_group):
    task = TASKS["mlp"]
    config = task.config_class(selection="unified", epochs=1, batch_size=20, **MODEL)
    data = task.load_data(config)
    parallel = DataParallel()
    with pytest.raises(ValueError, match="reduction"):
        DataParallel(reduction="ring")
    with pytest.raises(ValueError, match="tuples of per-example arrays"):
        parallel.shard({"x": np.zeros(4)})
    with pytest.raises(ValueError, match="simplify"):
        parallel.check(task, dataclasses.replace(config, simplify=0.1), data)
    parallel.check(task, config, data)
    x, y, flag = parallel.shard((np.arange(6.0), np.arange(6), True))
    assert x.tolist() == list(range(6)) and flag is True  # one rank keeps the whole batch


def test_one_rank_trains_as_without_data_parallel(one_rank_group, tmp_path):
    task = TASKS["mlp"]
    config = task.config_class(selection="unified", epochs=1, batch_size=20, **MODEL)
    parallel = DataParallel()
    with_dp = fit(task, config, progress=False, parallel=parallel)
    without = fit(task, config, progress=False)
    assert _max_abs_diff(with_dp["model"].state_dict(), without["model"].state_dict()) < 1e-12
    n_steps = 120 // 20
    assert parallel.bytes_sent["scores"] == n_steps * 2 * 16 * 8  # two hidden layers' column scores
    assert sorted(parallel.bytes_sent) == ["broadcast", "dense", "other", "scores"]


def test_close_leaves_the_group_init_from_env_joined_and_only_that(monkeypatch):
    import datetime

    from meprop_numba.torch.distributed import _free_port

    dist = torch.distributed
    from meprop_numba.training.distributed import init_from_env

    for name, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(name, value)
    parallel = init_from_env(timeout=30)
    assert dist.is_initialized()
    parallel.close()
    assert not dist.is_initialized()  # an exit in the group could abort in gloo's threads
    parallel.close()  # a second call does nothing
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        DataParallel().close()
        assert dist.is_initialized()  # the caller's own group stays
    finally:
        dist.destroy_process_group()
