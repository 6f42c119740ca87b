"""Compiled arc-standard transition system: oracle, feature extraction, batched parsing.

Every kernel here trusts its arguments (the Python wrappers in
:mod:`meprop_numba.tasks.parse.transitions` check them).

Words of a sentence are nodes ``1..n``; node 0 is the artificial ROOT, which
starts on the stack. Transitions are numbered ``0`` = SHIFT, ``1 + l`` =
LEFT-ARC with label ``l`` (the second stack item becomes a dependent of the
top) and ``1 + L + l`` = RIGHT-ARC with label ``l`` (the top becomes a
dependent of the second), ``2 L + 1`` in all.

A batch of parser configurations is one int64 array ``state`` of shape
``(B, N_FIELDS, n_max + 1)`` (a row per field below, indexed by node or stack
position) and one ``(B, 3)`` array ``scalars`` (stack size, next buffer word,
sentence length). Arc-standard adds the left dependents of a head from the
nearest to the farthest and its right dependents from the nearest to the
farthest, so the latest left (right) dependent is the leftmost (rightmost)
one and the one before it the second leftmost (rightmost): four fields kept
in O(1) per arc replace any search for children.
"""
import numpy as np
from numba import njit

from ..._config import JIT_OPTIONS

# Fields of `state`.
STACK, HEAD, LABEL, LC1, LC2, RC1, RC2, WORD, POS = range(9)
N_FIELDS = 9
# Columns of `scalars`.
SIZE, BUF, LEN = range(3)

#: Word and POS feature slots (18 each), then the 12 label slots, as in Chen
#: and Manning (2014): s1-s3, b1-b3, the first/second leftmost and rightmost
#: children of s1 and s2, and the leftmost of the leftmost / rightmost of the
#: rightmost child of s1 and s2.
N_WORD_SLOTS = 18
N_LABEL_SLOTS = 12
N_SLOTS = 2 * N_WORD_SLOTS + N_LABEL_SLOTS
#: Feature id of an empty slot (no such node) in each of the three tables.
NULL_ID = 0


@njit(**JIT_OPTIONS)
def init_state(state, scalars, b, words, pos, n):
    """Start configuration of sentence `b`: ROOT on the stack, every word in the buffer."""
    row = state[b]
    row[:, :] = -1
    row[STACK, 0] = 0
    row[WORD, 0] = words[0]
    row[POS, 0] = pos[0]
    for i in range(1, n + 1):
        row[WORD, i] = words[i]
        row[POS, i] = pos[i]
    scalars[b, SIZE] = 1
    scalars[b, BUF] = 1
    scalars[b, LEN] = n


@njit(**JIT_OPTIONS)
def is_terminal(scalars, b):
    return scalars[b, SIZE] == 1 and scalars[b, BUF] > scalars[b, LEN]


@njit(**JIT_OPTIONS)
def is_valid(scalars, state, b, t, n_labels, root_label):
    """Whether transition `t` may be applied to configuration `b`.

    RIGHT-ARC from ROOT only when the buffer is empty (so the tree has one
    root word); with a `root_label` >= 0, arcs from ROOT carry exactly that
    label and no other arc does.
    """
    size = scalars[b, SIZE]
    buffer_empty = scalars[b, BUF] > scalars[b, LEN]
    if t == 0:
        return not buffer_empty
    if size < 2:
        return False
    s1_is_root = state[b, STACK, size - 2] == 0
    label = (t - 1) % n_labels
    if t <= n_labels:  # LEFT-ARC: the second item becomes a dependent
        return (not s1_is_root) and label != root_label
    if s1_is_root:
        return buffer_empty and (root_label < 0 or label == root_label)
    return label != root_label


@njit(**JIT_OPTIONS)
def apply_transition(state, scalars, b, t, n_labels):
    """Apply transition `t` (assumed valid) to configuration `b`."""
    row = state[b]
    size = scalars[b, SIZE]
    if t == 0:
        row[STACK, size] = scalars[b, BUF]
        scalars[b, SIZE] = size + 1
        scalars[b, BUF] += 1
        return
    top = row[STACK, size - 1]
    second = row[STACK, size - 2]
    if t <= n_labels:
        head, dep, label = top, second, t - 1
        row[LC2, head] = row[LC1, head]
        row[LC1, head] = dep
        row[STACK, size - 2] = top
    else:
        head, dep, label = second, top, t - 1 - n_labels
        row[RC2, head] = row[RC1, head]
        row[RC1, head] = dep
    row[HEAD, dep] = head
    row[LABEL, dep] = label
    scalars[b, SIZE] = size - 1


