"""Shared test setup: nothing but what mutation testing needs (benchmarks/mutation.sh)."""

from __future__ import annotations

import os
import sys

import pytest


def _clear_caches() -> None:
    """Empty every memo of momentsim's own modules: the functools caches (models, hardware,
    profiles) and the step-cost cache."""
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith(("simulator", "hwmodels", "calibration")):
            continue
        for value in list(vars(mod).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and getattr(value, "__module__", None) == name:
                clear()
    cost = sys.modules.get("simulator.moment.cost")
    if cost is not None:
        cost._CACHE.clear()


@pytest.fixture(autouse=True)
def _fresh_caches_under_mutation():
    """mutmut (MUTANT_UNDER_TEST set) forks each mutant's run from a process whose clean test
    run filled those caches; a cached step cost or model would hide the mutated code from the
    tests (a moe_ops mutant "survived" tests that fail when run by hand). So each test starts
    with them empty there; ordinary runs keep the caches."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        _clear_caches()
    yield
