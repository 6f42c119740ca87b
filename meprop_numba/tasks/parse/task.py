"""The ``parse`` task plugin: data, model, batches, evaluation and prediction.

Reads a UD treebank folder (``*-ud-train.conllu``, ``*-ud-dev.conllu`` and,
when present, ``*-ud-test.conllu``, which is scored only when asked: ``eval_test``
or ``meprop-numba evaluate --split test``), skips the non-projective
training trees (arc-standard's static oracle cannot derive them; their
number is reported), runs the oracle once (its configurations do not depend
on the model) and trains on the shuffled configurations. POS tags are the
gold UPOS column of the input.
"""
import dataclasses
import os
import time
from typing import ClassVar

import numpy as np

from ...data.conllu import find_split, read_conllu
from ...nn import softmax_cross_entropy
from ...training.config import RunConfig, check_positive_int, k_arg, positive_int_arg
from ..base import Task
from .data import ParseVocabulary, Treebank
from .metrics import attachment_scores
from .model import ACTIVATIONS, ParserModel
from .transitions import is_projective, oracle, parse

__all__ = ["ENV_DATA_DIR", "ParseConfig", "ParseTask"]

#: Environment variable naming the treebank folder when ``--data-dir`` is not given.
ENV_DATA_DIR = "MEPROP_NUMBA_PARSE_DIR"

_SELECTIONS = ("topk", "unified", "random")


