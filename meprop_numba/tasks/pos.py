"""Part-of-speech tagging with a meProp LSTM (the meProp paper's POS experiment).

The tagger reads a word embedding (50) and seven word-shape feature
embeddings (20 each: shape class, 1-3 letter prefixes and suffixes; see
:mod:`meprop_numba.tasks.pos_features`), runs a (bi)LSTM (hidden 500)
trained with meProp BPTT, and scores the tags with a dense output layer (no
meProp there, as in the paper). Data: a Universal Dependencies treebank
directory holding ``*-ud-train.conllu``, ``*-ud-dev.conllu`` and optionally
``*-ud-test.conllu``, given as ``--data-dir`` or ``$MEPROP_NUMBA_POS_DIR``.
A checkpoint holds the vocabularies and feature tables, so it tags new text
on its own.

Command line::

    meprop-numba train --task pos --data-dir UD_English-EWT --k 10 --epochs 5
    meprop-numba predict --checkpoint-dir RUN sentences.txt

Python::

    >>> from meprop_numba.tasks.pos import POSConfig, POSTask
    >>> from meprop_numba.training import fit
    >>> results = fit(POSTask(), POSConfig(data_dir="UD_English-EWT", k=10))  # doctest: +SKIP
"""
import argparse
import dataclasses
import math
import os
from typing import ClassVar

import numpy as np

from .._validation import unit_interval
from ..data.conllu import find_split, read_conllu
from ..nn.embedding import Embedding
from ..nn.layers import Dropout, Linear, Module
from ..nn.loss import softmax_cross_entropy
from ..nn.lstm import LSTM
from ..simplify import LSTMUnits
from ..training.config import RunConfig, check_k, check_positive_int, k_arg, positive_int_arg
from .base import Task
from .pos_features import N_FEATURES, PAD_ID, UNK_ID, EncodedSentence, FeatureVocabularies

__all__ = [
    "ENV_DATA_DIR",
    "Batch",
    "feature_offsets",
    "POSConfig",
    "POSData",
    "POSTagger",
    "PRESETS",
    "POSTask",
    "load_pos_data",
    "make_batch",
    "read_sentences",
    "tag_accuracy",
]

#: Environment variable naming the treebank directory when --data-dir is not given.
ENV_DATA_DIR = "MEPROP_NUMBA_POS_DIR"
_EVAL_BATCH = 64



# ---------------------------------------------------------------- data
@dataclasses.dataclass
class POSData:
    """Encoded treebank splits and the vocabularies they were encoded with.

    Construction never raises: :func:`load_pos_data` checks the files.

    Parameters
    ----------
    vocab : FeatureVocabularies
        The vocabularies the splits are encoded with.
    train, dev : list of EncodedSentence
        The encoded training and dev sentences.
    test : list of EncodedSentence or None
        None when the treebank has no test file.
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
    >>> s["train_sentences"], s["train_tokens"], s["tags"], s["test_sentences"]
    (3, 9, 3, None)
    """

    vocab: FeatureVocabularies
    train: list
    dev: list
    test: list = None
    source: str = ""

    def summary(self):
        """Sizes, for the results JSON.

        Returns
        -------
        dict
            Source, tag column, sentence and token counts, vocabulary sizes.
        """
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


