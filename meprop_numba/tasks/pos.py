"""Part-of-speech tagging with a meProp LSTM (the meProp paper's POS experiment).

The tagger reads a word embedding (50) and seven word-shape feature
embeddings (20 each: shape class, 1-3 letter prefixes and suffixes), runs a
(bi)LSTM (hidden 500) trained with meProp BPTT, and scores the tags with a
dense output layer (no meProp there, as in the paper). Data: a Universal
Dependencies treebank in CoNLL-U (``*-ud-train.conllu``, ``*-ud-dev.conllu``,
optionally ``*-ud-test.conllu``) from a directory given on the command line
or in ``$MEPROP_NUMBA_POS_DIR``.

Command line (registered as ``--task pos`` in :mod:`meprop_numba.cli`)::

    meprop-numba train --task pos --pos-dir UD_English-EWT --k 10 --epochs 5

Python::

    >>> from meprop_numba.tasks.pos import POSConfig, load_pos_data, train_pos
    >>> data = load_pos_data("UD_English-EWT")             # doctest: +SKIP
    >>> results = train_pos(POSConfig(k=10, epochs=1), data)  # doctest: +SKIP
"""
import dataclasses
import math
import os
import sys
import time

import numpy as np

from .. import get_num_threads, set_num_threads
from ..data.conllu import N_FEATURES, PAD_ID, UNK_ID, FeatureVocabularies, find_split, read_conllu
from ..nn.embedding import Embedding
from ..nn.layers import Linear, Module
from ..nn.loss import softmax_cross_entropy
from ..nn.lstm import LSTM
from ..optim import SGD, AdaGrad, Adam
from ..train import _atomic_json, _check_lr, _progress_bar, _save_checkpoint, _seeds, load_checkpoint

__all__ = [
    "ENV_DATA_DIR",
    "Batch",
    "POSConfig",
    "POSData",
    "POSTagger",
    "add_arguments",
    "load_pos_data",
    "make_batch",
    "run",
    "train_pos",
]

#: Environment variable naming the treebank directory when --pos-dir is not given.
ENV_DATA_DIR = "MEPROP_NUMBA_POS_DIR"
#: Optimizer name -> (class, default learning rate); AdaGrad 0.01 is the paper's POS rate.
OPTIMIZERS = {"adam": (Adam, 1e-3), "adagrad": (AdaGrad, 1e-2), "sgd": (SGD, 0.1)}
#: File name of the checkpoint that :func:`train_pos` writes in its ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.npz"
_EVAL_BATCH = 64
_RESUMABLE_CHANGES = {"epochs", "threads", "data_dir"}


# ---------------------------------------------------------------- data
@dataclasses.dataclass
class POSData:
    """Encoded treebank splits and the vocabularies built from the training split.

    Construction never raises: :func:`load_pos_data` checks the files.

    Attributes
    ----------
    vocab : FeatureVocabularies
    train, dev : list of EncodedSentence
    test : list of EncodedSentence or None
    upos_of_tag : ndarray of int64 or None
        For an XPOS tagger: tag id -> UPOS id (the UPOS most often seen with
        that XPOS in training), so a UPOS accuracy can be reported too.
    dev_upos, test_upos : list of ndarray or None
        Gold UPOS ids of the dev/test sentences (same UPOS vocabulary).
    source : str
        Where the data came from.

    Examples
    --------
    Built by :func:`load_pos_data`; here from a toy treebank of three
    copies of one sentence:

    >>> import os, shutil, tempfile
    >>> from meprop_numba.tasks.pos import load_pos_data
    >>> sentence = ["1\\tDogs\\tdog\\tNOUN\\tNNS\\t_\\t2\\tnsubj\\t_\\t_",
    ...             "2\\tbark\\tbark\\tVERB\\tVBP\\t_\\t0\\troot\\t_\\t_",
    ...             "3\\t.\\t.\\tPUNCT\\t.\\t_\\t2\\tpunct\\t_\\t_", ""]
    >>> tmp = tempfile.mkdtemp()
    >>> for split in ("train", "dev"):
    ...     with open(os.path.join(tmp, f"en_toy-ud-{split}.conllu"), "w") as fh:
    ...         _ = fh.write("\\n".join(sentence * 3) + "\\n")
    >>> data = load_pos_data(tmp, min_word_freq=1)
    >>> shutil.rmtree(tmp)
    >>> s = data.summary()
    >>> s["train_sentences"], s["train_tokens"], s["tags"]
    (3, 9, 3)
    """

    vocab: FeatureVocabularies
    train: list
    dev: list
    test: list = None
    upos_of_tag: np.ndarray = None
    dev_upos: list = None
    test_upos: list = None
    source: str = ""

    def summary(self):
        """Sizes, for the results JSON."""
        return {
            "source": self.source,
            "tag_column": self.vocab.tag_column,
            "train_sentences": len(self.train),
            "train_tokens": int(sum(len(s) for s in self.train)),
            "dev_sentences": len(self.dev),
            "dev_tokens": int(sum(len(s) for s in self.dev)),
            "test_sentences": None if self.test is None else len(self.test),
            "words": len(self.vocab.words),
            "tags": len(self.vocab.tags) - 1,
        }


