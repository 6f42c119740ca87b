"""One rank of the native trainer's data-parallel tests (tests/test_distributed_native.py).

Usage: python dist_native_worker.py [--fail-at-step S] train ARGS...  Runs the ``meprop-numba``
command line as ``torchrun`` would on each rank; with ``--fail-at-step`` the last rank raises
in its S-th training step.
"""
import os
import sys

from meprop_numba.cli import main
from meprop_numba.tasks.mlp import MLPTask


def fail_at(step):
    calls = {"n": 0}
    loss = MLPTask.loss

    def failing(self, model, batch):
        calls["n"] += 1
        if calls["n"] > step:  # the first call is the warm-up's
            raise ValueError("rank failure on purpose")
        return loss(self, model, batch)
    MLPTask.loss = failing


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[0] == "--fail-at-step":
        if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
            fail_at(int(argv[1]))
        argv = argv[2:]
    sys.exit(main(argv))
