"""Model simplification (meSimp): remove the hidden neurons meProp rarely keeps.

meProp's back propagation keeps, per example, the k output-gradient entries
of largest magnitude. A hidden neuron that is kept for few examples learns
little; meSimp (Sun et al., arXiv 1711.06528) counts, per hidden neuron,
the examples that kept it, and at every prune removes the neurons kept by
fewer than a fraction `p` of the examples seen since the previous prune.
Removal is permanent and the counts restart after each prune.

Here removal is physical: the neuron's row of its layer's weight and bias
and its column of the next layer's weight are deleted, together with the
optimizer state of those entries (:meth:`meprop_numba.Adam.shrink`), so the
forward and backward passes that follow run on smaller matrices. A shrunk
:class:`~meprop_numba.nn.MLP` has per-layer widths (``model.hidden_sizes``)
and its ``state_dict()`` holds the smaller arrays. A checkpoint records
those widths (:meth:`Simplifier.state_dict` holds them, with the counts
since the last prune); a model is rebuilt from it by building it as
configured, :func:`shrink_to` the recorded widths, then
``load_state_dict``. A layer left with k or fewer neurons back-propagates
densely (its k becomes None), which :func:`shrink_to` reproduces.

The LSTM counts its selections too
(:meth:`meprop_numba.nn.LSTM.count_selections`); removing LSTM units is
not implemented yet (the layer keeps one width for every layer and
direction).

Examples
--------
>>> import numpy as np
>>> import meprop_numba as mp
>>> from meprop_numba.nn import MLP, softmax_cross_entropy
>>> from meprop_numba.simplify import Simplifier
>>> rng = np.random.default_rng(0)
>>> x, y = rng.random((64, 20), dtype=np.float32), rng.integers(0, 3, 64)
>>> model = MLP(20, 50, 3, k=5, rng=0)
>>> opt = mp.Adam(model.parameters())
>>> simplifier = Simplifier(model, opt, p=0.1)
>>> for _ in range(3):
...     _, grad = softmax_cross_entropy(model.forward(x, train=True), y)
...     _ = model.backward(grad)
...     opt.step(model.grads())
>>> removed = simplifier.prune()
>>> model.hidden_sizes == [50 - len(r) for r in removed]
True
>>> model.forward(x).shape
(64, 3)
"""
import numbers

import numpy as np

from ._validation import integer_k, kept_indices, unit_interval
from .nn.layers import Dropout, Linear, ReLU, Sequential

__all__ = ["PruneSchedule", "Simplifier", "prunable_layers", "remove_neurons", "shrink_to"]

#: Modules that act entry by entry, so a removed neuron's output is removed with it.
_ELEMENTWISE = (ReLU, Dropout)


