"""CoNLL-U reading, vocabularies and the POS tagger end to end.

Tests on the real UD English EWT treebank use ``$MEPROP_NUMBA_POS_DIR`` or
the development copy in ``../shared/data/ud-english-ewt`` and skip when
neither is there.
"""
import dataclasses
import json
import os
import pathlib
import re
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("conllu", reason="the POS task needs the 'conllu' package (extra 'pos')")

from meprop_numba import cli
from meprop_numba.data.conllu import Sentence, find_split, read_conllu
from meprop_numba.nn.loss import softmax_cross_entropy
from meprop_numba.tasks import TASKS, pos
from meprop_numba.tasks.pos_features import (
    UNK_ID,
    FeatureVocabularies,
    Vocabulary,
    normalize_word,
    word_features,
    word_shape,
)
from meprop_numba.training import TrainingDiverged, fit, load_checkpoint, load_model

POS_TASK = TASKS["pos"]

CONLLU = """\
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
1\tParis\tParis\tPROPN\tNNP\t_\t0\troot\t_\t_
2\tin\tin\tADP\tIN\t_\t3\tcase\t_\t_
3\t2024\t2024\tNUM\tCD\t_\t1\tnmod\t_\t_

# sent_id = s3
1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_
2\tknow\tknow\tVERB\tVBP\t_\t0\troot\t_\t_
3\tParis\tParis\tPROPN\tNNP\t_\t2\tobj\t_\t_
"""


def _ewt_dir():
    env = os.environ.get(pos.ENV_DATA_DIR)
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ud-english-ewt"


EWT = _ewt_dir()
needs_ewt = pytest.mark.skipif(
    not (EWT / "en_ewt-ud-dev.conllu").exists(),
    reason=f"UD English EWT not found at {EWT} (set ${pos.ENV_DATA_DIR} to a UD_English-EWT folder)")


@pytest.fixture(scope="module")
def treebank(tmp_path_factory):
    """A tiny treebank folder with train/dev/test files written by the test."""
    d = tmp_path_factory.mktemp("ud")
    for split in ("train", "dev", "test"):
        (d / f"xx_toy-ud-{split}.conllu").write_text(CONLLU, encoding="utf-8")
    return d


# ---------------------------------------------------------------- reader
def test_reader_skips_multiword_tokens_and_empty_nodes(treebank):
    sents = read_conllu(treebank / "xx_toy-ud-train.conllu")
    assert [s.words for s in sents] == [("I", "do", "n't", "know", "."),
                                        ("Paris", "in", "2024"), ("I", "know", "Paris")]
    assert sents[0].upos == ("PRON", "AUX", "PART", "VERB", "PUNCT")
    assert sents[0].xpos == ("PRP", "VBP", "RB", "VB", ".")
    assert len(read_conllu(treebank / "xx_toy-ud-train.conllu", max_sentences=2)) == 2


def test_reader_errors(tmp_path, treebank):
    with pytest.raises(FileNotFoundError, match="path"):
        read_conllu(tmp_path / "missing.conllu")
    with pytest.raises(ValueError, match="max_sentences"):
        read_conllu(treebank / "xx_toy-ud-train.conllu", max_sentences=0)
    assert find_split(treebank, "dev").endswith("xx_toy-ud-dev.conllu")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        find_split(tmp_path, "train")


def test_word_shape_features():
    assert word_shape("paris") == "lower"
    assert word_shape("Paris") == "title"
    assert word_shape("NASA") == "upper"
    assert word_shape("iPhone") == "mixed"
    assert word_shape("2024") == "digit"
    assert word_shape("B-52") == "hasdigit"
    assert word_shape("...") == "punct"
    assert word_features("Running") == ("title", "r", "ru", "run", "g", "ng", "ing")
    assert word_features("a") == ("lower", "a", "a", "a", "a", "a", "a")
    assert normalize_word("Route66") == "route00"


