"""Every public name documents its parameters, returns, errors and an example.

The rule, in NumPy docstring style:

- functions: ``Parameters`` (when they take any), ``Returns``, ``Raises``
  and ``Examples``;
- classes: ``Parameters`` or ``Attributes`` (when the constructor takes
  any), ``Raises`` and ``Examples``; exception classes only ``Examples``;
- a name that cannot raise says "never raises" instead of a ``Raises``
  section;
- module-level constants are described in their module's docstring.
"""
import importlib
import inspect
import re

import pytest

MODULES = ["meprop_numba", "meprop_numba.nn", "meprop_numba.data", "meprop_numba.gpu",
           "meprop_numba.training", "meprop_numba.training.config",
           "meprop_numba.training.checkpoint", "meprop_numba.training.report",
           "meprop_numba.cli", "meprop_numba.tasks", "meprop_numba.tasks.base",
           "meprop_numba.tasks.mlp", "meprop_numba.tasks.pos",
           "meprop_numba.tasks.pos_features"]


def public_names():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, obj in vars(module).items()
                     if not n.startswith("_") and inspect.isfunction(obj)
                     and obj.__module__ == module_name]
        for name in names:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield pytest.param(obj, id=f"{module_name}.{name}")


def sections(doc):
    return set(re.findall(r"^(\w[\w ]*)\n-{3,}$", doc, re.M))


def takes_arguments(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    if target is object.__init__:
        return False
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj):
        params = params[1:]        # self
    return bool(params)


@pytest.mark.parametrize("obj", list(public_names()))
def test_docstring_sections(obj):
    doc = inspect.getdoc(obj)
    assert doc, "no docstring"
    found = sections(doc)
    assert "Examples" in found and ">>> " in doc
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return
    if takes_arguments(obj):
        assert found & {"Parameters", "Attributes"}, "no Parameters section"
    if inspect.isfunction(obj):
        assert "Returns" in found or "Yields" in found
    assert "Raises" in found or "never raises" in doc.lower(), \
        "neither a Raises section nor 'never raises'"