def _upos_map(sentences, vocab):
    """Majority UPOS for every XPOS tag, and the UPOS id vocabulary."""
    upos_names = sorted({u for s in sentences for u in s.upos})
    upos_id = {u: i for i, u in enumerate(upos_names)}
    counts = np.zeros((len(vocab.tags), len(upos_names)), dtype=np.int64)
    for s in sentences:
        for x, u in zip(s.xpos, s.upos):
            counts[vocab.tags.stoi[x], upos_id[u]] += 1
    return counts.argmax(axis=1), upos_id


def load_pos_data(data_dir, *, tag="xpos", min_word_freq=2, test=False,
                  max_train_sentences=None, max_dev_sentences=None):
    """Read and encode a UD treebank directory.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Directory holding ``*-ud-train.conllu`` and ``*-ud-dev.conllu`` (and
        ``*-ud-test.conllu`` when `test` is set).
    tag : {"xpos", "upos"}, default "xpos"
        The tag the tagger predicts (XPOS is the Penn Treebank tag set for
        English, as in the paper).
    min_word_freq : int, default 2
        Training words seen fewer times share the UNK embedding.
    test : bool, default False
        Also load the test split.
    max_train_sentences, max_dev_sentences : int, optional
        Use only the first sentences (quick runs).

    Returns
    -------
    POSData
        The encoded splits and vocabularies.

    Raises
    ------
    FileNotFoundError
        If the directory or a split is missing.
    ImportError
        If the ``conllu`` package (the ``pos`` extra) is not installed.

    Examples
    --------
    >>> import os, shutil, tempfile
    >>> from meprop_numba.tasks.pos import load_pos_data
    >>> sentence = ["1\\tDogs\\tdog\\tNOUN\\tNNS\\t_\\t2\\tnsubj\\t_\\t_",
    ...             "2\\tbark\\tbark\\tVERB\\tVBP\\t_\\t0\\troot\\t_\\t_",
    ...             "3\\t.\\t.\\tPUNCT\\t.\\t_\\t2\\tpunct\\t_\\t_", ""]
    >>> tmp = tempfile.mkdtemp()
    >>> for split in ("train", "dev"):
    ...     with open(os.path.join(tmp, f"en_toy-ud-{split}.conllu"), "w") as fh:
    ...         _ = fh.write("\\n".join(sentence * 3) + "\\n")
    >>> data = load_pos_data(tmp, min_word_freq=1)
    >>> shutil.rmtree(tmp)
    >>> len(data.train), len(data.dev), data.test is None
    (3, 3, True)
    """
    train_s = read_conllu(find_split(data_dir, "train"), max_sentences=max_train_sentences)
    dev_s = read_conllu(find_split(data_dir, "dev"), max_sentences=max_dev_sentences)
    test_s = read_conllu(find_split(data_dir, "test")) if test else None
    vocab = FeatureVocabularies(train_s, tag_column=tag, min_word_freq=min_word_freq)
    data = POSData(vocab, vocab.encode_all(train_s), vocab.encode_all(dev_s),
                   None if test_s is None else vocab.encode_all(test_s),
                   source=os.fspath(data_dir))
    if tag == "xpos":
        data.upos_of_tag, upos_id = _upos_map(train_s, vocab)
        unknown = len(upos_id)

        def gold(sents):
            return [np.array([upos_id.get(u, unknown) for u in s.upos], dtype=np.int64)
                    for s in sents]
        data.dev_upos = gold(dev_s)
        data.test_upos = None if test_s is None else gold(test_s)
    return data


@dataclasses.dataclass
class Batch:
    """A padded minibatch of sentences (padding id 0 everywhere).

    Built by :func:`make_batch`; construction never raises (no checks).

    Attributes
    ----------
    words : ndarray of int64, shape (B, T)
        Word ids.
    features : ndarray of int64, shape (B, T, 7)
        Word-shape feature ids, already offset into the shared feature table.
    tags : ndarray of int64, shape (B, T)
        Gold tag ids.
    lengths : ndarray of int64, shape (B,)
        Sentence lengths; positions at or after them are padding.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.pos import Batch
    >>> z = np.zeros((2, 3), dtype=np.int64)
    >>> Batch(z, np.zeros((2, 3, 7), dtype=np.int64), z, np.array([3, 1])).mask
    array([[ True,  True,  True],
           [ True, False, False]])
    """

    words: np.ndarray      # (B, T) int64
    features: np.ndarray   # (B, T, 7) int64, already offset into the shared feature table
    tags: np.ndarray       # (B, T) int64
    lengths: np.ndarray    # (B,) int64

    @property
    def mask(self):
        """(B, T) bool, True at real tokens."""
        return np.arange(self.words.shape[1])[None, :] < self.lengths[:, None]


