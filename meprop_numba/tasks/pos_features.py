"""The POS task's word features and vocabularies.

Word-shape features follow the meProp paper's tagger (a word embedding plus
seven small feature embeddings): a capitalisation/shape class, the 1-3 letter
prefixes and the 1-3 letter suffixes of the lower-cased word.
:class:`FeatureVocabularies` builds the word, feature and tag vocabularies
from the training sentences and encodes sentences into id arrays; its
:meth:`~FeatureVocabularies.state_dict` is saved in the tagger's checkpoints,
so a checkpoint alone encodes new text exactly as training did.
"""
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "N_FEATURES",
    "PAD_ID",
    "UNK_ID",
    "EncodedSentence",
    "FeatureVocabularies",
    "Vocabulary",
    "normalize_word",
    "word_features",
    "word_shape",
]

PAD = "<pad>"
UNK = "<unk>"
#: Id of the padding entry of every vocabulary.
PAD_ID = 0
#: Id of the unknown-token entry (vocabularies built with ``unk=True``).
UNK_ID = 1
#: Number of word-shape features per word.
N_FEATURES = 7
_DIGITS = re.compile(r"[0-9]")


def normalize_word(word):
    """Lower-case a word and map every digit to ``0`` (the word-embedding key).

    Never raises for a string.

    Parameters
    ----------
    word : str
        A word form.

    Returns
    -------
    str
        The key.

    Examples
    --------
    >>> from meprop_numba.tasks.pos_features import normalize_word
    >>> normalize_word("Route66")
    'route00'
    """
    return _DIGITS.sub("0", word.lower())


def word_shape(word):
    """Coarse shape class of a word form.

    Never raises for a non-empty string.

    Parameters
    ----------
    word : str
        A word form.

    Returns
    -------
    str
        One of ``"lower"``, ``"title"``, ``"upper"``, ``"mixed"``,
        ``"digit"`` (all digits), ``"hasdigit"``, ``"punct"`` (no letters or
        digits) or ``"other"``.

    Examples
    --------
    >>> from meprop_numba.tasks.pos_features import word_shape
    >>> word_shape("Paris"), word_shape("B-52")
    ('title', 'hasdigit')
    """
    if word.isdigit():
        return "digit"
    has_alpha = any(ch.isalpha() for ch in word)
    has_digit = any(ch.isdigit() for ch in word)
    if has_digit:
        return "hasdigit"
    if not has_alpha:
        return "punct" if not any(ch.isalnum() for ch in word) else "other"
    if word.islower():
        return "lower"
    if word.isupper():
        return "upper"
    if word[0].isupper() and word[1:].lower() == word[1:]:
        return "title"
    return "mixed"


def word_features(word):
    """The seven shape features of one word form.

    Never raises for a non-empty string.

    Parameters
    ----------
    word : str
        A word form.

    Returns
    -------
    tuple of str
        ``(shape, prefix1, prefix2, prefix3, suffix1, suffix2, suffix3)`` taken
        from the lower-cased form; affixes of a word shorter than the affix are
        the whole word.

    Examples
    --------
    >>> from meprop_numba.tasks.pos_features import word_features
    >>> word_features("Running")
    ('title', 'r', 'ru', 'run', 'g', 'ng', 'ing')
    """
    low = word.lower()
    return (
        word_shape(word),
        low[:1], low[:2], low[:3],
        low[-1:], low[-2:], low[-3:],
    )