def prunable_layers(model):
    """The pairs of linear layers of `model` whose hidden neurons can be removed.

    Parameters
    ----------
    model : meprop_numba.nn.Sequential
        For example an :class:`~meprop_numba.nn.MLP`.

    Returns
    -------
    list of (Linear, Linear)
        Each :class:`~meprop_numba.nn.Linear` layer followed, through
        element-wise modules only (ReLU, Dropout), by another one: its
        output neurons feed only the next layer's input columns. The last
        linear layer (the model's output) is never in the list.

    Raises
    ------
    TypeError
        If `model` is not a :class:`~meprop_numba.nn.Sequential`.

    Examples
    --------
    >>> from meprop_numba.nn import MLP
    >>> from meprop_numba.simplify import prunable_layers
    >>> [(a.out_features, b.in_features) for a, b in prunable_layers(MLP(8, 6, 2, rng=0))]
    [(6, 6), (6, 6)]
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a meprop_numba.nn.Sequential (such as an MLP), "
                        f"got {type(model).__name__}")
    pairs = []
    previous = None
    for layer in model.layers:
        if isinstance(layer, Linear):
            if previous is not None:
                pairs.append((previous, layer))
            previous = layer
        elif not isinstance(layer, _ELEMENTWISE):
            previous = None  # a module that mixes features: neurons before it cannot be removed
    return pairs


def remove_neurons(model, keeps, optimizer=None):
    """Keep only the given hidden neurons of `model`, physically: all layers, or none.

    For each prunable layer (:func:`prunable_layers`) the rows of its
    weight and bias and the columns of the next layer's weight outside
    `keep` are removed, and so is the optimizer state of those entries
    (:meth:`meprop_numba.Adam.shrink`). The model's arrays are replaced by
    the smaller ones (the one place where a module's parameters are
    rebound; the optimizer is told in the same call). A layer whose k is
    no longer below its width back-propagates densely from then on
    (``k=None``, exactly what keeping every entry means).

    Parameters
    ----------
    model : meprop_numba.nn.Sequential
        The model (an :class:`~meprop_numba.nn.MLP`).
    keeps : sequence of array_like of int
        Per prunable layer, the strictly increasing indices of the neurons
        that stay (at least one).
    optimizer : meprop_numba.optim.Optimizer, optional
        The optimizer over ``model.parameters()``, shrunk alongside.

    Returns
    -------
    None
        The model (and optimizer) hold the smaller arrays.

    Raises
    ------
    TypeError
        If `model` is not a Sequential or a `keep` is not integer.
    ValueError
        If `keeps` does not hold one entry per prunable layer, an entry is
        empty, not increasing or out of range, or the optimizer does not
        hold the model's parameters. Nothing changes then.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import MLP
    >>> from meprop_numba.simplify import remove_neurons
    >>> model = MLP(6, 8, 2, k=4, rng=0)
    >>> remove_neurons(model, [[0, 2, 5], np.arange(8)])
    >>> model.hidden_sizes, model.linear_layers[0].k, model.linear_layers[1].weight.shape
    ([3, 8], None, (8, 3))
    """
    pairs = prunable_layers(model)
    keeps = list(keeps)
    if len(keeps) != len(pairs):
        raise ValueError(f"keeps must give one index array per prunable layer "
                         f"({len(pairs)}), got {len(keeps)}")
    keeps = [kept_indices(keep, layer.out_features, f"keeps[{i}]")
             for i, ((layer, _), keep) in enumerate(zip(pairs, keeps))]
    cuts, targets = [], []
    for (layer, reader), keep in zip(pairs, keeps):
        if keep.size == layer.out_features:
            continue  # everything stays: leave the arrays (and training) untouched
        cuts += [(layer.weight, keep, 0), (layer.bias, keep, 0), (reader.weight, keep, 1)]
        targets += [(layer, "weight"), (layer, "bias"), (reader, "weight")]
    if not cuts:
        return
    arrays = optimizer.shrink(cuts) if optimizer is not None else _shrink_arrays(cuts)
    for (module, name), array in zip(targets, arrays):
        setattr(module, name, array)
    for layer, reader in pairs:
        for module in (layer, reader):
            module._x, module._grads = None, [None, None]
        if layer.k is not None and layer.k >= layer.out_features:
            layer.k = None


def shrink_to(model, hidden_sizes):
    """Shrink a freshly built model to the widths a simplified model was saved with.

    A checkpoint of a simplified model records its ``hidden_sizes``;
    rebuilding it is: build the model as configured, ``shrink_to`` those
    widths (keeping the first neurons of each layer: their values are
    overwritten next), then ``load_state_dict``.

    Parameters
    ----------
    model : meprop_numba.nn.Sequential
        The model as built from its config.
    hidden_sizes : sequence of int
        The width of each prunable layer, each in ``[1, current width]``.

    Returns
    -------
    None
        The model has the given widths.

    Raises
    ------
    ValueError
        If `hidden_sizes` does not give one width in range per prunable layer.

    Examples
    --------
    >>> from meprop_numba.nn import MLP
    >>> from meprop_numba.simplify import shrink_to
    >>> model = MLP(6, 8, 2, k=4, rng=0)
    >>> shrink_to(model, [5, 3])
    >>> [(name, p.shape) for name, p in model.named_parameters()][2:4]
    [('2.weight', (3, 5)), ('2.bias', (3,))]
    """
    pairs = prunable_layers(model)
    sizes = list(hidden_sizes)
    if len(sizes) != len(pairs):
        raise ValueError(f"hidden_sizes must give one width per prunable layer ({len(pairs)}), "
                         f"got {len(sizes)}")
    keeps = [np.arange(integer_k(n, layer.out_features, f"hidden_sizes[{i}]"))
             for i, (n, (layer, _)) in enumerate(zip(sizes, pairs))]
    remove_neurons(model, keeps)


class PruneSchedule:
    """When to prune: the schedule of the meSimp authors' released code.

    Training runs in cycles of `epochs_per_cycle` epochs; each epoch is
    split into `parts_per_epoch` parts of (about) equal numbers of
    minibatches. In even cycles (0, 2, ...; epochs 0-4, 10-14, ... by
    default) a prune follows every part; in odd cycles training goes on
    (meProp still on) without pruning, so the smaller model recovers.

    Parameters
    ----------
    epochs_per_cycle : int, optional
        Epochs per cycle (default 5).
    parts_per_epoch : int, optional
        Prunes per epoch in a pruning cycle (default 8).

    Raises
    ------
    TypeError, ValueError
        If an argument is not a positive integer.

    Examples
    --------
    >>> from meprop_numba.simplify import PruneSchedule
    >>> schedule = PruneSchedule()
    >>> [b for b in range(16) if schedule.prunes_after(0, b, 16)]
    [1, 3, 5, 7, 9, 11, 13, 15]
    >>> any(schedule.prunes_after(5, b, 16) for b in range(16))
    False
    """

    def __init__(self, epochs_per_cycle=5, parts_per_epoch=8):
        big = np.iinfo(np.int64).max
        self.epochs_per_cycle = integer_k(epochs_per_cycle, big, "epochs_per_cycle")
        self.parts_per_epoch = integer_k(parts_per_epoch, big, "parts_per_epoch")

    def prunes_after(self, epoch, batch, batches_per_epoch):
        """Whether a prune follows minibatch `batch` of epoch `epoch` (both from 0).

        Parameters
        ----------
        epoch : int
            Epoch index, from 0.
        batch : int
            Minibatch index within the epoch, in ``[0, batches_per_epoch)``.
        batches_per_epoch : int
            Minibatches per epoch.

        Returns
        -------
        bool
            True in a pruning cycle when `batch` ends one of the epoch's
            parts (the last minibatch always does).

        Raises
        ------
        ValueError
            If `epoch` is negative or `batch` is outside its range.
        """
        n = integer_k(batches_per_epoch, np.iinfo(np.int64).max, "batches_per_epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or not 0 <= batch < n:
            raise ValueError(f"batch must be an integer in [0, {n}), got {batch!r}")
        if (epoch // self.epochs_per_cycle) % 2:
            return False
        parts = self.parts_per_epoch
        return (batch + 1) * parts // n > batch * parts // n

    def __repr__(self):
        return (f"PruneSchedule(epochs_per_cycle={self.epochs_per_cycle}, "
                f"parts_per_epoch={self.parts_per_epoch})")


class Simplifier:
    """Count meProp's selections in a model's hidden layers and remove rarely kept neurons.

    Building it starts counting in every prunable layer (see
    :func:`prunable_layers` and :meth:`meprop_numba.nn.Linear.count_selections`);
    training then goes on as usual, and each :meth:`prune` removes, per
    layer, the neurons kept by fewer than a fraction `p` of the examples
    back-propagated since the previous prune, shrinking the model's
    arrays and the optimizer's state with them, and restarts the counts.
    The optimizer state of the surviving entries is kept as it was (the
    meSimp authors' code also resets it at cycle ends; this does not).

    Parameters
    ----------
    model : meprop_numba.nn.Sequential
        The model (an :class:`~meprop_numba.nn.MLP`); its arrays are
        replaced by smaller ones at a prune that removes something.
    optimizer : meprop_numba.optim.Optimizer, optional
        The optimizer built on ``model.parameters()``; its parameters and
        state shrink with the model's. None: the model alone (inference).
    p : float, optional
        Fraction in ``[0, 1)`` (default 0.1). 0 removes nothing.
    min_size : int, optional
        Neurons a layer keeps at least (default 1): when fewer pass the
        threshold, the most often kept ones stay.
    schedule : PruneSchedule or None, optional
        Used by :meth:`after_step`; default ``PruneSchedule()``.

    Attributes
    ----------
    pairs : list of (Linear, Linear)
        The prunable layers and the layers reading their outputs.
    removed : int
        Neurons removed so far, all layers together.

    Raises
    ------
    TypeError
        If `model` is not a Sequential, or `schedule` not a PruneSchedule.
    ValueError
        If `model` has no prunable layer, or `p` or `min_size` is out of
        range.

    Examples
    --------
    >>> import numpy as np
    >>> from meprop_numba.nn import MLP
    >>> from meprop_numba.simplify import Simplifier
    >>> model = MLP(6, 8, 2, k=2, rng=0)
    >>> simplifier = Simplifier(model, p=0.25)
    >>> _ = model.forward(np.ones((4, 6), dtype=np.float32), train=True)
    >>> _ = model.backward(np.ones((4, 2), dtype=np.float32))
    >>> removed = simplifier.prune()     # kept by fewer than 1 of the 4 examples: gone
    >>> model.hidden_sizes == [8 - len(r) for r in removed], simplifier.removed > 0
    (True, True)
    """

    def __init__(self, model, optimizer=None, p=0.1, *, min_size=1, schedule=None):
        pairs = prunable_layers(model)
        if not pairs:
            raise ValueError("model has no hidden linear layer to simplify")
        self.p = unit_interval(p, "p")
        self.min_size = integer_k(min_size, np.iinfo(np.int64).max, "min_size")
        if schedule is None:
            schedule = PruneSchedule()
        if not isinstance(schedule, PruneSchedule):
            raise TypeError(f"schedule must be a PruneSchedule, got {type(schedule).__name__}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.pairs = pairs
        self.removed = 0
        for layer, _ in pairs:
            layer.count_selections()

    @property
    def hidden_sizes(self):
        """Current width of each prunable layer."""
        return [layer.out_features for layer, _ in self.pairs]

    def survivors(self):
        """The neurons each layer would keep if :meth:`prune` ran now.

        Returns
        -------
        list of ndarray of int64
            Per prunable layer, the increasing indices of the neurons kept
            by at least ``p * counted_examples`` examples (at least
            `min_size` of them; every neuron when nothing was counted).
        """
        keeps = []
        for layer, _ in self.pairs:
            counts, seen = layer.selection_counts, layer.counted_examples
            n = layer.out_features
            if counts is None or counts.shape != (n,) or seen == 0:
                keeps.append(np.arange(n, dtype=np.int64))
                continue
            keep = np.flatnonzero(counts >= self.p * seen)
            if keep.size < min(self.min_size, n):
                keep = np.sort(np.argsort(-counts, kind="stable")[:min(self.min_size, n)])
            keeps.append(keep.astype(np.int64))
        return keeps

    def prune(self):
        """Remove the rarely kept neurons (see the class) and restart the counts.

        Returns
        -------
        list of ndarray of int64
            Per prunable layer, the indices (before this prune) of the
            neurons removed; empty arrays when nothing was.

        Raises
        ------
        ValueError
            From :meth:`meprop_numba.Adam.shrink` if the optimizer does
            not hold the model's parameters; nothing changes then.
        """
        keeps = self.survivors()
        removed = [np.setdiff1d(np.arange(layer.out_features), keep)
                   for (layer, _), keep in zip(self.pairs, keeps)]
        self.remove(keeps)
        for layer, _ in self.pairs:
            layer.count_selections()
        return removed

    def remove(self, keeps):
        """Keep only the given neurons of each prunable layer (:func:`remove_neurons`).

        Parameters
        ----------
        keeps : sequence of array_like of int
            Per prunable layer (in the order of :attr:`pairs`), the strictly
            increasing indices of the neurons that stay.

        Raises
        ------
        ValueError
            As :func:`remove_neurons`; nothing changes then.
        """
        before = sum(self.hidden_sizes)
        remove_neurons(self.model, keeps, self.optimizer)
        self.removed += before - sum(self.hidden_sizes)

    def after_step(self, epoch, batch, batches_per_epoch):
        """Prune when the schedule says so after minibatch `batch` of `epoch`.

        Parameters
        ----------
        epoch : int
            Epoch index, from 0.
        batch : int
            Minibatch index within the epoch, from 0.
        batches_per_epoch : int
            Minibatches per epoch.

        Returns
        -------
        list of ndarray or None
            What :meth:`prune` returned, or None when no prune was due.
        """
        if self.schedule.prunes_after(epoch, batch, batches_per_epoch):
            return self.prune()
        return None

    def state_dict(self):
        """The counts since the last prune, so a resumed run prunes identically.

        Returns
        -------
        dict
            ``{"hidden_sizes": [ints], "counts": [int64 arrays], "examples":
            [ints], "removed": int}``, lists per prunable layer; a checkpoint
            rebuilds the model with :func:`shrink_to` from ``hidden_sizes``.
        """
        return {"hidden_sizes": self.hidden_sizes,
                "counts": [np.array(layer.selection_counts, copy=True) for layer, _ in self.pairs],
                "examples": [int(layer.counted_examples) for layer, _ in self.pairs],
                "removed": int(self.removed)}

    def load_state_dict(self, state):
        """Restore counts saved by :meth:`state_dict` (after the model's own state).

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict` for a model of the same widths.

        Raises
        ------
        TypeError
            If `state` or an entry has the wrong type.
        ValueError
            If the number of layers or a count array's shape differs, or a
            count is negative; nothing changes then.
        """
        keys = {"hidden_sizes", "counts", "examples", "removed"}
        if not isinstance(state, dict) or set(state) != keys:
            raise TypeError(f"state must be a dict with the keys {sorted(keys)}")
        if list(state["hidden_sizes"]) != self.hidden_sizes:
            raise ValueError(f"state is for hidden sizes {list(state['hidden_sizes'])}, the model has "
                             f"{self.hidden_sizes}; shrink_to them first")
        counts, examples = list(state["counts"]), list(state["examples"])
        if len(counts) != len(self.pairs) or len(examples) != len(self.pairs):
            raise ValueError(f"state holds {len(counts)} layers, the model {len(self.pairs)}")
        checked = []
        for i, ((layer, _), c, e) in enumerate(zip(self.pairs, counts, examples)):
            c = np.asarray(c)
            if c.dtype.kind not in "iu":
                raise TypeError(f"state['counts'][{i}] must hold integers, got {c.dtype}")
            if c.shape != (layer.out_features,):
                raise ValueError(f"state['counts'][{i}] has shape {c.shape}, "
                                 f"the layer {layer.out_features} neurons")
            if isinstance(e, bool) or not isinstance(e, numbers.Integral) or e < 0 or (c < 0).any():
                raise ValueError(f"state layer {i}: counts and examples must be >= 0")
            checked.append((np.array(c, dtype=np.int64), int(e)))
        removed = state["removed"]
        if isinstance(removed, bool) or not isinstance(removed, numbers.Integral) or removed < 0:
            raise ValueError(f"state['removed'] must be a non-negative integer, got {removed!r}")
        for (layer, _), (c, e) in zip(self.pairs, checked):
            layer.selection_counts, layer.counted_examples = c, e
        self.removed = int(removed)

    def __repr__(self):
        return f"Simplifier(p={self.p}, hidden_sizes={self.hidden_sizes}, removed={self.removed})"


def _shrink_arrays(cuts):
    """The arrays of `cuts` after the cuts, without an optimizer (same rules as ``shrink``)."""
    current = {}
    for param, keep, axis in cuts:
        array = current.get(id(param), param)
        keep = kept_indices(keep, array.shape[axis])
        current[id(param)] = np.ascontiguousarray(np.take(array, keep, axis=axis))
    return [current[id(param)] for param, _, _ in cuts]
