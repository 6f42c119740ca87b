"""Data-parallel meProp over gloo processes on 127.0.0.1 (meprop_numba.torch.distributed)."""
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'meprop_numba[torch]')")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this PyTorch build has no torch.distributed gloo backend", allow_module_level=True)

from meprop_numba.torch.distributed import MePropDataParallel, choose_reduction, launch_local  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
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