class Vocabulary:
    """A token <-> id map with padding (id 0) and unknown (id 1) entries.

    Construction never raises; :meth:`index` raises KeyError for an unknown
    token of a vocabulary without ``<unk>``.

    Parameters
    ----------
    tokens : iterable of str
        Tokens in id order after the two special entries; duplicates are ignored.
    unk : bool, default True
        Reserve the ``<unk>`` entry. A tag vocabulary passes ``False`` and only
        reserves padding.

    Examples
    --------
    >>> v = Vocabulary.from_counts(Counter({"the": 5, "cat": 1}), min_freq=2)
    >>> v.encode(["the", "cat"]).tolist()
    [2, 1]
    """

    def __init__(self, tokens: Iterable[str] = (), *, unk: bool = True):
        self.has_unk = bool(unk)
        self.itos = [PAD, UNK] if self.has_unk else [PAD]
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}
        for tok in tokens:
            if tok not in self.stoi:
                self.stoi[tok] = len(self.itos)
                self.itos.append(tok)
        self.counts = np.zeros(len(self.itos), dtype=np.int64)

    @classmethod
    def from_counts(cls, counts, *, min_freq=1, unk=True):
        """Build a vocabulary from a token -> count mapping.

        Tokens seen fewer than `min_freq` times are left out (they map to UNK).
        Ids are assigned by decreasing count, ties by the token's string order,
        so the result does not depend on input order.

        Parameters
        ----------
        counts : mapping of str to int
            Token counts.
        min_freq : int, optional
            The smallest count kept.
        unk : bool, optional
            Reserve the ``<unk>`` entry.

        Returns
        -------
        Vocabulary
            The vocabulary, with its counts.

        Raises
        ------
        ValueError
            If `min_freq` is not a positive integer.
        """
        if int(min_freq) != min_freq or min_freq < 1:
            raise ValueError(f"min_freq must be a positive integer, got {min_freq!r}")
        kept = sorted((tok for tok, c in counts.items() if c >= min_freq),
                      key=lambda tok: (-counts[tok], tok))
        vocab = cls(kept, unk=unk)
        for tok in kept:
            vocab.counts[vocab.stoi[tok]] = counts[tok]
        return vocab

    def __len__(self):
        return len(self.itos)

    def __contains__(self, token):
        return token in self.stoi

    def index(self, token):
        """Id of `token`; UNK for an unknown one (KeyError without an UNK entry).

        Parameters
        ----------
        token : str
            The token.

        Returns
        -------
        int
            Its id.

        Raises
        ------
        KeyError
            An unknown token of a vocabulary without ``<unk>``.
        """
        idx = self.stoi.get(token)
        if idx is None:
            if not self.has_unk:
                raise KeyError(f"token {token!r} is not in a vocabulary without <unk>")
            return UNK_ID
        return idx

    def encode(self, tokens: Sequence[str]):
        """The int64 ids of `tokens`.

        Parameters
        ----------
        tokens : sequence of str
            The tokens.

        Returns
        -------
        ndarray of int64
            Their ids.
        """
        return np.fromiter((self.index(t) for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids):
        """List of the tokens of `ids`.

        Parameters
        ----------
        ids : sequence of int
            Ids of this vocabulary.

        Returns
        -------
        list of str
            The tokens.
        """
        return [self.itos[int(i)] for i in ids]

    def state_dict(self):
        """Plain-data form (for JSON checkpoints).

        Returns
        -------
        dict
            ``itos``, ``has_unk`` and ``counts`` as JSON values.
        """
        return {"itos": list(self.itos), "has_unk": self.has_unk, "counts": self.counts.tolist()}

    @classmethod
    def from_state_dict(cls, state):
        """Inverse of :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            As :meth:`state_dict` returns it.

        Returns
        -------
        Vocabulary
            The same vocabulary.
        """
        specials = 2 if state["has_unk"] else 1
        vocab = cls(state["itos"][specials:], unk=state["has_unk"])
        vocab.counts = np.asarray(state["counts"], dtype=np.int64)
        return vocab


@dataclass
class EncodedSentence:
    """Id arrays of one sentence: words (L,), features (L, 7), tags (L,).

    Construction never raises (no checks).

    Parameters
    ----------
    words : ndarray of int64, shape (L,)
        Word ids.
    features : ndarray of int64, shape (L, 7)
        Feature ids (each in its own feature's vocabulary).
    tags : ndarray of int64, shape (L,)
        Tag ids.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.pos_features import EncodedSentence
    >>> len(EncodedSentence(np.zeros(3, np.int64), np.zeros((3, 7), np.int64), np.zeros(3, np.int64)))
    3
    """

    words: np.ndarray
    features: np.ndarray
    tags: np.ndarray

    def __len__(self):
        return len(self.words)


class FeatureVocabularies:
    """Word, shape-feature and tag vocabularies built from training sentences.

    Parameters
    ----------
    sentences : list of Sentence
        Training sentences.
    tag_column : {"xpos", "upos"}, default "xpos"
        Which tag the tagger predicts.
    min_word_freq : int, default 2
        Words seen fewer times map to UNK, so the UNK embedding is trained on
        the rare training words.
    min_feature_freq : int, default 2
        The same threshold for prefix/suffix strings.

    Raises
    ------
    ValueError
        An unknown `tag_column`, no sentences, or a frequency below 1.

    Examples
    --------
    >>> from meprop_numba.data.conllu import Sentence
    >>> from meprop_numba.tasks.pos_features import FeatureVocabularies
    >>> v = FeatureVocabularies([Sentence(("Dogs", "bark"), ("NOUN", "VERB"), ("NNS", "VBP"))],
    ...                         min_word_freq=1)
    >>> v.tags.itos, v.encode_words(["dogs"])[0].tolist()
    (['<pad>', 'NNS', 'VBP'], [3])
    """

    def __init__(self, sentences, *, tag_column="xpos", min_word_freq=2, min_feature_freq=2):
        if tag_column not in ("xpos", "upos"):
            raise ValueError(f"tag_column must be 'xpos' or 'upos', got {tag_column!r}")
        if not sentences:
            raise ValueError("sentences must not be empty")
        self.tag_column = tag_column
        word_counts = Counter()
        feature_counts = [Counter() for _ in range(N_FEATURES)]
        tag_counts = Counter()
        for sent in sentences:
            for word in sent.words:
                word_counts[normalize_word(word)] += 1
                for j, feat in enumerate(word_features(word)):
                    feature_counts[j][feat] += 1
            tag_counts.update(getattr(sent, tag_column))
        self.words = Vocabulary.from_counts(word_counts, min_freq=min_word_freq)
        self.features = [Vocabulary.from_counts(c, min_freq=min_feature_freq)
                         for c in feature_counts]
        # Tags are sorted so the id of a tag does not depend on corpus order.
        self.tags = Vocabulary(sorted(tag_counts), unk=False)

    def encode_words(self, words):
        """Word ids (L,) and feature ids (L, 7) of a sequence of word forms.

        Parameters
        ----------
        words : sequence of str
            Word forms.

        Returns
        -------
        ids : ndarray of int64
            Word ids.
        features : ndarray of int64
            Feature ids, shape (L, 7).

        Examples
        --------
        >>> from meprop_numba.data.conllu import Sentence
        >>> from meprop_numba.tasks.pos_features import FeatureVocabularies
        >>> vocab = FeatureVocabularies([Sentence(("a", "b", "a"), ("X",) * 3, ("Y",) * 3)])
        >>> ids, feats = vocab.encode_words(["a", "zzz"])
        >>> ids.tolist(), feats.shape
        ([2, 1], (2, 7))
        """
        ids = self.words.encode([normalize_word(w) for w in words])
        feats = np.empty((len(words), N_FEATURES), dtype=np.int64)
        for i, word in enumerate(words):
            for j, feat in enumerate(word_features(word)):
                feats[i, j] = self.features[j].index(feat)
        return ids, feats

    def encode(self, sentence, *, strict_tags=False):
        """Encode one sentence (anything with ``words`` and the tag column).

        Tags unseen in training become id 0 (padding, never predicted and
        counted as an error) unless `strict_tags` is set, which raises KeyError.

        Parameters
        ----------
        sentence : Sentence
            Words and tags.
        strict_tags : bool, optional
            Raise KeyError for a tag unseen in training.

        Returns
        -------
        EncodedSentence
            The id arrays.
        """
        words, feats = self.encode_words(sentence.words)
        tag_seq = getattr(sentence, self.tag_column)
        if strict_tags:
            tags = self.tags.encode(tag_seq)
        else:
            tags = np.array([self.tags.stoi.get(t, PAD_ID) for t in tag_seq], dtype=np.int64)
        return EncodedSentence(words, feats, tags)

    def encode_all(self, sentences):
        """Encode a list of sentences.

        Parameters
        ----------
        sentences : list of Sentence
            The sentences.

        Returns
        -------
        list of EncodedSentence
            One per sentence.
        """
        return [self.encode(s) for s in sentences]

    def state_dict(self):
        """Plain-data form (for JSON checkpoints).

        Returns
        -------
        dict
            The tag column and each vocabulary's state, as JSON values.
        """
        return {
            "tag_column": self.tag_column,
            "words": self.words.state_dict(),
            "features": [v.state_dict() for v in self.features],
            "tags": self.tags.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state):
        """Inverse of :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            As :meth:`state_dict` returns it.

        Returns
        -------
        FeatureVocabularies
            The same vocabularies.
        """
        obj = cls.__new__(cls)
        obj.tag_column = state["tag_column"]
        obj.words = Vocabulary.from_state_dict(state["words"])
        obj.features = [Vocabulary.from_state_dict(v) for v in state["features"]]
        obj.tags = Vocabulary.from_state_dict(state["tags"])
        return obj