def test_vocabulary_threshold_and_round_trip():
    v = Vocabulary.from_counts(Counter({"the": 5, "cat": 1, "a": 5}), min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a", "the"]  # by count, then alphabetically
    assert v.encode(["the", "cat", "a"]).tolist() == [3, UNK_ID, 2]
    assert v.decode([2, 3]) == ["a", "the"]
    w = Vocabulary.from_state_dict(json.loads(json.dumps(v.state_dict())))
    assert w.itos == v.itos and w.counts.tolist() == v.counts.tolist()
    tags = Vocabulary(["NN", "VB"], unk=False)
    with pytest.raises(KeyError):
        tags.index("JJ")


def test_feature_vocabularies_encode(treebank):
    sents = read_conllu(treebank / "xx_toy-ud-train.conllu")
    v = FeatureVocabularies(sents, tag_column="xpos", min_word_freq=2)
    # "i", "know" and "paris" occur twice; everything else is UNK.
    assert sorted(v.words.itos[2:]) == ["i", "know", "paris"]
    enc = v.encode(sents[1])
    assert enc.words.tolist() == [v.words.index("paris"), UNK_ID, UNK_ID]
    assert enc.tags.tolist() == [v.tags.index(t) for t in ("NNP", "IN", "CD")]
    assert enc.features.shape == (3, 7)
    assert enc.features[0, 0] == v.features[0].index("title")
    unseen = Sentence(("Zzz",), ("X",), ("ZZ",))
    assert v.encode(unseen).tags.tolist() == [0]
    with pytest.raises(KeyError):
        v.encode(unseen, strict_tags=True)
    round_trip = FeatureVocabularies.from_state_dict(json.loads(json.dumps(v.state_dict())))
    assert round_trip.encode(sents[0]).features.tolist() == v.encode(sents[0]).features.tolist()


# ---------------------------------------------------------------- tagger
def test_make_batch_pads_and_offsets(treebank):
    data = pos.load_pos_data(treebank, min_word_freq=1)
    offsets = np.arange(1, 8) * 100
    batch = pos.make_batch(data.train[:2], offsets)
    assert batch.words.shape == (2, 5) and batch.lengths.tolist() == [5, 3]
    assert (batch.words[1, 3:] == 0).all() and (batch.features[1, 3:] == 0).all()
    np.testing.assert_array_equal(batch.features[0, :5], data.train[0].features + offsets)
    # Word dropout with a huge alpha turns every real word into UNK.
    counts = data.vocab.words.counts.astype(float)
    dropped = pos.make_batch(data.train[:2], offsets, word_dropout=1e9, word_counts=counts,
                             rng=np.random.default_rng(0))
    assert (dropped.words[batch.mask] == UNK_ID).all()


def test_tagger_gradient_matches_finite_differences(treebank):
    """The whole tagger (embeddings, LSTM, output layer) in float64, dense BPTT."""
    data = pos.load_pos_data(treebank, min_word_freq=1)
    v = data.vocab
    model = pos.POSTagger(len(v.words), [len(f) for f in v.features], len(v.tags), word_dim=3,
                          feature_dim=2, hidden=4, bidirectional=True, k=None,
                          dtype=np.float64, rng=0)
    batch = pos.make_batch(data.train[:2], model.feature_offsets)
    gold = batch.tags[batch.mask]

    def loss():
        return softmax_cross_entropy(model.forward(batch), gold)[0]

    _, grad = softmax_cross_entropy(model.forward(batch, train=True), gold)
    model.backward(grad)
    grads = [g.to_dense() if hasattr(g, "to_dense") else g for g in model.grads()]
    rng = np.random.default_rng(1)
    tables = (model.word_embedding.weight, model.feature_embedding.weight)
    for p, g in zip(model.params(), grads):
        for _ in range(4):
            idx = tuple(rng.integers(0, n) for n in p.shape)
            if any(p is t for t in tables) and idx[0] == 0:
                continue  # the padding row is fixed at zero and takes no gradient
            old = p[idx]
            p[idx] = old + 1e-6
            up = loss()
            p[idx] = old - 1e-6
            down = loss()
            p[idx] = old
            assert abs((up - down) / 2e-6 - g[idx]) < 1e-6 + 1e-4 * abs(g[idx])


def _fit(config, data=None, **kwargs):
    kwargs.setdefault("progress", False)
    return fit(POS_TASK, config, data, **kwargs)


def test_tiny_end_to_end_training(treebank, tmp_path):
    config = pos.POSConfig(data_dir=str(treebank), hidden=16, k=3, epochs=15, batch_size=1,
                           lr=0.02, eval_test=True, min_word_freq=1)
    results = _fit(config, out=str(tmp_path / "r.json"), checkpoint_dir=str(tmp_path / "ckpt"))
    # Dev = train here: a tagger that learns fits the 11 training tokens.
    assert results["best_dev_accuracy"] >= 0.9
    assert results["test_accuracy_at_best_dev"] == results["best"]["test_accuracy"] >= 0.9
    assert results["epochs"][-1]["train_loss"] < results["epochs"][0]["train_loss"]
    assert results["epochs"][0]["backward_lstm_s"] > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    vocab = pos.load_pos_data(treebank, min_word_freq=1).vocab
    assert len(saved["epochs"]) == 15 and saved["data"]["tags"] == len(vocab.tags) - 1
    assert saved["finished"] is True and saved["config"]["lr"] == 0.02


def test_the_checkpoint_alone_is_a_usable_tagger(treebank, tmp_path):
    config = pos.POSConfig(data_dir=str(treebank), hidden=16, k=3, epochs=10, lr=0.02,
                           min_word_freq=1)
    results = _fit(config, checkpoint_dir=tmp_path / "ck")
    model, saved_config, state = load_model(POS_TASK, tmp_path / "ck")
    vocab = pos.FeatureVocabularies.from_state_dict(state["extra_state"]["vocab"])
    assert vocab.tags.itos == pos.load_pos_data(treebank, min_word_freq=1).vocab.tags.itos
    # evaluate from the checkpoint: the best dev accuracy recorded in training.
    data = POS_TASK.load_data(saved_config, state["extra_state"])
    assert POS_TASK.evaluate(model, data, "dev")["accuracy"] == results["best_dev_accuracy"]
    # predict from CoNLL-U and from plain text: the same tags as the model on encoded input.
    import io

    sentences = read_conllu(treebank / "xx_toy-ud-dev.conllu")
    for path, text in ((treebank / "xx_toy-ud-dev.conllu", None),
                       (tmp_path / "plain.txt", "\n".join(" ".join(s.words) for s in sentences))):
        if text is not None:
            path.write_text(text + "\n", encoding="utf-8")
        out = io.StringIO()
        assert POS_TASK.predict(model, saved_config, state["extra_state"], path, out) == 3
        blocks = [b for b in out.getvalue().split("\n\n") if b.strip()]
        assert len(blocks) == 3
        for block, sentence in zip(blocks, sentences):
            rows = [ln.split("\t") for ln in block.splitlines() if not ln.startswith("#")]
            assert [r[1] for r in rows] == list(sentence.words)
            assert all(len(r) == 10 for r in rows)
            batch = pos.make_batch([vocab.encode(sentence)], model.feature_offsets)
            assert [r[4] for r in rows] == vocab.tags.decode(model.predict(batch))


def test_resume_reproduces_an_uninterrupted_run(treebank, tmp_path):
    base = pos.POSConfig(data_dir=str(treebank), hidden=8, k=2, epochs=4, batch_size=2, lr=0.01,
                         word_dropout=0.5)
    full = _fit(base)
    _fit(dataclasses.replace(base, epochs=2), checkpoint_dir=str(tmp_path))
    resumed = _fit(base, checkpoint_dir=str(tmp_path), resume=True)
    for a, b in zip(full["model"].params(), resumed["model"].params()):
        np.testing.assert_array_equal(a, b)
    assert [e["train_loss"] for e in full["epochs"]] == [e["train_loss"] for e in resumed["epochs"]]
    with pytest.raises(ValueError, match="different config"):
        _fit(dataclasses.replace(base, k=3), checkpoint_dir=str(tmp_path), resume=True)
    # Resuming a finished run: no KeyError, nothing trained, the results still summarised.
    again = _fit(base, checkpoint_dir=str(tmp_path), resume=True, out=tmp_path / "r.json")
    assert again["finished"] and again["best_dev_accuracy"] == resumed["best_dev_accuracy"]
    assert json.loads((tmp_path / "r.json").read_text())["finished"] is True


def test_real_divergence_stops_cleanly(treebank, tmp_path):
    """SGD at lr 1e30 overflows the LSTM for real: exit through the divergence stop."""
    config = pos.POSConfig(data_dir=str(treebank), hidden=8, k=2, epochs=3, optimizer="sgd",
                           lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"training diverged: .* at epoch (\d), step") as info:
        _fit(config, checkpoint_dir=tmp_path)
    epoch = int(re.search(r"at epoch (\d)", str(info.value)).group(1))
    if epoch == 1:
        assert not (tmp_path / "last.npz").exists()
    else:  # the last good checkpoint: finite, from the epoch before
        state = load_checkpoint(tmp_path / "last.npz")
        assert state["epoch"] == epoch - 1
        assert all(np.isfinite(p).all() for p in state["params"].values())


def test_threads_apply_to_the_pos_task(treebank, monkeypatch):
    import meprop_numba as mp
    from threadpoolctl import threadpool_info

    seen = []
    original = POS_TASK.loss

    def record(model, batch):
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        seen.append((mp.get_num_threads(), blas))
        return original(model, batch)

    monkeypatch.setattr(POS_TASK, "loss", record)
    _fit(pos.POSConfig(data_dir=str(treebank), hidden=8, k=2, epochs=1, threads=1))
    assert seen and all(kernel == 1 and all(n == 1 for n in blas) for kernel, blas in seen)


def test_config_validation():
    with pytest.raises(ValueError, match="k must be at most"):
        pos.POSConfig(hidden=8, k=9).validate()
    pos.POSConfig(hidden=8, k=9, scope="concat").validate()
    with pytest.raises(ValueError, match="optimizer"):
        pos.POSConfig(optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="word_dropout"):
        pos.POSConfig(word_dropout=-1).validate()
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        pos.POSConfig(k=0).validate()


def test_a_treebank_without_the_tag_column_is_refused(tmp_path):
    rows = ["1\tDogs\tdog\tNOUN\t_\t_\t2\tnsubj\t_\t_", "2\tbark\tbark\tVERB\t_\t_\t0\troot\t_\t_", ""]
    for split in ("train", "dev"):
        (tmp_path / f"xx-ud-{split}.conllu").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="XPOS column is empty"):
        pos.load_pos_data(tmp_path)
    assert len(pos.load_pos_data(tmp_path, tag="upos", min_word_freq=1).train) == 1


