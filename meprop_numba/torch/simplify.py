"""Model simplification (meSimp) for PyTorch stacks of :class:`~meprop_numba.torch.MePropLinear`.

The PyTorch twin of :mod:`meprop_numba.simplify`: a :class:`Simplifier`
counts, per hidden neuron, the examples whose back-propagated selection
kept a non-zero gradient entry of it (the selection the layer's sparse
backward makes anyway), and each prune removes the neurons kept by fewer
than a fraction `p` of the examples seen since the previous prune.
Removal is physical: the rows of the layer's weight and bias and the
columns of the next layer's weight are dropped, in the same
``Parameter`` objects (their ``.data`` becomes the smaller tensor, so an
optimizer built on ``model.parameters()`` keeps working), and so are the
entries of every optimizer state tensor shaped like its parameter (the
moments of :mod:`meprop_numba.torch.optim` and of ``torch.optim``). The
layers' ``in_features`` / ``out_features`` follow; a layer left with k or
fewer neurons back-propagates densely (``k=None``).

Prunable layers are those of a ``torch.nn.Sequential`` followed, through
element-wise modules only (ReLU, Dropout, Tanh, ...), by another
``nn.Linear``; the last linear layer (the output) never is. A hidden
``MePropLinear`` with k set counts in its backward (host tensors,
``sparse_grad=True``); a dense hidden layer (``k=None`` or a plain
``nn.Linear``) counts the non-zero entries of its output gradient.

Examples
--------
>>> import torch
>>> from meprop_numba.torch import convert, optim
>>> from meprop_numba.torch.simplify import Simplifier
>>> _ = torch.manual_seed(0)
>>> model = convert(torch.nn.Sequential(torch.nn.Linear(10, 40), torch.nn.ReLU(),
...                                     torch.nn.Linear(40, 3)), k=4)
>>> opt = optim.Adam(model.parameters())
>>> simplifier = Simplifier(model, opt, p=0.2)
>>> x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
>>> torch.nn.functional.cross_entropy(model(x), y).backward()
>>> opt.step()
>>> removed = simplifier.prune()
>>> model[0].out_features == model[2].in_features == 40 - len(removed[0]) < 40
True
>>> model[0].weight.shape == (model[0].out_features, 10)
True
"""
import numpy as np
import torch
from torch import nn

from .. import simplify as _numpy_simplify
from .._validation import integer_k, kept_indices
from ..nn.layers import add_selection_counts
from .linear import MePropLinear, selection_counters

__all__ = ["Simplifier", "prunable_layers", "remove_neurons", "shrink_to"]

#: Modules that act entry by entry, so a removed neuron's output is removed with it.
_ELEMENTWISE = (nn.ReLU, nn.Dropout, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU,
                nn.Identity)


