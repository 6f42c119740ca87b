"""Data-parallel meProp on ``torch.distributed``: reduce only what meProp keeps.

:class:`MePropDataParallel` wraps a model holding
:class:`~meprop_numba.torch.MePropLinear` layers.  Every rank runs the model
on its own shard of the batch; the gradients are averaged over the ranks by
public ``torch.distributed`` collectives that the wrapper issues itself
(no ``DistributedDataParallel``, so nothing depends on its private methods
or on its refusal of sparse gradients):

* ``selection='unified'`` layers use the *globally unified* selection: the
  n column scores ``sum_b |g[b, i]|`` are all-reduced (with the bias
  gradient, one collective of 2n numbers), every rank picks the same k
  columns from the global scores (ties to the lower index), and only the
  k x m selected weight-gradient rows are all-reduced.  Both collectives
  are dense, so gloo and NCCL run them.  N ranks with batch B give the
  gradients of one process with batch N*B.
* ``selection='topk'`` (per example) and ``'random'`` layers reduce the
  union of the ranks' rows: the row indices are all-gathered, then either
  the rows themselves are all-gathered (sparse) or the union's rows are
  all-reduced (dense), whichever sends fewer bytes (see
  :func:`choose_reduction`).  Per-example top-k depends on each example
  alone, so N ranks with batch B again give the gradients of one process
  with batch N*B; random selection draws on each rank's own generator.
* Every other parameter is reduced from a gradient hook as its gradient
  arrives: row-sparse COO gradients (a ``MePropLSTM(sparse_grad=True)``'s
  weights, ``nn.Embedding(sparse=True)``) over the union of the ranks'
  rows as above, dense ones (dense layers, the output layer, biases) by a
  dense all-reduce.

The collectives run synchronously inside the backward pass, in the same
order on every rank, which requires every rank to run the same graph.
"""
import contextlib
import os
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..topk import topk_indices
from .linear import MePropLinear, _backward_tensors, _check_inputs, _dense_rows, _random_indices

__all__ = ["MePropDataParallel", "choose_reduction", "launch_local", "save_on_rank0"]

_REDUCTIONS = ("auto", "sparse", "dense")


def choose_reduction(row_counts, union_rows, width, world_size):
    """Whether the union of the ranks' weight-gradient rows is cheaper gathered or all-reduced.

    Costed as a ring collective would send it, per rank: an all-gather of
    padded ``(max(row_counts), width)`` blocks sends ``(P - 1)`` blocks, an
    all-reduce of the ``(union_rows, width)`` union ``2 (P - 1) / P`` of it.
    The break-even lies at ``union_rows = P * max(row_counts) / 2``: gather
    when the ranks' rows overlap little, all-reduce when they overlap a lot
    (with two ranks gathering never sends more).

    Parameters
    ----------
    row_counts : sequence of int
        Rows each rank holds.
    union_rows : int
        Rows in their union.
    width : int
        Elements per row.
    world_size : int
        Number of ranks P.

    Returns
    -------
    str
        ``'sparse'`` (all-gather) or ``'dense'`` (all-reduce of the union).
        It never raises.

    Examples
    --------
    >>> from meprop_numba.torch.distributed import choose_reduction
    >>> choose_reduction([20] * 4, 80, 500, 4), choose_reduction([20] * 4, 25, 500, 4)
    ('sparse', 'dense')
    """
    P = int(world_size)
    gather = (P - 1) * max(row_counts) * width
    reduce = 2 * (P - 1) * union_rows * width / P
    return "sparse" if gather <= reduce else "dense"


