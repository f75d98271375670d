"""The SWEEP.yaml schema: a base scenario, a grid and explicit points of dotted paths into it,
seeds; and the records of a point and of a whole sweep."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from simulator.serving.scenario import MAX_SEED, Scenario, Strict

MAX_POINTS = 20_000  # points of one sweep: counted before any is built (a grid can be 10^9)


# -- the SWEEP.yaml schema -----------------------------------------------------------------------
class Range(Strict):
    """`{from, to, steps}`: evenly spaced values, geometric with `log: true`. Integer ends whose
    values all land on integers stay integers (`serving.tp: {from: 1, to: 8, steps: 4, log: true}`
    is 1, 2, 4, 8: a tp of 2.0 would not validate), otherwise values are floats."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: int | float = Field(alias="from", ge=-1e15, le=1e15)
    to: int | float = Field(ge=-1e15, le=1e15)
    steps: int = Field(ge=1, le=MAX_POINTS)
    log: bool = False

    @model_validator(mode="after")
    def _positive_for_log(self) -> Range:
        if self.log and (self.from_ <= 0 or self.to <= 0):
            raise ValueError("log: true needs from > 0 and to > 0")
        return self

    def values(self) -> list[int | float]:
        a, b, n = float(self.from_), float(self.to), self.steps
        if n == 1:
            xs = [a]
        elif self.log:
            xs = [a * (b / a) ** (i / (n - 1)) for i in range(n)]
        else:
            xs = [a + (b - a) * i / (n - 1) for i in range(n)]
        if isinstance(self.from_, int) and isinstance(self.to, int) and all(abs(x - round(x)) < 1e-9 for x in xs):
            return [round(x) for x in xs]
        return [float(f"{x:.6g}") for x in xs]  # 6 digits: readable columns, exact enough


class Sweep(Strict):
    """The one description of a SWEEP.yaml; its errors are the CLI's one-line messages."""

    name: str = "sweep"
    description: str = ""
    base: dict[str, Any] | str = Field(description="a scenario mapping or a path to a scenario YAML")
    grid: dict[str, list[Any] | Range] = Field(default_factory=dict, description="dotted path -> values")
    points: list[dict[str, Any]] = Field(default_factory=list, description="explicit points: dotted path -> value")
    repeats: int = Field(default=1, ge=1, le=10_000, description="run each point with seeds seed, seed+1, ...")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        default=None, description="run each point once per seed")

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, g: dict[str, Any]) -> dict[str, Any]:
        for k, v in g.items():
            if isinstance(v, list) and not v:
                raise ValueError(f"grid.{k}: give at least one value")
        return g

    @model_validator(mode="after")
    def _seeds(self) -> Sweep:
        if self.seeds is not None and self.repeats != 1:
            raise ValueError("give either repeats or seeds, not both")
        if self.seeds is not None and not self.seeds:
            raise ValueError("seeds: give at least one seed")
        return self


@dataclass
class Point:
    """One scenario of the sweep: its index, the values that vary, and its resume key."""

    index: int
    overrides: dict[str, Any]
    scenario: Scenario
    key: str


class Status(str, Enum):
    """A row of results.csv: how its point ended. `ok` and `overloaded` points have metrics;
    an overloaded one's queue grew without bound (metrics.overload), so its latency is not a
    steady state and it never enters a Pareto front."""

    OK = "ok"
    OVERLOADED = "overloaded"
    EMPTY = "no completions"  # every request rejected: the run has no latency at all
    ERROR = "error"
    MISSING = "missing"       # not run yet (an interrupted sweep)


MEASURED = (Status.OK.value, Status.OVERLOADED.value)  # rows whose latency and throughput are numbers


@dataclass
class SweepResult:
    out: Path
    rows: list[dict[str, Any]]
    swept: list[str]                      # result columns that vary (short names where they exist)
    ran: int = 0
    resumed: int = 0
    wall_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def count(self, *status: Status) -> int:
        return sum(r["status"] in {s.value for s in status} for r in self.rows)

    @property
    def ok(self) -> int:
        """Points that ran (overloaded or not, even with nothing completed)."""
        return self.count(Status.OK, Status.OVERLOADED, Status.EMPTY)

    @property
    def errors(self) -> int:
        return self.count(Status.ERROR)


def _axes(sw: Sweep) -> tuple[list[str], list[list[Any]], list[int] | None]:
    keys = list(sw.grid)
    values = [g.values() if isinstance(g, Range) else list(g) for g in sw.grid.values()]
    return keys, values, sw.seeds


def count_points(sw: Sweep) -> int:
    """How many points expand() yields, without building them."""
    _, values, seeds = _axes(sw)
    n_seeds = len(seeds) if seeds is not None else sw.repeats
    return len(sw.points or [{}]) * math.prod(len(v) for v in values) * n_seeds


def expand(sw: Sweep, base_seed: int = 0) -> Iterator[dict[str, Any]]:
    """The overrides of every point, one at a time: explicit points x grid product x seeds, in
    that order. `repeats: n` runs seeds base_seed .. base_seed + n - 1; `seeds:` lists them."""
    keys, values, seeds = _axes(sw)
    if seeds is None and sw.repeats > 1:
        seeds = [base_seed + i for i in range(sw.repeats)]
    for p in sw.points or [{}]:
        both = set(p) & set(keys)
        if both:
            raise ValueError(f"{sorted(both)[0]} is set in both grid and points")
        if seeds is not None and ("seed" in p or "seed" in keys):
            raise ValueError("seed is swept and also set by repeats/seeds")
        for combo in itertools.product(*values):
            o = {**p, **dict(zip(keys, combo, strict=True))}
            if seeds is None:
                yield o
            else:
                yield from ({**o, "seed": s} for s in seeds)
