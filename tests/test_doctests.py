"""The tiny examples in the public docstrings run (STYLE habit 12)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "budgetsft.budget",
    "budgetsft.learners.ridge",
    "budgetsft.learners.logistic",
    "budgetsft.learners.ogd",
    "budgetsft.learners.arow",
    "budgetsft.learners.sketch",
    "budgetsft.comparator",
    "budgetsft.features.models",
    "budgetsft.gates.llf",
    "budgetsft.gates.baselines",
    "budgetsft.followers.best_response",
    "budgetsft.followers.random",
    "budgetsft.envs.synthetic",
    "budgetsft.data.jsonl",
    "budgetsft.data.builtin",
    "budgetsft.features.base",
    "budgetsft.features.grad",
    "budgetsft.adapt.recommend",
    "budgetsft.adapt.handback",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