class _Comm:
    """The collectives of one wrapper, with the bytes each rank hands to them counted."""

    def __init__(self, group):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes = Counter()
        self.ring_bytes = Counter()
        self.choices = Counter()

    def _run(self, what, kind, fn, tensor, ring_factor):
        size = tensor.numel() * tensor.element_size()
        self.bytes[kind] += size
        self.ring_bytes[kind] += round(size * ring_factor)
        try:
            return fn()
        except Exception as err:  # gloo raises RuntimeError, NCCL DistBackendError (a RuntimeError)
            raise RuntimeError(
                f"meProp data parallel: {what} failed on rank {self.rank} of {self.world}; another rank "
                f"stopped, raised or timed out (the process group's timeout): {err}") from err

    def all_reduce(self, tensor, what, kind):
        self._run(what, kind, lambda: dist.all_reduce(tensor, group=self.group), tensor,
                  2 * (self.world - 1) / self.world)
        return tensor

    def all_gather(self, tensor, what, kind):
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        self._run(what, kind, lambda: dist.all_gather(out, tensor.contiguous(), group=self.group), tensor,
                  self.world - 1)
        return out

    def broadcast(self, tensor, what):
        self._run(what, "broadcast", lambda: dist.broadcast(tensor, 0, group=self.group), tensor,
                  1 if self.rank == 0 else 0)


def _global_unified(comm, name, x, weight, g2, k, need_dx):
    """Globally unified meProp backward: the same k columns on every rank, chosen from summed scores."""
    n = weight.shape[0]
    scores_and_db = torch.cat([g2.abs().sum(0), g2.sum(0)])
    comm.all_reduce(scores_and_db, f"the column scores of {name}", "scores")
    scores, db = scores_and_db[:n], scores_and_db[n:]
    cols = np.sort(topk_indices(scores.cpu().numpy()[None, :], k)[0])
    cols = torch.from_numpy(cols).to(g2.device)
    dx, rows, values, _ = _backward_tensors(x, weight, g2, None, True, cols, need_dx)
    if rows.shape[0] != cols.shape[0]:  # an empty shard: no rows of its own, but it joins the all-reduce
        rows, values = cols, values.new_zeros((cols.shape[0], weight.shape[1]))
    values = values.clone()  # the kernel's result is a read-only array; reduce into a buffer of our own
    comm.all_reduce(values, f"the {k} selected weight-gradient rows of {name}", "rows")
    return dx, rows, values, db


def _union_rows(comm, name, x, weight, g2, k, selection, reduction, need_dx):
    """Per-example (or random) meProp backward, the ranks' rows reduced over their union."""
    n = weight.shape[0]
    indices = _random_indices(g2, n, k) if selection == "random" else None
    dx, rows, values, db = _backward_tensors(x, weight, g2, k, False, indices, need_dx)
    db = comm.all_reduce(db.clone(), f"the bias gradient of {name}", "bias")
    union, summed = _reduce_union(comm, name, rows, values, n, reduction)
    return dx, union, summed, db


def _reduce_union(comm, name, rows, values, n, reduction):
    """Sum the ranks' row-sparse gradients ``(rows, values)`` over the union of their rows.

    The row indices are all-gathered; then the rows themselves are
    all-gathered (``'sparse'``) or the union's rows all-reduced
    (``'dense'``), as `reduction` says or, for ``'auto'``, as
    :func:`choose_reduction` finds cheaper.  Every rank must call it with
    the same `name`, `n` and `reduction`, in the same order.

    Parameters
    ----------
    comm : _Comm
        The collectives (and their byte counters).
    name : str
        Names the gradient in error messages.
    rows : torch.Tensor of int64, shape (r,)
        This rank's sorted, distinct rows (r may differ between ranks, and be 0).
    values : torch.Tensor, shape (r, m)
        Their gradient rows.
    n : int
        Rows of the full matrix.
    reduction : {'auto', 'sparse', 'dense'}

    Returns
    -------
    union : torch.Tensor of int64
        The sorted union of every rank's rows.
    summed : torch.Tensor, shape (len(union), m)
        The sum over the ranks of their rows (not divided by the world size).
    """
    m = values.shape[1]
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [int(c) for c in comm.all_gather(count, f"the row counts of {name}", "index")]
    padded = rows.new_full((max(1, max(counts)),), n)
    padded[:rows.shape[0]] = rows
    gathered = comm.all_gather(padded, f"the row indices of {name}", "index")
    all_rows = torch.cat([r[:c] for r, c in zip(gathered, counts)])
    union = torch.unique(all_rows)  # sorted
    choice = reduction if reduction != "auto" else choose_reduction(counts, union.shape[0], m, comm.world)
    comm.choices[choice] += 1
    if choice == "dense":
        block = values.new_zeros((n, m)).index_copy_(0, rows, values)
        block = block.index_select(0, union) if union.shape[0] < n else block
        comm.all_reduce(block, f"the union rows of {name}", "rows")
        return union, block
    block = values.new_zeros((max(1, max(counts)), m))
    block[:rows.shape[0]] = values
    blocks = comm.all_gather(block, f"the gathered rows of {name}", "rows")
    summed = values.new_zeros((union.shape[0], m)).index_add_(
        0, torch.searchsorted(union, all_rows), torch.cat([b[:c] for b, c in zip(blocks, counts)]))
    return union, summed


