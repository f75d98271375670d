"""Shared test setup: what mutation testing needs (benchmarks/mutation.sh) and what keeps the
suite's CPU time down (the 60 s budget on CI's two cores). Neither changes what a test checks."""

from __future__ import annotations

import gc
import os
import sys

import pytest

# torch's OpenMP threads spin for a while after each parallel region (libgomp's default), taking
# the core the other test worker needs: test_calibrate, test_validate, test_graphs and
# test_attention took 28-47 s of CPU so, 13-15 s with passive threads, which sleep instead.
# libgomp reads this when torch loads, after this file; a policy the caller set is kept. No test
# bounds a kernel's time from above (the calibration test bounds a GEMM's from below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_GC_THRESHOLD = gc.get_threshold()


def pytest_configure(config: pytest.Config) -> None:
    """Collect young garbage cycles every 50,000 allocations instead of 700: the tests allocate
    millions of short-lived objects (SimPy events, batches, the ASTs pytest rewrites), and with
    torch and matplotlib loaded the collections took 5-7 % of the suite's CPU. Cycles are still
    collected, in larger batches."""
    gc.set_threshold(50_000, 20, 20)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What is alive once the tests are collected (modules, torch, fixtures' definitions) lives
    to the end: freeze it out of the full collections that would walk it again and again."""
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.unfreeze()  # mutmut runs pytest in one process several times
    gc.set_threshold(*_GC_THRESHOLD)


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
