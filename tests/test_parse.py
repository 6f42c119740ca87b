"""The arc-standard parser: oracle, features, parsing, scores, model and task plugin.

Tests on the real UD English EWT treebank use ``$MEPROP_NUMBA_PARSE_DIR`` or
the development copy in ``../shared/data/ud-english-ewt`` and skip when
neither is there.
"""
import io
import os
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meprop_numba.data.conllu import Sentence, read_conllu
from meprop_numba.nn import softmax_cross_entropy
from meprop_numba.tasks.parse import (ParserModel, ParseVocabulary, Treebank, attachment_scores,
                                      is_projective, oracle, parse)
from meprop_numba.tasks.parse.model import PRECOMPUTE_MIN_BATCH
from meprop_numba.tasks.parse.task import ParseConfig, ParseTask
from meprop_numba.training.config import build_optimizer

from reference import (ArcStandardReference, examples, greedy_parse_reference,
                       projective_reference, projective_trees)

_EWT = pathlib.Path(os.environ.get("MEPROP_NUMBA_PARSE_DIR") or
                    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ud-english-ewt")
needs_ewt = pytest.mark.skipif(not (_EWT / "en_ewt-ud-train.conllu").exists(),
                               reason=f"UD English EWT not found at {_EWT} "
                                      "(set $MEPROP_NUMBA_PARSE_DIR to a UD_English-EWT folder)")

N_LABELS = 4


def _treebank(trees, rng, n_labels=N_LABELS):
    """Flat Treebank of heads lists, with random word/POS ids and labels."""
    offsets = np.cumsum([0] + [len(h) for h in trees]).astype(np.int64)
    heads = np.concatenate([np.asarray(h, dtype=np.int64) for h in trees])
    words = rng.integers(3, 40, len(heads))
    pos = rng.integers(3, 12, len(heads))
    labels = rng.integers(0, n_labels, len(heads))
    for lo in offsets[:-1]:
        words[lo] = pos[lo] = 2
        labels[lo] = 0
    return Treebank(words, pos, heads, labels, offsets)


def _sentence_arrays(tb, s):
    lo, hi = tb.offsets[s], tb.offsets[s + 1]
    return tb.words[lo:hi], tb.pos[lo:hi], tb.heads[lo:hi], tb.labels[lo:hi]


def _replay(tb, s, transitions, n_labels=N_LABELS):
    """Replay transitions on the reference configuration; features at each step and the arcs."""
    words, pos, _, _ = _sentence_arrays(tb, s)
    config = ArcStandardReference(words.tolist(), pos.tolist())
    feats = []
    for t in transitions:
        feats.append(config.features())
        config.apply(int(t), n_labels)
    assert config.terminal()
    return feats, config


def _check_oracle(tb, n_labels=N_LABELS, feature_check=True):
    feats, trans, derived = oracle(tb, n_labels)
    row = 0
    for s in range(len(tb)):
        _, _, heads, labels = _sentence_arrays(tb, s)
        assert derived[s] == projective_reference(heads.tolist()), f"sentence {s}"
        if not derived[s]:
            continue
        n = len(heads) - 1
        ref_feats, config = _replay(tb, s, trans[row:row + 2 * n], n_labels)
        assert [config.head[d] for d in range(1, n + 1)] == heads[1:].tolist()
        assert [config.label[d] for d in range(1, n + 1)] == labels[1:].tolist()
        if feature_check:
            assert feats[row:row + 2 * n].tolist() == ref_feats
        row += 2 * n
    assert row == len(trans)


# ---------------------------------------------------------------- oracle
@settings(deadline=None, max_examples=examples(60))
@given(st.lists(projective_trees(), min_size=1, max_size=4), st.integers(0, 2 ** 32 - 1))
def test_oracle_derives_random_projective_trees(trees, seed):
    assert all(projective_reference(h) for h in trees)
    tb = _treebank(trees, np.random.default_rng(seed))
    _check_oracle(tb)
    assert is_projective(tb).all()


@settings(deadline=None, max_examples=examples(60))
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 2 ** 32 - 1))
def test_oracle_and_projectivity_on_random_trees(lengths, seed):
    """Random (mostly non-projective) trees: derived exactly when projective."""
    rng = np.random.default_rng(seed)
    trees = []
    for n in lengths:
        order = rng.permutation(np.arange(1, n + 1))
        heads = [0] * (n + 1)
        for i, w in enumerate(order):  # each word attaches to ROOT (first) or an earlier word
            heads[w] = 0 if i == 0 else int(order[rng.integers(0, i)])
        trees.append(heads)
    tb = _treebank(trees, rng)
    assert is_projective(tb).tolist() == [projective_reference(h) for h in trees]
    _check_oracle(tb)


