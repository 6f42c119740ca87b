"""Vocabularies and the flat id arrays the parser's kernels read.

Relations are the universal part of DEPREL (``nmod:poss`` -> ``nmod``), as
the CoNLL 2018 evaluation scores them; words are lower-cased.
"""
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["NULL", "ROOT", "UNK", "ParseVocabulary", "Treebank", "universal_relation"]

NULL, UNK, ROOT = "<null>", "<unk>", "<root>"
#: Ids of the special entries of the word and POS tables (NULL is the empty slot).
NULL_ID, UNK_ID, ROOT_ID = 0, 1, 2


def universal_relation(deprel):
    """The universal part of a DEPREL: ``"nmod:poss"`` -> ``"nmod"``.

    Parameters
    ----------
    deprel : str
        A relation as written in CoNLL-U.

    Returns
    -------
    str
        The part before the first ``:`` (all of it without one). Never raises
        for a string.

    Examples
    --------
    >>> universal_relation("nmod:poss"), universal_relation("root")
    ('nmod', 'root')
    """
    return deprel.split(":", 1)[0]


def _table(counts, min_freq):
    kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return [NULL, UNK, ROOT] + kept


class ParseVocabulary:
    """Word, POS and relation tables of the parser, built from training sentences.

    The ``words`` and ``pos`` attributes are lists id -> string (ids 0, 1, 2
    are NULL, UNK and ROOT); ``labels`` is the sorted list of universal
    relations: transition ``1 + l`` is LEFT-ARC with ``labels[l]`` and
    ``1 + L + l`` RIGHT-ARC.

    Parameters
    ----------
    sentences : list of Sentence
        Training sentences with a tree (``head`` and ``deprel`` set).
    min_word_freq : int, default 2
        Words seen fewer times share the UNK embedding (which is then trained).

    Raises
    ------
    ValueError
        If `sentences` is empty, a sentence has no tree, or `min_word_freq`
        is not a positive integer.

    Examples
    --------
    >>> from meprop_numba.data.conllu import Sentence
    >>> s = Sentence(("Dogs", "bark"), ("NOUN", "VERB"), ("NNS", "VBP"), (2, 0), ("nsubj", "root"))
    >>> v = ParseVocabulary([s], min_word_freq=1)
    >>> v.labels, v.n_transitions
    (['nsubj', 'root'], 5)
    """

    def __init__(self, sentences, *, min_word_freq=2):
        if isinstance(min_word_freq, bool) or int(min_word_freq) != min_word_freq or min_word_freq < 1:
            raise ValueError(f"min_word_freq must be a positive integer, got {min_word_freq!r}")
        if not sentences:
            raise ValueError("sentences must not be empty")
        words, tags, labels = Counter(), Counter(), Counter()
        for i, sent in enumerate(sentences):
            if sent.head is None:
                raise ValueError(f"sentences[{i}] has no dependency tree (HEAD column empty)")
            words.update(w.lower() for w in sent.words)
            tags.update(sent.upos)
            labels.update(universal_relation(d) for d in sent.deprel)
        self.words = _table(words, min_word_freq)
        self.pos = _table(tags, 1)
        self.labels = sorted(labels)
        self._index()

    def _index(self):
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        self.pos_ids = {t: i for i, t in enumerate(self.pos)}
        self.label_ids = {t: i for i, t in enumerate(self.labels)}

    @property
    def n_transitions(self):
        """Number of transitions, ``2 L + 1``."""
        return 2 * len(self.labels) + 1

    @property
    def root_label(self):
        """Id of the ``root`` relation, or -1 when training had none."""
        return self.label_ids.get("root", -1)

    def state_dict(self):
        """Plain-data form (for checkpoints).

        Returns
        -------
        dict
            ``{"words": [...], "pos": [...], "labels": [...]}``, JSON values.
        """
        return {"words": list(self.words), "pos": list(self.pos), "labels": list(self.labels)}

    @classmethod
    def from_state_dict(cls, state):
        """Inverse of :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.

        Returns
        -------
        ParseVocabulary
        """
        obj = cls.__new__(cls)
        obj.words, obj.pos, obj.labels = list(state["words"]), list(state["pos"]), list(state["labels"])
        obj._index()
        return obj

    def encode(self, sentences, *, with_tree=True):
        """Flat id arrays of `sentences` (see :class:`Treebank`).

        Unknown words and tags map to UNK; a relation unseen in training maps
        to label -1 (never predicted, so it counts as an error), and such a
        sentence cannot serve as a training tree.

        Parameters
        ----------
        sentences : list of Sentence
            The sentences to encode.
        with_tree : bool, default True
            Encode HEAD and DEPREL too (else they are left zero).

        Returns
        -------
        Treebank
            Their ids, ROOT first in each sentence.

        Raises
        ------
        ValueError
            If `with_tree` and a sentence has no tree.
        """
        lengths = np.array([len(s) + 1 for s in sentences], dtype=np.int64)
        offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        words = np.empty(total, dtype=np.int64)
        pos = np.empty(total, dtype=np.int64)
        heads = np.zeros(total, dtype=np.int64)
        labels = np.zeros(total, dtype=np.int64)
        wget, pget, lget = self.word_ids.get, self.pos_ids.get, self.label_ids.get
        for i, sent in enumerate(sentences):
            lo = offsets[i]
            words[lo] = pos[lo] = ROOT_ID
            words[lo + 1:offsets[i + 1]] = [wget(w.lower(), UNK_ID) for w in sent.words]
            pos[lo + 1:offsets[i + 1]] = [pget(t, UNK_ID) for t in sent.upos]
            if with_tree:
                if sent.head is None:
                    raise ValueError(f"sentences[{i}] has no dependency tree (HEAD column empty)")
                heads[lo + 1:offsets[i + 1]] = sent.head
                labels[lo + 1:offsets[i + 1]] = [lget(universal_relation(d), -1) for d in sent.deprel]
        return Treebank(words, pos, heads, labels, offsets)