def make_batch(sentences, feature_offsets, *, word_dropout=0.0, word_counts=None, rng=None):
    """Pad encoded sentences into a :class:`Batch`.

    Parameters
    ----------
    sentences : list of EncodedSentence
    feature_offsets : ndarray of int64, shape (7,)
        Row offset of each feature's vocabulary in the shared feature table.
    word_dropout : float, default 0
        alpha of word dropout: a word seen c times in training is replaced by
        UNK with probability alpha / (alpha + c) (training only).
    word_counts : ndarray, optional
        Training counts per word id (needed with `word_dropout`).
    rng : numpy.random.Generator, optional
        Draws the word dropout.

    Returns
    -------
    Batch
        Padded to the longest sentence.

    Raises
    ------
    ValueError
        If `sentences` is empty.
    TypeError
        If `word_dropout` is set without `word_counts`.

    Examples
    --------
    >>> import os, shutil, tempfile
    >>> from meprop_numba.tasks.pos import load_pos_data
    >>> sentence = ["1\\tDogs\\tdog\\tNOUN\\tNNS\\t_\\t2\\tnsubj\\t_\\t_",
    ...             "2\\tbark\\tbark\\tVERB\\tVBP\\t_\\t0\\troot\\t_\\t_",
    ...             "3\\t.\\t.\\tPUNCT\\t.\\t_\\t2\\tpunct\\t_\\t_", ""]
    >>> tmp = tempfile.mkdtemp()
    >>> for split in ("train", "dev"):
    ...     with open(os.path.join(tmp, f"en_toy-ud-{split}.conllu"), "w") as fh:
    ...         _ = fh.write("\\n".join(sentence * 3) + "\\n")
    >>> data = load_pos_data(tmp, min_word_freq=1)
    >>> shutil.rmtree(tmp)
    >>> from meprop_numba.tasks.pos import POSTagger, POSConfig, build_tagger, make_batch
    >>> offsets = build_tagger(POSConfig(hidden=8, k=2), data).feature_offsets
    >>> batch = make_batch(data.train[:2], offsets)
    >>> batch.words.shape, batch.features.shape, batch.lengths.tolist()
    ((2, 3), (2, 3, 7), [3, 3])
    """
    B = len(sentences)
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    T = int(lengths.max())
    words = np.zeros((B, T), dtype=np.int64)
    feats = np.zeros((B, T, N_FEATURES), dtype=np.int64)
    tags = np.zeros((B, T), dtype=np.int64)
    for b, s in enumerate(sentences):
        L = len(s)
        words[b, :L] = s.words
        feats[b, :L] = s.features + feature_offsets
        tags[b, :L] = s.tags
    if word_dropout > 0:
        c = word_counts[words]
        drop = rng.random(words.shape) < word_dropout / (word_dropout + c)
        words[drop & (words > UNK_ID)] = UNK_ID
    return Batch(words, feats, tags, lengths)