def test_oracle_example_by_hand():
    # "She ate fish": ate is the root, She <- ate -> fish.
    tb = Treebank(np.array([2, 5, 6, 7]), np.array([2, 3, 4, 3]), np.array([0, 2, 0, 2]),
                  np.array([0, 1, 2, 0]), np.array([0, 4]))
    feats, trans, derived = oracle(tb, 3)
    # SHIFT, SHIFT, LEFT(1), SHIFT, RIGHT(0), RIGHT(2) with L = 3: 0, 0, 2, 0, 4, 6
    assert trans.tolist() == [0, 0, 2, 0, 4, 6] and derived.tolist() == [True]
    # Before the last SHIFT: stack [ROOT, ate], buffer [fish]; ate's leftmost child She (label 1).
    f = feats[3]
    assert f[:6].tolist() == [6, 2, 0, 7, 0, 0]          # s1=ate s2=ROOT s3 - b1=fish
    assert f[6] == 5 and f[36] == 2                       # lc1(s1) = She, label id 1 + 1


def test_oracle_rejects_bad_input():
    tb = _treebank([[0, 0]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_labels"):
        oracle(tb, 0)
    tb.labels[1] = N_LABELS
    with pytest.raises(ValueError, match="labels"):
        oracle(tb, N_LABELS)
    with pytest.raises(TypeError, match="Treebank"):
        oracle([[0, 0]], N_LABELS)


@needs_ewt
@pytest.mark.slow
def test_oracle_on_ewt_training_trees():
    sents = read_conllu(_EWT / "en_ewt-ud-train.conllu")
    vocab = ParseVocabulary(sents)
    tb = vocab.encode(sents)
    feats, trans, derived = oracle(tb, len(vocab.labels))
    row = 0
    for s in range(len(tb)):
        _, _, heads, labels = _sentence_arrays(tb, s)
        assert derived[s] == projective_reference(heads.tolist())
        if not derived[s]:
            continue
        n = len(heads) - 1
        config = ArcStandardReference([0] * (n + 1), [0] * (n + 1))
        for t in trans[row:row + 2 * n]:
            config.apply(int(t), len(vocab.labels))
        assert [config.head[d] for d in range(1, n + 1)] == heads[1:].tolist()
        assert [config.label[d] for d in range(1, n + 1)] == labels[1:].tolist()
        row += 2 * n
    assert row == len(trans)
    assert 0 < (~derived).sum() < 0.05 * len(tb)  # a few percent of EWT is non-projective
    _check_oracle(tb.subset(np.arange(300)), len(vocab.labels))


# ---------------------------------------------------------------- parsing
def _random_scorer(seed, n_trans, vocab_size=64):
    table = np.random.default_rng(seed).standard_normal((48, vocab_size, n_trans)).astype(np.float32)

    def score(features):
        return table[np.arange(48), features].sum(axis=1)
    return score


@settings(deadline=None, max_examples=examples(40))
@given(st.lists(st.integers(0, 14), min_size=1, max_size=6), st.integers(0, 2 ** 32 - 1),
       st.sampled_from([-1, 0, 2]), st.integers(1, 4))
def test_parse_matches_reference_and_yields_trees(lengths, seed, root_label, batch_size):
    rng = np.random.default_rng(seed)
    tb = _treebank([[0] * (n + 1) for n in lengths], rng)
    score = _random_scorer(seed, 2 * N_LABELS + 1)
    heads, labels = parse(score, tb, N_LABELS, root_label=root_label, batch_size=batch_size)
    for s in range(len(tb)):
        lo, hi = tb.offsets[s], tb.offsets[s + 1]
        h, lab = heads[lo:hi].tolist(), labels[lo:hi].tolist()
        words, pos, _, _ = _sentence_arrays(tb, s)
        assert (h, lab) == greedy_parse_reference(words.tolist(), pos.tolist(), score, N_LABELS,
                                                  root_label)
        n = hi - lo - 1
        if n == 0:
            continue
        assert sum(x == 0 for x in h[1:]) == 1                      # one root word
        assert all(0 <= x <= n and x != d for d, x in enumerate(h) if d)
        assert all(_reaches_root(h, d) for d in range(1, n + 1))     # no cycle
        if root_label >= 0:
            assert all((h[d] == 0) == (lab[d] == root_label) for d in range(1, n + 1))


def _reaches_root(heads, d):
    for _ in range(len(heads)):
        if d == 0:
            return True
        d = heads[d]
    return False


def test_parse_rejects_bad_scores():
    tb = _treebank([[0, 0, 1]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="score must return shape"):
        parse(lambda f: np.zeros((len(f), 3)), tb, N_LABELS)
    with pytest.raises(ValueError, match="batch_size"):
        parse(lambda f: np.zeros((len(f), 9)), tb, N_LABELS, batch_size=0)


# ---------------------------------------------------------------- scores
def test_attachment_scores_by_hand():
    # Two sentences, 5 words. Gold heads/labels and predictions:
    # s1 w1: head ok, label ok | w2: head ok, label wrong | w3: head wrong
    # s2 w1: head ok, label ok | w2: head wrong, label ok
    gold = Treebank(np.zeros(7, np.int64), np.zeros(7, np.int64),
                    np.array([0, 2, 0, 2, 0, 0, 1]), np.array([0, 1, 2, 3, 0, 2, 1]),
                    np.array([0, 4, 7]))
    heads = np.array([9, 2, 0, 1, 9, 0, 0])   # ROOT entries are ignored
    labels = np.array([9, 1, 3, 3, 9, 2, 1])
    scores = attachment_scores(gold, heads, labels)
    assert scores["words"] == 5
    assert scores["uas"] == pytest.approx(3 / 5)
    assert scores["las"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="heads"):
        attachment_scores(gold, heads[:3], labels)


# ---------------------------------------------------------------- model
def _features(rng, B, n_words=12, n_pos=7, n_labels=5):
    return np.concatenate([rng.integers(0, n_words, (B, 18)), rng.integers(0, n_pos, (B, 18)),
                           rng.integers(0, n_labels, (B, 12))], axis=1).astype(np.int32)


@pytest.mark.parametrize("activation, batch", [("cube", 4), ("relu", 4),
                                               ("cube", PRECOMPUTE_MIN_BATCH)])
def test_model_gradient_matches_finite_differences(activation, batch):
    # A batch of PRECOMPUTE_MIN_BATCH takes the hidden scores through the per-slot tables.
    rng = np.random.default_rng(1)
    model = ParserModel(12, 7, 5, 9, dim=3, hidden=11, k=None, activation=activation,
                        dtype=np.float64, rng=0)
    f, y = _features(rng, batch), rng.integers(0, 9, batch)
    _, g = softmax_cross_entropy(model.forward(f, train=True), y)
    model.backward(g)
    for p, grad in zip(model.params(), model.grads()):
        grad = grad.to_dense() if hasattr(grad, "to_dense") else grad
        for idx in list(np.ndindex(p.shape))[:: max(1, p.size // 25)]:
            old = p[idx]
            p[idx] = old + 1e-6
            plus = softmax_cross_entropy(model.forward(f), y)[0]
            p[idx] = old - 1e-6
            minus = softmax_cross_entropy(model.forward(f), y)[0]
            p[idx] = old
            assert (plus - minus) / 2e-6 == pytest.approx(grad[idx], abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [PRECOMPUTE_MIN_BATCH - 1, PRECOMPUTE_MIN_BATCH, 700])
def test_model_scores_match_the_plain_network(dtype, batch):
    rng = np.random.default_rng(5)
    model = ParserModel(40, 9, 6, 11, dim=5, hidden=30, k=7, dtype=dtype, rng=2)
    f = _features(rng, batch, n_words=40, n_pos=9, n_labels=6)
    x = np.concatenate([model.word_embedding.weight[f[:, :18]].reshape(batch, -1),
                        model.pos_embedding.weight[f[:, 18:36]].reshape(batch, -1),
                        model.label_embedding.weight[f[:, 36:]].reshape(batch, -1)], axis=1)
    h = x @ model.hidden.weight.T + model.hidden.bias
    expected = (h ** 3) @ model.output.weight.T + model.output.bias
    scale = np.abs(h ** 3).sum(axis=1, keepdims=True) * np.abs(model.output.weight).max()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scores = model.forward(f, train=True)
    assert scores.dtype == dtype
    assert np.all(np.abs(scores - expected) <= tol * (scale + 1))
    model.backward(np.ones_like(scores))  # the hidden layer kept its input for the backward
    dW = model.grads()[3].to_dense()
    g_h = 3 * h ** 2 * (np.ones_like(scores) @ model.output.weight)
    kept = np.argsort(-np.abs(g_h), axis=1, kind="stable")[:, :7]
    mask = np.zeros_like(g_h, dtype=bool)
    np.put_along_axis(mask, kept, True, axis=1)
    assert np.allclose(dW, np.where(mask, g_h, 0).T @ x, rtol=1e-3 if dtype == np.float32 else 1e-9,
                       atol=1e-3 if dtype == np.float32 else 1e-9)


def _train(k, steps=4, dtype=np.float32):
    rng = np.random.default_rng(3)
    model = ParserModel(12, 7, 5, 9, dim=4, hidden=16, k=k, dtype=dtype, rng=0)
    opt = build_optimizer(ParseConfig(), model.params())
    for _ in range(steps):
        _, g = softmax_cross_entropy(model.forward(_features(rng, 8), train=True),
                                     rng.integers(0, 9, 8))
        model.backward(g)
        opt.step(model.grads())
    return [p.copy() for p in model.params()]


def test_k_equal_to_hidden_is_dense_training():
    dense, full = _train(None), _train(16)
    assert all(np.array_equal(a, b) for a, b in zip(dense, full))
    sparse = _train(4)
    assert not all(np.array_equal(a, b) for a, b in zip(dense, sparse))


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        ParserModel(5, 5, 5, 9, activation="tanh")
    with pytest.raises(ValueError, match="k must be at most"):
        ParserModel(5, 5, 5, 9, hidden=10, k=11)
    with pytest.raises(ValueError, match="features"):
        ParserModel(5, 5, 5, 9, dim=2, hidden=4, k=2).forward(np.zeros((2, 47), np.int32))


# ---------------------------------------------------------------- task plugin
TOY = """\
# sent_id = a
1\tDogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_
2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_
3\tloudly\tloudly\tADV\tRB\t_\t2\tadvmod\t_\t_
4\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

# sent_id = b
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsleeps\tsleep\tVERB\tVBZ\t_\t0\troot\t_\t_
4\ton\ton\tADP\tIN\t_\t6\tcase\t_\t_
5\tthe\tthe\tDET\tDT\t_\t6\tdet\t_\t_
6\tmat\tmat\tNOUN\tNN\t_\t3\tobl:on\t_\t_

# sent_id = c (non-projective: 1 <- 3 crosses 0 -> 2)
1\tA\ta\tDET\tDT\t_\t3\tdet\t_\t_
2\tsaw\tsee\tVERB\tVBD\t_\t0\troot\t_\t_
3\tdog\tdog\tNOUN\tNN\t_\t2\tobj\t_\t_

"""


@pytest.fixture
def toy_treebank(tmp_path):
    for split in ("train", "dev"):
        (tmp_path / f"xx_toy-ud-{split}.conllu").write_text(TOY, encoding="utf-8")
    return tmp_path


def test_task_trains_evaluates_and_predicts(toy_treebank):
    task = ParseTask()
    config = ParseConfig(data_dir=str(toy_treebank), hidden=16, dim=4, k=4, batch_size=4,
                         min_word_freq=1).validate()
    data = task.load_data(config)
    assert data.stats["non_projective"] == 1 and data.stats["train_trees"] == 2
    assert "obl" in data.vocab.labels and "obl:on" not in data.vocab.labels
    assert len(data.transitions) == 2 * (4 + 6)
    rng = np.random.default_rng(0)
    model = task.build_model(config, task.extra_state(data), rng)
    opt = build_optimizer(config, model.params())
    assert sum(1 for _ in task.batches(config, data, rng)) == task.n_batches(config, data)
    first = None
    for _ in range(60):
        for batch in task.batches(config, data, rng):
            loss, g = task.loss(model, batch)
            model.backward(g)
            opt.step(model.grads())
            first = loss if first is None else first
    assert loss < first
    scores = task.evaluate(model, data, "dev")
    assert 0.0 <= scores["las"] <= scores["uas"] <= 1.0
    assert task.evaluate(model, data, "test") == {"uas": None, "las": None}  # no test file
    # predict: a copy of the input with HEAD and DEPREL predicted, trees well formed
    state = task.extra_state(data)
    out = io.StringIO()
    n = task.predict(model, config, state, str(toy_treebank / "xx_toy-ud-dev.conllu"), out)
    assert n == 3
    path = toy_treebank / "pred.conllu"
    path.write_text(out.getvalue(), encoding="utf-8")
    predicted = read_conllu(path)  # the reader checks every tree
    assert [s.words for s in predicted] == [s.words for s in read_conllu(
        toy_treebank / "xx_toy-ud-dev.conllu")]
    assert all(d in data.vocab.labels for s in predicted for d in s.deprel)
    # the vocabulary from a checkpoint's extra state encodes exactly as training did, and
    # a model rebuilt from it and the state_dict predicts the same
    again = task.load_data(config, extra_state=state)
    assert np.array_equal(again.features, data.features)
    rebuilt = task.build_model(config, state, np.random.default_rng(5))
    rebuilt.load_state_dict(model.state_dict())
    assert task.evaluate(rebuilt, again, "dev") == scores
    bad = {**model.state_dict(), "hidden.weight": np.zeros((2, 2), np.float32)}
    bad["word_embedding.weight"] = bad["word_embedding.weight"] + 1
    with pytest.raises(ValueError, match="hidden.weight"):
        rebuilt.load_state_dict(bad)
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.params(), model.params()))
    with pytest.raises(KeyError, match="missing"):
        rebuilt.load_state_dict({})


def test_task_config_checks():
    with pytest.raises(ValueError, match="k must be at most"):
        ParseConfig(hidden=10, k=11).validate()
    with pytest.raises(ValueError, match="activation"):
        ParseConfig(activation="tanh").validate()
    with pytest.raises(ValueError, match="dropout"):
        ParseConfig(dropout=1.0).validate()
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="error_feedback"):
            ParseConfig(error_feedback=bad).validate()
    with pytest.raises(ValueError, match="data_dir"):
        ParseTask().load_data(ParseConfig().validate())


def test_vocabulary_round_trip_and_unknowns():
    s = Sentence(("Dogs", "bark"), ("NOUN", "VERB"), ("NNS", "VBP"), (2, 0), ("nsubj:pass", "root"))
    vocab = ParseVocabulary([s], min_word_freq=1)
    assert vocab.labels == ["nsubj", "root"] and vocab.root_label == 1
    again = ParseVocabulary.from_state_dict(vocab.state_dict())
    unseen = Sentence(("Cats", "bark"), ("PROPN", "VERB"), ("NNS", "VBP"), (2, 0), ("obj", "root"))
    a, b = vocab.encode([unseen]), again.encode([unseen])
    assert a.words.tolist() == b.words.tolist() == [2, 1, vocab.words.index("bark")]
    assert a.pos.tolist() == [2, 1, vocab.pos.index("VERB")]
    assert a.labels.tolist() == [0, -1, 1]   # unseen relation: never predicted
    with pytest.raises(ValueError, match="no dependency tree"):
        ParseVocabulary([Sentence(("a",), ("X",), ("_",))])


@pytest.mark.parametrize("error_feedback", [0.0, 0.8])
def test_parse_through_the_training_loop_resumes_bit_identically(toy_treebank, tmp_path,
                                                                 error_feedback):
    from meprop_numba.training import fit

    task = ParseTask()

    def config(epochs, beta=error_feedback):
        return ParseConfig(data_dir=str(toy_treebank), hidden=16, dim=4, k=4, batch_size=4,
                           min_word_freq=1, epochs=epochs, dropout=0.25,
                           error_feedback=beta).validate()
    data = task.load_data(config(1))
    full = fit(task, config(3), data, progress=False)
    assert full["model"].hidden.error_feedback == error_feedback
    if error_feedback:  # the memory takes part: training differs from plain meProp
        plain = fit(task, config(3, 0.0), data, progress=False)
        assert any(a.tobytes() != b.tobytes()
                   for a, b in zip(full["model"].params(), plain["model"].params()))
    fit(task, config(1), data, checkpoint_dir=tmp_path, progress=False)
    resumed = fit(task, config(3), data, checkpoint_dir=tmp_path, resume=True, progress=False)
    for a, b in zip(full["model"].params(), resumed["model"].params()):
        assert a.tobytes() == b.tobytes()
    assert [e["dev_las"] for e in full["epochs"]] == [e["dev_las"] for e in resumed["epochs"]]
    assert full["epochs"][0]["backward_hidden_s"] > 0


def test_cli_trains_and_predicts_conllu(toy_treebank, tmp_path, capsys):
    from meprop_numba import cli

    ckpt = tmp_path / "ckpt"
    assert cli.main(["train", "--task", "parse", "--data-dir", str(toy_treebank), "--hidden", "16",
                     "--dim", "4", "--k", "4", "--batch-size", "4", "--min-word-freq", "1",
                     "--epochs", "2", "--threads", "1", "--no-progress",
                     "--checkpoint-dir", str(ckpt)]) == 0
    assert "3 train sentences, 1 non-projective" in capsys.readouterr().out
    out = tmp_path / "pred.conllu"
    assert cli.main(["predict", "--checkpoint-dir", str(ckpt), "--threads", "1",
                     str(toy_treebank / "xx_toy-ud-dev.conllu"), "--out", str(out)]) == 0
    predicted = read_conllu(out)
    assert [s.words for s in predicted] == [s.words for s in read_conllu(
        toy_treebank / "xx_toy-ud-dev.conllu")]
    # a test file is scored when asked, at the end
    (toy_treebank / "xx_toy-ud-test.conllu").write_text(TOY, encoding="utf-8")
    assert cli.main(["evaluate", "--checkpoint-dir", str(ckpt), "--split", "test"]) == 0
    assert re.search(r"test las \d+\.\d\d%", capsys.readouterr().out)
    bad = tmp_path / "bad.conllu"
    bad.write_text("1 Dogs dog NOUN NNS _ 0 root _ _\n", encoding="utf-8")
    assert cli.main(["predict", "--checkpoint-dir", str(ckpt), str(bad)]) != 0
    assert f"{bad}:1:" in capsys.readouterr().err


def test_simplify_removes_hidden_neurons_exactly_and_resumes_bit_identically(toy_treebank, tmp_path):
    import copy

    from meprop_numba.simplify import remove_neurons
    from meprop_numba.training import fit, load_model

    model = ParserModel(12, 7, 5, 9, dim=3, hidden=11, k=4, dtype=np.float64, rng=0)
    keep = np.array([0, 2, 3, 7, 10])
    masked = copy.deepcopy(model)
    masked.output.weight[:, np.setdiff1d(np.arange(11), keep)] = 0
    remove_neurons(model, [keep])
    f = _features(np.random.default_rng(2), 6)
    np.testing.assert_allclose(model.forward(f), masked.forward(f), rtol=1e-12, atol=1e-12)
    assert model.hidden.weight.shape[0] == 5 and model.output.weight.shape == (9, 5)

    task = ParseTask()

    def config(epochs):
        return ParseConfig(data_dir=str(toy_treebank), hidden=16, dim=4, k=4, batch_size=4,
                           min_word_freq=1, epochs=epochs, simplify=0.6, simplify_cycle=1,
                           simplify_parts=2).validate()
    data = task.load_data(config(1))
    full = fit(task, config(3), data, checkpoint_dir=tmp_path / "full", progress=False)
    assert full["epochs"][0]["hidden_sizes"] != [16], "the case must exercise a removal"
    fit(task, config(1), data, checkpoint_dir=tmp_path / "cut", progress=False)
    resumed = fit(task, config(3), data, checkpoint_dir=tmp_path / "cut", resume=True, progress=False)
    for a, b in zip(full["model"].params(), resumed["model"].params()):
        assert a.tobytes() == b.tobytes()
    best, _, state = load_model(task, tmp_path / "full", "best")
    assert task.evaluate(best, data, "dev")["las"] == state["best"]["dev_las"]
