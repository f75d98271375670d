"""How a study (sweep, plan) runs one scenario: a function from a Scenario to its metrics.

Sweeps and plans take a Runner so that their tests can stand in for the simulator; the default
is `momentsim run`'s own path, with the same checks and the same metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.serving.scenario import Scenario

Runner = Callable[[Scenario], dict[str, Any]]


def default_runner(sc: Scenario) -> dict[str, Any]:
    """Simulate and summarise (the engine loads only when a scenario really runs)."""
    from simulator.reports.run import run_scenario

    return run_scenario(sc)