# ---------------------------------------------------------------- model
class POSTagger(Module):
    """Embeddings -> meProp (bi)LSTM -> dense output layer over the tags.

    Parameters
    ----------
    n_words : int
        Word vocabulary size (ids 0 = padding, 1 = UNK).
    feature_sizes : sequence of int
        Vocabulary size of each shape feature; the features share one table
        whose row 0 is padding.
    n_tags : int
        Tag vocabulary size including the padding id 0 (never a target).
    word_dim, feature_dim : int, default 50, 20
    hidden : int, default 500
    layers : int, default 1
    bidirectional : bool, default False
    k, scope, selection
        meProp settings of the LSTM (see :class:`~meprop_numba.nn.lstm.LSTM`);
        ``k=None`` is dense BPTT.
    dtype : {numpy.float32, numpy.float64}
    rng : numpy.random.Generator or int, optional

    Raises
    ------
    ValueError
        If `feature_sizes` does not list 7 sizes, or a size, `k`, `scope`
        or `selection` is out of range (checked by the layers).
    TypeError
        If a size or `k` is not an integer, or `dtype` is not float32/float64.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.pos import POSTagger, Batch
    >>> m = POSTagger(20, [5] * 7, 4, hidden=8, k=2, rng=0)
    >>> words = np.array([[2, 3, 4]]); feats = np.ones((1, 3, 7), dtype=np.int64)
    >>> b = Batch(words, feats, np.array([[1, 2, 3]]), np.array([3]))
    >>> m.forward(b, train=True).shape
    (3, 4)
    """

    def __init__(self, n_words, feature_sizes, n_tags, *, word_dim=50, feature_dim=20,
                 hidden=500, layers=1, bidirectional=False, k=None, scope="per_gate",
                 selection="topk", dtype=np.float32, rng=None):
        self.rng = np.random.default_rng(rng)
        feature_sizes = [int(n) for n in feature_sizes]
        if len(feature_sizes) != N_FEATURES:
            raise ValueError(f"feature_sizes must list {N_FEATURES} sizes, got {len(feature_sizes)}")
        self.feature_offsets = 1 + np.concatenate([[0], np.cumsum(feature_sizes)[:-1]]).astype(np.int64)
        self.word_embedding = Embedding(n_words, word_dim, padding_idx=PAD_ID, dtype=dtype,
                                        rng=self.rng)
        self.feature_embedding = Embedding(1 + sum(feature_sizes), feature_dim, padding_idx=0,
                                           dtype=dtype, rng=self.rng)
        self.word_dim, self.feature_dim = word_dim, feature_dim
        self.lstm = LSTM(word_dim + N_FEATURES * feature_dim, hidden, layers,
                         bidirectional=bidirectional, k=k, scope=scope, selection=selection,
                         dtype=dtype, rng=self.rng)
        self.output = Linear(self.lstm.output_size, n_tags, dtype=dtype, rng=self.rng)
        self.dtype = np.dtype(dtype)
        self._mask = None

    def forward(self, batch, train=False):
        """Scores of every real token, shape (number of tokens, n_tags), in row-major order."""
        B, T = batch.words.shape
        w = self.word_embedding.forward(batch.words, train)
        f = self.feature_embedding.forward(batch.features, train).reshape(B, T, -1)
        x = np.concatenate([w, f], axis=2)
        hs = self.lstm.forward(x, train, lengths=batch.lengths)
        mask = batch.mask
        if train:
            self._mask = mask
        return self.output.forward(hs[mask], train)

    def backward(self, grad_out):
        """Back propagate the gradient of the token scores; returns None."""
        if self._mask is None:
            raise RuntimeError("backward called before forward(batch, train=True)")
        mask, self._mask = self._mask, None
        d_tokens = self.output.backward(grad_out)
        B, T = mask.shape
        dh = np.zeros((B, T, self.lstm.output_size), dtype=self.dtype)
        dh[mask] = d_tokens
        dx = self.lstm.backward(dh)
        self.word_embedding.backward(dx[:, :, :self.word_dim])
        self.feature_embedding.backward(
            dx[:, :, self.word_dim:].reshape(B, T, N_FEATURES, self.feature_dim))

    def predict(self, batch):
        """Predicted tag id of every real token (row-major order); padding id 0 is never predicted."""
        scores = self.forward(batch)
        scores[:, PAD_ID] = -np.inf
        return scores.argmax(axis=1)