def test_command_line(treebank, tmp_path, capsys):
    out = tmp_path / "r.json"
    ck = tmp_path / "ck"
    argv = ["train", "--task", "pos", "--data-dir", str(treebank), "--hidden", "8", "--k", "2",
            "--epochs", "2", "--no-progress", "--out", str(out), "--eval-test",
            "--checkpoint-dir", str(ck)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["config"]["k"] == 2 and results["config"]["batch_size"] == 1
    assert f"test accuracy there {100 * results['test_accuracy_at_best_dev']:.2f}%" in text
    assert cli.main(["train", "--task", "pos", "--checkpoint-dir", str(ck), "--resume",
                     "--epochs", "3", "--no-progress"]) == 0
    assert "resuming from epoch 2" in capsys.readouterr().out
    assert cli.main(["evaluate", "--checkpoint-dir", str(ck), "--split", "test"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    (tmp_path / "in.txt").write_text("I know Paris\n")
    assert cli.main(["predict", "--checkpoint-dir", str(ck), str(tmp_path / "in.txt")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert [ln.split("\t")[1] for ln in lines] == ["I", "know", "Paris"]
    assert cli.main(["train", "--task", "pos", "--data-dir", str(treebank), "--compare",
                     "--hidden", "8", "--k", "2", "--epochs", "1", "--no-progress"]) == 0
    assert "speed-up of meProp k=2 per_gate over dense" in capsys.readouterr().out
    env = os.environ.pop(pos.ENV_DATA_DIR, None)
    try:
        assert cli.main(["train", "--task", "pos", "--hidden", "8", "--k", "2", "--no-progress"]) == 2
    finally:
        if env is not None:
            os.environ[pos.ENV_DATA_DIR] = env
    assert "--data-dir" in capsys.readouterr().err


def test_command_line_refuses_bad_pos_input(treebank, tmp_path, capsys):
    base = ["train", "--task", "pos", "--hidden", "8", "--no-progress"]
    small_k = ["--k", "2"]
    nontest = tmp_path / "no-test"
    nontest.mkdir()
    for split in ("train", "dev"):
        (nontest / f"xx-ud-{split}.conllu").write_text(CONLLU)
    for argv, message in (
            (["--data-dir", str(nontest), "--eval-test", *small_k], "no *-ud-test.conllu"),
            (["--data-dir", str(treebank), "--k", "9"], "k must be at most 8"),
            (["--data-dir", str(treebank), "--batch-size", "4", *small_k],
             "batch_size 4 exceeds the 3"),
            (["--data-dir", str(tmp_path / "none"), *small_k], "no directory")):
        assert cli.main(base + argv) == 2, argv
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- real data
@needs_ewt
def test_ewt_dev_reads_as_documented():
    sents = read_conllu(EWT / "en_ewt-ud-dev.conllu")
    assert len(sents) == 2001
    assert all(len(s.words) == len(s.upos) == len(s.xpos) for s in sents)
    assert len({u for s in sents for u in s.upos}) == 17


@needs_ewt
@pytest.mark.slow
def test_ewt_short_training_learns():
    config = pos.POSConfig(data_dir=str(EWT), hidden=32, k=5, epochs=2, batch_size=4, lr=0.01,
                           max_train_sentences=300, max_dev_sentences=200)
    results = _fit(config)
    # Majority-tag guessing gives about 0.15 on EWT XPOS; a learning tagger is far above.
    assert results["best_dev_accuracy"] > 0.5


def test_simplify_shrinks_the_lstm_on_schedule_and_resumes_bit_identically(treebank, tmp_path):
    over = dict(data_dir=str(treebank), hidden=16, k=2, lr=0.02, min_word_freq=1, epochs=3,
                simplify=0.5, simplify_cycle=1, simplify_parts=3)
    full = _fit(pos.POSConfig(**over), checkpoint_dir=tmp_path / "full")
    sizes = [e["hidden_sizes"] for e in full["epochs"]]
    assert sizes[0] != [16, 16], "the case must exercise a removal"
    assert sizes[1] == sizes[0]  # epoch 2: an odd cycle, no prune
    assert full["model"].lstm.hidden_sizes == sizes[2]
    assert full["model"].output.weight.shape[1] == sum(sizes[2])  # both directions
    _fit(pos.POSConfig(**{**over, "epochs": 1}), checkpoint_dir=tmp_path / "cut")
    resumed = _fit(pos.POSConfig(**over), checkpoint_dir=tmp_path / "cut", resume=True)
    for (name, a), (_, b) in zip(full["model"].named_parameters(),
                                 resumed["model"].named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    best, config, state = load_model(POS_TASK, tmp_path / "full", "best")
    data = POS_TASK.load_data(config, state["extra_state"])
    assert POS_TASK.evaluate(best, data, "dev")["accuracy"] == state["best"]["dev_accuracy"]


def test_simplify_with_p_zero_tags_exactly_as_without(treebank):
    base = dict(data_dir=str(treebank), hidden=16, k=2, lr=0.02, min_word_freq=1, epochs=2)
    plain = _fit(pos.POSConfig(**base))
    simp = _fit(pos.POSConfig(**base, simplify=0.0, simplify_cycle=1, simplify_parts=3))
    assert simp["model"].lstm.hidden_sizes == [16, 16]
    for a, b in zip(plain["model"].parameters(), simp["model"].parameters()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- default tagger and presets
def test_the_default_tagger_is_bidirectional_with_dropout_and_the_paper_preset_is_not():
    default = pos.POSConfig().validate()
    assert default.bidirectional and default.embedding_dropout > 0 and default.output_dropout > 0
    # The paper's tagger (meProp paper, POS): one 500-unit LSTM, left to right, no dropout,
    # one sentence a step, Adam.
    paper = pos.POSConfig.preset("paper").validate()
    assert (paper.hidden, paper.layers, paper.bidirectional, paper.batch_size,
            paper.optimizer) == (500, 1, False, 1, "adam")
    assert paper.embedding_dropout == paper.output_dropout == paper.error_feedback == 0
    assert pos.POSConfig.preset("paper", k=5, hidden=8).k == 5
    with pytest.raises(ValueError, match="preset"):
        pos.POSConfig.preset("papers")


def test_the_paper_preset_trains_exactly_the_tagger_without_the_new_options(treebank):
    """The preset's model is the tagger built with no dropout or error feedback: same draws, same steps."""
    config = pos.POSConfig.preset("paper", data_dir=str(treebank), hidden=8, k=2, epochs=2,
                                  lr=0.01)
    task_model = _fit(config)["model"]
    assert not task_model.lstm.bidirectional and task_model.lstm.error_feedback == 0
    assert task_model.embedding_dropout.p == task_model.output_dropout.p == 0
    # The same training by hand with the tagger's plain constructor (the old signature).
    data = POS_TASK.load_data(config)
    v = data.vocab
    model_rng, data_rng = __import__("meprop_numba.training.loop", fromlist=["x"]).run_generators(0)
    model = pos.POSTagger(len(v.words), [len(f) for f in v.features], len(v.tags), hidden=8, k=2,
                          rng=model_rng)
    from meprop_numba.optim import Adam
    from meprop_numba.training import train_step

    optimizer = Adam(model.parameters(), lr=0.01)
    timers = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
    for _ in range(2):
        POS_TASK.start_epoch(model)
        for batch in POS_TASK.batches(config, data, data_rng):
            train_step(model, optimizer, POS_TASK.loss, batch, timers)
    for (name, a), (_, b) in zip(task_model.named_parameters(), model.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_dropout_is_off_at_evaluation_and_prediction_is_deterministic(treebank):
    data = pos.load_pos_data(treebank, min_word_freq=1)
    v = data.vocab
    sizes = (len(v.words), [len(f) for f in v.features], len(v.tags))
    with_dropout = pos.POSTagger(*sizes, hidden=8, bidirectional=True, embedding_dropout=0.5,
                                 output_dropout=0.5, rng=3)
    without = pos.POSTagger(*sizes, hidden=8, bidirectional=True, rng=3)
    batch = pos.make_batch(data.train, with_dropout.feature_offsets)
    first = with_dropout.forward(batch)
    np.testing.assert_array_equal(first, with_dropout.forward(batch))
    np.testing.assert_array_equal(first, without.forward(batch))
    np.testing.assert_array_equal(with_dropout.predict(batch), without.predict(batch))
    # In training the masks act (and differ from one forward to the next).
    trained = [with_dropout.forward(batch, train=True) for _ in range(2)]
    assert not np.allclose(trained[0], first) and not np.allclose(trained[0], trained[1])


def test_the_default_tagger_at_full_k_trains_as_dense(treebank):
    """k = hidden keeps every gate entry: with dropout (and error feedback) on, the run is dense BPTT's."""
    base = dict(data_dir=str(treebank), hidden=6, epochs=3, lr=0.01, min_word_freq=1,
                dtype="float64", error_feedback=0.8)
    dense = _fit(pos.POSConfig(**base, k=None))
    full = _fit(pos.POSConfig(**base, k=6))
    assert full["model"].lstm.bidirectional and full["model"].lstm.error_feedback == 0.8
    for (name, a), (_, b) in zip(dense["model"].named_parameters(),
                                 full["model"].named_parameters()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
    assert [e["train_loss"] for e in dense["epochs"]] == pytest.approx(
        [e["train_loss"] for e in full["epochs"]], rel=1e-9)


def test_an_old_checkpoint_loads_as_the_configuration_it_was_trained_with(treebank, tmp_path):
    """A checkpoint written before the new fields existed: unidirectional, no dropout, no feedback."""
    from meprop_numba.training.checkpoint import save_checkpoint

    config = pos.POSConfig.preset("paper", data_dir=str(treebank), hidden=8, k=2, epochs=2,
                                  lr=0.01)
    _fit(config, checkpoint_dir=tmp_path / "new")
    state = load_checkpoint(tmp_path / "new" / "last.npz")
    old = {name: value for name, value in state["config"].items()
           if name not in ("error_feedback", "embedding_dropout", "output_dropout")}
    (tmp_path / "old").mkdir()
    save_checkpoint(tmp_path / "old" / "last.npz", task="pos", params=state["params"],
                    config=old, epoch=state["epoch"], extra_state=state["extra_state"],
                    best=state["best"])
    model, loaded, _ = load_model(POS_TASK, tmp_path / "old", "last")
    assert (loaded.bidirectional, loaded.embedding_dropout, loaded.output_dropout,
            loaded.error_feedback) == (False, 0.0, 0.0, 0.0)
    fresh, _, _ = load_model(POS_TASK, tmp_path / "new", "last")
    data = POS_TASK.load_data(loaded, state["extra_state"])
    batch = pos.make_batch(data.dev, model.feature_offsets)
    np.testing.assert_array_equal(model.forward(batch), fresh.forward(batch))


def test_command_line_default_preset_and_bad_values(treebank, tmp_path, capsys):
    base = ["train", "--task", "pos", "--data-dir", str(treebank), "--hidden", "8", "--k", "2",
            "--epochs", "1", "--no-progress"]
    out = tmp_path / "default.json"
    assert cli.main(base + ["--out", str(out), "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    saved = json.loads(out.read_text())["config"]
    assert saved["bidirectional"] is True and saved["output_dropout"] == 0.5
    assert saved["embedding_dropout"] == 0.2 and saved["error_feedback"] == 0
    (tmp_path / "in.txt").write_text("I know Paris\nParis in 2024\n")
    capsys.readouterr()
    outputs = []
    for _ in range(2):  # the checkpoint's tagger, dropout off: the same tags every time
        assert cli.main(["predict", "--checkpoint-dir", str(tmp_path / "ck"),
                         str(tmp_path / "in.txt")]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n\n") == 2
    out = tmp_path / "paper.json"
    assert cli.main(base + ["--preset", "paper", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())["config"]
    assert saved["bidirectional"] is False and saved["hidden"] == 8
    assert saved["embedding_dropout"] == saved["output_dropout"] == saved["error_feedback"] == 0
    out = tmp_path / "mixed.json"
    assert cli.main(base + ["--preset", "paper", "--bidirectional", "--output-dropout", "0.3",
                            "--out", str(out)]) == 0
    saved = json.loads(out.read_text())["config"]
    assert saved["bidirectional"] is True and saved["output_dropout"] == 0.3
    assert saved["embedding_dropout"] == 0
    capsys.readouterr()
    for flags, message in ((["--output-dropout", "1.0"], "output_dropout must be in [0, 1)"),
                           (["--embedding-dropout", "-0.1"], "embedding_dropout"),
                           (["--error-feedback", "1.5"], "error_feedback must be in [0, 1)")):
        bad = tmp_path / "bad.json"
        assert cli.main(base + flags + ["--out", str(bad), "--checkpoint-dir",
                                        str(tmp_path / "bad")]) == 2, flags
        assert message in capsys.readouterr().err, flags
        assert not bad.exists() and not (tmp_path / "bad").exists(), flags
    with pytest.raises(SystemExit):
        cli.main(base + ["--preset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
