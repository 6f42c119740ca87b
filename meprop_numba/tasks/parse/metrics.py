"""Attachment scores as the CoNLL 2018 shared task's ``conll18_ud_eval`` defines them.

UAS is the fraction of words whose predicted head is the gold head; LAS also
requires the relation, compared on its universal part (subtypes stripped,
as that script does). Every word counts, punctuation included. The
differences from that script: tokens are the gold ones, so there is no
alignment of system and gold words and the F1 it reports equals these
accuracies; the relations are ids of the training label set, so a gold
relation unseen in training is always an error.
"""
import numpy as np

from .data import Treebank

__all__ = ["attachment_scores"]


def attachment_scores(treebank, heads, labels):
    """UAS and LAS of predicted `heads` and `labels` against the treebank's gold tree.

    Parameters
    ----------
    treebank : Treebank
        Gold trees.
    heads, labels : array_like of int
        Predictions aligned with the treebank's flat arrays (as
        :func:`~meprop_numba.tasks.parse.transitions.parse` returns them);
        the ROOT entries are ignored.

    Returns
    -------
    dict
        ``{"uas": float, "las": float, "words": int}``, scores in [0, 1]
        over all words, micro-averaged over the corpus.

    Raises
    ------
    TypeError
        If `treebank` is not a :class:`Treebank`.
    ValueError
        If `heads` or `labels` do not match the treebank's length, or the
        treebank has no words.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.zeros(4, dtype=np.int64)
    >>> gold = Treebank(z, z, np.array([0, 2, 0, 2]), np.array([0, 1, 2, 3]), np.array([0, 4]))
    >>> attachment_scores(gold, [0, 2, 0, 1], [0, 1, 2, 0])
    {'uas': 0.6666666666666666, 'las': 0.6666666666666666, 'words': 3}
    """
    if not isinstance(treebank, Treebank):
        raise TypeError(f"treebank must be a Treebank, got {type(treebank).__name__}")
    heads, labels = np.asarray(heads), np.asarray(labels)
    for name, a in (("heads", heads), ("labels", labels)):
        if a.shape != treebank.heads.shape:
            raise ValueError(f"{name} must have shape {treebank.heads.shape}, got {a.shape}")
    mask = treebank.word_mask()
    n = int(mask.sum())
    if n == 0:
        raise ValueError("treebank has no words to score")
    head_ok = heads[mask] == treebank.heads[mask]
    label_ok = labels[mask] == treebank.labels[mask]
    return {"uas": float(head_ok.sum()) / n, "las": float((head_ok & label_ok).sum()) / n,
            "words": n}
