"""Compiled CPU kernels (``@njit``), one module per algorithm.

Each module has its GPU twin of the same name in :mod:`meprop_numba._cuda`
where one exists: ``topk``, ``linear``, ``optim``.  The kernels trust their
arguments; the public functions check them first.
"""
