"""Arc-standard transitions: the static oracle and greedy batched parsing.

Arc-standard (Nivre 2004), as in Chen and Manning (2014) whom the meProp
paper follows: SHIFT, LEFT-ARC(l) and RIGHT-ARC(l) over a stack that starts
with ROOT, ``2 L + 1`` transitions, exactly ``2 n`` of them per sentence of
``n`` words. Its static oracle derives every projective tree and no
non-projective one, so non-projective training trees are skipped (counted
by :func:`is_projective`). The compiled kernels are in
:mod:`meprop_numba.tasks.parse._transitions`.
"""
import numpy as np

from . import _transitions as K
from .data import Treebank

__all__ = ["N_SLOTS", "is_projective", "oracle", "parse"]

N_SLOTS = K.N_SLOTS


def _check(treebank, n_labels):
    if not isinstance(treebank, Treebank):
        raise TypeError(f"treebank must be a Treebank, got {type(treebank).__name__}")
    if isinstance(n_labels, bool) or int(n_labels) != n_labels or n_labels < 1:
        raise ValueError(f"n_labels must be a positive integer, got {n_labels!r}")
    return int(n_labels)


def is_projective(treebank):
    """Per sentence, whether its gold tree is projective (no crossing arcs, ROOT arc included).

    Parameters
    ----------
    treebank : Treebank
        Sentences with gold trees.

    Returns
    -------
    numpy.ndarray of bool, shape (len(treebank),)
        True for the projective trees.

    Raises
    ------
    TypeError
        If `treebank` is not a :class:`Treebank`.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.parse.data import Treebank
    >>> z = np.zeros(5, dtype=np.int64)
    >>> tb = Treebank(z, z, np.array([0, 3, 0, 2, 1]), z, np.array([0, 5]))
    >>> is_projective(tb).tolist()     # 1 <- 4 crosses 0 -> 2
    [False]
    """
    _check(treebank, 1)
    return K.projective(treebank.heads, treebank.offsets)


def oracle(treebank, n_labels):
    """Training examples of the static oracle: features and gold transitions.

    Parameters
    ----------
    treebank : Treebank
        Sentences with gold trees; labels in ``[0, n_labels)``.
    n_labels : int
        Number of relations L (``2 L + 1`` transitions).

    Returns
    -------
    features : numpy.ndarray of int32, shape (T, 48)
        Ids of the 18 word, 18 POS and 12 label slots of each configuration
        the oracle passes through, of the sentences it derives.
    transitions : numpy.ndarray of int64, shape (T,)
        The oracle's transition at each configuration.
    derived : numpy.ndarray of bool, shape (len(treebank),)
        Whether the oracle derived the sentence's tree (False exactly for the
        non-projective ones); their configurations are left out.

    Raises
    ------
    TypeError
        If `treebank` is not a :class:`Treebank`.
    ValueError
        If a label is outside ``[0, n_labels)`` or `n_labels` < 1.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.parse.data import Treebank
    >>> tb = Treebank(np.array([2, 5, 6]), np.array([2, 3, 4]), np.array([0, 2, 0]),
    ...               np.array([0, 0, 1]), np.array([0, 3]))
    >>> feats, trans, derived = oracle(tb, n_labels=2)
    >>> trans.tolist(), derived.tolist()   # SHIFT SHIFT LEFT(0) RIGHT(1)
    ([0, 0, 1, 4], [True])
    """
    n_labels = _check(treebank, n_labels)
    mask = treebank.word_mask()
    labels = treebank.labels[mask]
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"treebank labels must be in [0, {n_labels}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    features, transitions, derived = K.oracle_examples(
        treebank.words, treebank.pos, treebank.heads, treebank.labels, treebank.offsets,
        n_labels, max(treebank.max_length, 1))
    keep = transitions >= 0
    return features[keep], transitions[keep], derived


def parse(score, treebank, n_labels, *, root_label=-1, batch_size=512):
    """Greedy parsing: at each step the best-scoring valid transition.

    Parameters
    ----------
    score : callable
        ``score(features) -> scores``: int32 ``(B, 48)`` feature ids to
        ``(B, 2 n_labels + 1)`` transition scores (a model's forward pass).
    treebank : Treebank
        The sentences (their heads and labels are not read).
    n_labels : int
        Number of relations L.
    root_label : int, optional
        The ROOT relation's label id: arcs from ROOT get it and no other arc
        does. -1 (default) leaves labels unconstrained.
    batch_size : int, optional
        Sentences parsed side by side (sorted by length so a batch ends
        together).

    Returns
    -------
    heads : numpy.ndarray of int64
        Predicted heads, aligned with the treebank's flat arrays (entry 0 of each sentence,
        ROOT, is 0). Every sentence gets a tree: one word attached to ROOT,
        every word one head, no cycle.
    labels : numpy.ndarray of int64
        Predicted relation ids, aligned the same way.

    Raises
    ------
    TypeError
        If `treebank` is not a :class:`Treebank`.
    ValueError
        If `score` returns the wrong shape, or `n_labels`/`batch_size` is
        not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.tasks.parse.data import Treebank
    >>> z = np.zeros(4, dtype=np.int64)
    >>> tb = Treebank(z, z, z, z, np.array([0, 4]))
    >>> def shift_first(f):            # prefers SHIFT, then RIGHT-ARC(0)
    ...     return np.tile([2.0, 0.0, 1.0], (len(f), 1))
    >>> heads, labels = parse(shift_first, tb, 1)
    >>> heads.tolist()                 # a right-branching chain
    [0, 0, 1, 2]
    """
    n_labels = _check(treebank, n_labels)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    heads = np.zeros(len(treebank.words), dtype=np.int64)
    labels = np.zeros(len(treebank.words), dtype=np.int64)
    lengths = np.diff(treebank.offsets) - 1
    order = np.argsort(lengths, kind="stable")
    n_trans = 2 * n_labels + 1
    for start in range(0, len(order), int(batch_size)):
        ids = order[start:start + int(batch_size)]
        batch = treebank.subset(ids)
        n_max = max(batch.max_length, 1)
        state, scalars = K.start_batch(batch.words, batch.pos, batch.offsets, n_max)
        active = np.flatnonzero(lengths[ids] > 0).astype(np.int64)
        while active.size:
            scores = np.asarray(score(K.batch_features(state, scalars, active)))
            if scores.shape != (active.size, n_trans):
                raise ValueError(f"score must return shape {(active.size, n_trans)}, "
                                 f"got {scores.shape}")
            active = K.apply_best(state, scalars, active, np.ascontiguousarray(scores, np.float64),
                                  n_labels, int(root_label))
        for j, s in enumerate(ids):
            lo, n = treebank.offsets[s], lengths[s]
            heads[lo + 1:lo + 1 + n] = state[j, K.HEAD, 1:n + 1]
            labels[lo + 1:lo + 1 + n] = state[j, K.LABEL, 1:n + 1]
    return heads, labels
