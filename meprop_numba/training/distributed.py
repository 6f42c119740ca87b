"""Data-parallel training of the NumPy models over ``torch.distributed``.

:class:`DataParallel` plugs into the one training loop
(:func:`~meprop_numba.training.fit` takes it as ``parallel=``): every rank
runs the same loop on its own slice of each global batch, and the
gradients are averaged over the ranks with the reductions of
:mod:`meprop_numba.torch.distributed` (``torch.from_numpy`` shares the
arrays, so nothing is copied on the way to the collectives):

* unified meProp layers (``selection='unified'``) select *globally*: their
  column scores are summed over the ranks inside the backward pass
  (:attr:`meprop_numba.nn.Linear.column_scores_hook`), so every rank keeps
  the same k columns, and only those k rows of the weight gradient are
  all-reduced;
* per-example (``'topk'``, ``'balanced'``) and ``'random'`` layers, and
  other row-sparse gradients (embeddings), are summed over the union of the
  ranks' rows, gathered or all-reduced, whichever sends fewer bytes
  (:func:`~meprop_numba.torch.distributed.choose_reduction`);
* dense gradients (biases, dense layers) and the unified layers' k rows
  are all-reduced together in one collective.

With a loss that is a mean over the examples (the MLP task), N ranks with
batch B then train as one process with batch N*B: the same weights up to
float rounding, in the unified and in the per-example modes. Dropout masks,
random selections and the error-feedback memory are drawn and kept per
rank, so runs using them are equivalent in distribution only.

``torchrun --nproc-per-node N -m meprop_numba train ...`` uses it (the
command line sees torchrun's ``RANK`` and ``WORLD_SIZE``).
"""
import datetime
import os

import numpy as np
import torch

from ..sparse import RowSparse
from ..torch.distributed import _REDUCTIONS, _Comm, _Counted, _reduce_union

__all__ = ["DataParallel", "init_from_env", "torchrun_world"]

#: The default seconds a collective waits for the other ranks.
DEFAULT_TIMEOUT = 300.0


def torchrun_world(environ=None):
    """``(rank, world_size)`` from torchrun's environment variables, or None outside torchrun.

    Parameters
    ----------
    environ : mapping, optional
        Default ``os.environ``.

    Returns
    -------
    tuple of int or None
        Set when both ``RANK`` and ``WORLD_SIZE`` are.

    Raises
    ------
    ValueError
        If they are not integers with ``0 <= RANK < WORLD_SIZE``.

    Examples
    --------
    >>> from meprop_numba.training.distributed import torchrun_world
    >>> torchrun_world({"RANK": "1", "WORLD_SIZE": "2"}), torchrun_world({})
    ((1, 2), None)
    """
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except ValueError:
        raise ValueError(f"RANK={environ['RANK']!r} and WORLD_SIZE={environ['WORLD_SIZE']!r} must be "
                         "integers") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    return rank, world


