"""Sphinx configuration for the meprop_numba documentation.

Build: ``python3 -m sphinx -W --keep-going -b html docs docs/_build/html``
"""
import os
import sys

# Document the checkout this file belongs to, not whatever copy is installed.
sys.path.insert(0, os.path.abspath(".."))

import meprop_numba  # noqa: E402

project = "meprop_numba"
author = "meprop_numba developers"
copyright = "meprop_numba developers, MIT License"
release = meprop_numba.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "figures/*.py"]

# NumPy-style docstrings.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Types stay text: shapes such as "(B, k)" must not become cross-references.
napoleon_use_param = False
napoleon_use_ivar = True
napoleon_preprocess_types = False

autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "both"

# Markdown pages (the existing docs/*.md) through MyST.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# results_mlp.md goes from its title straight to ### sections.
suppress_warnings = ["myst.header"]

# Offline builds: no intersphinx inventories are fetched unless asked for.
intersphinx_mapping = {}
if os.environ.get("MEPROP_DOCS_INTERSPHINX"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
    }

html_theme = "furo"
html_title = f"meprop_numba {release}"
html_static_path = []
