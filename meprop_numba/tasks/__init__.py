"""Training tasks beyond the MLP, each pluggable into ``meprop-numba train --task``.

Every task module provides ``add_arguments(parser)`` (its own options) and
``run(args) -> int`` (train, print, return the exit status), the interface
of :class:`meprop_numba.cli.Task`.

- :mod:`meprop_numba.tasks.pos`: part-of-speech tagging with a meProp LSTM
  on a Universal Dependencies treebank (``--task pos``).
"""
