"""The training tasks, each a plugin of the one loop and the command line.

:data:`TASKS` maps each ``--task`` name to its plugin (a
:class:`~meprop_numba.tasks.base.Task`; the protocol is documented in
:mod:`meprop_numba.tasks.base`). Adding a task is one module and one
:func:`register` call; the CLI builds its options and commands from this
registry.

- :mod:`~meprop_numba.tasks.mlp`: image classification with a meProp MLP
  (``--task mlp``).
- :mod:`~meprop_numba.tasks.pos`: part-of-speech tagging with a meProp
  LSTM on a Universal Dependencies treebank (``--task pos``).

Examples
--------
>>> from meprop_numba.tasks import TASKS
>>> sorted(TASKS)
['mlp', 'pos']
>>> TASKS["pos"].config_class().batch_size, TASKS["mlp"].config_class().batch_size
(1, 10)
"""
from .base import Task
from .mlp import MLPTask
from .pos import POSTask

__all__ = ["TASKS", "Task", "register"]

#: ``--task`` name -> plugin instance.
TASKS = {}


def register(task):
    """Add a plugin instance to :data:`TASKS` under ``task.name``; return it.

    Parameters
    ----------
    task : Task
        A plugin instance with a new ``name``.

    Returns
    -------
    Task
        `task`.

    Raises
    ------
    TypeError
        If `task` is not a :class:`Task`.
    ValueError
        If its name is empty or already registered.

    Examples
    --------
    >>> from meprop_numba.tasks import TASKS, register
    >>> register(TASKS["mlp"])
    Traceback (most recent call last):
    ...
    ValueError: task 'mlp' is already registered
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task instance, got {type(task).__name__}")
    if not task.name:
        raise ValueError("task.name must not be empty")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register(MLPTask())
register(POSTask())