# ---------------------------------------------------------------- config and training
@dataclasses.dataclass
class POSConfig:
    """Hyper-parameters of a tagger training run.

    Parameters
    ----------
    data_dir : str or None
        Treebank directory (recorded in results and checkpoints).
    tag : {"xpos", "upos"}
    hidden, layers, bidirectional
        LSTM shape (paper: hidden 500, one unidirectional layer).
    k : int or None
        meProp k of the LSTM gate gradients (None: dense BPTT).
    mode : {"per_gate", "concat"}
    selection : {"topk", "random"}
    word_dim, feature_dim : int
    min_word_freq : int
    word_dropout : float
    optimizer : {"adam", "adagrad", "sgd"}
    lr : float or None
        None takes the optimizer's default (Adam 1e-3, AdaGrad 1e-2, SGD 0.1).
    lazy : bool
        Lazy (row-sparse) optimizer updates.
    epochs, batch_size, seed : int
    dtype : {"float32", "float64"}
    threads : int or None
    max_train_sentences, max_dev_sentences : int or None
        Train/evaluate on the first sentences only (recorded in the results).
    eval_test : bool
        Also evaluate on the test split every epoch.

    Raises
    ------
    ValueError
        From :meth:`validate` (called by :func:`train_pos`), naming a bad field.

    Examples
    --------
    >>> from meprop_numba.tasks.pos import POSConfig
    >>> config = POSConfig(k=10, optimizer="adagrad").validate()
    >>> config.hidden, config.k, config.mode, config.batch_size
    (500, 10, 'per_gate', 1)
    """

    data_dir: str = None
    tag: str = "xpos"
    hidden: int = 500
    layers: int = 1
    bidirectional: bool = False
    k: int = 10
    mode: str = "per_gate"
    selection: str = "topk"
    word_dim: int = 50
    feature_dim: int = 20
    min_word_freq: int = 2
    word_dropout: float = 0.0
    optimizer: str = "adam"
    lr: float = None
    lazy: bool = True
    epochs: int = 5
    batch_size: int = 1
    seed: int = 0
    dtype: str = "float32"
    threads: int = None
    max_train_sentences: int = None
    max_dev_sentences: int = None
    eval_test: bool = False

    def validate(self):
        """Check every field; raise ValueError naming the bad one."""
        def positive_int(name, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("hidden", "layers", "word_dim", "feature_dim", "min_word_freq", "epochs",
                     "batch_size"):
            positive_int(name)
        for name in ("k", "threads", "max_train_sentences", "max_dev_sentences"):
            positive_int(name, allow_none=True)
        limit = self.hidden if self.mode == "per_gate" else 4 * self.hidden
        if self.k is not None and self.k > limit:
            raise ValueError(f"k must be at most {limit} for mode {self.mode!r}, got {self.k}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        choices = {"tag": ("xpos", "upos"), "mode": ("per_gate", "concat"),
                   "selection": ("topk", "random"), "optimizer": tuple(OPTIMIZERS),
                   "dtype": ("float32", "float64")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        _check_lr(self.lr)
        if not (isinstance(self.word_dropout, (int, float)) and 0 <= self.word_dropout
                and math.isfinite(self.word_dropout)):
            raise ValueError(f"word_dropout must be a finite number >= 0, got {self.word_dropout!r}")
        return self

    @property
    def learning_rate(self):
        return float(self.lr) if self.lr is not None else OPTIMIZERS[self.optimizer][1]

    def label(self):
        """Short description, e.g. ``'meProp k=10 per_gate'`` or ``'dense'``."""
        if self.k is None:
            return "dense"
        sel = "" if self.selection == "topk" else " random"
        return f"meProp k={self.k} {self.mode}{sel}"


def build_tagger(config, data, rng=None):
    """The :class:`POSTagger` a config describes, sized for `data`'s vocabularies."""
    v = data.vocab
    return POSTagger(len(v.words), [len(f) for f in v.features], len(v.tags),
                     word_dim=config.word_dim, feature_dim=config.feature_dim,
                     hidden=config.hidden, layers=config.layers,
                     bidirectional=config.bidirectional, k=config.k, scope=config.mode,
                     selection=config.selection, dtype=np.dtype(config.dtype), rng=rng)


def evaluate(model, sentences, feature_offsets, upos_of_tag=None, gold_upos=None):
    """Token accuracy on `sentences` (and UPOS accuracy through `upos_of_tag`)."""
    correct = total = upos_correct = 0
    for start in range(0, len(sentences), _EVAL_BATCH):
        chunk = sentences[start:start + _EVAL_BATCH]
        batch = make_batch(chunk, feature_offsets)
        pred = model.predict(batch)
        gold = batch.tags[batch.mask]
        correct += int((pred == gold).sum())
        total += gold.size
        if upos_of_tag is not None:
            gold_u = np.concatenate(gold_upos[start:start + _EVAL_BATCH])
            upos_correct += int((upos_of_tag[pred] == gold_u).sum())
    acc = correct / max(total, 1)
    return acc, (upos_correct / max(total, 1) if upos_of_tag is not None else None)


def _warm_up(config, data):
    """Compile the kernels on a throwaway model so compilation is not timed."""
    start = time.perf_counter()
    model = build_tagger(dataclasses.replace(config, hidden=8, k=None if config.k is None else 2),
                         data, rng=0)
    opt = OPTIMIZERS[config.optimizer][0](model.params(), lr=config.learning_rate,
                                          lazy=config.lazy)
    batch = make_batch(data.train[:2], model.feature_offsets)
    _, grad = softmax_cross_entropy(model.forward(batch, train=True), batch.tags[batch.mask])
    model.backward(grad)
    opt.step(model.grads())
    model.predict(batch)
    return time.perf_counter() - start


def train_pos(config, data, *, checkpoint_dir=None, resume=False, progress=True, out=None,
              log=None):
    """Train a tagger; return a JSON-ready results dictionary.

    Every epoch records ``train_loss``, ``dev_accuracy`` (and
    ``dev_upos_accuracy`` for an XPOS tagger, ``test_*`` with
    ``eval_test``), and the time spent in the forward pass with the loss
    (``forward_s``), the whole backward pass (``backward_s``), the LSTM
    layer's BPTT within it (``backward_lstm_s``), the optimizer
    (``optimizer_s``) and the whole epoch (``train_s``).

    Parameters
    ----------
    config : POSConfig
    data : POSData
    checkpoint_dir : str, optional
        Write ``checkpoint.npz`` there after every epoch (atomically).
    resume : bool, default False
        Continue from the checkpoint in `checkpoint_dir`.
    progress : bool, default True
        A progress bar per epoch.
    out : str, optional
        Write the results JSON there after every epoch.
    log : callable, optional
        Called with one line per epoch.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        Bad config or mismatching checkpoint.
    FileNotFoundError
        `resume` without a checkpoint.
    FloatingPointError
        The training loss became NaN or Inf.

    Examples
    --------
    One epoch of a tiny tagger on a toy treebank:

    >>> import os, shutil, tempfile
    >>> from meprop_numba.tasks.pos import load_pos_data
    >>> sentence = ["1\\tDogs\\tdog\\tNOUN\\tNNS\\t_\\t2\\tnsubj\\t_\\t_",
    ...             "2\\tbark\\tbark\\tVERB\\tVBP\\t_\\t0\\troot\\t_\\t_",
    ...             "3\\t.\\t.\\tPUNCT\\t.\\t_\\t2\\tpunct\\t_\\t_", ""]
    >>> tmp = tempfile.mkdtemp()
    >>> for split in ("train", "dev"):
    ...     with open(os.path.join(tmp, f"en_toy-ud-{split}.conllu"), "w") as fh:
    ...         _ = fh.write("\\n".join(sentence * 3) + "\\n")
    >>> data = load_pos_data(tmp, min_word_freq=1)
    >>> shutil.rmtree(tmp)
    >>> from meprop_numba.tasks.pos import POSConfig, train_pos
    >>> config = POSConfig(hidden=8, k=2, epochs=1, word_dim=4, feature_dim=2)
    >>> results = train_pos(config, data, progress=False)
    >>> len(results["epochs"]), 0.0 <= results["best_dev_accuracy"] <= 1.0
    (1, True)
    """
    config.validate()
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if config.threads is not None:
        set_num_threads(config.threads)
    model_rng, data_rng = _seeds(config.seed)
    model = build_tagger(config, data, rng=model_rng)
    optimizer = OPTIMIZERS[config.optimizer][0](model.params(), lr=config.learning_rate,
                                                lazy=config.lazy)
    results = {"config": dataclasses.asdict(config), "data": data.summary(),
               "threads": get_num_threads(), "warm_up_s": None, "epochs": [], "stopped": None}
    checkpoint_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    start_epoch = 0
    if resume:
        if not os.path.exists(checkpoint_path):
            raise FileNotFoundError(f"resume: no checkpoint at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path)
        mine = dataclasses.asdict(config)
        differ = sorted(k for k in mine if k not in _RESUMABLE_CHANGES
                        and state["config"].get(k) != mine[k])
        if differ:
            raise ValueError(f"resume: the checkpoint was trained with a different config ({differ})")
        params = model.params()
        if len(state["params"]) != len(params) or any(
                a.shape != p.shape for a, p in zip(state["params"], params)):
            raise ValueError("resume: the checkpoint's parameters do not match the model "
                             "(was it trained on other data?)")
        optimizer.load_state_dict(state["optimizer"])
        for p, saved in zip(params, state["params"]):
            p[...] = saved
        model_rng.bit_generator.state = state["rng"]["model"]
        data_rng.bit_generator.state = state["rng"]["data"]
        results["epochs"] = list(state["history"])
        start_epoch = int(state["epoch"])
    results["warm_up_s"] = _warm_up(config, data)

    train_set = data.train
    n_batches = math.ceil(len(train_set) / config.batch_size)
    counts = data.vocab.words.counts.astype(np.float64)
    offsets = model.feature_offsets
    for epoch in range(start_epoch, config.epochs):
        order = data_rng.permutation(len(train_set))
        t_fwd = t_bwd = t_opt = 0.0
        lstm_before = model.lstm.backward_seconds
        loss_sum, tokens = 0.0, 0
        bar = _progress_bar(n_batches, f"epoch {epoch + 1}/{config.epochs}", progress)
        epoch_start = time.perf_counter()
        for i in range(n_batches):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            batch = make_batch([train_set[j] for j in idx], offsets,
                               word_dropout=config.word_dropout, word_counts=counts, rng=data_rng)
            t0 = time.perf_counter()
            gold = batch.tags[batch.mask]
            loss, grad = softmax_cross_entropy(model.forward(batch, train=True), gold)
            t1 = time.perf_counter()
            model.backward(grad)
            t2 = time.perf_counter()
            optimizer.step(model.grads())
            t3 = time.perf_counter()
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            t_opt += t3 - t2
            loss_sum += loss * gold.size
            tokens += gold.size
            if bar is not None:
                bar.update(1)
        train_s = time.perf_counter() - epoch_start
        if bar is not None:
            bar.close()
        train_loss = loss_sum / max(tokens, 1)
        if not math.isfinite(train_loss):
            results["stopped"] = f"training loss became {train_loss} in epoch {epoch + 1}"
            raise FloatingPointError(results["stopped"])
        t0 = time.perf_counter()
        dev_acc, dev_upos = evaluate(model, data.dev, offsets, data.upos_of_tag, data.dev_upos)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "dev_accuracy": dev_acc,
               "dev_upos_accuracy": dev_upos}
        if config.eval_test and data.test is not None:
            row["test_accuracy"], row["test_upos_accuracy"] = evaluate(
                model, data.test, offsets, data.upos_of_tag, data.test_upos)
        row.update({"forward_s": t_fwd, "backward_s": t_bwd,
                    "backward_lstm_s": model.lstm.backward_seconds - lstm_before,
                    "optimizer_s": t_opt, "train_s": train_s,
                    "eval_s": time.perf_counter() - t0})
        results["epochs"].append(row)
        _summarise(results)
        if log is not None:
            log(_epoch_line(row))
        if checkpoint_path:
            _save_checkpoint(checkpoint_path, {
                "config": dataclasses.asdict(config), "epoch": epoch + 1,
                "params": model.params(), "optimizer": optimizer.state_dict(),
                "rng": {"model": model_rng.bit_generator.state,
                        "data": data_rng.bit_generator.state},
                "history": results["epochs"]})
        if out:
            _atomic_json(out, results)
    results["model"] = model
    return results


def _summarise(results):
    epochs = results["epochs"]
    best = max(epochs, key=lambda e: (e["dev_accuracy"], -e["epoch"]))
    results["best_epoch"] = best["epoch"]
    results["best_dev_accuracy"] = best["dev_accuracy"]
    results["dev_upos_accuracy_at_best"] = best["dev_upos_accuracy"]
    if "test_accuracy" in best:
        results["test_accuracy_at_best_dev"] = best["test_accuracy"]
    for key in ("forward_s", "backward_s", "backward_lstm_s", "optimizer_s", "train_s"):
        results[f"mean_{key}"] = float(np.mean([e[key] for e in epochs]))


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def _epoch_line(row):
    upos = row["dev_upos_accuracy"]
    upos = "" if upos is None else f" (UPOS via map {_pct(upos)}%)"
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  dev {_pct(row['dev_accuracy'])}%"
            f"{upos}  epoch {row['train_s']:.1f}s, forward {row['forward_s']:.1f}s, backward "
            f"{row['backward_s']:.1f}s (LSTM {row['backward_lstm_s']:.2f}s), optimizer "
            f"{row['optimizer_s']:.1f}s")


# ---------------------------------------------------------------- command line
def _k_value(text):
    if text.lower() in ("none", "dense", "0"):
        return None
    value = int(text)
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"k must be a positive integer or 'none', got {text}")
    return value


