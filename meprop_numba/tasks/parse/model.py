"""The parser's network: three embedding tables, one meProp hidden layer, a dense output."""
import numpy as np

from ..._cpu.embedding import sum_rows_of_ids
from ...nn import Cube, Dropout, Embedding, Linear, Module, ReLU
from .transitions import N_SLOTS
from ._transitions import N_LABEL_SLOTS, N_WORD_SLOTS

__all__ = ["ACTIVATIONS", "ParserModel"]

ACTIVATIONS = {"cube": Cube, "relu": ReLU}

#: Batches of at least this many configurations take the tag and label
#: slots' part of the hidden layer from per-slot tables (see
#: :meth:`ParserModel._hidden_scores`); below it the tables cost more than
#: they save.
PRECOMPUTE_MIN_BATCH = 200


class ParserModel(Module):
    """Chen and Manning's (2014) feed-forward parser with a meProp hidden layer.

    The 18 word, 18 POS and 12 label ids of a configuration are embedded
    (``dim`` each), concatenated (``48 dim`` inputs), passed through one
    hidden :class:`~meprop_numba.nn.Linear` of `hidden` units whose backward
    keeps `k` entries per example (the package's sparse kernel), the
    activation, optional dropout, and a dense output layer over the
    ``2 L + 1`` transitions.

    Parameters
    ----------
    n_words, n_pos, n_labels : int
        Sizes of the word, POS and label tables (the label table has
        ``L + 1`` rows: NULL and the L relations).
    n_transitions : int
        Output classes, ``2 L + 1``.
    dim : int, default 50
        Embedding size.
    hidden : int, default 500
        Hidden units.
    k : int or None, default 20
        meProp k of the hidden layer; None or `hidden` is dense.
    selection : {'topk', 'unified', 'random'}, default 'topk'
    activation : {'cube', 'relu'}, default 'cube'
    dropout : float, default 0.0
        Dropout on the hidden activations.
    error_feedback : float, default 0.0
        Error-feedback decay of the meProp hidden layer
        (:class:`~meprop_numba.nn.Linear`'s `error_feedback`; unused when dense).
    dtype : {numpy.float32, numpy.float64}, default float32
    rng : numpy.random.Generator or int, optional
        Source of the initial weights, dropout masks and random-k
        selections (kept as ``model.rng``).

    Raises
    ------
    ValueError
        If `activation` is unknown, or a layer rejects its size, `k` or
        `selection` (``k > hidden`` included).

    Notes
    -----
    For batches of at least ``PRECOMPUTE_MIN_BATCH`` configurations the
    forward pass takes the 30 tag and label slots' share of the hidden
    layer from per-slot tables of the current weights (exact up to
    rounding) and multiplies only the 18 word slots.

    Examples
    --------
    >>> import numpy as np
    >>> m = ParserModel(10, 6, 4, 7, dim=4, hidden=16, k=3, rng=0)
    >>> feats = np.zeros((5, 48), dtype=np.int32)
    >>> m.forward(feats, train=True).shape
    (5, 7)
    >>> m.backward(np.ones((5, 7), dtype=np.float32)) is None
    True
    """

    def __init__(self, n_words, n_pos, n_labels, n_transitions, *, dim=50, hidden=500, k=20,
                 selection="topk", activation="cube", dropout=0.0, error_feedback=0.0,
                 dtype=np.float32, rng=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if k is not None and int(k) > int(hidden):
            raise ValueError(f"k must be at most hidden={hidden}, got {k}")
        self.rng = np.random.default_rng(rng)
        self.word_embedding = Embedding(n_words, dim, dtype=dtype, rng=self.rng)
        self.pos_embedding = Embedding(n_pos, dim, dtype=dtype, rng=self.rng)
        self.label_embedding = Embedding(n_labels, dim, dtype=dtype, rng=self.rng)
        self.hidden = Linear(N_SLOTS * dim, hidden, k, selection, dtype=dtype, rng=self.rng,
                             error_feedback=error_feedback if k is not None else 0.0)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = Dropout(dropout, rng=self.rng)
        self.output = Linear(hidden, n_transitions, None, dtype=dtype, rng=self.rng)
        self.activation_name, self.dim = activation, dim

    @property
    def layers(self):
        """The layers in forward order (tables, hidden, activation, dropout, output)."""
        return [self.word_embedding, self.pos_embedding, self.label_embedding, self.hidden,
                self.activation, self.dropout, self.output]

    def forward(self, features, train=False):
        """Transition scores of a batch of configurations.

        Parameters
        ----------
        features : array_like of int, shape (B, 48)
            Feature ids (word, POS, label slots).
        train : bool, default False
            Keep what :meth:`backward` needs (dropout on).

        Returns
        -------
        numpy.ndarray, shape (B, n_transitions)
            The output layer's scores (logits).

        Raises
        ------
        ValueError
            If `features` is not ``(B, 48)``.
        IndexError
            If an id is outside its table.
        """
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != N_SLOTS:
            raise ValueError(f"features must have shape (B, {N_SLOTS}), got {features.shape}")
        B = features.shape[0]
        w, p = N_WORD_SLOTS, 2 * N_WORD_SLOTS
        x = np.concatenate([
            self.word_embedding.forward(features[:, :w], train).reshape(B, -1),
            self.pos_embedding.forward(features[:, w:p], train).reshape(B, -1),
            self.label_embedding.forward(features[:, p:], train).reshape(B, -1)], axis=1)
        if B >= PRECOMPUTE_MIN_BATCH and type(self.hidden.weight) is np.ndarray:
            z = self._hidden_scores(features, x)
            if train:
                self.hidden._x = x  # what hidden.forward(x, train=True) keeps for its backward
        else:
            z = self.hidden.forward(x, train)
        h = self.activation.forward(z, train)
        return self.output.forward(self.dropout.forward(h, train), train)

    def _hidden_scores(self, features, x):
        """``x @ W.T + b`` of the hidden layer, the tag and label slots through per-slot tables.

        A tag (label) slot s contributes ``W_s e`` for the embedding e of its
        id, where ``W_s`` is the weight's block of columns for that slot.
        There are few tags and labels, so ``T_s = E W_s.T`` for every id costs
        ``(18 n_pos + 12 n_labels) dim n`` multiply-adds, against
        ``30 B dim n`` for those slots in the product; each example then adds
        30 rows of the tables. The word slots stay one product. Chen and
        Manning (2014) precompute the same products for frequent words at
        parsing time; here the tables are rebuilt from the current weights
        at every call, so training sees the same scores (up to rounding).
        """
        W, d = self.hidden.weight, self.dim
        n, w = W.shape[0], N_WORD_SLOTS * d
        ids = []
        tables = []
        for emb, first, count in ((self.pos_embedding, N_WORD_SLOTS, N_WORD_SLOTS),
                                  (self.label_embedding, 2 * N_WORD_SLOTS, N_LABEL_SLOTS)):
            E = emb.weight
            start = first * d
            blocks = W[:, start:start + count * d].reshape(n, count, d).transpose(1, 2, 0)
            tables.append((E @ blocks).reshape(count * E.shape[0], n))  # row s V + v: slot s, id v
            ids.append(features[:, first:first + count].astype(np.int64)
                       + np.arange(count, dtype=np.int64) * E.shape[0])
        table = np.concatenate(tables, axis=0)
        ids[1] = ids[1] + tables[0].shape[0]
        z = sum_rows_of_ids(table, np.concatenate(ids, axis=1))
        z += (W[:, :w] @ x[:, :w].T).T
        z += self.hidden.bias
        return z

    def backward(self, grad_out):
        """Back-propagate to every table and layer; store the gradients for :meth:`grads`.

        Parameters
        ----------
        grad_out : numpy.ndarray, shape (B, n_transitions)
            Gradient of the loss with respect to the last training forward's output.

        Returns
        -------
        None
            The ids have no gradient.
        """
        g = self.dropout.backward(self.output.backward(grad_out))
        dx = self.hidden.backward(self.activation.backward(g))
        B, d = dx.shape[0], self.dim
        w, p = N_WORD_SLOTS * d, 2 * N_WORD_SLOTS * d
        self.word_embedding.backward(dx[:, :w].reshape(B, N_WORD_SLOTS, d))
        self.pos_embedding.backward(dx[:, w:p].reshape(B, N_WORD_SLOTS, d))
        self.label_embedding.backward(dx[:, p:].reshape(B, N_LABEL_SLOTS, d))
        return None

    def prunable_units(self):
        """The hidden layer's neurons, for model simplification (:mod:`meprop_numba.simplify`).

        Returns
        -------
        list of meprop_numba.simplify.LinearUnits
            The hidden layer, read by the output layer through the
            element-wise activation and dropout.
        """
        from ...simplify import LinearUnits

        return [LinearUnits(self.hidden, self.output)]

    def params(self):
        """The parameter arrays, in a fixed order.

        Returns
        -------
        list of numpy.ndarray
            Word, POS and label tables, hidden weight and bias, output
            weight and bias; updated in place by the optimizers.
        """
        return [q for layer in self.layers for q in layer.params()]

    def grads(self):
        """Gradients of the last :meth:`backward`.

        Returns
        -------
        list
            Aligned with :meth:`params`: RowSparse for the tables and the
            hidden weight, dense arrays for the biases and output weight.
        """
        return [g for layer in self.layers for g in layer.grads()]

    def parameters(self):
        """The parameter arrays (same as :meth:`params`).

        Returns
        -------
        list of numpy.ndarray
            The arrays of :meth:`params`.
        """
        return self.params()

    def _named(self):
        names = ("word_embedding", "pos_embedding", "label_embedding", "hidden", "output")
        out = {}
        for name in names:
            layer = getattr(self, name)
            for pname, value in zip(("weight", "bias"), layer.params()):
                out[f"{name}.{pname}"] = value
        return out

    def state_dict(self):
        """Name -> copy of each parameter.

        Returns
        -------
        dict
            ``"word_embedding.weight"``, ..., ``"hidden.weight"``,
            ``"hidden.bias"``, ``"output.weight"``, ``"output.bias"``.
        """
        return {name: value.copy() for name, value in self._named().items()}

    def load_state_dict(self, state):
        """Copy `state` into the parameters in place; checks every entry before changing any.

        Parameters
        ----------
        state : dict
            Name -> array, as :meth:`state_dict` returns.

        Raises
        ------
        KeyError
            If a name is missing or unknown.
        ValueError
            If an array has the wrong shape.
        TypeError
            If an array has the wrong dtype.
        """
        named = self._named()
        if set(state) != set(named):
            raise KeyError(f"state_dict names differ: missing {sorted(set(named) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(named))}")
        arrays = {}
        for name, target in named.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{name}: shape {value.shape}, expected {target.shape}")
            if value.dtype != target.dtype:
                raise TypeError(f"{name}: dtype {value.dtype}, expected {target.dtype}")
            arrays[name] = value
        for name, target in named.items():
            target[...] = arrays[name]

    def __repr__(self):
        return (f"ParserModel(words={self.word_embedding.num_embeddings}, "
                f"pos={self.pos_embedding.num_embeddings}, "
                f"labels={self.label_embedding.num_embeddings}, dim={self.dim}, "
                f"{self.hidden!r}, {self.activation!r}, {self.output!r})")
