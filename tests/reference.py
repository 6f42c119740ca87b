"""Slow, obviously-correct NumPy references (and test-data strategies) for the CPU core.

Everything here is written for clarity, not speed, and shares no code with
``meprop_numba``: the tests compare the library against these functions.
Arithmetic is done in float64 (or the input's own dtype where the rounding
of the input dtype is part of the definition, e.g. |g|).
"""
import os

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


# ---------------------------------------------------------------- selection
def topk_reference(g, k):
    """Per-example top-k by (descending |g|, ascending index).

    A stable sort of ``-|g|`` keeps equal magnitudes in index order, which is
    exactly the contract's tie rule.
    """
    g = np.asarray(g)
    magnitude = np.abs(g).astype(np.float64)
    order = np.argsort(-magnitude, axis=1, kind="stable")
    return order[:, :k].astype(np.int64)


def unified_scores(g):
    """Column scores sum_b |g[b, i]| in float64 (exact for small-integer data)."""
    return np.abs(np.asarray(g, dtype=np.float64)).sum(axis=0)


def unified_topk_reference(g, k):
    """Unified top-k: the k columns with the largest sum_b |g[b, i]|."""
    scores = unified_scores(g)
    order = np.argsort(-scores, kind="stable")
    return order[:k].astype(np.int64)


def is_valid_topk(scores, selected, k, rtol):
    """Check ``selected`` is a valid top-k of ``scores`` up to rounding.

    Used where the library may sum in a different order or precision than
    the reference (unified scores of float32 data), so that only ties closer
    than ``rtol`` may be broken differently.  Returns an error message, or
    ``None`` if the selection is valid.
    """
    scores = np.asarray(scores, dtype=np.float64)
    selected = np.asarray(selected)
    if selected.shape != (k,):
        return f"shape {selected.shape} != {(k,)}"
    if len(np.unique(selected)) != k:
        return "indices are not distinct"
    if selected.min() < 0 or selected.max() >= len(scores):
        return "index out of range"
    tol = rtol * max(float(np.max(scores)), np.finfo(np.float64).tiny)
    chosen = scores[selected]
    if np.any(np.diff(chosen) > tol):
        return f"not in descending order: {chosen}"
    rest = np.setdiff1d(np.arange(len(scores)), selected)
    if rest.size and scores[rest].max() > chosen.min() + tol:
        return "a larger score was left out"
    return None


def selection_mask(shape, indices):
    """Boolean (B, n) mask of the selected entries.

    ``indices`` is (B, k) (one set per example) or (k,) (shared by all rows).
    """
    batch, n = shape
    mask = np.zeros((batch, n), dtype=bool)
    indices = np.asarray(indices)
    if indices.ndim == 1:
        mask[:, indices] = True
    else:
        for b in range(batch):
            mask[b, indices[b]] = True
    return mask


# ----------------------------------------------------------------- backward
def masked_backward_reference(x, W, g, mask=None):
    """Dense backward of y = x W^T + b with g zeroed outside ``mask``.

    Returns float64 ``(dx, dW, db, bound_dx, bound_dW, bound_db)``; the bounds
    are the same products on absolute values, the natural scale for the
    rounding error of any summation order (|sum a_i b_i| <= sum |a_i||b_i|).
    db uses the full g, as the paper does.
    """
    x64 = np.asarray(x, dtype=np.float64)
    W64 = np.asarray(W, dtype=np.float64)
    g64 = np.asarray(g, dtype=np.float64)
    gm = g64 if mask is None else np.where(mask, g64, 0.0)
    dx = gm @ W64
    dW = gm.T @ x64
    db = g64.sum(axis=0)
    bound_dx = np.abs(gm) @ np.abs(W64)
    bound_dW = np.abs(gm).T @ np.abs(x64)
    bound_db = np.abs(g64).sum(axis=0)
    return dx, dW, db, bound_dx, bound_dW, bound_db