@dataclasses.dataclass
class ParseConfig(RunConfig):
    """Options of a parser run: the shared :class:`~meprop_numba.training.RunConfig` fields and these.

    Parameters
    ----------
    data_dir, optimizer, lr, lazy, epochs, batch_size, seed, dtype, threads, device, evals_per_epoch, eval_test : see RunConfig
        The shared fields of :class:`~meprop_numba.training.RunConfig`
        (``batch_size`` default 100 here: transitions per step; the meProp
        paper used 10,000). Default learning rates: Adam 0.001, AdaGrad 0.01.
    simplify, simplify_cycle, simplify_parts : see RunConfig
        Model simplification (meSimp); same defaults (off).
    hidden : int, default 500
        Hidden units.
    dim : int, default 50
        Size of the word, POS and label embeddings.
    k : int or None, default 20
        meProp k of the hidden layer (None: dense).
    selection : {'topk', 'unified', 'random'}, default 'topk'
    activation : {'cube', 'relu'}, default 'cube'
    dropout : float, default 0.0
        On the hidden activations.
    error_feedback : float, default 0.0
        Error-feedback decay of the meProp hidden layer (see
        :class:`~meprop_numba.nn.Linear`); the memory restarts at each epoch.
    min_word_freq : int, default 2
        Training words seen fewer times share the UNK embedding.
    max_train_sentences, max_dev_sentences : int or None
        Use only the first sentences of a split (quick runs).

    Raises
    ------
    ValueError
        From :meth:`validate`, naming the bad field.

    Examples
    --------
    >>> c = ParseConfig(optimizer="adagrad").validate()
    >>> c.learning_rate, c.k, c.batch_size
    (0.01, 20, 100)
    """

    DEFAULT_LR: ClassVar[dict] = {"adam": 1e-3, "adagrad": 1e-2, "sgd": 0.1}

    batch_size: int = 100
    hidden: int = 500
    dim: int = 50
    k: int = 20
    selection: str = "topk"
    activation: str = "cube"
    dropout: float = 0.0
    error_feedback: float = 0.0
    min_word_freq: int = 2
    max_train_sentences: int = None
    max_dev_sentences: int = None

    def check(self):
        """Check the parser's fields; raise ValueError naming the bad one."""
        for name in ("hidden", "dim", "min_word_freq"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("k", self.k, allow_none=True)
        for name in ("max_train_sentences", "max_dev_sentences"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        if self.k is not None and self.k > self.hidden:
            raise ValueError(f"k must be at most hidden={self.hidden}, got {self.k}")
        if self.selection not in _SELECTIONS:
            raise ValueError(f"selection must be one of {_SELECTIONS}, got {self.selection!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if isinstance(self.dropout, bool) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if (isinstance(self.error_feedback, bool) or not isinstance(self.error_feedback, (int, float))
                or not 0.0 <= self.error_feedback < 1.0):
            raise ValueError(f"error_feedback must be in [0, 1), got {self.error_feedback!r}")


@dataclasses.dataclass
class ParseData:
    """A treebank ready for training: vocabulary, oracle examples, dev and test trees.

    Built by :func:`load_parse_data`. `features` and `transitions` are the
    static oracle's configurations of the projective training trees; `stats`
    counts sentences, skipped trees and the seconds spent reading and in
    the oracle.
    """

    vocab: ParseVocabulary
    features: np.ndarray
    transitions: np.ndarray
    dev: Treebank
    test: Treebank = None
    stats: dict = dataclasses.field(default_factory=dict)


def _split_path(data_dir, split):
    try:
        return find_split(data_dir, split)
    except FileNotFoundError:
        return None


def load_parse_data(config, extra_state=None):
    """Read ``config.data_dir`` into :class:`ParseData` (see :class:`ParseTask`)."""
    if not config.data_dir:
        raise ValueError(f"data_dir: --task parse needs a UD treebank folder (--data-dir DIR "
                         f"or ${ENV_DATA_DIR})")
    start = time.perf_counter()
    train_s = read_conllu(find_split(config.data_dir, "train"),
                          max_sentences=config.max_train_sentences)
    dev_s = read_conllu(find_split(config.data_dir, "dev"), max_sentences=config.max_dev_sentences)
    # Read when present, scored only where asked (``eval_test``, ``evaluate --split test``).
    test_path = _split_path(config.data_dir, "test")
    test_s = read_conllu(test_path) if test_path else None
    for name, sents in (("train", train_s), ("dev", dev_s), ("test", test_s or [])):
        for i, s in enumerate(sents):
            if s.head is None:
                raise ValueError(f"{name} sentence {i + 1} has no dependency tree (HEAD column empty)")
    read_s = time.perf_counter() - start
    vocab = (ParseVocabulary.from_state_dict(extra_state["vocab"]) if extra_state
             else ParseVocabulary(train_s, min_word_freq=config.min_word_freq))
    train = vocab.encode(train_s)
    start = time.perf_counter()
    proj = is_projective(train)
    sentence_of = np.repeat(np.arange(len(train)), np.diff(train.offsets))
    known = np.bincount(sentence_of, weights=train.labels < 0, minlength=len(train)) == 0
    kept = train.subset(proj & known)
    features, transitions, _ = oracle(kept, len(vocab.labels))
    oracle_s = time.perf_counter() - start
    stats = {"train_sentences": len(train), "non_projective": int((~proj).sum()),
             "unknown_relation": int((~known).sum()), "train_trees": len(kept),
             "train_transitions": int(len(transitions)), "dev_sentences": len(dev_s),
             "test_sentences": None if test_s is None else len(test_s),
             "read_s": read_s, "oracle_s": oracle_s}
    return ParseData(vocab, features, transitions, vocab.encode(dev_s),
                     None if test_s is None else vocab.encode(test_s), stats)


def write_conllu_predictions(input_path, heads, labels, label_names, out):
    """Copy `input_path` to `out` with HEAD and DEPREL of every word replaced.

    `heads`/`labels` hold one entry per word of the file in order (the
    flat layout of :func:`~meprop_numba.tasks.parse.transitions.parse`
    without its ROOT entries). DEPS becomes ``_`` (not predicted); comments,
    multiword tokens and empty nodes are copied unchanged.
    """
    j = 0
    with open(input_path, encoding="utf-8-sig") as handle:
        for line in handle:
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) == 10 and cols[0].isdigit():
                cols[6], cols[7], cols[8] = str(int(heads[j])), label_names[int(labels[j])], "_"
                j += 1
            out.write("\t".join(cols) + "\n")
    return j


class ParseTask(Task):
    """The ``parse`` task: the arc-standard parser of :mod:`meprop_numba.tasks.parse`.

    The methods implement :mod:`meprop_numba.tasks.base`'s protocol.
    Construction never raises.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> task = TASKS["parse"]
    >>> task.label(task.config_class()), task.metric, task.component_timers
    ('meProp k=20 topk', 'las', ('backward_linear', 'backward_hidden'))
    """

    name = "parse"
    help = "transition-based dependency parsing (Chen & Manning 2014) with a meProp hidden layer"
    config_class = ParseConfig
    metric = "las"
    component_timers = ("backward_linear", "backward_hidden")

    def add_arguments(self, parser):
        group = parser.add_argument_group("parse task")
        group.add_argument("--data-dir", dest="data_dir", default=None, metavar="DIR",
                           help="UD treebank directory with *-ud-train.conllu, *-ud-dev.conllu "
                                f"and optionally *-ud-test.conllu (default ${ENV_DATA_DIR})")
        group.add_argument("--hidden", type=positive_int_arg, default=500,
                           help="hidden units (default 500)")
        group.add_argument("--dim", type=positive_int_arg, default=50,
                           help="embedding size (default 50)")
        group.add_argument("--k", type=k_arg, default=20,
                           help="meProp k of the hidden layer; 'none' for dense (default 20)")
        group.add_argument("--selection", choices=_SELECTIONS, default="topk",
                           help="per-example top-k (default), unified top-k, or random k")
        group.add_argument("--activation", choices=tuple(ACTIVATIONS), default="cube",
                           help="hidden activation (default cube, as Chen & Manning)")
        group.add_argument("--dropout", type=float, default=0.0,
                           help="dropout on the hidden activations (default 0)")
        group.add_argument("--error-feedback", type=float, default=0.0, metavar="BETA",
                           help="error-feedback decay of the meProp hidden layer, in [0, 1) "
                                "(default 0: plain meProp)")
        group.add_argument("--min-word-freq", type=positive_int_arg, default=2,
                           help="words seen fewer times share the UNK embedding (default 2)")
        group.add_argument("--max-train-sentences", type=positive_int_arg, default=None,
                           help="train on the first N sentences only")
        group.add_argument("--max-dev-sentences", type=positive_int_arg, default=None,
                           help="evaluate on the first N dev sentences only")

    def config_from_args(self, args, shared):
        names = ("hidden", "dim", "k", "selection", "activation", "dropout", "error_feedback",
                 "min_word_freq",
                 "max_train_sentences", "max_dev_sentences")
        data_dir = args.data_dir or os.environ.get(ENV_DATA_DIR)
        return ParseConfig(**shared, data_dir=data_dir, **{n: getattr(args, n) for n in names})

    def load_data(self, config, extra_state=None):
        return load_parse_data(config, extra_state)

    def check_data(self, config, data):
        if len(data.transitions) == 0:
            raise ValueError("the training split has no projective tree to learn from")
        if config.batch_size > len(data.transitions):
            raise ValueError(f"batch_size {config.batch_size} exceeds the "
                             f"{len(data.transitions)} training transitions")

    def build_model(self, config, extra_state, rng):
        v = ParseVocabulary.from_state_dict(extra_state["vocab"])
        return ParserModel(len(v.words), len(v.pos), len(v.labels) + 1, v.n_transitions,
                           dim=config.dim, hidden=config.hidden, k=config.k,
                           selection=config.selection, activation=config.activation,
                           dropout=config.dropout, error_feedback=config.error_feedback,
                           dtype=np.dtype(config.dtype), rng=rng)

    def n_batches(self, config, data):
        return -(-len(data.transitions) // config.batch_size)

    def batches(self, config, data, rng):
        order = rng.permutation(len(data.transitions))
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            yield data.features[idx], data.transitions[idx]

    def start_epoch(self, model):
        model.hidden.reset_error_feedback()

    def loss(self, model, batch):
        features, transitions = batch
        return softmax_cross_entropy(model.forward(features, train=True), transitions)

    def component_seconds(self, model):
        return {"backward_linear": model.hidden.backward_seconds + model.output.backward_seconds,
                "backward_hidden": model.hidden.backward_seconds}

    def _parse(self, model, vocab, treebank):
        return parse(model.forward, treebank, len(vocab.labels), root_label=vocab.root_label)

    def evaluate(self, model, data, split):
        treebank = data.dev if split == "dev" else data.test
        if treebank is None or treebank.n_words == 0:
            return {"uas": None, "las": None}
        scores = attachment_scores(treebank, *self._parse(model, data.vocab, treebank))
        return {"uas": scores["uas"], "las": scores["las"]}

    def extra_state(self, data):
        return {"vocab": data.vocab.state_dict()}

    def predict(self, model, config, extra_state, input_path, out):
        vocab = ParseVocabulary.from_state_dict(extra_state["vocab"])
        sentences = read_conllu(input_path)
        treebank = vocab.encode(sentences, with_tree=False)
        heads, labels = self._parse(model, vocab, treebank)
        mask = treebank.word_mask()
        write_conllu_predictions(input_path, heads[mask], labels[mask], vocab.labels, out)
        return len(sentences)

    def data_summary(self, data):
        return {**data.stats, "relations": len(data.vocab.labels), "words": len(data.vocab.words),
                "pos": len(data.vocab.pos)}

    def label(self, config):
        dropout = f" dropout {config.dropout:g}" if config.dropout else ""
        if config.k is None:
            return f"dense h={config.hidden}{dropout}"
        feedback = f" error feedback {config.error_feedback:g}" if config.error_feedback else ""
        return f"meProp k={config.k} {config.selection}{dropout}{feedback}"

    def describe(self, config, data):
        s = data.stats
        return (f"parse: {s['train_sentences']} train sentences, {s['non_projective']} "
                f"non-projective and {s['unknown_relation']} with an unseen relation skipped, "
                f"{s['train_transitions']} transitions (oracle {s['oracle_s']:.2f}s); "
                f"{s['dev_sentences']} dev; {len(data.vocab.labels)} relations; "
                f"{self.label(config)}, {config.activation}, {config.optimizer} "
                f"lr {config.learning_rate}, batch {config.batch_size}")
