"""Training primitives: meProp layers, the MLP, the LSTM, the embedding, the loss.

Module convention
-----------------
Every layer (and every model, which is a layer made of layers) follows one
small protocol, so new layers (an LSTM, an embedding) plug into the same
training loop and optimizers:

``forward(x, train=False) -> y``
    Computes the output. With ``train=True`` the module keeps whatever its
    backward pass needs (inputs, masks); with ``train=False`` it keeps
    nothing and is deterministic (dropout off).
``module(x)``
    Is ``forward(x)``: inference. The mode is an explicit argument of each
    call rather than a flag on the model (``torch.nn.Module.train()`` /
    ``eval()``): a forgotten ``eval()`` cannot leave dropout on at
    evaluation, and nothing is cached for a backward pass that never
    comes. A PyTorch habit that goes wrong here fails loudly: ``backward``
    after ``module(x)`` raises a ``RuntimeError`` saying so. Training steps
    call ``forward(x, train=True)``.
``backward(grad_out) -> grad_in``
    Takes the gradient of the loss with respect to the last training
    forward's output and returns the gradient with respect to its input,
    or None when the input needs no gradient (a network's first layer,
    integer inputs such as word ids). It stores the parameter gradients
    for :meth:`grads` and releases the cached forward state.
``parameters() -> list of arrays`` (alias ``params()``)
    The parameter arrays, in a fixed order. Optimizers update them in
    place, so a module must never rebind them (``self.weight = ...``) after
    construction. ``named_parameters()`` pairs them with torch-style dotted
    names (``"0.weight"``, ``"lstm.weight_ih_l0"``), found from the module
    tree: a module's own parameters, then each sub-module attribute's (a
    :class:`Sequential`'s layers by index).
``state_dict()`` / ``load_state_dict(sd)``
    Copies of the parameters keyed by those names, and the way back: every
    key, shape and dtype is checked before anything changes, then all
    parameters are copied in place, or none.
``grads() -> list``
    Aligned with ``parameters()``: for each parameter a dense array of its
    shape, a :class:`~meprop_numba.RowSparse` (2-D parameters whose
    gradient touches few rows: meProp weights, embedding tables) or None
    (no gradient this step), exactly what
    :meth:`meprop_numba.Adam.step` and the other optimizers take.

Randomness (initialisation, dropout masks, random-k selections) comes from
a ``numpy.random.Generator`` the module is given (``rng=``); a model
shares one generator among its layers and exposes it as ``model.rng`` so
that a checkpoint can save its state. Arrays are created through
:func:`array_module` (the namespace of the inputs), never through a
hard-coded ``numpy`` call on the data path.

Examples
--------
>>> import numpy as np
>>> import meprop_numba as mp
>>> from meprop_numba.nn import MLP, softmax_cross_entropy
>>> rng = np.random.default_rng(0)
>>> x = rng.random((10, 784), dtype=np.float32)
>>> y = rng.integers(0, 10, 10)
>>> model = MLP(784, 500, 10, k=20, rng=0)
>>> opt = mp.Adam(model.parameters(), lr=1e-3)
>>> loss, grad = softmax_cross_entropy(model.forward(x, train=True), y)
>>> _ = model.backward(grad)
>>> opt.step(model.grads())
>>> list(model.state_dict())
['0.weight', '0.bias', '2.weight', '2.bias', '4.weight', '4.bias']
"""
from .embedding import Embedding
from .layers import Dropout, Linear, Module, ReLU, Sequential, array_module
from .lstm import LSTM
from .loss import log_softmax, softmax_cross_entropy
from .mlp import MLP

__all__ = [
    "Dropout",
    "Embedding",
    "LSTM",
    "Linear",
    "MLP",
    "Module",
    "ReLU",
    "Sequential",
    "array_module",
    "log_softmax",
    "softmax_cross_entropy",
]