def prunable_layers(model):
    """The pairs of linear layers of a ``torch.nn.Sequential`` whose hidden neurons can be removed.

    Parameters
    ----------
    model : torch.nn.Sequential
        A stack of ``nn.Linear`` / :class:`~meprop_numba.torch.MePropLinear`
        layers and element-wise modules.

    Returns
    -------
    list of (torch.nn.Linear, torch.nn.Linear)
        Each linear layer followed, through element-wise modules only, by
        another one; the last linear layer is never in the list.

    Raises
    ------
    TypeError
        If `model` is not a ``torch.nn.Sequential``.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch.simplify import prunable_layers
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> [(a.out_features, b.in_features) for a, b in prunable_layers(model)]
    [(6, 6)]
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    return _numpy_simplify._linear_pairs(model, nn.Linear, _ELEMENTWISE)


class _Units:
    """The output neurons of a hidden torch linear layer: counts and hooks (see the module)."""

    def __init__(self, layer, reader):
        if isinstance(layer, MePropLinear) and layer.k is not None and not layer.sparse_grad:
            raise ValueError("counting needs MePropLinear layers with sparse_grad=True (the dense-gradient "
                             "path runs as a custom op that does not report its selection)")
        self.layer, self.reader = layer, reader
        self.counts, self.seen = None, 0
        self._hook = None

    @property
    def width(self):
        return self.layer.out_features

    def _counts(self):
        return self.counts, self.seen

    def _set_counts(self, counts, seen):
        self.counts, self.seen = counts, seen

    def _start_counting(self):
        self.counts, self.seen = np.zeros(self.width, dtype=np.int64), 0
        if self._hook is None:
            selection_counters[id(self.layer.weight)] = (self.layer.weight, self._add)
            self._hook = self.layer.register_forward_hook(self._dense_hook)

    def stop(self):
        """Stop counting: remove the hooks."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            selection_counters.pop(id(self.layer.weight), None)
        self.counts, self.seen = None, 0

    def _add(self, kept, g):
        if self.counts is None or self.counts.shape != (self.width,):
            self.counts, self.seen = np.zeros(self.width, dtype=np.int64), 0
        add_selection_counts(self.counts, kept, g)
        self.seen += g.shape[0]

    def _dense_hook(self, module, inputs, output):
        # A meProp layer reports its selection from its backward; a dense one is counted here.
        sparse = isinstance(module, MePropLinear) and module.k is not None
        if sparse or not (module.training and output.requires_grad):
            return
        output.register_hook(self._add_dense)

    def _add_dense(self, grad):
        g = grad.detach().reshape(-1, self.width)
        if g.device.type != "cpu":
            raise TypeError("counting selections needs CPU tensors")
        self._add(None, g.numpy())


def remove_neurons(model, keeps, optimizer=None):
    """Keep only the given hidden neurons of a torch `model`, physically: all layers, or none.

    For each prunable layer (:func:`prunable_layers`) the rows of its
    weight and bias and the columns of the next layer's weight outside
    `keep` are removed, in the same ``Parameter`` objects, and so are the
    entries of every state tensor of `optimizer` shaped like its parameter;
    ``in_features`` / ``out_features`` follow, gradients are cleared, and a
    MePropLinear left with k or fewer neurons becomes dense (``k=None``).

    Parameters
    ----------
    model : torch.nn.Sequential
        The model.
    keeps : sequence of array_like of int
        Per prunable layer, the strictly increasing indices of the neurons
        that stay (at least one).
    optimizer : torch.optim.Optimizer, optional
        The optimizer over the model's parameters; its state shrinks alongside.

    Returns
    -------
    torch.nn.Sequential
        `model` itself, shrunk.

    Raises
    ------
    TypeError
        If `model` is not a Sequential or a `keep` is not integer.
    ValueError
        If `keeps` does not hold one entry per prunable layer or an entry
        is empty, not increasing or out of range; nothing changes then.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch.simplify import remove_neurons
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> remove_neurons(model, [[0, 2, 5]])[0].weight.shape, model[2].weight.shape
    (torch.Size([3, 4]), torch.Size([2, 3]))
    """
    pairs = prunable_layers(model)
    keeps = list(keeps)
    if len(keeps) != len(pairs):
        raise ValueError(f"keeps must give one index array per prunable layer ({len(pairs)}), got {len(keeps)}")
    keeps = [kept_indices(keep, layer.out_features, f"keeps[{i}]")
             for i, ((layer, _), keep) in enumerate(zip(pairs, keeps))]
    state = {} if optimizer is None else optimizer.state
    # Plan every cut on the current tensors first, then swap them in: all or nothing.
    new = {}   # id(param) -> (param, tensor, {state name: tensor})
    for (layer, reader), keep in zip(pairs, keeps):
        if keep.size == layer.out_features:
            continue
        index = torch.from_numpy(keep).to(layer.weight.device)
        cuts = [(layer.weight, 0), (reader.weight, 1)]
        if layer.bias is not None:
            cuts.append((layer.bias, 0))
        for param, axis in cuts:
            _, current, moments = new.get(id(param), (param, param.data, None))
            if moments is None:
                moments = {name: t for name, t in state.get(param, {}).items()
                           if torch.is_tensor(t) and t.shape == param.shape}
            moments = {name: t.index_select(axis, index).contiguous() for name, t in moments.items()}
            new[id(param)] = (param, current.index_select(axis, index).contiguous(), moments)
    if not new:
        return model
    with torch.no_grad():
        for param, tensor, moments in new.values():
            param.data = tensor
            param.grad = None
            if moments:
                state[param].update(moments)
    for (layer, reader), keep in zip(pairs, keeps):
        layer.out_features = reader.in_features = layer.weight.shape[0]
        if isinstance(layer, MePropLinear) and layer.k is not None and layer.k >= layer.out_features:
            layer.k = None
    return model