def assert_close_scaled(actual, expected, bound, rtol, what):
    """|actual - expected| <= rtol * bound elementwise (bound = |.| products).

    An absolute floor of a few of the result dtype's smallest normal numbers
    allows products that underflow in that dtype (bound == 0 still demands 0).
    """
    underflow = 16 * np.finfo(np.asarray(actual).dtype).tiny
    actual = np.asarray(actual, dtype=np.float64)
    err = np.abs(actual - expected)
    limit = rtol * bound + np.where(bound > 0, underflow, 1e-300)
    bad = err > limit
    if np.any(bad):
        where = tuple(int(i[0]) for i in np.nonzero(bad))
        raise AssertionError(
            f"{what}: {int(bad.sum())} entries out of tolerance; first at {where}: "
            f"actual {actual[where]!r}, expected {expected[where]!r}, "
            f"allowed error {limit[where]!r}"
        )


# --------------------------------------------------------------- optimizers
# Conventions (those of torch.optim): SGD momentum buffer v = mu v + g,
# p -= lr v; Adam with bias correction and eps added to sqrt(v_hat);
# AdaGrad accumulator starting at 0, p -= lr g / (sqrt(sum) + eps).
# A "lazy" step applies the same formulas to the given rows only.

class SGDReference:
    def __init__(self, shape, lr, momentum=0.0):
        self.lr, self.momentum = lr, momentum
        self.velocity = np.zeros(shape, dtype=np.float64)

    def step(self, param, grad, rows=None):
        """Update float64 ``param`` in place with dense ``grad`` on ``rows``."""
        sel = slice(None) if rows is None else rows
        if self.momentum:
            self.velocity[sel] = self.momentum * self.velocity[sel] + grad[sel]
            param[sel] -= self.lr * self.velocity[sel]
        else:
            param[sel] -= self.lr * grad[sel]


