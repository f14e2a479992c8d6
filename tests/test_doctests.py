"""The examples in the pure analyses' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "normscope.analysis.theory",
    "normscope.analysis.abel_rule",
    "normscope.analysis.equilibrium",
    "normscope.analysis.homogeneity",
    "normscope.analysis.probe",
    "normscope.engine.group",
    "normscope.engine.reduce",
    "normscope.sources._optimizer",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