class _Counted:
    """The byte and choice counters of a holder of a :class:`_Comm` (``self._comm``)."""

    @property
    def bytes_sent(self):
        """Bytes this rank has handed to collectives, by kind (see the class docstring)."""
        return self._comm.bytes

    @property
    def ring_bytes(self):
        """The collectives' bytes as a ring algorithm sends them from this rank, by kind."""
        return self._comm.ring_bytes

    @property
    def reductions(self):
        """How often the union reduction chose ``'sparse'`` and ``'dense'``."""
        return self._comm.choices


class _ReducedLinear(torch.autograd.Function):
    """``F.linear`` whose meProp backward averages its gradients over the ranks."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, name, wrapper):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.name, ctx.wrapper = layer, name, wrapper
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        layer, comm = ctx.layer, ctx.wrapper._comm
        need_dx, _, need_db = ctx.needs_input_grad[:3]
        g2 = grad.reshape(-1, weight.shape[0]).contiguous()
        if layer.selection == "unified":
            dx, rows, values, db = _global_unified(comm, ctx.name, x, weight, g2, layer.k, need_dx)
        else:
            dx, rows, values, db = _union_rows(comm, ctx.name, x, weight, g2, layer.k, layer.selection,
                                               ctx.wrapper.reduction, need_dx)
        values, db = values / comm.world, db / comm.world
        if layer.sparse_grad:
            dW = torch.sparse_coo_tensor(rows.unsqueeze(0), values, weight.shape, is_coalesced=True,
                                         check_invariants=False)
        else:
            dW = _dense_rows(rows, values, tuple(weight.shape))
        dx = dx.reshape(x.shape) if need_dx else None
        return dx, dW, (db if need_db else None), None, None, None


class MePropDataParallel(_Counted, nn.Module):
    """Data-parallel training of a model with meProp layers, reducing only the kept rows.

    Wrap the model on every rank after ``torch.distributed.init_process_group``;
    the parameters are broadcast from rank 0.  Run forward and backward as
    usual, then the optimizer step: every gradient arrives averaged over the
    ranks (as with ``DistributedDataParallel``).  See the module docstring
    for what each selection sends.

    Parameters
    ----------
    module : torch.nn.Module
        The model; its :class:`MePropLinear` layers with k set are driven by
        the wrapper while it lives (their parameters, state-dict keys and
        settings are unchanged).
    process_group : optional
        The group to reduce over (default: the world).
    reduction : {'auto', 'sparse', 'dense'}, optional
        How per-example and random layers reduce the union of the ranks'
        rows: all-gathered (``'sparse'``), all-reduced (``'dense'``) or
        whichever sends fewer bytes (``'auto'``, :func:`choose_reduction`).

    Attributes
    ----------
    bytes_sent : collections.Counter
        Bytes this rank has handed to collectives (their input tensors), by
        kind: ``'scores'`` (column scores and bias gradients of unified
        layers), ``'rows'`` (selected weight-gradient rows), ``'bias'``,
        ``'index'`` (row counts and indices), ``'dense'`` (the other
        parameters' gradients), ``'broadcast'`` (the start-up broadcast).
    ring_bytes : collections.Counter
        The same collectives costed as a ring algorithm sends them from
        this rank: ``2 (P - 1) / P`` times the size for an all-reduce,
        ``P - 1`` times for an all-gather (the model
        :func:`choose_reduction` uses).
    reductions : collections.Counter
        How often the per-example reduction chose ``'sparse'`` / ``'dense'``.

    Raises
    ------
    RuntimeError
        If the default process group is not initialised; during backward,
        if a collective fails (another rank stopped or timed out), naming
        the layer.
    TypeError, ValueError
        If `module` is not a module or `reduction` is unknown.

    Notes
    -----
    Every rank must run the same graph (same layers, same order) each
    step; each backward reduces its own gradients, so gradient accumulation
    over several backward calls works, at the cost of one reduction each.
    A layer's k or selection may change between steps; a layer converted
    or given a k after wrapping is not driven (wrap again).

    Examples
    --------
    A one-process group, as ``torchrun --nproc-per-node 1`` would set up:

    >>> import datetime, torch
    >>> import torch.distributed as dist
    >>> from meprop_numba.torch import MePropLinear
    >>> from meprop_numba.torch.distributed import MePropDataParallel, launch_local
    >>> store = dist.HashStore()
    >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1,
    ...                         timeout=datetime.timedelta(seconds=30))
    >>> model = torch.nn.Sequential(MePropLinear(8, 6, k=2, selection="unified"), torch.nn.ReLU(),
    ...                             torch.nn.Linear(6, 2))
    >>> dp = MePropDataParallel(model)
    >>> dp(torch.randn(4, 8)).sum().backward()
    >>> sorted(dp.bytes_sent)
    ['broadcast', 'dense', 'rows', 'scores']
    >>> dp.bytes_sent["rows"]  # 2 selected rows of 8 float32
    64
    >>> dist.destroy_process_group()
    """

    def __init__(self, module, *, process_group=None, reduction="auto"):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("MePropDataParallel needs torch.distributed.init_process_group() first")
        self.module = module
        self.reduction = reduction
        self._comm = _Comm(process_group)
        self._meprop = [(name, m) for name, m in module.named_modules()
                        if isinstance(m, MePropLinear) and m.k is not None]
        reduced_in_backward = set()
        for name, layer in self._meprop:
            reduced_in_backward.add(id(layer.weight))
            if layer.bias is not None:
                reduced_in_backward.add(id(layer.bias))
        with torch.no_grad():
            for pname, t in list(module.named_parameters()) + list(module.named_buffers()):
                self._comm.broadcast(t.data, f"the broadcast of {pname}")
        self._hooks = []
        for pname, p in module.named_parameters():
            if p.requires_grad and id(p) not in reduced_in_backward:
                self._hooks.append(p.register_hook(self._dense_hook(pname)))
        for name, layer in self._meprop:
            layer.forward = self._layer_forward(name, layer)

    def _dense_hook(self, pname):
        def hook(grad):
            if grad.is_sparse and grad.sparse_dim() == 1 and grad.dim() == 2:  # row-sparse: MePropLSTM's
                grad = grad.coalesce()                                         # weights, sparse embeddings
                union, summed = _reduce_union(self._comm, f"the gradient of {pname}", grad.indices()[0],
                                             grad.values(), grad.shape[0], self.reduction)
                return torch.sparse_coo_tensor(union.unsqueeze(0), summed.div_(self._comm.world), grad.shape,
                                               is_coalesced=True)
            if grad.is_sparse:
                grad = grad.to_dense()
            grad = grad.clone()
            self._comm.all_reduce(grad, f"the gradient of {pname}", "dense")
            return grad.div_(self._comm.world)
        return hook

    def _layer_forward(self, name, layer):
        def forward(input):
            if layer.k is None or not layer.training or not torch.is_grad_enabled():
                return F.linear(input, layer.weight, layer.bias)
            _check_inputs(input, layer.weight)
            return _ReducedLinear.apply(input, layer.weight, layer.bias, layer, name, self)
        return forward

    def forward(self, *args, **kwargs):
        """Run the wrapped module.

        Parameters
        ----------
        *args, **kwargs
            As the wrapped module takes them.

        Returns
        -------
        object
            The wrapped module's output.
        """
        return self.module(*args, **kwargs)

    def unwrap(self):
        """Give the layers back their own forward and drop the gradient hooks.

        Returns
        -------
        torch.nn.Module
            The wrapped module, which no longer communicates.
        """
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for _, layer in self._meprop:
            layer.__dict__.pop("forward", None)
        return self.module

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state dict, with the same keys as without the wrapper.

        Parameters
        ----------
        *args, **kwargs
            As ``torch.nn.Module.state_dict``.

        Returns
        -------
        dict
            Name -> tensor, e.g. ``"0.weight"`` (no ``"module."`` prefix).
        """
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        """Load a state dict of the wrapped module (keys without a ``"module."`` prefix).

        Parameters
        ----------
        state_dict : dict
            As ``torch.nn.Module.load_state_dict``.
        *args, **kwargs
            As ``torch.nn.Module.load_state_dict``.

        Returns
        -------
        NamedTuple
            The missing and unexpected keys, as ``torch.nn.Module.load_state_dict``.
        """
        return self.module.load_state_dict(state_dict, *args, **kwargs)