def add_arguments(parser):
    """Options of ``--task pos`` (the shared ones come from the CLI).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Receives a "POS task" argument group (``--pos-dir``, ``--tag``,
        ``--hidden``, ``--layers``, ``--bidirectional``, ``--k``,
        ``--lstm-mode``, ``--selection``, ``--min-word-freq``,
        ``--word-dropout``, ``--max-train-sentences``,
        ``--max-dev-sentences``, ``--eval-test``).

    Returns
    -------
    None
        `parser` is changed in place.

    Raises
    ------
    argparse.ArgumentError
        If `parser` already defines one of these options.

    Examples
    --------
    >>> import argparse
    >>> from meprop_numba.tasks.pos import add_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--pos-dir", "UD_English-EWT", "--k", "none"])
    >>> args.pos_dir, args.k, args.hidden
    ('UD_English-EWT', None, 500)
    """
    group = parser.add_argument_group("POS task")
    group.add_argument("--pos-dir", default=None, metavar="DIR",
                       help=f"UD treebank directory with *-ud-train/dev[/test].conllu "
                            f"(default ${ENV_DATA_DIR})")
    group.add_argument("--tag", choices=("xpos", "upos"), default="xpos",
                       help="tag to predict (default xpos, the Penn Treebank tags for English)")
    group.add_argument("--hidden", type=int, default=500, help="LSTM hidden size (default 500)")
    group.add_argument("--layers", type=int, default=1, help="LSTM layers (default 1)")
    group.add_argument("--bidirectional", action="store_true", help="bidirectional LSTM")
    group.add_argument("--k", type=_k_value, default=10,
                       help="meProp k of the LSTM gate gradients; 'none' for dense BPTT (default 10)")
    group.add_argument("--lstm-mode", choices=("per_gate", "concat"), default="per_gate",
                       help="top-k per gate block of h (default) or over all 4h gate entries")
    group.add_argument("--selection", choices=("topk", "random"), default="topk",
                       help="keep the k largest (default) or k random gate gradients")
    group.add_argument("--min-word-freq", type=int, default=2,
                       help="words seen fewer times in training share the UNK embedding (default 2)")
    group.add_argument("--word-dropout", type=float, default=0.0,
                       help="alpha of word dropout to UNK, probability alpha/(alpha+count) (default 0)")
    group.add_argument("--max-train-sentences", type=int, default=None,
                       help="train on the first N sentences only")
    group.add_argument("--max-dev-sentences", type=int, default=None,
                       help="evaluate on the first N dev sentences only")
    group.add_argument("--eval-test", action="store_true",
                       help="also evaluate on the test split (use once, at the end of a study)")


