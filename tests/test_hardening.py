"""Hostile use of the public API: inputs changed after the call that checked them,
replaced or aliased parameters, corrupted checkpoints, values that only break
after the cast to float32, and calls from several threads.

Every call must either give the reference result or raise a named error with
all state unchanged.  Cases that crashed the interpreter run in a child
process, so a regression fails its test instead of killing the test run.
"""
import copy
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import meprop_numba as mp
from meprop_numba.nn.embedding import Embedding
from reference import (
    AdaGradReference,
    AdamReference,
    SGDReference,
    assert_identical,
    densify,
    examples,
    masked_backward_reference,
    selection_mask,
    snapshot,
    topk_reference,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent

OPTIMIZERS = {
    "sgd": (lambda p: mp.SGD(p, lr=0.5), lambda shape: SGDReference(shape, lr=0.5)),
    "momentum": (lambda p: mp.SGD(p, lr=0.5, momentum=0.5),
                 lambda shape: SGDReference(shape, lr=0.5, momentum=0.5)),
    "adam": (lambda p: mp.Adam(p, lr=0.01), lambda shape: AdamReference(shape, lr=0.01)),
    "adagrad": (lambda p: mp.AdaGrad(p, lr=0.1), lambda shape: AdaGradReference(shape, lr=0.1)),
}


def run_child(code, timeout=240, env=None):
    """Run `code` in a fresh interpreter; return (exit status, stdout + stderr)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def unchanged(opt, params):
    """A snapshot of everything an optimizer call may change."""
    return snapshot({"params": list(params), "state": opt.state_dict(), "step": opt.step_count})


# ------------------------------------------------------------ RowSparse rows
def test_row_sparse_rows_are_a_private_read_only_copy():
    rows = np.array([1, 3])
    grad = mp.RowSparse(rows, np.ones((2, 2)), (4, 2))
    rows[:] = [-1, 10**9]
    assert grad.rows.tolist() == [1, 3]
    with pytest.raises(ValueError):
        grad.rows[0] = 2
    with pytest.raises(ValueError):
        grad.rows.flags.writeable = True
    with pytest.raises(AttributeError):
        grad.rows = np.array([10**9])


def test_changing_the_callers_rows_after_construction_cannot_crash_or_misplace_a_step():
    # Before the fix: a segmentation fault (row 1e9) and an update of the last row (-1).
    status, out = run_child("""
        import numpy as np, meprop_numba as mp
        for bad in (10**9, -1):
            W = np.zeros((4, 2)); rows = np.array([0, 1])
            grad = mp.RowSparse(rows, np.ones((2, 2)), (4, 2))
            rows[1] = bad
            mp.SGD([W], lr=1.0).step([grad])
            assert W.tolist() == [[-1, -1], [-1, -1], [0, 0], [0, 0]], W
        print("ok")
    """)
    assert status == 0 and "ok" in out, out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_values_reshaped_after_construction_are_refused_before_any_change(name):
    W = np.zeros((4, 2))
    opt = OPTIMIZERS[name][0]([W])
    grad = mp.RowSparse([0, 1], np.ones((2, 2)), (4, 2))
    grad.values.shape = (4, 1)
    before = unchanged(opt, [W])
    with pytest.raises(ValueError, match=r"grads\[0\]\.values"):
        opt.step([grad])
    assert_identical(unchanged(opt, [W]), before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_row_list_is_an_empty_row_set(dtype):
    grad = mp.RowSparse([], np.zeros((0, 3), dtype), (4, 3))
    assert grad.rows.dtype == np.int64 and grad.nnz_rows == 0 and grad.dtype == dtype
    assert_identical(grad.to_dense(), np.zeros((4, 3), dtype))
    W = np.ones((4, 3), dtype)
    mp.Adam([W]).step([grad])
    assert_identical(W, np.ones((4, 3), dtype))


@pytest.mark.parametrize("shape, error", [((4.9, 3), TypeError), ((4, 3.0), TypeError),
                                          ((True, 3), TypeError), ((-1, 3), ValueError),
                                          ((4,), ValueError), (4, TypeError)])
def test_row_sparse_shape_must_be_two_integers(shape, error):
    with pytest.raises(error, match="shape"):
        mp.RowSparse([0], np.ones((1, 3)), shape)


def test_row_sparse_refuses_float_rows():
    with pytest.raises(TypeError, match="rows"):
        mp.RowSparse([1.0], np.ones((1, 3)), (4, 3))


# ---------------------------------------------------- params against state
# Each change returns a function that undoes it, so that the arrays can be compared afterwards.
def _replaced(opt, W):
    opt.params[1] = np.zeros((100, W.shape[1]), W.dtype)  # W is params[1]
    return lambda: opt.params.__setitem__(1, W)


def _appended(opt, W):
    opt.params.append(np.zeros(3, W.dtype))
    return opt.params.pop


def _read_only(opt, W):
    W.flags.writeable = False
    return lambda: setattr(W.flags, "writeable", True)


def _reshaped(opt, W):
    W.shape = (W.shape[1], W.shape[0])
    return lambda: setattr(W, "shape", (4, 2))


def _state_replaced(opt, W):
    old = dict(opt.state[1])
    opt.state[1][next(iter(old), "velocity")] = np.zeros((100, W.shape[1]), W.dtype)
    return lambda: (opt.state[1].clear(), opt.state[1].update(old))


def _state_read_only(opt, W):
    if not opt.state[1]:
        return _state_replaced(opt, W)
    array = next(iter(opt.state[1].values()))
    array.flags.writeable = False
    return lambda: setattr(array.flags, "writeable", True)


@pytest.mark.parametrize("change", [_replaced, _appended, _read_only, _reshaped, _state_replaced,
                                    _state_read_only])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_params_changed_after_construction_are_refused_before_any_change(name, change):
    # Before the fix: a replaced larger param gave a segmentation fault, an
    # appended one was silently dropped, a read-only one failed mid-step.
    W, b = np.zeros((4, 2), np.float32), np.zeros(2, np.float32)
    opt = OPTIMIZERS[name][0]([b, W])
    opt.step([np.ones(2, np.float32), np.ones((4, 2), np.float32)])
    before = unchanged(opt, [b, W])
    undo = change(opt, W)
    grads = [np.ones(2, np.float32), mp.RowSparse([0, 3], np.ones((2, 2), np.float32), (4, 2))]
    if change is _appended:
        grads.append(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="params|state"):
        opt.step(grads)
    with pytest.raises(ValueError, match="params|state"):
        opt.load_state_dict(before["state"])
    undo()
    assert_identical(unchanged(opt, [b, W]), before)


def test_a_replaced_larger_param_cannot_crash_the_interpreter():
    status, out = run_child("""
        import numpy as np, meprop_numba as mp
        W = np.zeros((4, 2))
        opt = mp.Adam([W])
        opt.params[0] = np.zeros((10**6, 2))
        try:
            opt.step([mp.RowSparse([999_999], np.ones((1, 2)), (10**6, 2))])
        except ValueError as exc:
            assert "params[0]" in str(exc)
            print("refused", opt.step_count)
    """)
    assert status == 0 and "refused 0" in out, out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_duplicate_or_overlapping_params_are_refused(name):
    W = np.zeros((4, 2))
    for params in ([W, W], [W, W[1:]], [W.reshape(-1), W]):
        with pytest.raises(ValueError, match=r"params\[1\]"):
            OPTIMIZERS[name][0](params)
    OPTIMIZERS[name][0]([W[:2], W[2:]])  # disjoint halves are two parameters


def test_lazy_must_be_a_bool():
    with pytest.raises(TypeError, match="lazy"):
        mp.Adam([np.zeros(3)], lazy="False")
    opt = mp.SGD([np.zeros(3)], lr=1.0)
    opt.lazy = "False"
    with pytest.raises(TypeError, match="lazy"):
        opt.step([np.ones(3)])
    assert opt.step_count == 0


def test_an_optimizer_survives_pickling_and_copying():
    import pickle

    W = np.zeros((3, 2))
    opt = mp.Adam([W])
    opt.step([np.ones((3, 2))])
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        clone.step([np.ones((3, 2))])
        assert clone.step_count == 2 and opt.step_count == 1
        assert not np.array_equal(clone.params[0], W)


# --------------------------------------------- hyper-parameters after the cast
@pytest.mark.parametrize("make, arg", [
    (lambda p: mp.Adam(p, eps=1e-45), "eps"),
    (lambda p: mp.AdaGrad(p, eps=1e-46), "eps"),
    (lambda p: mp.SGD(p, lr=1e39), "lr"),
    (lambda p: mp.Adam(p, lr=1e40), "lr"),
    (lambda p: mp.Adam(p, betas=(0.9, 1 - 1e-10)), r"betas\[1\]"),
    (lambda p: mp.SGD(p, lr=0.1, momentum=1 - 1e-10), "momentum"),
])
def test_hyper_parameters_are_checked_in_the_parameter_dtype(make, arg):
    with pytest.raises(ValueError, match=f"^{arg} .*float32"):
        make([np.zeros((2, 2), np.float32)])
    # the same values are usable in float64 and give finite steps
    W = np.zeros((2, 2))
    make([W]).step([np.array([[1.0, 0.0], [0.0, 0.0]])])
    assert np.isfinite(W).all()


@pytest.mark.parametrize("attr, value, error", [("lr", 1e40, ValueError), ("lr", -1.0, ValueError),
                                                ("lr", "big", TypeError), ("eps", 1e-45, ValueError),
                                                ("betas", (0.9,), ValueError)])
def test_hyper_parameters_reassigned_later_are_checked_at_step(attr, value, error):
    W = np.zeros((2, 2), np.float32)
    opt = mp.Adam([W])
    opt.step([np.ones((2, 2), np.float32)])
    before = unchanged(opt, [W])
    setattr(opt, attr, value)
    with pytest.raises(error, match=attr):
        opt.step([np.ones((2, 2), np.float32)])
    assert_identical(snapshot({"params": [W], "step": opt.step_count}),
                     {"params": before["params"], "step": before["step"]})


def test_momentum_cannot_be_switched_on_after_construction():
    opt = mp.SGD([np.zeros(2)], lr=0.1)
    opt.momentum = 0.9
    with pytest.raises(ValueError, match="momentum"):
        opt.step([np.ones(2)])


# ------------------------------------------------------------ load_state_dict
def _corruptions():
    """name -> (corrupt(state_dict) in place, error, what the case needs).

    Needs: None, a state array ("m", "v"), "two" parameters or "float32" ones.
    """
    def entry(key, value):
        return lambda sd: sd["state"][0].__setitem__(key, value)

    return {
        "step float": (lambda sd: sd.update(step=3.7), TypeError, None),
        "step bool": (lambda sd: sd.update(step=True), TypeError, None),
        "step negative": (lambda sd: sd.update(step=-1), ValueError, None),
        "lazy string": (lambda sd: sd.update(lazy="False"), TypeError, None),
        "lazy other": (lambda sd: sd.update(lazy=not sd["lazy"]), ValueError, None),
        "missing step": (lambda sd: sd.pop("step"), ValueError, None),
        "missing state": (lambda sd: sd.pop("state"), ValueError, None),
        "empty dict": (lambda sd: sd.clear(), ValueError, None),
        "wrong type": (lambda sd: sd.update(type="Optimizer"), ValueError, None),
        "hyper lr": (lambda sd: sd["hyper"].update(lr=sd["hyper"]["lr"] * 2), ValueError, None),
        "hyper missing": (lambda sd: sd["hyper"].pop("lr"), ValueError, None),
        "hyper text": (lambda sd: sd["hyper"].update(lr="fast"), TypeError, None),
        "hyper None": (lambda sd: sd.update(hyper=None), TypeError, None),
        "state None": (lambda sd: sd.update(state=None), TypeError, None),
        "entry None": (lambda sd: sd["state"].__setitem__(1, None), TypeError, "two"),
        "too few entries": (lambda sd: sd["state"].pop(), ValueError, None),
        "extra array": (entry("w", np.zeros((4, 2))), ValueError, None),
        "array None": (entry("m", None), TypeError, "m"),
        "array text": (entry("m", "zeros"), TypeError, "m"),
        "array bool": (entry("m", np.zeros((4, 2), bool)), TypeError, "m"),
        "array shape": (entry("m", np.zeros((4, 3))), ValueError, "m"),
        "array NaN": (entry("m", np.full((4, 2), np.nan)), ValueError, "m"),
        "array overflows float32": (entry("m", np.full((4, 2), 1e39)), ValueError, "float32"),
        "negative second moment": (entry("v", -np.ones((4, 2))), ValueError, "v"),
    }


@pytest.mark.parametrize("case", sorted(_corruptions()))
def test_corrupted_checkpoint_changes_nothing(case):
    corrupt, error, _ = _corruptions()[case]
    W, W2 = np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32)
    opt = mp.Adam([W, W2])
    opt.step([np.ones((4, 2), np.float32), np.ones((4, 2), np.float32)])
    source = mp.Adam([np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32)])
    for _ in range(3):
        source.step([np.full((4, 2), 0.5, np.float32), np.full((4, 2), 2.0, np.float32)])
    saved = source.state_dict()
    corrupt(saved)
    before = unchanged(opt, [W, W2])
    with pytest.raises(error):
        opt.load_state_dict(saved)
    assert_identical(unchanged(opt, [W, W2]), before)


@pytest.mark.parametrize("state", [None, [], "state", np.zeros(3)])
def test_a_checkpoint_that_is_not_a_dict_is_refused(state):
    opt = mp.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="state"):
        opt.load_state_dict(state)


def test_a_bad_second_entry_leaves_the_first_unchanged():
    W, W2 = np.zeros((4, 2)), np.zeros((4, 2))
    opt, source = mp.AdaGrad([W, W2]), mp.AdaGrad([np.zeros((4, 2)), np.zeros((4, 2))])
    source.step([np.ones((4, 2)), np.ones((4, 2))])
    saved = source.state_dict()
    saved["state"][1]["sum_sq"] = -saved["state"][1]["sum_sq"]
    with pytest.raises(ValueError, match=r"\[1\]\['sum_sq'\]"):
        opt.load_state_dict(saved)
    assert not opt.state[0]["sum_sq"].any() and opt.step_count == 0


def test_checkpoint_state_is_cast_to_the_parameter_dtype():
    source = mp.Adam([np.zeros((4, 2))])
    source.step([np.full((4, 2), 0.25)])
    target = mp.Adam([np.zeros((4, 2), np.float32)])
    target.load_state_dict(source.state_dict())
    assert target.state[0]["m"].dtype == np.float32 and target.step_count == 1
    np.testing.assert_allclose(target.state[0]["v"], source.state[0]["v"], rtol=1e-6)


# -------------------------------------------------- arguments named in errors
def test_errors_name_the_argument():
    g = np.ones((2, 3))
    with pytest.raises(ValueError, match="rng"):
        mp.random_indices(5, 2, rng=-1)
    with pytest.raises(TypeError, match="rng"):
        mp.random_indices(5, 2, rng=1.5)
    with pytest.raises(TypeError, match="unified"):
        mp.topk_indices(g, 1, unified="no")
    with pytest.raises(TypeError, match="unified"):
        mp.linear_backward(np.ones((2, 4)), np.ones((3, 4)), g, 1, unified="no")
    with pytest.raises(TypeError, match="need_dx"):
        mp.linear_backward(np.ones((2, 4)), np.ones((3, 4)), g, 1, need_dx=np.array([True, False]))


def test_indices_changed_by_another_thread_cannot_reach_the_kernel():
    # The selection is validated and used as a private copy.
    rng = np.random.default_rng(0)
    x, W, g = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
    idx = np.array([[0, 1], [2, 3], [4, 0]])
    expected = masked_backward_reference(x, W, g, selection_mask(g.shape, idx))
    dx, dW, db = mp.linear_backward(x, W, g, indices=idx)
    idx[:] = 10**9  # after the call: nothing kept a reference
    np.testing.assert_allclose(dx, expected[0], rtol=1e-12)
    np.testing.assert_allclose(dW.to_dense(), expected[1], rtol=1e-12)


# ----------------------------------------------------------------- Embedding
def test_embedding_ids_changed_between_forward_and_backward_are_ignored():
    # Before the fix: id 1e9 gave a segmentation fault, id -1 a silently dropped row.
    status, out = run_child("""
        import numpy as np
        from meprop_numba.nn.embedding import Embedding
        for bad in (10**9, -1):
            emb = Embedding(6, 2, rng=0)
            ids = np.array([[1, 4], [4, 5]])
            emb.forward(ids, train=True)
            ids[0, 0] = bad
            emb.backward(np.ones((2, 2, 2), np.float32))
            grad = emb.grads()[0]
            assert grad.rows.tolist() == [1, 4, 5], grad.rows
            assert grad.values.tolist() == [[1, 1], [2, 2], [1, 1]], grad.values
        print("ok")
    """)
    assert status == 0 and "ok" in out, out


def test_embedding_refuses_uint64_ids_beyond_int64():
    emb = Embedding(6, 2, rng=0)
    with pytest.raises(IndexError, match="ids"):
        emb.forward(np.array([2**63], dtype=np.uint64))


# ------------------------------------------------------------------- threads
def test_threaded_kernels_from_several_threads_give_the_serial_results():
    # Before the fix the workqueue layer aborted the interpreter here.
    status, out = run_child("""
        import threading
        import numpy as np, meprop_numba as mp
        from meprop_numba._config import PARALLEL_MIN_BACKWARD, PARALLEL_MIN_TOPK
        rng = np.random.default_rng(0)
        g = rng.standard_normal((256, PARALLEL_MIN_TOPK // 256)).astype(np.float32)
        B, k, m = 128, 64, PARALLEL_MIN_BACKWARD // (128 * 64)
        x = rng.standard_normal((B, m)).astype(np.float32)
        W = rng.standard_normal((256, m)).astype(np.float32)
        gb = rng.standard_normal((B, 256)).astype(np.float32)
        idx = mp.topk_indices(g, 8)
        dx, dW, db = mp.linear_backward(x, W, gb, k)
        failures = []
        def work():
            for _ in range(3):
                if not np.array_equal(mp.topk_indices(g, 8), idx):
                    failures.append("topk")
                dx2, dW2, db2 = mp.linear_backward(x, W, gb, k)
                if not (np.array_equal(dx2, dx) and np.array_equal(dW2.rows, dW.rows)
                        and np.array_equal(dW2.values, dW.values)):
                    failures.append("backward")
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("failures", failures)
    """, env={"NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"})
    assert status == 0 and "failures []" in out, out


def test_import_keeps_a_threading_layer_the_user_chose():
    status, out = run_child("""
        import numba
        numba.config.THREADING_LAYER = "threadsafe"
        import meprop_numba
        print("layer", numba.config.THREADING_LAYER)
    """, timeout=120)
    assert status == 0 and "layer threadsafe" in out, out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_optimizer_stepped_from_several_threads_loses_no_update(name):
    # Steps are applied whole, one after another: with constant gradients the
    # result equals the same number of serial steps.
    W = np.zeros((8, 4))
    opt = OPTIMIZERS[name][0]([W])
    ref_W, ref = np.zeros((8, 4)), OPTIMIZERS[name][1]((8, 4))
    grad = np.ones((8, 4))

    def work():
        for _ in range(50):
            opt.step([mp.RowSparse([1, 5], np.ones((2, 4)), (8, 4))])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(200):
        ref.step(ref_W, grad, rows=np.array([1, 5]))
    assert opt.step_count == 200
    np.testing.assert_allclose(W, ref_W, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------- hypothesis: the whole API
# An optimizer under a random sequence of actions, against the reference:
# valid row-sparse steps whose caller-side rows are then overwritten, steps
# with a poisoned gradient, corrupted checkpoints and valid ones.
ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("step"), st.sets(st.integers(0, 3), min_size=1, max_size=4),
              st.integers(-(10**9), 10**9)),
    st.tuples(st.just("nan"), st.integers(0, 3)),
    st.tuples(st.just("corrupt"), st.sampled_from(sorted(_corruptions()))),
    st.tuples(st.just("restore")),
), min_size=1, max_size=8)


@settings(deadline=None, max_examples=examples(20), suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(OPTIMIZERS)), actions=ACTIONS, seed=st.integers(0, 2**16))
def test_random_action_sequences_match_the_reference_or_change_nothing(name, actions, seed):
    rng = np.random.default_rng(seed)
    shape = (4, 2)
    W = np.zeros(shape)
    opt = OPTIMIZERS[name][0]([W])
    ref_W, ref = np.zeros(shape), OPTIMIZERS[name][1](shape)
    saved = (opt.state_dict(), W.copy(), copy.deepcopy(ref), ref_W.copy())
    for action in actions:
        before = unchanged(opt, [W])
        if action[0] == "step":
            rows = np.array(sorted(action[1]))
            values = rng.uniform(-2, 2, (len(rows), shape[1]))
            grad = mp.RowSparse(rows, values, shape)
            target = rows.copy()
            rows[0] = action[2]  # the caller's array changes; the gradient does not
            opt.step([grad])
            ref.step(ref_W, densify(target, values, shape), rows=target)
            saved = (opt.state_dict(), W.copy(), copy.deepcopy(ref), ref_W.copy())
        elif action[0] == "nan":
            values = np.ones((1, shape[1]))
            grad = mp.RowSparse([action[1]], values, shape)
            values[0, 0] = np.nan  # values are the caller's array: re-checked at step
            with pytest.raises(ValueError, match="grads"):
                opt.step([grad])
            assert_identical(unchanged(opt, [W]), before)
        elif action[0] == "corrupt":
            corrupt, error, needs = _corruptions()[action[1]]
            state = opt.state_dict()
            if needs in ("two", "float32") or needs is not None and needs not in state["state"][0]:
                continue  # the case needs a parameter or state array this optimizer lacks
            corrupt(state)
            with pytest.raises(error):
                opt.load_state_dict(state)
            assert_identical(unchanged(opt, [W]), before)
        else:
            state, W_saved, ref_saved, ref_W_saved = saved
            opt.load_state_dict(copy.deepcopy(state))
            W[...] = W_saved
            ref, ref_W = copy.deepcopy(ref_saved), ref_W_saved.copy()
        np.testing.assert_allclose(W, ref_W, rtol=1e-9, atol=1e-12)


GARBAGE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.lists(st.floats(-1e3, 1e3), max_size=3), st.dictionaries(st.text(max_size=2), st.none()),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex128]),
               st.sampled_from([(4, 2), (4, 2), (2, 4), (8,), ()])),
)
PLACES = [("type",), ("step",), ("lazy",), ("hyper",), ("hyper", "lr"), ("hyper", "betas"), ("state",),
          ("state", 0), ("state", 0, "m"), ("state", 0, "v")]


@settings(deadline=None, max_examples=examples(40), suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(PLACES), value=GARBAGE)
def test_random_checkpoint_corruption_loads_exactly_or_changes_nothing(place, value):
    W = np.zeros((4, 2), np.float32)
    opt = mp.Adam([W])
    opt.step([np.ones((4, 2), np.float32)])
    source = mp.Adam([np.zeros((4, 2), np.float32)])
    for _ in range(2):
        source.step([np.full((4, 2), 0.5, np.float32)])
    saved = source.state_dict()
    target = saved
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    before = unchanged(opt, [W])
    try:
        opt.load_state_dict(copy.deepcopy(saved))
    except (TypeError, ValueError):
        assert_identical(unchanged(opt, [W]), before)
        return
    # Accepted: then it was a valid checkpoint, loaded exactly (arrays cast to float32).
    assert opt.step_count == saved["step"]
    for key, array in saved["state"][0].items():
        assert_identical(opt.state[0][key], np.asarray(array).astype(np.float32))
        assert np.isfinite(opt.state[0][key]).all()
    assert (opt.state[0]["v"] >= 0).all()
    assert_identical(W, before["params"][0])


@settings(deadline=None, max_examples=examples(15), suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), B=st.integers(1, 6), n=st.integers(2, 9), m=st.integers(1, 5),
       threads=st.integers(1, 4))
def test_functions_called_from_threads_on_inputs_changed_between_calls(seed, B, n, m, threads):
    # Each thread makes its own inputs, calls, overwrites the inputs and calls
    # again; every result must equal the reference for the inputs of its call.
    failures = []

    def work(offset):
        rng = np.random.default_rng(seed + offset)
        x, W, g = rng.standard_normal((B, m)), rng.standard_normal((n, m)), rng.standard_normal((B, n))
        k = int(rng.integers(1, n + 1))
        for _ in range(2):
            idx = mp.topk_indices(g, k)
            expected_idx = topk_reference(g, k)
            if not np.array_equal(idx, expected_idx):
                failures.append(("topk", idx, expected_idx))
            expected = masked_backward_reference(x, W, g, selection_mask(g.shape, expected_idx))
            dx, dW, db = mp.linear_backward(x, W, g, k)
            for got, want in zip((dx, dW.to_dense(), db), expected):
                if not np.allclose(got, want, rtol=1e-10, atol=1e-10):
                    failures.append(("backward", got, want))
            for a in (x, W, g):  # the caller reuses its buffers for the next call
                a[...] = rng.standard_normal(a.shape)

    pool = [threading.Thread(target=work, args=(j,)) for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures, failures[0]
