"""Universal Dependencies CoNLL-U reader.

The reader uses the ``conllu`` package (the ``pos`` extra). Multiword-token
lines (ids such as ``1-2``) and empty nodes (ids such as ``1.1``) are skipped,
so every sentence is the sequence of its syntactic words with their UPOS and
XPOS tags. The POS tagger's word features and vocabularies are in
:mod:`meprop_numba.tasks.pos_features`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "Sentence",
    "find_split",
    "read_conllu",
]


@dataclass(frozen=True)
class Sentence:
    """One sentence: word forms with their universal and language-specific tags."""

    words: tuple
    upos: tuple
    xpos: tuple

    def __len__(self):
        return len(self.words)


def _require_conllu():
    try:
        import conllu
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading CoNLL-U needs the 'conllu' package: pip install 'meprop_numba[pos]'"
        ) from exc
    return conllu


def read_conllu(path, *, max_sentences=None):
    """Read a CoNLL-U file into a list of :class:`Sentence`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.conllu`` file.
    max_sentences : int, optional
        Stop after this many sentences (for quick runs).

    Returns
    -------
    list of Sentence
        Words, UPOS and XPOS of every syntactic word; multiword-token lines and
        empty nodes are skipped, as are sentences left empty. A missing XPOS
        (``_``) is kept as ``"_"``.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `max_sentences` is not a positive integer.

    Examples
    --------
    >>> sents = read_conllu("en_ewt-ud-dev.conllu")  # doctest: +SKIP
    >>> sents[0].words[:3], sents[0].upos[:3]  # doctest: +SKIP
    """
    if max_sentences is not None and (int(max_sentences) != max_sentences or max_sentences < 1):
        raise ValueError(f"max_sentences must be a positive integer, got {max_sentences!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no CoNLL-U file at {path!r}")
    conllu = _require_conllu()
    sentences = []
    with open(path, encoding="utf-8") as handle:
        for tokenlist in conllu.parse_incr(handle):
            words, upos, xpos = [], [], []
            for token in tokenlist:
                if not isinstance(token["id"], int):
                    continue  # multiword token (1-2) or empty node (1.1)
                words.append(token["form"])
                upos.append(token["upos"] if token["upos"] is not None else "_")
                xpos.append(token["xpos"] if token["xpos"] is not None else "_")
            if words:
                sentences.append(Sentence(tuple(words), tuple(upos), tuple(xpos)))
            if max_sentences is not None and len(sentences) >= max_sentences:
                break
    return sentences


def find_split(data_dir, split):
    """Return the path of the ``*-ud-<split>.conllu`` file in `data_dir`.

    Parameters
    ----------
    data_dir : str or os.PathLike
        A UD treebank folder (for example UD_English-EWT).
    split : {"train", "dev", "test"}

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        If no single matching file exists.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir: no directory at {data_dir!r}")
    matches = sorted(f for f in os.listdir(data_dir) if f.endswith(f"-ud-{split}.conllu"))
    if len(matches) != 1:
        raise FileNotFoundError(
            f"data_dir: expected one '*-ud-{split}.conllu' file in {data_dir!r}, found {matches}"
        )
    return os.path.join(data_dir, matches[0])