def init_from_env(timeout=DEFAULT_TIMEOUT):
    """Join the gloo process group torchrun describes (``env://``) and return a :class:`DataParallel`.

    Parameters
    ----------
    timeout : float, optional
        Seconds every collective waits for the other ranks before failing.

    Returns
    -------
    DataParallel
        Over the world group.

    Raises
    ------
    ImportError
        Without PyTorch or its gloo backend.
    ValueError
        If `timeout` is not positive, or ``RANK`` / ``WORLD_SIZE`` are
        missing or not ``0 <= RANK < WORLD_SIZE``.
    RuntimeError
        If the group cannot be formed within `timeout`.

    Examples
    --------
    In a script that ``torchrun --nproc-per-node 2 script.py`` starts:

    >>> from meprop_numba.training.distributed import init_from_env
    >>> parallel = init_from_env(timeout=60)  # doctest: +SKIP
    >>> parallel.rank, parallel.world_size  # doctest: +SKIP
    (0, 2)
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if torchrun_world() is None:
        raise ValueError("RANK and WORLD_SIZE are not set: start the ranks with torchrun")
    dist = _torch_distributed()
    joined = not dist.is_initialized()
    if joined:
        try:
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(timeout)))
        except Exception as err:
            raise RuntimeError(f"data parallel: cannot join the process group ({err})") from err
    parallel = DataParallel()
    parallel._leaves_group = joined
    return parallel


def _torch_distributed():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        raise ImportError("data-parallel training needs torch.distributed with the gloo backend")
    return dist


class DataParallel(_Counted):
    """Average a NumPy model's gradients over the ranks of a ``torch.distributed`` group.

    Give it to :func:`~meprop_numba.training.fit` as ``parallel=``; the
    loop calls :meth:`check`, :meth:`attach`, :meth:`shard` and
    :meth:`reduce_grads` (see the module docstring for what each sends).
    Rank 0 alone writes checkpoints, the results JSON and the progress bar.
    The trained model's unified layers keep their
    :attr:`~meprop_numba.nn.Linear.column_scores_hook`; set it to None to
    train the model on one process afterwards.

    Parameters
    ----------
    process_group : optional
        The group (default: the world, already initialised).
    reduction : {'auto', 'sparse', 'dense'}, optional
        How row-sparse gradients that differ between ranks are summed (as
        :class:`~meprop_numba.torch.distributed.MePropDataParallel`).

    Attributes
    ----------
    rank, world_size : int
        This rank and the number of ranks.
    bytes_sent, ring_bytes, reductions : collections.Counter
        As :class:`~meprop_numba.torch.distributed.MePropDataParallel`'s:
        ``'scores'``, ``'rows'``, ``'index'``, ``'dense'`` (the dense
        gradients and the unified layers' rows, in one collective),
        ``'broadcast'``.

    Raises
    ------
    RuntimeError
        If the process group is not initialised; later, if a collective
        fails (another rank stopped, raised or timed out), naming what was
        being reduced.
    ValueError
        If `reduction` is unknown.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> from meprop_numba.tasks import TASKS
    >>> from meprop_numba.training import fit
    >>> from meprop_numba.training.distributed import DataParallel
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> task = TASKS["mlp"]
    >>> config = task.config_class(hidden=16, k=4, selection="unified", epochs=1, batch_size=20,
    ...                            max_train=100)
    >>> results = fit(task, config, progress=False, parallel=DataParallel())
    >>> results["finished"]
    True
    >>> dist.destroy_process_group()
    """

    def __init__(self, process_group=None, *, reduction="auto"):
        dist = _torch_distributed()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs torch.distributed.init_process_group() first")
        self.reduction = reduction
        self._comm = _Comm(process_group)
        self.rank, self.world_size = self._comm.rank, self._comm.world
        self._names = []
        self._same_rows = set()
        self._leaves_group = False  # init_from_env's groups are left by close()
        self._closed = False

    @property
    def is_writer(self):
        """Whether this rank writes the files and shows progress (rank 0)."""
        return self.rank == 0

    def check(self, task, config, data):
        """Refuse, before training, what cannot be trained data-parallel.

        Parameters
        ----------
        task : meprop_numba.tasks.base.Task
            The task plugin.
        config : RunConfig
            The run's config; ``config.batch_size`` is the global batch,
            split evenly over the ranks.
        data : object
            The task's data.

        Raises
        ------
        ValueError
            A batch size not divisible by the world size, model
            simplification (its pruning follows each rank's own counts), or
            batches that are not tuples of per-example arrays.
        """
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size {config.batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} ranks")
        if getattr(config, "simplify", None) is not None:
            raise ValueError("simplify: model simplification cannot be trained data-parallel yet")
        batch = next(iter(task.batches(config, data, np.random.default_rng(0))), None)
        if batch is not None:
            self.shard(batch, what=f"task {task.name!r}")

    def shard(self, batch, *, what="the batch"):
        """This rank's slice of a global batch: rows ``[r B, (r + 1) B)`` of every per-example array.

        Parameters
        ----------
        batch : tuple
            Arrays sharing their first dimension (the examples), and other
            entries (flags), passed on as they are.
        what : str, optional
            Names the batch in the error message.

        Returns
        -------
        tuple
            The same entries, the arrays sliced.

        Raises
        ------
        ValueError
            If `batch` is not such a tuple, or its size is not divisible by
            the world size.
        """
        arrays = [a for a in batch if isinstance(a, np.ndarray)] if isinstance(batch, tuple) else []
        if not arrays or any(a.ndim == 0 or len(a) != len(arrays[0]) for a in arrays):
            raise ValueError(f"{what}: data-parallel training splits batches that are tuples of "
                             f"per-example arrays (the mlp task's); got {type(batch).__name__}")
        size = len(arrays[0])
        if size % self.world_size:
            raise ValueError(f"{what}: a batch of {size} examples cannot be split evenly over "
                             f"{self.world_size} ranks")
        b = size // self.world_size
        mine = slice(self.rank * b, (self.rank + 1) * b)
        return tuple(a[mine] if isinstance(a, np.ndarray) else a for a in batch)

    def attach(self, model):
        """Give every rank rank 0's parameters and drive the model's unified meProp layers.

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The model every rank built the same way.

        Raises
        ------
        ValueError
            A module other than :class:`~meprop_numba.nn.Linear` selecting
            ``'unified'`` (its column scores cannot be summed over the ranks).
        RuntimeError
            If the broadcast fails.
        """
        from ..nn.layers import Linear

        def walk(module, prefix):
            yield prefix, module
            for name, child in module.named_children():
                yield from walk(child, f"{prefix}{name}.")

        hooked, same_rows = [], set()
        for prefix, module in walk(model, ""):
            if isinstance(module, Linear) and module.k is None:
                same_rows.add(f"{prefix}weight")  # a dense layer's gradient holds every row
            if getattr(module, "selection", None) != "unified" or getattr(module, "k", None) is None:
                continue
            if not isinstance(module, Linear):
                raise ValueError(f"{prefix or 'the model'}: a {type(module).__name__} with "
                                 "selection='unified' cannot be trained data-parallel")
            hooked.append((prefix, module))
            same_rows.add(f"{prefix}weight")
        self._names = [name for name, _ in model.named_parameters()]
        for name, p in model.named_parameters():
            self._comm.broadcast(torch.from_numpy(p), f"the broadcast of {name}")
        for prefix, layer in hooked:
            layer.column_scores_hook = self._scores_hook(prefix.rstrip(".") or "the model")
        self._same_rows = same_rows

    def _scores_hook(self, name):
        def hook(scores):
            scores = np.array(scores, dtype=np.float64)  # a buffer of our own to reduce into
            self._comm.all_reduce(torch.from_numpy(scores), f"the column scores of {name}", "scores")
            return scores
        return hook

    def reduce_grads(self, grads):
        """The gradients averaged over the ranks, aligned with the model's parameters.

        Parameters
        ----------
        grads : list
            ``model.grads()``: dense arrays, :class:`~meprop_numba.RowSparse`
            or None, the same kinds on every rank.

        Returns
        -------
        list
            Dense arrays stay dense; row-sparse gradients become row-sparse
            over the union of the ranks' rows (None where no rank has a row).

        Raises
        ------
        RuntimeError
            If a collective fails (another rank stopped or timed out).
        """
        world = self.world_size
        out = list(grads)
        flat, slots = [], []  # dense gradients and rows the same on every rank: one all-reduce per dtype
        for i, g in enumerate(grads):
            name = self._names[i] if i < len(self._names) else f"parameter {i}"
            if isinstance(g, RowSparse) and name not in self._same_rows:
                rows = torch.from_numpy(np.array(g.rows, dtype=np.int64))  # the rows are frozen: a copy
                values = np.require(g.values, requirements=("C", "W"))  # shared unless read-only
                union, summed = _reduce_union(self._comm, f"the gradient of {name}", rows,
                                             torch.from_numpy(values), g.shape[0], self.reduction)
                out[i] = (None if union.shape[0] == 0 else
                          RowSparse._trusted(union.numpy(), summed.numpy() / g.values.dtype.type(world),
                                             g.shape))
            elif g is not None:
                flat.append(np.ravel(g.values if isinstance(g, RowSparse) else g))
                slots.append(i)
        for dtype in dict.fromkeys(part.dtype for part in flat):  # the same order on every rank
            mine = [(i, part) for i, part in zip(slots, flat) if part.dtype == dtype]
            buffer = np.concatenate([part for _, part in mine])
            self._comm.all_reduce(torch.from_numpy(buffer), "the dense gradients", "dense")
            buffer /= dtype.type(world)
            start = 0
            for i, part in mine:
                g = grads[i]
                piece = buffer[start:start + part.size]
                start += part.size
                out[i] = (RowSparse._trusted(g.rows, piece.reshape(g.values.shape), g.shape)
                          if isinstance(g, RowSparse) else piece.reshape(np.shape(g)))
        return out

    def average(self, value, what):
        """The mean of a number over the ranks.

        Parameters
        ----------
        value : float
            This rank's number.
        what : str
            Names it in the error message.

        Returns
        -------
        float
            The same on every rank.

        Raises
        ------
        RuntimeError
            If another rank stopped or timed out.
        """
        total = torch.tensor([float(value)], dtype=torch.float64)
        self._comm.all_reduce(total, what, "other")
        return float(total[0]) / self.world_size

    def close(self, wait=True):
        """End this rank's part: wait for every rank, then leave the group :func:`init_from_env` joined.

        A process that exits while still in a gloo group can abort at exit
        (its connection threads are torn down running), so the command line
        closes the group after training; a group created by the caller is
        left to the caller. A second call does nothing.

        Parameters
        ----------
        wait : bool, default True
            Pass a barrier first (after a successful run); False leaves at
            once (after an error, when another rank may be gone).

        Raises
        ------
        RuntimeError
            If the barrier fails (another rank stopped or timed out); the
            group is left all the same.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if wait:
                self.barrier("the end of the run")
        finally:
            if self._leaves_group:
                dist = _torch_distributed()
                if dist.is_initialized():
                    dist.destroy_process_group()

    def barrier(self, what):
        """Wait for every rank.

        Parameters
        ----------
        what : str
            Names the point in the error message.

        Raises
        ------
        RuntimeError
            If another rank stopped or timed out.
        """
        dist = _torch_distributed()
        try:
            dist.barrier(group=self._comm.group)
        except Exception as err:
            raise RuntimeError(f"data parallel: the barrier at {what} failed on rank {self.rank} of "
                               f"{self.world_size}; another rank stopped, raised or timed out: {err}") from err