@dataclass
class Treebank:
    """Sentences as flat int64 arrays; sentence ``s`` is ``[offsets[s], offsets[s + 1])``.

    Entry 0 of each sentence is ROOT (word and POS id ``ROOT_ID``, head 0,
    label 0); entry ``i`` is word ``i``. Construction stores the arrays as
    given and never raises; :meth:`ParseVocabulary.encode` builds them.

    Parameters
    ----------
    words, pos : numpy.ndarray of int64
        Word and POS ids.
    heads : numpy.ndarray of int64
        1-based head of each word (0: ROOT); zero without a tree.
    labels : numpy.ndarray of int64
        Relation id of each word; zero without a tree.
    offsets : numpy.ndarray of int64
        ``len(sentences) + 1`` start offsets.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.zeros(5, dtype=np.int64)
    >>> tb = Treebank(z, z, z, z, np.array([0, 3, 5]))
    >>> len(tb), tb.n_words, tb.max_length
    (2, 3, 2)
    """

    words: np.ndarray
    pos: np.ndarray
    heads: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def n_words(self):
        """Number of words, ROOT entries not counted."""
        return int(self.offsets[-1]) - len(self)

    @property
    def max_length(self):
        """Words in the longest sentence."""
        return int(np.diff(self.offsets).max()) - 1 if len(self) else 0

    def subset(self, index):
        """The sentences `index`, in that order.

        Parameters
        ----------
        index : array_like of bool or int
            A boolean mask over the sentences or sentence ids.

        Returns
        -------
        Treebank
            A new treebank holding copies of those sentences.
        """
        index = np.arange(len(self))[np.asarray(index)]
        lo, hi = self.offsets[index], self.offsets[index + 1]
        take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(index) else \
            np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(hi - lo, out=offsets[1:])
        return Treebank(self.words[take], self.pos[take], self.heads[take], self.labels[take],
                        offsets)

    def word_mask(self):
        """Boolean mask of the entries that are words (not ROOT).

        Returns
        -------
        numpy.ndarray of bool
            False at each sentence's ROOT entry, True elsewhere.
        """
        mask = np.ones(len(self.words), dtype=bool)
        mask[self.offsets[:-1]] = False
        return mask