class AdamReference:
    def __init__(self, shape, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = np.zeros(shape, dtype=np.float64)
        self.v = np.zeros(shape, dtype=np.float64)
        self.t = 0

    def step(self, param, grad, rows=None):
        sel = slice(None) if rows is None else rows
        b1, b2 = self.betas
        self.t += 1
        self.m[sel] = b1 * self.m[sel] + (1 - b1) * grad[sel]
        self.v[sel] = b2 * self.v[sel] + (1 - b2) * grad[sel] ** 2
        m_hat = self.m[sel] / (1 - b1 ** self.t)
        v_hat = self.v[sel] / (1 - b2 ** self.t)
        param[sel] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdaGradReference:
    def __init__(self, shape, lr=1e-2, eps=1e-10):
        self.lr, self.eps = lr, eps
        self.sum_sq = np.zeros(shape, dtype=np.float64)

    def step(self, param, grad, rows=None):
        sel = slice(None) if rows is None else rows
        self.sum_sq[sel] += grad[sel] ** 2
        param[sel] -= self.lr * grad[sel] / (np.sqrt(self.sum_sq[sel]) + self.eps)


def cross_entropy_reference(logits, labels):
    """Direct (unshifted) softmax in float64 on modest logits: the mean loss and its gradient."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    B = len(labels)
    loss = -np.mean(np.log(p[np.arange(B), labels]))
    onehot = np.zeros_like(p)
    onehot[np.arange(B), labels] = 1
    return loss, (p - onehot) / B


def densify(rows, values, shape):
    """Dense array of ``shape`` with ``values`` placed at ``rows``."""
    out = np.zeros(shape, dtype=np.float64)
    out[np.asarray(rows)] = values
    return out


# ------------------------------------------------------------ state helpers
def snapshot(obj):
    """Deep copy of nested dicts/lists/tuples of arrays and scalars."""
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(value) for value in obj)
    if isinstance(obj, np.ndarray):
        return obj.copy()
    return obj


def assert_identical(a, b, path="state"):
    """Bit-identical nested structures (arrays: same dtype, shape and bytes)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: length differs"
        for i, (ai, bi) in enumerate(zip(a, b)):
            assert_identical(ai, bi, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: not an array"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: dtype/shape differ"
        assert a.tobytes() == b.tobytes(), f"{path}: contents changed"
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
        assert both_nan or a == b, f"{path}: {a!r} != {b!r}"


def arrays_in(obj):
    """All ndarrays inside a nested dict/list/tuple structure."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from arrays_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from arrays_in(value)
    elif isinstance(obj, np.ndarray):
        yield obj


# ------------------------------------------------ hypothesis test data
FLOAT_DTYPES = (np.float32, np.float64)


def examples(count):
    """Hypothesis example budget, scaled by $MEPROP_HYPOTHESIS_SCALE (default 1).

    The default keeps the suite fast; e.g. MEPROP_HYPOTHESIS_SCALE=20 runs a
    deeper search before a release.
    """
    return max(1, int(count * float(os.environ.get("MEPROP_HYPOTHESIS_SCALE", "1"))))

# A tiny set of magnitudes (both signs, signed zeros) so that ties are common.
# Every value is a small dyadic rational, so sums of a few of them are exact in
# float32 and float64 whatever the summation order.
TIE_VALUES = (-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0)


def float_elements(dtype, bound=1e3):
    """Finite floats in [-bound, bound], no subnormals."""
    return st.floats(
        min_value=-bound,
        max_value=bound,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=np.dtype(dtype).itemsize * 8,
    )


def matrices(dtype, shape, ties=False, bound=1e3):
    """(B, n) arrays of finite floats, or of values from TIE_VALUES."""
    if ties:
        elements = st.sampled_from(TIE_VALUES)
    else:
        elements = float_elements(dtype, bound)
    return hnp.arrays(dtype=dtype, shape=shape, elements=elements)


@st.composite
def layouts(draw, array):
    """The same values as ``array`` in a random memory layout.

    C order, Fortran order, a strided column view or a read-only copy: every
    layout the contract says is accepted.
    """
    kind = draw(st.sampled_from(("c", "f", "strided", "readonly", "transposed")))
    if kind == "c":
        return np.ascontiguousarray(array)
    if kind == "f":
        return np.asfortranarray(array)
    if kind == "strided":
        wide = np.zeros((array.shape[0], 2 * array.shape[1]), dtype=array.dtype)
        wide[:, ::2] = array
        view = wide[:, ::2]
        assert not view.flags.c_contiguous or array.shape[1] <= 1
        return view
    if kind == "transposed":
        return np.ascontiguousarray(array.T).T
    readonly = array.copy()
    readonly.setflags(write=False)
    return readonly


# ---------------------------------------------------- meProp LSTM in PyTorch
def torch_meprop_lstm(torch, params, x, lengths, *, num_layers, bidirectional, k=None,
                      per_gate=True):
    """meProp LSTM written directly in PyTorch autograd, one example at a time.

    `params` maps ``torch.nn.LSTM``'s names (``weight_ih_l0``, ...,
    ``_reverse`` suffixes) to tensors; `x` is (B, T, d) batch first and
    example b uses its first ``lengths[b]`` steps (the reverse direction runs
    over those steps backwards). At every step the product
    ``x_t W_ih^T + h_{t-1} W_hh^T`` passes through a function that is the
    identity forward and, backward, keeps only the k largest-magnitude
    entries of its gradient (per gate block of h, or of all 4h) and zeroes
    the rest; the biases are added after it, so they get the full gradient.
    ``k=None`` keeps everything (plain autograd BPTT). Returns
    ``(output (B, T, h * directions), zero at padded steps;
    h_n (layers * directions, B, h); c_n)``.
    """

    class KeepTopk(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a.clone()

        @staticmethod
        def backward(ctx, g):
            blocks = g.reshape(4, -1) if per_gate else g.reshape(1, -1)
            mask = torch.zeros_like(blocks)
            mask.scatter_(1, blocks.abs().topk(k, dim=1).indices, 1.0)
            return (blocks * mask).reshape(g.shape)

    B, T, _ = x.shape
    directions = 2 if bidirectional else 1
    layer_in = [x[b, :int(lengths[b])] for b in range(B)]
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = [[] for _ in range(B)]
        for direction in range(directions):
            sfx = f"l{layer}" + ("_reverse" if direction else "")
            W_ih, W_hh = params["weight_ih_" + sfx], params["weight_hh_" + sfx]
            bias = params.get("bias_ih_" + sfx)
            if bias is not None:
                bias = bias + params["bias_hh_" + sfx]
            hs_n, cs_n = [], []
            for b in range(B):
                seq = layer_in[b].flip(0) if direction else layer_in[b]
                h = torch.zeros(W_hh.shape[1], dtype=x.dtype)
                c = torch.zeros_like(h)
                hs = []
                for t in range(seq.shape[0]):
                    a = W_ih @ seq[t] + W_hh @ h
                    if k is not None:
                        a = KeepTopk.apply(a)
                    if bias is not None:
                        a = a + bias
                    i, f, g, o = a.chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    hs.append(h)
                hs = torch.stack(hs)
                outs[b].append(hs.flip(0) if direction else hs)
                hs_n.append(h)
                cs_n.append(c)
            h_n.append(torch.stack(hs_n))
            c_n.append(torch.stack(cs_n))
        layer_in = [torch.cat(o, dim=1) for o in outs]
    out = torch.zeros(B, T, layer_in[0].shape[1], dtype=x.dtype)
    out = torch.stack([torch.cat([seq, out[b, seq.shape[0]:]]) for b, seq in enumerate(layer_in)])
    return out, torch.stack(h_n), torch.stack(c_n)


# ------------------------------------------------------ dependency parsing
# Trees are lists ``heads`` of length n + 1 (entry 0, ROOT, unused) with
# 1-based heads, 0 for the root word.
def is_descendant(heads, node, ancestor):
    """Whether `ancestor` is on the head chain of `node` (or is `node`)."""
    seen = set()
    while node != ancestor:
        if node == 0 or node in seen:
            return False
        seen.add(node)
        node = heads[node]
    return True


def projective_reference(heads):
    """A tree is projective when every word between a head and its dependent descends from the head."""
    for dep in range(1, len(heads)):
        head = heads[dep]
        for w in range(min(head, dep) + 1, max(head, dep)):
            if not is_descendant(heads, w, head):
                return False
    return True


class ArcStandardReference:
    """Arc-standard configuration kept as plain lists, children found by searching the arcs."""

    def __init__(self, words, pos):
        self.words, self.pos = list(words), list(pos)  # entry 0 is ROOT
        self.n = len(words) - 1
        self.stack, self.next, self.head, self.label = [0], 1, {}, {}

    def terminal(self):
        return self.stack == [0] and self.next > self.n

    def apply(self, t, n_labels):
        if t == 0:
            assert self.next <= self.n, "SHIFT with an empty buffer"
            self.stack.append(self.next)
            self.next += 1
            return
        top, second = self.stack[-1], self.stack[-2]
        if t <= n_labels:
            assert second != 0, "LEFT-ARC onto ROOT"
            dep, head, label = second, top, t - 1
            self.stack[-2:] = [top]
        else:
            dep, head, label = top, second, t - 1 - n_labels
            self.stack.pop()
        self.head[dep], self.label[dep] = head, label

    def valid(self, t, n_labels, root_label):
        if t == 0:
            return self.next <= self.n
        if len(self.stack) < 2:
            return False
        second = self.stack[-2]
        label = (t - 1) % n_labels
        if t <= n_labels:
            return second != 0 and label != root_label
        if second == 0:
            return self.next > self.n and (root_label < 0 or label == root_label)
        return label != root_label

    def _children(self, node, left):
        kids = [d for d, h in self.head.items() if h == node and (d < node) == left]
        return sorted(kids) if left else sorted(kids, reverse=True)

    def _kid(self, node, left, rank):
        if node is None:
            return None
        kids = self._children(node, left)
        return kids[rank] if len(kids) > rank else None

    def features(self):
        """The 18 word, 18 POS and 12 label ids (0 for an empty slot, label ids + 1)."""
        s = [self.stack[-1 - i] if len(self.stack) > i else None for i in range(3)]
        b = [self.next + i if self.next + i <= self.n else None for i in range(3)]
        nodes = s + b
        for j in range(2):
            nodes += [self._kid(s[j], True, 0), self._kid(s[j], False, 0),
                      self._kid(s[j], True, 1), self._kid(s[j], False, 1)]
        for j in range(2):
            nodes += [self._kid(self._kid(s[j], True, 0), True, 0),
                      self._kid(self._kid(s[j], False, 0), False, 0)]
        words = [0 if v is None else self.words[v] for v in nodes]
        tags = [0 if v is None else self.pos[v] for v in nodes]
        labels = [0 if v is None else self.label[v] + 1 for v in nodes[6:]]
        return words + tags + labels


def greedy_parse_reference(words, pos, score, n_labels, root_label=-1):
    """Parse one sentence: the best-scoring valid transition (lowest id on ties) each step."""
    config = ArcStandardReference(words, pos)
    while not config.terminal():
        scores = score(np.array([config.features()], dtype=np.int32))[0]
        best = None
        for t in range(2 * n_labels + 1):
            if config.valid(t, n_labels, root_label) and (best is None or scores[t] > scores[best]):
                best = t
        config.apply(best, n_labels)
    return ([0] + [config.head[d] for d in range(1, config.n + 1)],
            [0] + [config.label[d] for d in range(1, config.n + 1)])


@st.composite
def projective_trees(draw, max_words=12):
    """A uniformly shaped random projective tree: heads list (ROOT entry 0) built span by span.

    A projective tree over a span is a root word whose left and right sides
    are sequences of adjacent projective subtrees attached to it.
    """
    n = draw(st.integers(1, max_words))
    heads = [0] * (n + 1)

    def subtree(a, b, parent):
        r = draw(st.integers(a, b))
        heads[r] = parent
        forest(a, r - 1, r)
        forest(r + 1, b, r)

    def forest(a, b, parent):
        while a <= b:
            end = draw(st.integers(a, b))
            subtree(a, end, parent)
            a = end + 1

    subtree(1, n, 0)
    return heads


# ------------------------------------------------- meProp accuracy remedies
def balanced_topk_reference(g, k):
    """Sign-balanced selection: k // 2 largest positives, k - k // 2 largest-magnitude negatives.

    A sign short of its share gives the rest to the other sign; rows with
    fewer than k non-zero entries are padded with zero entries by index.
    Each part is a stable sort (ties to the lower index).
    """
    g = np.asarray(g, dtype=np.float64)
    out = np.empty((g.shape[0], k), dtype=np.int64)
    for b, row in enumerate(g):
        pos = [j for j in np.argsort(-row, kind="stable") if row[j] > 0]
        neg = [j for j in np.argsort(row, kind="stable") if row[j] < 0]
        zeros = [j for j in range(len(row)) if row[j] == 0]
        k_pos = min(k // 2, len(pos))
        k_neg = min(k - k_pos, len(neg))
        k_pos = min(k - k_neg, len(pos))
        chosen = pos[:k_pos] + neg[:k_neg]
        out[b] = chosen + zeros[:k - len(chosen)]
    return out


def error_feedback_reference(x, W, grads, k, beta, select, score_memory=0.0):
    """Backward of a linear layer with error feedback over a sequence of output gradients.

    Per step: ``g2 = g + beta * memory`` on the non-zero entries of g, keep
    ``select(g2, k)`` (a (B, k) or (k,) index array), back-propagate the
    kept entries of g2, then ``memory = mean over the batch of g2 outside
    the selection``. With `score_memory` (gamma) the selection is unified
    instead: the k columns with the largest ``sum_b |g2| + carried``, after
    which ``carried = gamma * (sum_b |g2| + carried)`` on the dropped
    columns and 0 on the kept ones. Returns a list of float64 ``(dx, dW,
    db)``; db is the plain column sum of g.
    """
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    memory = np.zeros(W.shape[0])
    carried = np.zeros(W.shape[0])
    out = []
    for g in grads:
        g = np.asarray(g, dtype=np.float64)
        g2 = np.where(g != 0, g + beta * memory, 0.0)
        if score_memory:
            scores = np.abs(g2).sum(axis=0) + carried
            cols = np.argsort(-scores, kind="stable")[:k]
            carried = score_memory * scores
            carried[cols] = 0.0
            mask = selection_mask(g2.shape, cols)
        else:
            mask = selection_mask(g2.shape, select(g2, k))
        kept = np.where(mask, g2, 0.0)
        out.append((kept @ W, kept.T @ x, g.sum(axis=0)))
        memory = np.where(mask, 0.0, g2).mean(axis=0)
    return out
