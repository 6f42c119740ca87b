"""The task plugin protocol: what a task gives the one training loop and the CLI.

A task (MLP image classification, POS tagging, dependency parsing, ...) is a
subclass of :class:`Task` registered in :data:`meprop_numba.tasks.TASKS`.
The loop (:func:`meprop_numba.training.fit`) and the command line
(``meprop-numba train|evaluate|predict --task NAME``) know nothing else about
it: every option, check, batch, metric and file format of a task lives in its
plugin, and everything shared (optimizer, epochs, seeds, threads, timers,
divergence stop, checkpoints, resume, JSON results, ``--compare`` and the
speed-up report) lives in :mod:`meprop_numba.training`.

The protocol
------------
Class attributes

``name`` : str
    The ``--task`` value (``"mlp"``, ``"pos"``, ``"parse"``).
``help`` : str
    One line for ``--help``.
``config_class`` : type
    A dataclass subclassing :class:`meprop_numba.training.RunConfig` (the
    shared fields: optimizer, lr, lazy, epochs, batch_size, seed, dtype,
    threads, device, data_dir, evals_per_epoch, eval_test) that adds the
    task's own fields and may override the shared defaults (a field given
    again with another default, e.g. ``batch_size: int = 1``) and the
    learning rate of each optimizer (class attribute ``DEFAULT_LR``).
    Its ``check()`` validates the task's fields (ValueError naming the
    field); ``RunConfig.validate()`` calls it after the shared checks.
``metric`` : str
    Name of the primary evaluation metric (higher is better), the key of
    :meth:`evaluate`'s result that picks the best-dev epoch, e.g.
    ``"accuracy"`` or ``"las"``.
``component_timers`` : tuple of str
    Names of the extra per-epoch timings :meth:`component_seconds` reports
    (e.g. ``("backward_linear",)``: the part of the backward pass the meProp
    paper reports); each is recorded as ``<name>_s`` per epoch.

Methods (the loop calls them in this order)

``add_arguments(parser)``
    Add the task's own options to the ``train`` parser (an argument
    group); their defaults and help are the task's. The shared options are
    added by the CLI with the defaults of ``config_class``.
``config_from_args(args, shared)``
    Build the config: ``shared`` is the dict of the shared fields already
    read from `args`; add the task's fields from `args`.
``load_data(config, extra_state=None)``
    Read the data from ``config.data_dir`` (any directory; never a
    hard-coded path). With `extra_state` (what :meth:`extra_state`
    returned at training time, read back from a checkpoint) the
    vocabularies/feature tables are taken from it instead of being rebuilt,
    so evaluation encodes exactly as training did. Raises OSError or
    ValueError (naming the file and, for text formats, the line) on
    missing or malformed data.
``extra_state(data)``
    Everything besides the parameters that a checkpoint needs to be a
    usable model on its own (vocabularies, feature tables, label names,
    input shape): a dict of JSON values (lists, strings, numbers). Saved
    in every checkpoint.
``check_data(config, data)``
    Checks that need the data (batch size above the training set, k above
    a layer width); raises ValueError. Called before any training.
``build_model(config, extra_state, rng)``
    A fresh :class:`meprop_numba.nn.Module` (``state_dict()``,
    ``load_state_dict()``, ``parameters()``) sized from `extra_state`
    alone, drawing all its randomness from `rng` (a
    ``numpy.random.Generator``, kept as ``model.rng``), so the same call
    rebuilds a model from a checkpoint.
``n_batches(config, data)``
    Training steps per epoch.
``batches(config, data, rng)``
    Iterator over one epoch's training batches (shuffled with `rng`, the
    data generator; exactly ``n_batches`` of them).
``start_epoch(model)``
    Called before an epoch's first batch (default: nothing). The tasks
    restart their error-feedback memories here, so that a run resumed from
    an epoch's checkpoint (which holds no memory) continues exactly.
``loss(model, batch)``
    Forward pass in training mode plus the loss: returns ``(loss, grad)``
    with `loss` a Python float (the mean over the batch) and `grad` the
    gradient of the loss with respect to the model's output, which the
    loop hands to ``model.backward``. The loop times this as the forward
    pass and stops the run if `loss` is not finite.
``evaluate(model, data, split)``
    Metrics on ``split`` (``"dev"`` or ``"test"``): a dict holding at least
    ``metric``; values are floats, or None when the split is empty or
    missing.
``component_seconds(model)``
    Cumulative seconds of each of ``component_timers`` (the loop takes the
    difference over an epoch).
``predict(model, config, extra_state, input_path, out)``
    Read `input_path` (the task's input format), write one prediction per
    input item to the text stream `out`; returns the number of items.
    Raises OSError/ValueError naming the file for unreadable input.
``dense_config(config)``
    The same config with dense back propagation (the other arm of
    ``--compare``).
``label(config)``
    Short run name for tables, e.g. ``"meProp k=20 topk"`` or ``"dense"``.
``describe(config, data)``
    One or two lines printed before training (data sizes, model shape).
``data_summary(data)``
    A JSON value describing the data (sizes, source), stored in the
    results.

Besides the names above a task module exports only its public API; no task
imports another task's private names, and the loop imports no task.

Examples
--------
>>> from meprop_numba.tasks.base import Task
>>> sorted(name for name in vars(Task) if not name.startswith("_"))[:6]
['add_arguments', 'batches', 'build_model', 'check_data', 'component_seconds', 'component_timers']
"""
import dataclasses

