"""Remove a ``meprop_numba`` directory left in site-packages by an uninstalled copy.

``python3 -m pip install .`` (README's main command) installs a regular copy;
its numba-compiled functions then cache their machine code in
``site-packages/meprop_numba/**/__pycache__``.  When that copy is later
replaced (``pip install -e .``, ``pip uninstall``), pip removes only the files
it installed, and the directory of cache files that remains is importable as
an empty namespace package: interpreters started outside the checkout then
import it instead of the editable install and fail with ``No module named
meprop_numba.__main__`` or ``meprop_numba.__file__ is None``.

Run after ``pip install -e``: removes the directory only when it holds no
``__init__.py`` (that is, no installed package), then checks that
``import meprop_numba`` from outside the checkout finds the real package.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile


def main():
    leftover = os.path.join(sysconfig.get_paths()["purelib"], "meprop_numba")
    if os.path.isdir(leftover) and not os.path.exists(os.path.join(leftover, "__init__.py")):
        shutil.rmtree(leftover)
        print(f"removed {leftover}: numba cache files of an uninstalled copy")
    check = "import meprop_numba, sys; sys.exit(meprop_numba.__file__ is None)"
    outside = tempfile.gettempdir()
    if subprocess.run([sys.executable, "-c", check], cwd=outside).returncode != 0:
        sys.exit("import meprop_numba outside the checkout does not find the installed package")


if __name__ == "__main__":
    main()