def shrink_to(model, hidden_sizes):
    """Shrink a freshly built torch model to the widths a simplified one was saved with.

    Keeps the first neurons of each prunable layer; load the simplified
    model's ``state_dict`` next.

    Parameters
    ----------
    model : torch.nn.Sequential
        The model as first built.
    hidden_sizes : sequence of int
        The width of each prunable layer, each in ``[1, current width]``.

    Returns
    -------
    torch.nn.Sequential
        `model` itself, with the given widths.

    Raises
    ------
    ValueError
        If `hidden_sizes` does not give one width in range per prunable layer.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch.simplify import shrink_to
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> shrink_to(model, [3])[2].in_features
    3
    """
    pairs = prunable_layers(model)
    sizes = list(hidden_sizes)
    if len(sizes) != len(pairs):
        raise ValueError(f"hidden_sizes must give one width per prunable layer ({len(pairs)}), got {len(sizes)}")
    keeps = [np.arange(integer_k(n, layer.out_features, f"hidden_sizes[{i}]"))
             for i, (n, (layer, _)) in enumerate(zip(sizes, pairs))]
    return remove_neurons(model, keeps)


class Simplifier(_numpy_simplify.Simplifier):
    """Count meProp's selections in a torch model's hidden layers and remove rarely kept neurons.

    The PyTorch twin of :class:`meprop_numba.simplify.Simplifier` (same
    arguments, :meth:`prune`, :meth:`after_step` with a
    :class:`~meprop_numba.simplify.PruneSchedule`, :meth:`state_dict`);
    building it starts counting in every prunable layer
    (:func:`prunable_layers`), and each prune shrinks the model and the
    optimizer's state in place (:func:`remove_neurons`). :meth:`close`
    stops counting.

    Parameters
    ----------
    model : torch.nn.Sequential
        The model (hidden :class:`~meprop_numba.torch.MePropLinear` layers).
    optimizer : torch.optim.Optimizer, optional
        The optimizer over ``model.parameters()`` (the lazy ones of
        :mod:`meprop_numba.torch.optim` or torch's own).
    p : float, optional
        Fraction in ``[0, 1)`` (default 0.1). 0 removes nothing.
    min_size : int, optional
        Neurons a layer keeps at least (default 1).
    schedule : meprop_numba.simplify.PruneSchedule or None, optional
        Used by :meth:`after_step`; default the released schedule.

    Raises
    ------
    TypeError
        If `model` is not a ``torch.nn.Sequential``.
    ValueError
        If `model` has no prunable layer, a hidden MePropLinear has
        ``sparse_grad=False``, or `p` / `min_size` is out of range.

    Examples
    --------
    >>> import torch
    >>> from meprop_numba.torch import convert
    >>> from meprop_numba.torch.simplify import Simplifier
    >>> model = convert(torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(),
    ...                                     torch.nn.Linear(8, 2)), k=2)
    >>> simplifier = Simplifier(model)
    >>> simplifier.hidden_sizes
    [8]
    >>> simplifier.close()
    """

    @staticmethod
    def _units_of(model):
        return [_Units(layer, reader) for layer, reader in prunable_layers(model)]

    _remove_neurons = staticmethod(remove_neurons)

    def close(self):
        """Stop counting (remove the hooks from the layers); the model stays as it is.

        Returns
        -------
        None
            Counting stops; :meth:`prune` then removes nothing.
        """
        for unit in self.units:
            unit.stop()
