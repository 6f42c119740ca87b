"""Model simplification (meSimp): remove the hidden neurons meProp rarely keeps.

meProp's back propagation keeps, per example, the k output-gradient entries
of largest magnitude. A hidden neuron that is kept for few examples learns
little; meSimp (Sun et al., arXiv 1711.06528) counts, per hidden neuron,
the examples that kept it (with a non-zero gradient entry), and at every
prune removes the neurons kept by fewer than a fraction `p` of the
examples seen since the previous prune.
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

Other models say which of their units can be removed by a
``prunable_units()`` method returning :class:`LinearUnits` /
:class:`LSTMUnits` (the POS tagger does): an LSTM unit is removed from its
four gates (rows of W_x, W_h and b), from W_h's columns and from the
input columns of what reads it (the next layer, or the output layer).

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
from .nn.lstm import LSTM

__all__ = ["LSTMUnits", "LinearUnits", "PruneSchedule", "Simplifier", "prunable_layers",
           "prunable_units", "remove_neurons", "shrink_to"]

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
    return _linear_pairs(model.layers, Linear, _ELEMENTWISE)


def _linear_pairs(modules, linear, elementwise):
    """Each `linear` module followed, through `elementwise` modules only, by another one."""
    pairs, previous = [], None
    for module in modules:
        if isinstance(module, linear):
            if previous is not None:
                pairs.append((previous, module))
            previous = module
        elif not isinstance(module, elementwise):
            previous = None  # a module that mixes features: neurons before it cannot be removed
    return pairs


class LinearUnits:
    """The output neurons of a :class:`~meprop_numba.nn.Linear` layer read by another one.

    One group of prunable units (see :func:`prunable_units`): removing
    neuron j deletes row j of ``layer.weight`` and ``layer.bias`` and
    column j of ``reader.weight``.

    Parameters
    ----------
    layer, reader : meprop_numba.nn.Linear
        The layer whose outputs are the units, and the layer whose inputs
        they are (through element-wise modules only).

    Raises
    ------
    TypeError
        If either is not a Linear.
    ValueError
        If the reader's inputs are not the layer's outputs.

    Examples
    --------
    >>> from meprop_numba.nn import Linear
    >>> from meprop_numba.simplify import LinearUnits
    >>> LinearUnits(Linear(3, 5, rng=0), Linear(5, 2, rng=0)).width
    5
    """

    def __init__(self, layer, reader):
        for name, value in (("layer", layer), ("reader", reader)):
            if not isinstance(value, Linear):
                raise TypeError(f"{name} must be a meprop_numba.nn.Linear, got {type(value).__name__}")
        if reader.in_features != layer.out_features:
            raise ValueError(f"reader has {reader.in_features} inputs, layer {layer.out_features} outputs")
        self.layer, self.reader = layer, reader

    @property
    def width(self):
        """Number of units."""
        return self.layer.out_features

    def _counts(self):
        """(counts per unit or None, examples counted) since counting started."""
        return self.layer.selection_counts, self.layer.counted_examples

    def _set_counts(self, counts, seen):
        """Restore counts saved from :meth:`counts`."""
        self.layer.selection_counts, self.layer.counted_examples = counts, seen

    def _start_counting(self):
        """Count from zero."""
        self.layer.count_selections()

    def _cuts(self, keep):
        """((module, attribute), axis, kept indices) of every array that loses entries."""
        return [((self.layer, "weight"), 0, keep), ((self.layer, "bias"), 0, keep),
                ((self.reader, "weight"), 1, keep)]

    def _finish(self):
        """After the arrays were replaced: drop caches; a layer left with k or fewer is dense."""
        for module in (self.layer, self.reader):
            module._x, module._grads = None, [None, None]
        if self.layer.k is not None and self.layer.k >= self.layer.out_features:
            self.layer.k = None


class LSTMUnits:
    """The hidden units of one layer and direction of an :class:`~meprop_numba.nn.LSTM`.

    Removing unit j deletes its four gate rows (i, f, g, o at j) of W_x,
    W_h and b, column j of W_h, and its input column in what reads the
    layer's output: every direction's W_x of the next layer, or, for the
    last layer, ``reader.weight``.

    Parameters
    ----------
    lstm : meprop_numba.nn.LSTM
        The LSTM holding the units.
    index : int
        Layer times directions plus direction (the order of
        ``lstm.parameters()``, three arrays each).
    reader : meprop_numba.nn.Linear or None
        What reads the last layer's output (its input columns follow the
        LSTM's output features); None makes the last layer not prunable.

    Raises
    ------
    TypeError, ValueError
        If `lstm` is not an LSTM, `index` is out of range, or the last
        layer has no `reader` of the LSTM's output size.

    Examples
    --------
    >>> from meprop_numba.nn import LSTM, Linear
    >>> from meprop_numba.simplify import LSTMUnits
    >>> lstm = LSTM(3, 4, bidirectional=True, rng=0)
    >>> [u.width for u in LSTMUnits.of(lstm, Linear(8, 2, rng=0))]
    [4, 4]
    """

    def __init__(self, lstm, index, reader=None):
        if not isinstance(lstm, LSTM):
            raise TypeError(f"lstm must be a meprop_numba.nn.LSTM, got {type(lstm).__name__}")
        n = lstm.num_layers * lstm.num_directions
        self.index = integer_k(index + 1, n, "index + 1") - 1
        self.layer, self.direction = divmod(self.index, lstm.num_directions)
        if self.layer == lstm.num_layers - 1:
            if not isinstance(reader, Linear) or reader.in_features != lstm.output_size:
                raise ValueError("the last LSTM layer's units need the Linear layer reading the "
                                 f"LSTM's {lstm.output_size} output features as reader")
        self.lstm, self.reader = lstm, reader

    @classmethod
    def of(cls, lstm, reader):
        """Every layer and direction of `lstm`, whose last layer `reader` reads.

        Parameters
        ----------
        lstm : meprop_numba.nn.LSTM
            The LSTM holding the units.
        reader : meprop_numba.nn.Linear
            The layer reading the LSTM's output.

        Returns
        -------
        list of LSTMUnits
            One per layer and direction, in the order of ``lstm.parameters()``.
        """
        return [cls(lstm, i, reader) for i in range(lstm.num_layers * lstm.num_directions)]

    @property
    def width(self):
        """Number of units."""
        return self.lstm.hidden_sizes[self.index]

    def _counts(self):
        """(counts per unit or None, valid steps counted) since counting started."""
        counts = self.lstm.selection_counts
        return (None if counts is None else counts[self.index]), self.lstm.counted_steps

    def _set_counts(self, counts, seen):
        """Restore counts saved from :meth:`counts` (the steps are shared by the layer)."""
        if self.lstm.selection_counts is None:
            self.lstm.count_selections()
        self.lstm.selection_counts[self.index] = counts
        self.lstm.counted_steps = seen

    def _start_counting(self):
        """Count from zero (every layer and direction of the LSTM)."""
        self.lstm.count_selections()

    def _cuts(self, keep):
        """((container, key), axis, kept indices) of every array that loses entries."""
        lstm, h = self.lstm, self.width
        params = lstm._params
        base = 3 * self.index
        rows = np.concatenate([gate * h + keep for gate in range(4)])
        cuts = [((params, base), 0, rows), ((params, base + 1), 0, rows),
                ((params, base + 1), 1, keep), ((params, base + 2), 0, rows)]
        # Input columns of the reader: this direction's block of the layer's output.
        sizes = lstm.hidden_sizes
        first = self.layer * lstm.num_directions
        offset = sum(sizes[first:self.index])
        total = sum(sizes[first:first + lstm.num_directions])
        columns = np.concatenate([np.arange(offset), offset + keep, np.arange(offset + h, total)])
        if self.layer + 1 < lstm.num_layers:
            following = 3 * (first + lstm.num_directions)
            cuts += [((params, following + 3 * d), 1, columns) for d in range(lstm.num_directions)]
        else:
            cuts.append(((self.reader, "weight"), 1, columns))
        return cuts

    def _finish(self):
        """After the arrays were replaced: drop caches and restart any counting."""
        self.lstm._replace_parameters({})
        if self.reader is not None:
            self.reader._x, self.reader._grads = None, [None, None]


def prunable_units(model):
    """The groups of hidden units of `model` that simplification may remove.

    Parameters
    ----------
    model : meprop_numba.nn.Module
        A :class:`~meprop_numba.nn.Sequential` (such as an MLP: one
        :class:`LinearUnits` per pair of :func:`prunable_layers`), or a
        model with a ``prunable_units()`` method (such as the POS tagger:
        :class:`LSTMUnits`).

    Returns
    -------
    list of LinearUnits or LSTMUnits
        The groups, in the order of ``hidden_sizes`` and of the keeps of
        :func:`remove_neurons`.

    Raises
    ------
    TypeError
        If `model` is neither.

    Examples
    --------
    >>> from meprop_numba.nn import MLP
    >>> from meprop_numba.simplify import prunable_units
    >>> [u.width for u in prunable_units(MLP(8, 6, 2, rng=0))]
    [6, 6]
    """
    if isinstance(model, Sequential):
        return [LinearUnits(a, b) for a, b in prunable_layers(model)]
    method = getattr(model, "prunable_units", None)
    if method is None:
        raise TypeError(f"model must be a meprop_numba.nn.Sequential or have a prunable_units() "
                        f"method, got {type(model).__name__}")
    return list(method())


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
    units = prunable_units(model)
    keeps = list(keeps)
    if len(keeps) != len(units):
        raise ValueError(f"keeps must give one index array per prunable layer "
                         f"({len(units)}), got {len(keeps)}")
    keeps = [kept_indices(keep, unit.width, f"keeps[{i}]")
             for i, (unit, keep) in enumerate(zip(units, keeps))]
    # Every array's kept entries per axis, in its current coordinates: an
    # array read by two groups (the next LSTM layer's inputs from both
    # directions) keeps what both keep.
    masks, locations = {}, {}
    for unit, keep in zip(units, keeps):
        if keep.size == unit.width:
            continue  # everything stays: leave the arrays (and training) untouched
        for location, axis, kept in unit._cuts(keep):
            array = _get(location)
            mask = masks.setdefault((id(array), axis), np.ones(array.shape[axis], dtype=bool))
            cut = np.zeros_like(mask)
            cut[kept] = True
            mask &= cut
            locations[id(array)] = location
    if not masks:
        return
    cuts = [(_get(locations[a]), np.flatnonzero(mask), axis) for (a, axis), mask in masks.items()]
    arrays = optimizer.shrink(cuts) if optimizer is not None else _shrink_arrays(cuts)
    new = {id(param): array for (param, _, _), array in zip(cuts, arrays)}
    for key, array in new.items():  # the last result of each array holds all its cuts
        _set(locations[key], array)
    for unit in units:
        unit._finish()


def _get(location):
    container, key = location
    return container[key] if isinstance(container, list) else getattr(container, key)


def _set(location, array):
    container, key = location
    if isinstance(container, list):
        container[key] = array
    else:
        setattr(container, key, array)


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
    units = prunable_units(model)
    sizes = list(hidden_sizes)
    if len(sizes) != len(units):
        raise ValueError(f"hidden_sizes must give one width per prunable layer ({len(units)}), "
                         f"got {len(sizes)}")
    keeps = [np.arange(integer_k(n, unit.width, f"hidden_sizes[{i}]"))
             for i, (n, unit) in enumerate(zip(sizes, units))]
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
    units : list of LinearUnits or LSTMUnits
        The groups of prunable units (:func:`prunable_units`).
    removed : int
        Neurons removed so far, all layers together.

    Raises
    ------
    TypeError
        If `model` has no prunable units (:func:`prunable_units`), or
        `schedule` is not a PruneSchedule.
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
        units = self._units_of(model)
        if not units:
            raise ValueError("model has no hidden linear layer to simplify")
        self.p = unit_interval(p, "p")
        self.min_size = integer_k(min_size, np.iinfo(np.int64).max, "min_size")
        if schedule is None:
            schedule = PruneSchedule()
        if not isinstance(schedule, PruneSchedule):
            raise TypeError(f"schedule must be a PruneSchedule, got {type(schedule).__name__}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.units = units
        self.removed = 0
        for unit in units:
            unit._start_counting()

    @property
    def hidden_sizes(self):
        """Current width of each prunable layer."""
        return [unit.width for unit in self.units]

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
        for unit in self.units:
            counts, seen = unit._counts()
            n = unit.width
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
        removed = [np.setdiff1d(np.arange(unit.width), keep)
                   for unit, keep in zip(self.units, keeps)]
        self.remove(keeps)
        for unit in self.units:
            unit._start_counting()
        return removed

    def remove(self, keeps):
        """Keep only the given neurons of each prunable layer (:func:`remove_neurons`).

        Parameters
        ----------
        keeps : sequence of array_like of int
            Per prunable layer (in the order of :attr:`units`), the strictly
            increasing indices of the neurons that stay.

        Returns
        -------
        None
            The model (and optimizer) hold the smaller arrays.

        Raises
        ------
        ValueError
            As :func:`remove_neurons`; nothing changes then.
        """
        before = sum(self.hidden_sizes)
        self._remove_neurons(self.model, keeps, self.optimizer)
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
                "counts": [np.array(unit._counts()[0], copy=True) for unit in self.units],
                "examples": [int(unit._counts()[1]) for unit in self.units],
                "removed": int(self.removed)}

    def load_state_dict(self, state):
        """Restore counts saved by :meth:`state_dict` (after the model's own state).

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict` for a model of the same widths.

        Returns
        -------
        None
            The counts (and removed total) are those of `state`.

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
        if len(counts) != len(self.units) or len(examples) != len(self.units):
            raise ValueError(f"state holds {len(counts)} layers, the model {len(self.units)}")
        checked = []
        for i, (unit, c, e) in enumerate(zip(self.units, counts, examples)):
            c = np.asarray(c)
            if c.dtype.kind not in "iu":
                raise TypeError(f"state['counts'][{i}] must hold integers, got {c.dtype}")
            if c.shape != (unit.width,):
                raise ValueError(f"state['counts'][{i}] has shape {c.shape}, "
                                 f"the layer {unit.width} neurons")
            if isinstance(e, bool) or not isinstance(e, numbers.Integral) or e < 0 or (c < 0).any():
                raise ValueError(f"state layer {i}: counts and examples must be >= 0")
            checked.append((np.array(c, dtype=np.int64), int(e)))
        removed = state["removed"]
        if isinstance(removed, bool) or not isinstance(removed, numbers.Integral) or removed < 0:
            raise ValueError(f"state['removed'] must be a non-negative integer, got {removed!r}")
        for unit, (c, e) in zip(self.units, checked):
            unit._set_counts(c, e)
        self.removed = int(removed)

    def __repr__(self):
        return f"Simplifier(p={self.p}, hidden_sizes={self.hidden_sizes}, removed={self.removed})"

    # The model family's units and removal (the PyTorch twin overrides both).
    _units_of = staticmethod(prunable_units)
    _remove_neurons = staticmethod(remove_neurons)


def _shrink_arrays(cuts):
    """The arrays of `cuts` after the cuts, without an optimizer (same rules as ``shrink``)."""
    current = {}
    for param, keep, axis in cuts:
        array = current.get(id(param), param)
        keep = kept_indices(keep, array.shape[axis])
        current[id(param)] = np.ascontiguousarray(np.take(array, keep, axis=axis))
    return [current[id(param)] for param, _, _ in cuts]