def save_on_rank0(obj, path, *, process_group=None):
    """``torch.save(obj, path)`` on rank 0 only, atomically, then a barrier.

    Parameters
    ----------
    obj : object
        What to save (e.g. ``{"model": dp.state_dict(), "optimizer": opt.state_dict()}``).
    path : str or os.PathLike
        Where rank 0 writes.
    process_group : optional
        The group whose rank 0 writes (default: the world).

    Returns
    -------
    bool
        True on the rank that wrote the file.

    Raises
    ------
    RuntimeError
        If the barrier fails (another rank stopped or timed out).

    Examples
    --------
    In a training script that every rank runs:

    >>> from meprop_numba.torch.distributed import save_on_rank0
    >>> # save_on_rank0({"model": dp.state_dict(), "optimizer": opt.state_dict()}, "ckpt.pt")
    """
    wrote = dist.get_rank(process_group) == 0
    if wrote:
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            torch.save(obj, tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    try:
        dist.barrier(group=process_group)
    except Exception as err:
        raise RuntimeError(f"save_on_rank0: the barrier after saving {path!r} failed: {err}") from err
    return wrote


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(argv, nprocs, *, timeout, env=None):
    """Run ``python argv...`` as `nprocs` ranks on 127.0.0.1, as ``torchrun`` would, and wait.

    Each process gets torchrun's variables (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``) and
    one thread (``OMP_NUM_THREADS=1``, ``NUMBA_NUM_THREADS=1``), so it can
    call ``init_process_group("gloo")`` with the default ``env://``.  All
    are killed when `timeout` passes.

    Parameters
    ----------
    argv : sequence of str
        The script and its arguments.
    nprocs : int
        Number of ranks.
    timeout : float
        Seconds for the whole run.
    env : mapping, optional
        Extra environment variables.

    Returns
    -------
    list of subprocess.CompletedProcess
        Per rank: return code (-9 if killed at the timeout), stdout and stderr.

    Raises
    ------
    ValueError
        If `nprocs` < 1.

    Examples
    --------
    >>> import sys
    >>> from meprop_numba.torch.distributed import launch_local
    >>> runs = launch_local(["-c", "import os; print(os.environ['RANK'])"], 2, timeout=60)
    >>> [r.stdout.strip() for r in runs]
    ['0', '1']
    """
    import time

    nprocs = int(nprocs)
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    port = _free_port()
    procs = []
    for rank in range(nprocs):
        child = dict(os.environ, **(env or {}))
        child.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                     NUMBA_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *map(str, argv)], env=child, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, err = p.communicate()
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
