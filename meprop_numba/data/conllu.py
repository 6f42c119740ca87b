"""Universal Dependencies CoNLL-U reader.

The reader checks the file as it reads it and names the file and line of
anything malformed. Multiword-token lines (ids such as ``1-2``) and empty
nodes (ids such as ``1.1``) are skipped, so every sentence is the sequence of
its syntactic words with their UPOS and XPOS tags and, where the file has
one, its basic dependency tree (HEAD, DEPREL). The POS tagger's word
features and vocabularies are in :mod:`meprop_numba.tasks.pos_features`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = [
    "CoNLLUError",
    "Sentence",
    "find_split",
    "read_conllu",
]


@dataclass(frozen=True)
class Sentence:
    """One sentence: its syntactic words with their tags and basic dependency tree.

    Construction stores the fields as given and never raises;
    :func:`read_conllu` builds sentences from a checked file.

    Parameters
    ----------
    words, upos, xpos : tuple of str
        Word forms and their universal and language-specific tags.
    head : tuple of int or None
        ``head[i]`` is the 1-based index of the head of word ``i + 1`` (0 for
        the root); None when the file gives no tree (every HEAD is ``_``),
        as in text that is still to be parsed.
    deprel : tuple of str or None
        The relation of each word as written in the file (subtype included,
        e.g. ``"nmod:poss"``); None without a tree.

    Examples
    --------
    >>> s = Sentence(("Dogs", "bark"), ("NOUN", "VERB"), ("NNS", "VBP"), (2, 0), ("nsubj", "root"))
    >>> len(s), s.head
    (2, (2, 0))
    """

    words: tuple
    upos: tuple
    xpos: tuple
    head: tuple = None
    deprel: tuple = None

    def __len__(self):
        return len(self.words)


class CoNLLUError(ValueError):
    """A malformed CoNLL-U file; the message starts with ``path:line:``.

    Parameters
    ----------
    path : str
        The file.
    line : int
        1-based line number.
    message : str
        What is wrong.

    Attributes
    ----------
    path : str
    line : int
        1-based line number of the offending line (for a sentence-level
        error, the sentence's first line).

    Examples
    --------
    >>> from meprop_numba.data.conllu import CoNLLUError
    >>> err = CoNLLUError("a.conllu", 3, "bad ID 'x'")
    >>> str(err), isinstance(err, ValueError)
    ("a.conllu:3: bad ID 'x'", True)
    """

    def __init__(self, path, line, message):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = path, line


_ID = re.compile(r"[1-9][0-9]*\Z")
_RANGE = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)\Z")
_EMPTY_NODE = re.compile(r"(0|[1-9][0-9]*)\.[1-9][0-9]*\Z")
_N_COLUMNS = 10


def _check_tree(path, first_line, lines, heads):
    """Raise CoNLLUError unless `heads` (1-based, 0 = root) form one tree."""
    n = len(heads)
    roots = [i for i, h in enumerate(heads) if h == 0]
    if len(roots) != 1:
        where = lines[roots[1]] if len(roots) > 1 else first_line
        raise CoNLLUError(path, where, f"the sentence has {len(roots)} words with HEAD 0; "
                                       "a basic dependency tree has exactly one")
    state = [0] * (n + 1)  # 0 unvisited, 1 on the current path, 2 reaches the root
    state[0] = 2
    for start in range(1, n + 1):
        path_nodes, node = [], start
        while state[node] == 0:
            state[node] = 1
            path_nodes.append(node)
            node = heads[node - 1]
        if state[node] == 1:  # walked back onto the current path: a cycle
            cycle = path_nodes[path_nodes.index(node):]
            raise CoNLLUError(path, lines[cycle[0] - 1],
                              f"the HEAD column has a cycle through words {sorted(cycle)}")
        for v in path_nodes:
            state[v] = 2


def _sentence_from_rows(path, first_line, rows):
    """Build one Sentence from its (line number, columns) word rows."""
    if not rows:
        raise CoNLLUError(path, first_line, "empty sentence: no word lines "
                                            "(only comments, multiword tokens or empty nodes)")
    lines = [ln for ln, _ in rows]
    n = len(rows)
    for i, (ln, cols) in enumerate(rows):
        if int(cols[0]) != i + 1:
            raise CoNLLUError(path, ln, f"word ID {cols[0]!r} out of sequence, expected {i + 1}")
        if cols[3] in ("", "_"):
            raise CoNLLUError(path, ln, f"no UPOS tag (column 4 is {cols[3]!r})")
    given = [cols[6] != "_" for _, cols in rows]
    if not any(given):
        heads = deprels = None
    else:
        heads = []
        for ln, cols in rows:
            text = cols[6]
            if not (text == "0" or _ID.match(text)):
                raise CoNLLUError(path, ln, f"bad HEAD {text!r}: expected an integer word ID or 0")
            if int(text) > n:
                raise CoNLLUError(path, ln, f"HEAD {text} is beyond the sentence's {n} words")
            if cols[7] in ("", "_"):
                raise CoNLLUError(path, ln, f"HEAD {text} without a DEPREL (column 8 is {cols[7]!r})")
            heads.append(int(text))
        _check_tree(path, first_line, lines, heads)
        heads = tuple(heads)
        deprels = tuple(cols[7] for _, cols in rows)
    return Sentence(tuple(c[1] for _, c in rows), tuple(c[3] for _, c in rows),
                    tuple(c[4] for _, c in rows), heads, deprels)


def read_conllu(path, *, max_sentences=None):
    """Read a CoNLL-U file into a list of :class:`Sentence`.

    The file is checked as it is read; anything malformed raises
    :class:`CoNLLUError` naming the file and line, before any sentence is
    returned.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.conllu`` file, UTF-8. A byte-order mark at the start of the
        file is accepted and ignored (editors on Windows write one).
    max_sentences : int, optional
        Stop after this many sentences (for quick runs).

    Returns
    -------
    list of Sentence
        Words, UPOS, XPOS and, where the file has them, HEAD and DEPREL of
        every syntactic word; multiword-token lines (``1-2``) and empty
        nodes (``1.1``) are skipped. A missing XPOS (``_``) is kept as
        ``"_"``.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `max_sentences` is not a positive integer.
    CoNLLUError
        (a ValueError) for bytes that are not UTF-8, a line without exactly
        ten tab-separated columns (space-separated columns are named as
        such), a bad or out-of-sequence ID, a word without a UPOS tag, a
        sentence without words, a HEAD that is not an ID of the sentence or
        0, a HEAD without DEPREL, a sentence where only some words have a
        HEAD, a HEAD column with a cycle or without exactly one root.

    Examples
    --------
    >>> sents = read_conllu("en_ewt-ud-dev.conllu")  # doctest: +SKIP
    >>> sents[0].words[:3], sents[0].head[:3]  # doctest: +SKIP
    """
    if max_sentences is not None and (int(max_sentences) != max_sentences or max_sentences < 1):
        raise ValueError(f"max_sentences must be a positive integer, got {max_sentences!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no CoNLL-U file at {path!r}")
    sentences, rows, first_line, has_lines = [], [], None, False
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CoNLLUError(path, number, f"not UTF-8 ({exc.reason} at byte "
                                                f"{exc.start} of the line)") from None
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line.rstrip("\r\n")
            if not line.strip():
                if has_lines:
                    sentences.append(_sentence_from_rows(path, first_line, rows))
                    rows, first_line, has_lines = [], None, False
                    if max_sentences is not None and len(sentences) >= max_sentences:
                        return sentences
                continue
            if first_line is None:
                first_line = number
            has_lines = True
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != _N_COLUMNS:
                if len(cols) == 1 and " " in line:
                    raise CoNLLUError(path, number, "columns separated by spaces; "
                                                    "CoNLL-U separates its 10 columns by tabs")
                raise CoNLLUError(path, number, f"expected {_N_COLUMNS} tab-separated columns, "
                                                f"got {len(cols)}")
            token_id = cols[0]
            if _RANGE.match(token_id) or _EMPTY_NODE.match(token_id):
                continue
            if not _ID.match(token_id):
                raise CoNLLUError(path, number, f"bad ID {token_id!r}: expected a word ID "
                                                "(1, 2, ...), a range (1-2) or an empty node (1.1)")
            rows.append((number, cols))
    if has_lines:
        sentences.append(_sentence_from_rows(path, first_line, rows))
    return sentences[:max_sentences] if max_sentences is not None else sentences


def find_split(data_dir, split):
    """Return the path of the ``*-ud-<split>.conllu`` file in `data_dir`.

    Parameters
    ----------
    data_dir : str or os.PathLike
        A UD treebank folder (for example UD_English-EWT).
    split : {"train", "dev", "test"}
        Which split.

    Returns
    -------
    str
        The path of the one file of `data_dir` ending in ``-ud-<split>.conllu``.

    Raises
    ------
    FileNotFoundError
        If no single matching file exists.

    Examples
    --------
    >>> import os, tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> open(os.path.join(tmp, "en_ewt-ud-dev.conllu"), "w").close()
    >>> os.path.basename(find_split(tmp, "dev"))
    'en_ewt-ud-dev.conllu'
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