@njit(**JIT_OPTIONS)
def _child(row, field, node):
    return -1 if node < 0 else row[field, node]


@njit(**JIT_OPTIONS)
def extract_features(state, scalars, b, out, nodes):
    """Write the 48 feature ids of configuration `b` into `out` (int32, 48).

    `nodes` is int64 scratch of 18 (the node of each word slot).

    Word and POS ids are the sentence's own (``state[WORD]``, ``state[POS]``,
    node 0 holding the ROOT ids); a missing node gives :data:`NULL_ID`.
    Label ids are ``label + 1`` (0 is NULL).
    """
    row = state[b]
    size = scalars[b, SIZE]
    nxt = scalars[b, BUF]
    n = scalars[b, LEN]
    for i in range(3):
        nodes[i] = row[STACK, size - 1 - i] if size - 1 - i >= 0 else -1
        nodes[3 + i] = nxt + i if nxt + i <= n else -1
    for j in range(2):
        s = nodes[j]
        base = 6 + 4 * j
        nodes[base] = _child(row, LC1, s)
        nodes[base + 1] = _child(row, RC1, s)
        nodes[base + 2] = _child(row, LC2, s)
        nodes[base + 3] = _child(row, RC2, s)
        nodes[14 + 2 * j] = _child(row, LC1, nodes[base])
        nodes[15 + 2 * j] = _child(row, RC1, nodes[base + 1])
    for i in range(N_WORD_SLOTS):
        node = nodes[i]
        if node < 0:
            out[i] = NULL_ID
            out[N_WORD_SLOTS + i] = NULL_ID
        else:
            out[i] = row[WORD, node]
            out[N_WORD_SLOTS + i] = row[POS, node]
    for i in range(N_LABEL_SLOTS):
        node = nodes[6 + i]
        out[2 * N_WORD_SLOTS + i] = NULL_ID if node < 0 else row[LABEL, node] + 1


@njit(**JIT_OPTIONS)
def oracle_transition(state, scalars, gold_head, n_children, attached, n_labels, gold_label):
    """The static arc-standard oracle's transition for configuration 0, or -1 if stuck.

    LEFT-ARC when the second stack item's gold head is the top; RIGHT-ARC
    when the top's gold head is the second and all the top's gold dependents
    are attached; else SHIFT. A non-projective tree gets stuck (-1).
    """
    size = scalars[0, SIZE]
    buffer_empty = scalars[0, BUF] > scalars[0, LEN]
    if size >= 2:
        top = state[0, STACK, size - 1]
        second = state[0, STACK, size - 2]
        if second != 0 and gold_head[second] == top:
            return 1 + gold_label[second]
        if gold_head[top] == second and attached[top] == n_children[top] and (
                second != 0 or buffer_empty):
            return 1 + n_labels + gold_label[top]
    return -1 if buffer_empty else 0