def _config_from_args(args, data_dir):
    return POSConfig(
        data_dir=data_dir, tag=args.tag, hidden=args.hidden, layers=args.layers,
        bidirectional=args.bidirectional, k=args.k, mode=args.lstm_mode,
        selection=args.selection, min_word_freq=args.min_word_freq,
        word_dropout=args.word_dropout, optimizer=args.optimizer, lr=args.lr,
        lazy=not args.dense_update, epochs=args.epochs if args.epochs is not None else 5,
        batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, threads=args.threads,
        max_train_sentences=args.max_train_sentences, max_dev_sentences=args.max_dev_sentences,
        eval_test=args.eval_test)


def run(args):
    """Run ``meprop-numba train --task pos``; returns the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of ``meprop-numba train --task pos`` (see
        :func:`meprop_numba.cli.build_parser`).

    Returns
    -------
    int
        0 on success, 2 for unusable input (no treebank directory, bad
        option, missing checkpoint), 3 when training diverged.

    It never raises for bad input: errors (no treebank, bad options, a
    diverged run) are printed to stderr and turned into the exit status.

    Examples
    --------
    >>> from meprop_numba.cli import build_parser
    >>> from meprop_numba.tasks.pos import run
    >>> args = build_parser("pos").parse_args(["train", "--task", "pos", "--device", "cuda"])
    >>> run(args)
    2
    """
    if getattr(args, "device", "cpu") != "cpu":
        print("error: --task pos runs on the CPU only; use --device cpu", file=sys.stderr)
        return 2
    data_dir = args.pos_dir or os.environ.get(ENV_DATA_DIR)
    if not data_dir:
        print(f"error: --task pos needs --pos-dir DIR (or ${ENV_DATA_DIR}): a UD treebank folder "
              "with *-ud-train.conllu and *-ud-dev.conllu", file=sys.stderr)
        return 2
    config = _config_from_args(args, data_dir)
    if args.resume:
        if not args.checkpoint_dir:
            print("error: --resume needs --checkpoint-dir", file=sys.stderr)
            return 2
        path = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
        if not os.path.exists(path):
            print(f"error: --resume: no checkpoint at {path}", file=sys.stderr)
            return 2
        saved = load_checkpoint(path)["config"]
        overrides = {"threads": args.threads, "data_dir": data_dir}
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        config = POSConfig(**{**saved, **overrides})
    try:
        config.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_pos_data(data_dir, tag=config.tag, min_word_freq=config.min_word_freq,
                             test=config.eval_test, max_train_sentences=config.max_train_sentences,
                             max_dev_sentences=config.max_dev_sentences)
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: cannot load the treebank: {exc}", file=sys.stderr)
        return 2
    s = data.summary()
    print(f"POS tagging ({s['tag_column']}, {s['tags']} tags) on {s['source']}: "
          f"{s['train_sentences']} train sentences ({s['train_tokens']} tokens), "
          f"{s['dev_sentences']} dev; {config.label()}, hidden {config.hidden}"
          f"{' bidirectional' if config.bidirectional else ''}, {config.optimizer} "
          f"lr {config.learning_rate}, batch {config.batch_size}", flush=True)
    try:
        results = train_pos(config, data, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                            progress=not args.no_progress, out=args.out, log=print)
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    results.pop("model", None)
    print(f"best dev accuracy {_pct(results['best_dev_accuracy'])}% (epoch "
          f"{results['best_epoch']}); mean epoch {results['mean_train_s']:.1f}s, LSTM backward "
          f"{results['mean_backward_lstm_s']:.2f}s")
    if args.out:
        print(f"results written to {args.out}")
    return 0
