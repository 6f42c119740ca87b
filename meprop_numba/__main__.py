"""``python -m meprop_numba``: the same as the ``meprop-numba`` command."""
import sys

from .cli import main

sys.exit(main())