__all__ = ["Task"]


class Task:
    """Base class of the task plugins; see :mod:`meprop_numba.tasks.base`.

    Subclasses set the class attributes and implement the methods listed
    in the module docstring; the defaults here are shared behaviour
    (:meth:`dense_config`, :meth:`label`, :meth:`check_data`,
    :meth:`component_seconds`, :meth:`extra_state`).
    Construction never raises; the methods raise as the module docstring says.

    Examples
    --------
    >>> from meprop_numba.tasks.base import Task
    >>> Task.metric, Task.component_timers
    ('accuracy', ())
    """

    name = ""
    help = ""
    config_class = None
    metric = "accuracy"
    component_timers = ()

    def __init_subclass__(cls, **kwargs):
        # A plugin's method without a docstring documents itself with the protocol's.
        super().__init_subclass__(**kwargs)
        for attr, value in vars(cls).items():
            if callable(value) and not getattr(value, "__doc__", None) and attr in vars(Task):
                value.__doc__ = vars(Task)[attr].__doc__

    # ---- command line
    def add_arguments(self, parser):
        """Add the task's own options to the ``train`` parser.

        Parameters
        ----------
        parser : argparse.ArgumentParser
            Receives an argument group with the task's options, defaults and help.

        Returns
        -------
        None
            `parser` is changed in place.
        """
        raise NotImplementedError

    def config_from_args(self, args, shared):
        """The task's config from parsed options.

        Parameters
        ----------
        args : argparse.Namespace
            The parsed ``train`` options.
        shared : dict
            The shared :class:`~meprop_numba.training.RunConfig` fields, already read.

        Returns
        -------
        RunConfig
            An instance of :attr:`config_class` (not yet validated).
        """
        raise NotImplementedError

    # ---- data and model
    def load_data(self, config, extra_state=None):
        """Read the data `config` names.

        Parameters
        ----------
        config : RunConfig
            Names the data (``data_dir`` and the task's fields).
        extra_state : dict, optional
            A checkpoint's :meth:`extra_state`: encode with its vocabularies.

        Returns
        -------
        object
            The task's data (train/dev/test splits).

        Raises
        ------
        OSError, ValueError
            Missing or malformed data, naming the file.
        """
        raise NotImplementedError

    def extra_state(self, data):
        """What a checkpoint needs besides the parameters.

        Parameters
        ----------
        data : object
            The task's data.

        Returns
        -------
        dict
            JSON values: vocabularies, feature tables, shapes.
        """
        return {}

    def check_data(self, config, data):
        """Refuse a config that cannot train on `data`.

        Parameters
        ----------
        config : RunConfig
            The validated config.
        data : object
            The task's data.

        Returns
        -------
        None
            When the run can start.

        Raises
        ------
        ValueError
            E.g. a batch size above the training set.
        """

    def build_model(self, config, extra_state, rng):
        """A freshly initialised model.

        Parameters
        ----------
        config : RunConfig
            The model's shape and meProp settings.
        extra_state : dict
            :meth:`extra_state` (sizes of vocabularies, inputs, classes).
        rng : numpy.random.Generator
            All the model's randomness; kept as ``model.rng``.

        Returns
        -------
        meprop_numba.nn.Module
            The model.
        """
        raise NotImplementedError

    # ---- training
    def n_batches(self, config, data):
        """Training steps per epoch.

        Parameters
        ----------
        config : RunConfig
            Gives the batch size.
        data : object
            The task's data.

        Returns
        -------
        int
            The number of batches :meth:`batches` yields.
        """
        raise NotImplementedError

    def batches(self, config, data, rng):
        """One epoch's shuffled training batches.

        Parameters
        ----------
        config : RunConfig
            Gives the batch size and dtype.
        data : object
            The task's data.
        rng : numpy.random.Generator
            The run's data generator (shuffling, word dropout).

        Yields
        ------
        object
            A batch, as :meth:`loss` takes it.
        """
        raise NotImplementedError

    def start_epoch(self, model):
        """Prepare `model` for a training epoch, before its first batch (default: nothing).

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The model being trained.
        """

    def loss(self, model, batch):
        """The training forward pass and the loss.

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The model being trained.
        batch : object
            One of :meth:`batches`.

        Returns
        -------
        loss : float
            The mean loss over the batch.
        grad : ndarray
            Its gradient with respect to the model's output.
        """
        raise NotImplementedError

    def component_seconds(self, model):
        """Cumulative seconds of the parts of a step the task reports.

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The model being trained.

        Returns
        -------
        dict
            One entry per name of :attr:`component_timers`.
        """
        return {}

    # ---- evaluation, prediction
    def evaluate(self, model, data, split):
        """Metrics of `model` on a split.

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The model to evaluate.
        data : object
            The task's data.
        split : {'dev', 'test'}
            Which split.

        Returns
        -------
        dict
            At least :attr:`metric`; a float, or None for an empty split.

        Raises
        ------
        ValueError
            An unknown or missing split.
        """
        raise NotImplementedError

    def predict(self, model, config, extra_state, input_path, out):
        """Predictions for an input file.

        Parameters
        ----------
        model : meprop_numba.nn.Module
            The trained model.
        config : RunConfig
            The config it was trained with.
        extra_state : dict
            The checkpoint's :meth:`extra_state`.
        input_path : str
            The input, in the task's format.
        out : io.TextIOBase
            Receives one prediction per input item.

        Returns
        -------
        int
            The number of items predicted.

        Raises
        ------
        OSError, ValueError
            Unreadable input, naming the file.
        """
        raise NotImplementedError

    # ---- naming
    def dense_config(self, config):
        """The dense arm of ``--compare``.

        Parameters
        ----------
        config : RunConfig
            The meProp arm.

        Returns
        -------
        RunConfig
            `config` with dense back propagation (``k=None``).
        """
        return dataclasses.replace(config, k=None)

    def label(self, config):
        """Short run name for tables.

        Parameters
        ----------
        config : RunConfig
            The run.

        Returns
        -------
        str
            ``'dense'`` or ``'meProp k=...'``.
        """
        return "dense" if getattr(config, "k", None) is None else f"meProp k={config.k}"

    def describe(self, config, data):
        """Lines printed before training.

        Parameters
        ----------
        config : RunConfig
            The run.
        data : object
            The task's data.

        Returns
        -------
        str
            Data sizes and the model's shape.
        """
        return f"{self.name}: {self.label(config)}"

    def data_summary(self, data):
        """A JSON value describing `data`, for the results.

        Parameters
        ----------
        data : object
            The task's data.

        Returns
        -------
        object
            Sizes and source (JSON values), or None.
        """
        return None