@njit(**JIT_OPTIONS)
def oracle_examples(words, pos, heads, labels, offsets, n_labels, n_max):
    """Features and oracle transitions of every configuration of every sentence.

    Sentence ``s`` is ``words[offsets[s]:offsets[s + 1]]`` etc., entry 0 of
    each being ROOT (its head and label ignored). Returns ``(features,
    transitions, ok)``: ``(T, 48)`` int32, ``(T,)`` int64 with ``T = 2 *
    (number of words)`` (rows of stuck sentences left at -1) and per
    sentence whether the oracle derived its tree.
    """
    n_sent = offsets.shape[0] - 1
    total = 0
    for s in range(n_sent):
        total += 2 * (offsets[s + 1] - offsets[s] - 1)
    features = np.full((total, N_SLOTS), -1, dtype=np.int32)
    transitions = np.full(total, -1, dtype=np.int64)
    ok = np.zeros(n_sent, dtype=np.bool_)
    state = np.empty((1, N_FIELDS, n_max + 1), dtype=np.int64)
    scalars = np.empty((1, 3), dtype=np.int64)
    n_children = np.zeros(n_max + 1, dtype=np.int64)
    attached = np.zeros(n_max + 1, dtype=np.int64)
    nodes = np.empty(N_WORD_SLOTS, dtype=np.int64)
    row = 0
    for s in range(n_sent):
        lo = offsets[s]
        n = offsets[s + 1] - lo - 1
        gold_head = heads[lo:lo + n + 1]
        gold_label = labels[lo:lo + n + 1]
        init_state(state, scalars, 0, words[lo:lo + n + 1], pos[lo:lo + n + 1], n)
        n_children[:n + 1] = 0
        attached[:n + 1] = 0
        for i in range(1, n + 1):
            n_children[gold_head[i]] += 1
        start = row
        stuck = False
        for _ in range(2 * n):
            t = oracle_transition(state, scalars, gold_head, n_children, attached, n_labels,
                                  gold_label)
            if t < 0:
                stuck = True
                break
            extract_features(state, scalars, 0, features[row], nodes)
            transitions[row] = t
            row += 1
            if t > 0:
                size = scalars[0, SIZE]
                head = state[0, STACK, size - 1] if t <= n_labels else state[0, STACK, size - 2]
                attached[head] += 1
            apply_transition(state, scalars, 0, t, n_labels)
        ok[s] = (not stuck) and is_terminal(scalars, 0)
        if not ok[s]:
            for r in range(start, row):
                features[r, :] = -1
                transitions[r] = -1
            row = start + 2 * n
    return features, transitions, ok


@njit(**JIT_OPTIONS)
def projective(heads, offsets):
    """Per sentence, whether its tree (ROOT arc included) has no crossing arcs."""
    n_sent = offsets.shape[0] - 1
    out = np.ones(n_sent, dtype=np.bool_)
    for s in range(n_sent):
        lo = offsets[s]
        n = offsets[s + 1] - lo - 1
        for d in range(1, n + 1):
            a, b = min(d, heads[lo + d]), max(d, heads[lo + d])
            for e in range(1, n + 1):
                c, f = min(e, heads[lo + e]), max(e, heads[lo + e])
                if a < c < b < f:
                    out[s] = False
                    break
            if not out[s]:
                break
    return out


@njit(**JIT_OPTIONS)
def start_batch(words, pos, offsets, n_max):
    """Start configurations for a batch of sentences (layout of :func:`oracle_examples`)."""
    n_sent = offsets.shape[0] - 1
    state = np.empty((n_sent, N_FIELDS, n_max + 1), dtype=np.int64)
    scalars = np.empty((n_sent, 3), dtype=np.int64)
    for s in range(n_sent):
        lo, hi = offsets[s], offsets[s + 1]
        init_state(state, scalars, s, words[lo:hi], pos[lo:hi], hi - lo - 1)
    return state, scalars


@njit(**JIT_OPTIONS)
def batch_features(state, scalars, active):
    """Features ``(len(active), 48)`` int32 of the configurations `active`."""
    out = np.empty((active.shape[0], N_SLOTS), dtype=np.int32)
    nodes = np.empty(N_WORD_SLOTS, dtype=np.int64)
    for i in range(active.shape[0]):
        extract_features(state, scalars, active[i], out[i], nodes)
    return out


@njit(**JIT_OPTIONS)
def apply_best(state, scalars, active, scores, n_labels, root_label):
    """Apply to each active configuration its best-scoring valid transition.

    Returns the configurations still not terminal afterwards. Every
    non-terminal configuration has a valid transition (SHIFT while the
    buffer holds words, else an arc), so parsing always ends in a tree.
    """
    keep = np.empty(active.shape[0], dtype=np.int64)
    n_keep = 0
    for i in range(active.shape[0]):
        b = active[i]
        best, best_score = -1, -np.inf
        for t in range(scores.shape[1]):
            if (best < 0 or scores[i, t] > best_score) and is_valid(
                    scalars, state, b, t, n_labels, root_label):
                best, best_score = t, scores[i, t]
        apply_transition(state, scalars, b, best, n_labels)
        if not is_terminal(scalars, b):
            keep[n_keep] = b
            n_keep += 1
    return keep[:n_keep].copy()