def load_pos_data(data_dir, *, tag="xpos", min_word_freq=2, max_train_sentences=None,
                  max_dev_sentences=None, vocab=None):
    """Read and encode a UD treebank directory.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Directory holding ``*-ud-train.conllu`` and ``*-ud-dev.conllu``, and
        optionally ``*-ud-test.conllu`` (read when present).
    tag : {"xpos", "upos"}, default "xpos"
        The tag the tagger predicts (XPOS is the Penn Treebank tag set for
        English, as in the paper).
    min_word_freq : int, default 2
        Training words seen fewer times share the UNK embedding.
    max_train_sentences, max_dev_sentences : int, optional
        Use only the first sentences (quick runs).
    vocab : FeatureVocabularies, optional
        Encode with these vocabularies (a checkpoint's) instead of building
        them from the training split.

    Returns
    -------
    POSData
        The encoded splits and vocabularies.

    Raises
    ------
    FileNotFoundError
        If the directory, the train or the dev split is missing.
    ValueError
        Malformed CoNLL-U (from the reader) or a training split without the
        tag column.
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
    train_path = find_split(data_dir, "train")
    train_s = read_conllu(train_path, max_sentences=max_train_sentences)
    if not train_s:
        raise ValueError(f"{train_path}: no sentences")
    if all(t == "_" for s in train_s for t in getattr(s, tag)):
        raise ValueError(f"{train_path}: the {tag.upper()} column is empty ('_' everywhere); "
                         f"the tagger needs gold tags (try --tag "
                         f"{'upos' if tag == 'xpos' else 'xpos'})")
    dev_s = read_conllu(find_split(data_dir, "dev"), max_sentences=max_dev_sentences)
    try:
        test_path = find_split(data_dir, "test")
    except FileNotFoundError:
        test_s = None
    else:
        test_s = read_conllu(test_path)
    if vocab is None:
        vocab = FeatureVocabularies(train_s, tag_column=tag, min_word_freq=min_word_freq)
    return POSData(vocab, vocab.encode_all(train_s), vocab.encode_all(dev_s),
                   None if test_s is None else vocab.encode_all(test_s),
                   source=os.fspath(data_dir))


def read_sentences(path):
    """Word forms of the sentences in a CoNLL-U file or a plain tokenised text file.

    A file whose name ends in ``.conllu``, or whose first line that is not
    a comment holds tab-separated columns, is read as CoNLL-U (multiword
    tokens and empty nodes skipped). Otherwise every non-empty line is one
    sentence of whitespace-separated tokens.

    Parameters
    ----------
    path : str or os.PathLike
        The input file.

    Returns
    -------
    list of list of str
        The word forms of each sentence.

    Raises
    ------
    FileNotFoundError
        No file at `path`.
    ValueError
        Not UTF-8 text, or malformed CoNLL-U; the message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.tasks.pos import read_sentences
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "in.txt")
    ...     _ = open(path, "w").write("Dogs bark .\\n\\nCats sleep\\n")
    ...     read_sentences(path)
    [['Dogs', 'bark', '.'], ['Cats', 'sleep']]
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no input file at {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    first = next((ln for ln in lines if ln.strip() and not ln.startswith("#")), "")
    if path.endswith(".conllu") or "\t" in first:
        return [list(s.words) for s in read_conllu(path)]
    return [ln.split() for ln in lines if ln.strip()]


@dataclasses.dataclass
class Batch:
    """A padded minibatch of sentences (padding id 0 everywhere).

    Built by :func:`make_batch`; construction never raises (no checks).

    Parameters
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
        Non-empty list of encoded sentences.
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
    >>> from meprop_numba.tasks.pos import POSTagger, make_batch
    >>> v = data.vocab
    >>> offsets = POSTagger(len(v.words), [len(f) for f in v.features], len(v.tags),
    ...                     hidden=8).feature_offsets
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
def feature_offsets(feature_sizes):
    """Row offset of each feature's vocabulary in the tagger's shared feature table.

    Never raises for a sequence of integers.

    Row 0 of the table is padding; feature ``j`` starts after the rows of
    features ``0..j-1``.

    Parameters
    ----------
    feature_sizes : sequence of int
        Vocabulary size of each feature.

    Returns
    -------
    ndarray of int64
        The first row of each feature's block.

    Examples
    --------
    >>> from meprop_numba.tasks.pos import feature_offsets
    >>> feature_offsets([3, 5, 2]).tolist()
    [1, 4, 9]
    """
    return 1 + np.concatenate([[0], np.cumsum(feature_sizes)[:-1]]).astype(np.int64)


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
        Word and feature embedding sizes.
    hidden : int, default 500
        LSTM width.
    layers : int, default 1
        LSTM depth.
    bidirectional : bool, default False
        A bidirectional LSTM.
    k, scope, selection, error_feedback : see LSTM
        meProp settings of the LSTM (see :class:`~meprop_numba.nn.lstm.LSTM`);
        ``k=None`` is dense BPTT.
    embedding_dropout, output_dropout : float, default 0
        Dropout in ``[0, 1)`` on the concatenated word and feature
        embeddings (the LSTM input) and on the LSTM outputs (the input of
        the output layer); training forward passes only.
    dtype : {numpy.float32, numpy.float64}
    rng : numpy.random.Generator or int, optional
        All of the model's randomness (kept as ``rng``).

    Raises
    ------
    ValueError
        If `feature_sizes` does not list 7 sizes, or a size, `k`, `scope`,
        `selection`, a dropout or `error_feedback` is out of range (checked
        by the layers).
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
                 selection="topk", error_feedback=0.0, embedding_dropout=0.0,
                 output_dropout=0.0, dtype=np.float32, rng=None):
        self.rng = np.random.default_rng(rng)
        self.embedding_dropout = Dropout(embedding_dropout, rng=self.rng)
        self.output_dropout = Dropout(output_dropout, rng=self.rng)
        feature_sizes = [int(n) for n in feature_sizes]
        if len(feature_sizes) != N_FEATURES:
            raise ValueError(f"feature_sizes must list {N_FEATURES} sizes, got {len(feature_sizes)}")
        self.feature_offsets = feature_offsets(feature_sizes)
        self.word_embedding = Embedding(n_words, word_dim, padding_idx=PAD_ID, dtype=dtype,
                                        rng=self.rng)
        self.feature_embedding = Embedding(1 + sum(feature_sizes), feature_dim, padding_idx=0,
                                           dtype=dtype, rng=self.rng)
        self.word_dim, self.feature_dim = word_dim, feature_dim
        self.lstm = LSTM(word_dim + N_FEATURES * feature_dim, hidden, layers,
                         bidirectional=bidirectional, k=k, scope=scope, selection=selection,
                         error_feedback=error_feedback, dtype=dtype, rng=self.rng)
        self.output = Linear(self.lstm.output_size, n_tags, dtype=dtype, rng=self.rng)
        self.dtype = np.dtype(dtype)
        self._mask = None

    def forward(self, batch, train=False):
        """Scores of every real token, shape (number of tokens, n_tags), in row-major order.

        Parameters
        ----------
        batch : Batch
            A padded minibatch.
        train : bool, optional
            Keep what :meth:`backward` needs.

        Returns
        -------
        ndarray
            ``(number of real tokens, n_tags)`` scores.
        """
        B, T = batch.words.shape
        w = self.word_embedding.forward(batch.words, train)
        f = self.feature_embedding.forward(batch.features, train).reshape(B, T, -1)
        x = self.embedding_dropout.forward(np.concatenate([w, f], axis=2), train)
        hs = self.lstm.forward(x, train, lengths=batch.lengths)
        mask = batch.mask
        if train:
            self._mask = mask
        return self.output.forward(self.output_dropout.forward(hs[mask], train), train)

    def backward(self, grad_out):
        """Back propagate the gradient of the token scores; returns None.

        Parameters
        ----------
        grad_out : ndarray
            Gradient of the loss with respect to :meth:`forward`'s scores.

        Returns
        -------
        None
            The parameter gradients are in :meth:`grads`.

        Raises
        ------
        RuntimeError
            Without a preceding ``forward(batch, train=True)``.
        """
        if self._mask is None:
            raise RuntimeError("backward called before forward(batch, train=True)")
        mask, self._mask = self._mask, None
        d_tokens = self.output_dropout.backward(self.output.backward(grad_out))
        B, T = mask.shape
        dh = np.zeros((B, T, self.lstm.output_size), dtype=self.dtype)
        dh[mask] = d_tokens
        dx = self.embedding_dropout.backward(self.lstm.backward(dh))
        self.word_embedding.backward(dx[:, :, :self.word_dim])
        self.feature_embedding.backward(
            dx[:, :, self.word_dim:].reshape(B, T, N_FEATURES, self.feature_dim))

    def prunable_units(self):
        """The LSTM's hidden units, every layer and direction, for model simplification.

        Returns
        -------
        list of meprop_numba.simplify.LSTMUnits
            The last layer's units are read by the output layer.
        """
        return LSTMUnits.of(self.lstm, self.output)

    def predict(self, batch):
        """Predicted tag id of every real token (row-major order); padding id 0 is never predicted.

        Parameters
        ----------
        batch : Batch
            A padded minibatch.

        Returns
        -------
        ndarray of int64
            One tag id per real token.
        """
        scores = self.forward(batch)
        scores[:, PAD_ID] = -np.inf
        return scores.argmax(axis=1)


# ---------------------------------------------------------------- config and task
#: Named configurations of :class:`POSConfig` (``POSConfig.preset``, ``--preset``).
#: ``"paper"``: the meProp paper's tagger (one unidirectional LSTM of 500,
#: no dropout, no error feedback, one sentence a step, Adam).
PRESETS = {
    "paper": {"hidden": 500, "layers": 1, "bidirectional": False, "error_feedback": 0.0,
              "embedding_dropout": 0.0, "output_dropout": 0.0, "batch_size": 1,
              "optimizer": "adam"},
}
#: Fields added after checkpoints were first written, with the value those were trained with.
_ADDED_FIELDS = {"error_feedback": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0}


@dataclasses.dataclass
class POSConfig(RunConfig):
    """Options of a tagger run: the shared :class:`~meprop_numba.training.RunConfig` fields and these.

    ``data_dir`` is the treebank directory. The defaults are a tagger a
    user would pick: a bidirectional LSTM (500 units a direction) with
    dropout 0.2 on the embeddings and 0.5 on the LSTM outputs (error
    feedback in the LSTM backward is an option, off); one sentence a step
    (``batch_size=1``), Adam at 0.001 (AdaGrad at 0.01 when
    ``optimizer='adagrad'``, ``DEFAULT_LR``). ``POSConfig.preset("paper")``
    is the meProp paper's tagger: one unidirectional 500-unit LSTM, no
    dropout (:data:`PRESETS`).

    Parameters
    ----------
    data_dir, optimizer, lr, lazy, epochs, batch_size, seed, dtype, threads, device, evals_per_epoch, eval_test, simplify, simplify_cycle, simplify_parts : see RunConfig
        The shared fields of :class:`~meprop_numba.training.RunConfig`
        (``batch_size`` default 1 here).
    tag : {"xpos", "upos"}
        The tag column predicted.
    hidden, layers : int
        LSTM width and depth (paper: hidden 500, one layer).
    bidirectional : bool
        A bidirectional LSTM (default yes; paper: no).
    k : int or None
        meProp k of the LSTM gate gradients (None: dense BPTT); at most
        `hidden` (``scope='per_gate'``) or ``4 * hidden`` (``'concat'``).
    scope : {"per_gate", "concat"}
        Top-k per gate block of h, or over all 4h gate entries.
    selection : {"topk", "random"}
    error_feedback : float
        Error-feedback memory decay of the meProp LSTM backward, in
        ``[0, 1)`` (default 0, off, as in the paper; no effect with
        ``k=None``; see :class:`~meprop_numba.nn.lstm.LSTM`).
    embedding_dropout, output_dropout : float
        Dropout in ``[0, 1)`` on the embeddings (default 0.2) and on the
        LSTM outputs (default 0.5); 0 in the paper.
    word_dim, feature_dim : int
        Word and feature embedding sizes (50, 20).
    min_word_freq : int
        Training words seen fewer times share the UNK embedding.
    word_dropout : float
        alpha of word dropout to UNK (probability alpha/(alpha+count)).
    max_train_sentences, max_dev_sentences : int or None
        Train/evaluate on the first sentences only.

    Raises
    ------
    ValueError
        From :meth:`validate`, naming a bad field.

    Examples
    --------
    >>> from meprop_numba.tasks.pos import POSConfig
    >>> config = POSConfig(k=10, optimizer="adagrad").validate()
    >>> config.hidden, config.k, config.scope, config.batch_size, config.learning_rate
    (500, 10, 'per_gate', 1, 0.01)
    >>> config.bidirectional, config.embedding_dropout, config.output_dropout, config.error_feedback
    (True, 0.2, 0.5, 0.0)
    >>> paper = POSConfig.preset("paper", k=5)
    >>> paper.bidirectional, paper.output_dropout, paper.error_feedback, paper.k
    (False, 0.0, 0.0, 5)
    """

    DEFAULT_LR: ClassVar[dict] = {"adam": 1e-3, "adagrad": 1e-2, "sgd": 0.1}

    batch_size: int = 1
    tag: str = "xpos"
    hidden: int = 500
    layers: int = 1
    bidirectional: bool = True
    k: int = 10
    scope: str = "per_gate"
    selection: str = "topk"
    error_feedback: float = 0.0
    embedding_dropout: float = 0.2
    output_dropout: float = 0.5
    word_dim: int = 50
    feature_dim: int = 20
    min_word_freq: int = 2
    word_dropout: float = 0.0
    max_train_sentences: int = None
    max_dev_sentences: int = None

    @classmethod
    def preset(cls, name, **changes):
        """A config from a named preset of :data:`PRESETS`, with `changes` on top.

        Parameters
        ----------
        name : str
            A key of :data:`PRESETS` (``"paper"``).
        **changes
            Other fields.

        Returns
        -------
        POSConfig
            Not yet validated.

        Raises
        ------
        ValueError
            If `name` is not a preset.
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **changes})

    @classmethod
    def from_dict(cls, d):
        """As :meth:`RunConfig.from_dict`, filling the fields older configs lack.

        Checkpoints older than the bidirectional-with-dropout default hold
        no `error_feedback`, `embedding_dropout` or `output_dropout`: they
        were trained without them (0).

        Parameters
        ----------
        d : dict
            A saved config, in :meth:`to_dict`'s form, possibly an older one.

        Returns
        -------
        POSConfig
        """
        return super().from_dict({**_ADDED_FIELDS, **d})

    def check(self):
        """Check the tagger's fields; raise ValueError naming the bad one."""
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be True or False, got {self.bidirectional!r}")
        for name in ("error_feedback", "embedding_dropout", "output_dropout"):
            unit_interval(getattr(self, name), name)
        for name in ("hidden", "layers", "word_dim", "feature_dim", "min_word_freq"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_train_sentences", "max_dev_sentences"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        choices = {"tag": ("xpos", "upos"), "scope": ("per_gate", "concat"),
                   "selection": ("topk", "random")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_k("k", self.k, self.hidden if self.scope == "per_gate" else 4 * self.hidden)
        if not (isinstance(self.word_dropout, (int, float)) and 0 <= self.word_dropout
                and math.isfinite(self.word_dropout)):
            raise ValueError(f"word_dropout must be a finite number >= 0, got {self.word_dropout!r}")


def tag_accuracy(model, sentences, feature_offsets):
    """Token accuracy of `model` on encoded `sentences` (None if there are no tokens).

    Never raises.

    Parameters
    ----------
    model : POSTagger
        The tagger.
    sentences : list of EncodedSentence
        Encoded sentences with gold tags.
    feature_offsets : ndarray
        ``model.feature_offsets``.

    Returns
    -------
    float or None
        The fraction of tokens tagged right.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.pos import POSTagger, tag_accuracy
    >>> tag_accuracy(POSTagger(5, [3] * 7, 4, hidden=4, rng=0), [], np.zeros(7, np.int64)) is None
    True
    """
    correct = total = 0
    for start in range(0, len(sentences), _EVAL_BATCH):
        batch = make_batch(sentences[start:start + _EVAL_BATCH], feature_offsets)
        gold = batch.tags[batch.mask]
        correct += int((model.predict(batch) == gold).sum())
        total += gold.size
    return correct / total if total else None


class POSTask(Task):
    """The ``pos`` task: part-of-speech tagging with a meProp LSTM.

    The methods implement :mod:`meprop_numba.tasks.base`'s protocol.
    Construction never raises.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS
    >>> task = TASKS["pos"]
    >>> task.label(task.config_class(k=10)), task.component_timers
    ('meProp k=10 per_gate', ('backward_lstm',))
    """

    name = "pos"
    help = "part-of-speech tagging with a meProp LSTM (CoNLL-U treebank)"
    config_class = POSConfig
    metric = "accuracy"
    component_timers = ("backward_lstm",)

    def add_arguments(self, parser):
        group = parser.add_argument_group("POS task")
        group.add_argument("--data-dir", "--pos-dir", dest="data_dir", default=None, metavar="DIR",
                           help=f"UD treebank directory with *-ud-train.conllu, *-ud-dev.conllu "
                                f"and optionally *-ud-test.conllu (default ${ENV_DATA_DIR})")
        group.add_argument("--tag", choices=("xpos", "upos"), default="xpos",
                           help="tag to predict (default xpos, the Penn Treebank tags for English)")
        group.add_argument("--preset", choices=tuple(PRESETS), default=None,
                           help="start from a named configuration: 'paper' is the meProp "
                                "paper's tagger (one unidirectional LSTM of 500, no dropout, no "
                                "error feedback, batch 1, Adam); the options below override it")
        group.add_argument("--hidden", type=int, default=None,
                           help="LSTM hidden size per direction (default 500)")
        group.add_argument("--layers", type=int, default=None, help="LSTM layers (default 1)")
        group.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                           help="bidirectional LSTM (default yes; --no-bidirectional: "
                                "left to right only)")
        group.add_argument("--embedding-dropout", type=float, default=None, metavar="P",
                           help="dropout on the word and feature embeddings, in [0, 1) "
                                "(default 0.2)")
        group.add_argument("--output-dropout", type=float, default=None, metavar="P",
                           help="dropout on the LSTM outputs, in [0, 1) (default 0.5)")
        group.add_argument("--error-feedback", type=float, default=None, metavar="BETA",
                           help="error-feedback memory decay of the meProp LSTM backward, in "
                                "[0, 1) (default 0: off)")
        group.add_argument("--k", type=k_arg, default=10,
                           help="meProp k of the LSTM gate gradients; 'none' for dense BPTT "
                                "(default 10)")
        group.add_argument("--scope", choices=("per_gate", "concat"), default="per_gate",
                           help="top-k per gate block of h (default) or over all 4h gate entries")
        group.add_argument("--selection", choices=("topk", "random"), default="topk",
                           help="keep the k largest (default) or k random gate gradients")
        group.add_argument("--min-word-freq", type=positive_int_arg, default=2,
                           help="words seen fewer times in training share the UNK embedding "
                                "(default 2)")
        group.add_argument("--word-dropout", type=float, default=0.0,
                           help="alpha of word dropout to UNK, probability alpha/(alpha+count) "
                                "(default 0)")
        group.add_argument("--max-train-sentences", type=positive_int_arg, default=None,
                           help="train on the first N sentences only")
        group.add_argument("--max-dev-sentences", type=positive_int_arg, default=None,
                           help="evaluate on the first N dev sentences only")

    def config_from_args(self, args, shared):
        data_dir = args.data_dir or os.environ.get(ENV_DATA_DIR)
        given = {name: getattr(args, name) for name in
                 ("hidden", "layers", "bidirectional", "embedding_dropout", "output_dropout",
                  "error_feedback") if getattr(args, name) is not None}
        # The shared options (optimizer, batch size) default to POSConfig's, which are the
        # paper preset's too.
        base = {} if args.preset is None else PRESETS[args.preset]
        return POSConfig(**{**base, **shared, **given}, data_dir=data_dir, tag=args.tag, k=args.k,
                         scope=args.scope, selection=args.selection,
                         min_word_freq=args.min_word_freq, word_dropout=args.word_dropout,
                         max_train_sentences=args.max_train_sentences,
                         max_dev_sentences=args.max_dev_sentences)

    def load_data(self, config, extra_state=None):
        if not config.data_dir:
            raise ValueError(f"the POS task needs a treebank directory (--data-dir DIR or "
                             f"${ENV_DATA_DIR}) with *-ud-train.conllu and *-ud-dev.conllu")
        vocab = None if extra_state is None else FeatureVocabularies.from_state_dict(
            extra_state["vocab"])
        return load_pos_data(config.data_dir, tag=config.tag, min_word_freq=config.min_word_freq,
                             max_train_sentences=config.max_train_sentences,
                             max_dev_sentences=config.max_dev_sentences, vocab=vocab)

    def extra_state(self, data):
        return {"vocab": data.vocab.state_dict()}

    def check_data(self, config, data):
        if config.batch_size > len(data.train):
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data.train)} "
                             "training sentences")
        if config.eval_test and data.test is None:
            raise ValueError(f"eval_test: {data.source} has no *-ud-test.conllu file")

    def build_model(self, config, extra_state, rng):
        v = extra_state["vocab"]
        return POSTagger(len(v["words"]["itos"]), [len(f["itos"]) for f in v["features"]],
                         len(v["tags"]["itos"]), word_dim=config.word_dim,
                         feature_dim=config.feature_dim, hidden=config.hidden,
                         layers=config.layers, bidirectional=config.bidirectional, k=config.k,
                         scope=config.scope, selection=config.selection,
                         error_feedback=config.error_feedback if config.k is not None else 0.0,
                         embedding_dropout=config.embedding_dropout,
                         output_dropout=config.output_dropout,
                         dtype=np.dtype(config.dtype), rng=rng)

    def n_batches(self, config, data):
        return math.ceil(len(data.train) / config.batch_size)

    def batches(self, config, data, rng):
        order = rng.permutation(len(data.train))
        counts = data.vocab.words.counts.astype(np.float64)
        offsets = feature_offsets([len(f) for f in data.vocab.features])
        b = config.batch_size
        for i in range(self.n_batches(config, data)):
            chosen = [data.train[j] for j in order[i * b:(i + 1) * b]]
            yield make_batch(chosen, offsets, word_dropout=config.word_dropout,
                             word_counts=counts, rng=rng)

    def start_epoch(self, model):
        model.lstm.reset_error_feedback()

    def loss(self, model, batch):
        return softmax_cross_entropy(model.forward(batch, train=True), batch.tags[batch.mask])

    def component_seconds(self, model):
        return {"backward_lstm": model.lstm.backward_seconds}

    def evaluate(self, model, data, split):
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        sentences = data.dev if split == "dev" else data.test
        if sentences is None:
            raise ValueError(f"split: {data.source} has no *-ud-test.conllu file")
        return {"accuracy": tag_accuracy(model, sentences, model.feature_offsets)}

    def predict(self, model, config, extra_state, input_path, out):
        vocab = FeatureVocabularies.from_state_dict(extra_state["vocab"])
        sentences = read_sentences(input_path)
        column = 3 if vocab.tag_column == "upos" else 4
        for start in range(0, len(sentences), _EVAL_BATCH):
            chunk = sentences[start:start + _EVAL_BATCH]
            encoded = [EncodedSentence(*vocab.encode_words(words),
                                       np.zeros(len(words), dtype=np.int64)) for words in chunk]
            tags = iter(vocab.tags.decode(model.predict(make_batch(encoded, model.feature_offsets))))
            for words in chunk:
                out.write(f"# text = {' '.join(words)}\n")
                for i, word in enumerate(words, start=1):
                    fields = [str(i), word] + ["_"] * 8
                    fields[column] = next(tags)
                    out.write("\t".join(fields) + "\n")
                out.write("\n")
        return len(sentences)

    def label(self, config):
        if config.k is None:
            return "dense"
        sel = "" if config.selection == "topk" else " random"
        return f"meProp k={config.k} {config.scope}{sel}"

    def describe(self, config, data):
        s = data.summary()
        return (f"POS tagging ({s['tag_column']}, {s['tags']} tags) on {s['source']}: "
                f"{s['train_sentences']} train sentences ({s['train_tokens']} tokens), "
                f"{s['dev_sentences']} dev\nmodel: hidden {config.hidden}"
                f"{' bidirectional' if config.bidirectional else ''}, dropout "
                f"{config.embedding_dropout:g} (embeddings) {config.output_dropout:g} (outputs)"
                f"{'' if config.k is None else f', error feedback {config.error_feedback:g}'}, "
                f"{config.optimizer} "
                f"lr {config.learning_rate:g}, batch {config.batch_size}, {config.dtype}, "
                f"seed {config.seed}")

    def data_summary(self, data):
        return data.summary()
