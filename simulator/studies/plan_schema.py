"""The PLAN.yaml schema: the model, the target workload and SLO, the candidate parts and the
search space; `load_plan` validates it all (one InputError line for any mistake)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from hwmodels.errors import InputError, from_validation, load_mapping
from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.serving.scenario import (
    MAX_SEED,
    MAX_SLO_MS,
    SCHEDULER_NAMES,
    FromTrace,
    Serving,
    Slo,
    Strict,
    Workload,
    local_path,
)

Degree = Annotated[int, Field(ge=1, le=1024)]  # tp or pp


# -- the PLAN.yaml schema ------------------------------------------------------------------------
class Candidate(Strict):
    hardware: str = Field(description="preset name, hardware YAML or profile JSON")
    price_per_hour: float | None = Field(default=None, ge=0, le=10_000,
                                         description="USD per device-hour; default: the hardware's")


class Search(Strict):
    tp: list[Degree] = Field(default=[1], min_length=1, max_length=64)
    pp: list[Degree] = Field(default=[1], min_length=1, max_length=64)
    replicas: list[Annotated[int, Field(ge=1, le=100_000)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="replica counts to allow")
    max_replicas: int = Field(default=16, ge=1, le=100_000, description="when replicas is not listed: 1..max")
    max_batch_size: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default=[64], min_length=1, max_length=64)
    scheduler: list[Literal[SCHEDULER_NAMES]] = Field(default=["continuous"], min_length=1,  # type: ignore[valid-type]
                                                      max_length=len(SCHEDULER_NAMES))
    pd_ratios: list[Annotated[str, Field(max_length=16)]] = Field(default=[], max_length=32, description=(
        "disaggregated prefill:decode replica ratios to try beside colocated serving, as \"P:D\" (\"1:2\": "
        "x units of 1 prefill and 2 decode replicas); the replica count then counts units"))
    colocated: bool = Field(default=True, description="also try colocated serving (prefill and decode on each replica)")

    @model_validator(mode="after")
    def _ratios(self) -> Search:
        for r in self.pd_ratios:
            p, _, d = r.partition(":")
            if not (p.strip().isdigit() and d.strip().isdigit() and 1 <= int(p) <= 1000 and 1 <= int(d) <= 1000):
                raise ValueError(f"pd_ratios: {r!r} is not P:D with whole numbers from 1 to 1000, e.g. \"1:2\"")
        if not self.colocated and not self.pd_ratios:
            raise ValueError("colocated: false needs pd_ratios to try")
        return self

    @property
    def ratios(self) -> list[tuple[int, int]]:
        return [(int(r.partition(":")[0]), int(r.partition(":")[2])) for r in self.pd_ratios]


class PlanSlo(Strict):
    p99_ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    p99_tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    goodput: float | None = Field(default=None, gt=0, le=1, description="share of requests within ttft_ms/tpot_ms")
    ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS,
                                  description="per-request TTFT bound of goodput (default p99_ttft_ms)")
    tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS,
                                  description="per-request TPOT bound of goodput (default p99_tpot_ms)")
    headroom: float = Field(default=0.1, ge=0, le=0.9, description=(
        "keep the answer this share below every limit: p99s at most (1 - headroom) x their bound, "
        "goodput misses at most (1 - headroom) x the misses allowed"))

    @model_validator(mode="after")
    def _some(self) -> PlanSlo:
        if self.p99_ttft_ms is None and self.p99_tpot_ms is None and self.goodput is None:
            raise ValueError("give at least one of p99_ttft_ms, p99_tpot_ms, goodput")
        if self.goodput is not None and (self.ttft_ms or self.p99_ttft_ms) is None and \
                (self.tpot_ms or self.p99_tpot_ms) is None:
            raise ValueError("goodput needs a per-request bound: ttft_ms/tpot_ms or the p99 bounds")
        return self

    def scenario_slo(self) -> Slo:
        return Slo(ttft_ms=self.ttft_ms or self.p99_ttft_ms, tpot_ms=self.tpot_ms or self.p99_tpot_ms,
                   p99_ttft_ms=self.p99_ttft_ms, p99_tpot_ms=self.p99_tpot_ms)


class Plan(Strict):
    name: str = "plan"
    description: str = ""
    model: str
    workload: Workload
    slo: PlanSlo
    candidates: list[Candidate] = Field(min_length=1, max_length=100)
    search: Search = Search()
    serving: dict[str, Any] = Field(default_factory=dict, description="fixed serving fields")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    seeds: int = Field(default=3, ge=3, le=100, description=(
        "an answer must meet the SLO under each of the seeds seed, seed+1, ..., seed+seeds-1"))
    rate_steps: int = Field(default=5, ge=0, le=20, description="bisection steps for the highest sustainable rate")
    electricity_usd_per_kwh: float | None = Field(default=None, ge=0, le=10, description=(
        "price of electricity: a configuration then costs its devices' hourly price plus the energy its "
        "simulated runs draw (their average power, simulator/moment/power.py) at this price"))

    @model_validator(mode="after")
    def _rate(self) -> Plan:
        if self.workload.arrival.process not in ("poisson", "gamma"):
            raise ValueError("workload.arrival.process must be poisson or gamma with a rate (the target rate)")
        clash = {"tp", "pp", "replicas", "max_batch_size", "scheduler"} & set(self.serving)
        if clash:
            raise ValueError(f"serving.{sorted(clash)[0]} is searched: set it under search")
        return self

    @property
    def rate(self) -> float:
        return float(self.workload.arrival.rate or 0.0)


def overrides(data: dict[str, Any], where: str, rate: float | None = None, slo: Sequence[str] = ()) -> dict[str, Any]:
    """`plan --rate R --slo KEY=VALUE ...` on a raw plan mapping: the target rate and any field of
    `slo` (VALUE read as YAML), as if written in the file."""
    if rate is not None:
        wl = data.setdefault("workload", {})
        if isinstance(wl, dict):
            arr = wl.setdefault("arrival", {})
            if isinstance(arr, dict):
                arr["rate"] = rate
    if slo and not isinstance(data.get("slo"), dict):
        data["slo"] = {}
    for text in slo:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or key not in PlanSlo.model_fields:
            raise InputError(where, f"--slo {text}", f"expected KEY=VALUE with KEY one of {', '.join(PlanSlo.model_fields)}")
        try:
            data["slo"][key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise InputError(where, f"--slo {key}", f"{raw!r} is not a YAML value") from None
    return data


def load_plan(path: str | Path, rate: float | None = None, slo: Sequence[str] = ()) -> Plan:
    """Read and validate a plan and everything it names, with the command line's overrides."""
    p = Path(path)
    try:
        plan = Plan.model_validate(overrides(load_mapping(p), str(p), rate, slo))
    except ValidationError as e:
        err = from_validation(e, str(p))
        flag = (" (given by --rate)" if rate is not None and err.field == "workload.arrival.rate"
                else " (given by --slo)" if slo and err.field.startswith("slo") else "")
        raise InputError(err.where, err.field, err.message + flag) from None
    try:
        load_model(plan.model)
    except InputError as e:
        raise InputError(str(p), "model", e.message) from None
    try:
        Serving.model_validate(plan.serving)
    except ValidationError as e:
        err = from_validation(e, str(p))
        raise InputError(str(p), f"serving.{err.field}", err.message) from None
    for i, c in enumerate(plan.candidates):
        try:
            h = load_hardware(local_path(c.hardware, p.parent))
        except InputError as e:
            raise InputError(str(p), f"candidates[{i}].hardware", e.message) from None
        if c.price_per_hour is None and h.price_per_hour is None:
            raise InputError(str(p), f"candidates[{i}].price_per_hour", f"{h.name} has no price_per_hour; give one")
    for spec, name in ((plan.workload.prompt_len, "prompt_len"), (plan.workload.output_len, "output_len")):
        if isinstance(spec, FromTrace):
            raise InputError(str(p), f"workload.{name}", "a plan needs drawn lengths (fixed, uniform, lognormal)")
    return plan
