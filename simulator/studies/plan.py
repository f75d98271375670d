"""`momentsim plan PLAN.yaml`: the cheapest configuration that meets an SLO at a target rate.

```yaml
model: llama-3-8b
workload: {num_requests: 3000, arrival: {process: poisson, rate: 20}, ...}   # rate = target
slo: {p99_ttft_ms: 1000, p99_tpot_ms: 60, goodput: 0.9}
candidates: [{hardware: h100-sxm}, {hardware: l4, price_per_hour: 0.7}]
search: {tp: [1, 2], pp: [1], max_replicas: 16, max_batch_size: [128], scheduler: [continuous]}
serving: {}        # optional fixed serving fields (mode, dtypes, router, ...)
seed: 0
```

Simulations are the expensive part, so the search avoids them wherever theory decides:
- memory: a (tp, pp) whose weights and one request's KV cache do not fit is never simulated,
  and since a smaller tp needs more memory per device, neither is any smaller tp;
- an analytic bound from the step-cost model: a replica decodes at most B / step_s(B)
  tokens per second (B = the batch cap, or what the KV cache holds), which ignores prefill and
  so over-estimates; replica counts below rate x output_len / that are never tried, and a
  configuration whose single-sequence decode step already exceeds the TPOT bound is skipped;
- monotonicity: if N replicas meet the SLO so do more, so the fewest replicas are found by
  galloping then bisection; configurations are visited cheapest-bound first and dropped when
  their lower-bound cost cannot beat the best found.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.errors import InputError, from_validation, load_mapping
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import check_parallelism, step_model
from simulator.moment.memory import footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Batch, Dtypes
from simulator.reports.progress import Progress
from simulator.serving.scenario import (
    MAX_SEED,
    MAX_SLO_MS,
    FromTrace,
    Scenario,
    Serving,
    Slo,
    Workload,
    local_path,
)
from simulator.studies.sweep import cost_per_m_tokens, write_csv

Runner = Callable[[Scenario], dict]


# -- the PLAN.yaml schema ------------------------------------------------------------------------
class Strict(BaseModel):
    """No unknown fields; numbers are numbers (not booleans or strings) and finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Degree = Annotated[int, Field(ge=1, le=1024)]


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
    scheduler: list[Literal["static", "continuous", "chunked"]] = Field(default=["continuous"], min_length=1)


class PlanSlo(Strict):
    p99_ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    p99_tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    goodput: float | None = Field(default=None, gt=0, le=1, description="share of requests within ttft_ms/tpot_ms")
    ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS,
                                  description="per-request TTFT bound of goodput (default p99_ttft_ms)")
    tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS,
                                  description="per-request TPOT bound of goodput (default p99_tpot_ms)")

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
    rate_steps: int = Field(default=5, ge=0, le=20, description="bisection steps for the highest sustainable rate")

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


# -- results -------------------------------------------------------------------------------------
@dataclass
class Check:
    """One simulation: did it meet the SLO, and by how much each bound was used (value / bound)."""

    replicas: int
    rate: float
    ok: bool
    ratios: dict[str, float]
    metrics: dict[str, Any]
    config: str = ""

    @property
    def worst(self) -> str | None:
        """The constraint nearest to (or furthest past) its bound."""
        return max(self.ratios, key=lambda k: self.ratios[k]) if self.ratios else None


@dataclass
class Config:
    tp: int
    pp: int
    max_batch_size: int
    scheduler: str
    status: str = "pending"       # ok | infeasible | pruned: memory | pruned: tp | pruned: TPOT bound | pruned: cost bound
    reason: str = ""
    replicas: int | None = None   # fewest that meet the SLO
    min_replicas: int = 1         # the analytic lower bound
    decode_tok_s: float | None = None  # analytic per-replica upper bound
    kv_tokens: int | None = None
    lb_cost_per_hour: float | None = None
    check: Check | None = None

    @property
    def label(self) -> str:
        pp = f" pp{self.pp}" if self.pp > 1 else ""
        return f"tp{self.tp}{pp} bs{self.max_batch_size} {self.scheduler}"


@dataclass
class CandidateResult:
    hardware: str
    name: str
    price_per_hour: float
    best: Config | None = None
    devices: int | None = None
    cost_per_hour: float | None = None
    cost_per_m_output_tokens: float | None = None
    max_rate: float | None = None
    binding: str | None = None
    configs: list[Config] = field(default_factory=list)
    runs: list[Check] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        b, m = self.best, (self.best.check.metrics if self.best and self.best.check else {})
        return {
            "hardware": self.name, "hardware_arg": self.hardware, "price_per_hour": self.price_per_hour,
            "feasible": b is not None, "tp": b.tp if b else None, "pp": b.pp if b else None,
            "replicas": b.replicas if b else None, "max_batch_size": b.max_batch_size if b else None,
            "scheduler": b.scheduler if b else None, "devices": self.devices, "cost_per_hour": self.cost_per_hour,
            "cost_per_m_output_tokens": self.cost_per_m_output_tokens,
            "output_tokens_per_s": m.get("output_tokens_per_s"), "p99_ttft_ms": _get(m, "ttft_ms", "p99"),
            "p99_tpot_ms": _get(m, "tpot_ms", "p99"), "goodput": _get(m, "goodput", "fraction"),
            "max_rate": self.max_rate, "binding": self.binding, "simulations": len(self.runs),
            "wall_s": round(self.wall_s, 2),
        }


def _get(m: dict[str, Any], a: str, b: str) -> Any:
    v = m.get(a)
    return v.get(b) if isinstance(v, dict) else None


# -- theory ----------------------------------------------------------------------------------------
def mean_len(spec: Any) -> float:
    """Mean of a length distribution (a trace has none: the planner needs a drawn workload)."""
    mean = spec.expected()
    if mean is None:
        raise InputError("workload", "prompt_len/output_len", "a plan needs drawn lengths, not dist: trace")
    return mean


def decode_bound(model: ModelSpec, hw: Hardware, tp: int, pp: int, mode: str, dt: Dtypes, batch: int,
                 kv_tokens: int, prompt: float, async_scheduling: bool = False) -> tuple[float, float]:
    """(an upper bound on one replica's decode tokens/s, the decode step of one sequence in s).

    The batch is the cap or what the KV cache holds at the shortest context a decode sees (the
    prompt); contexts are set to the prompt, so steps are no longer than real ones; prefill is
    left out; a pipeline keeps up to pp batches in flight. Every choice errs high."""
    sm = step_model(model, hw, tp, pp, mode, dt, async_scheduling)
    ctx = max(1, int(prompt))
    b = max(1, min(batch, kv_tokens // ctx))
    step_b = sm.step_s(Batch(decode_seqs=b, decode_ctx=b * ctx))
    step_1 = sm.step_s(Batch(decode_seqs=1, decode_ctx=ctx))
    return b / step_b * pp, step_1


# -- simulations -----------------------------------------------------------------------------------
def _default_runner(sc: Scenario) -> dict:
    from simulator.reports.run import run_scenario

    return run_scenario(sc)


def evaluate(metrics: dict[str, Any], slo: PlanSlo) -> tuple[bool, dict[str, float]]:
    """Whether a run meets the SLO, and each constraint's value / bound (> 1 is a miss)."""
    ratios: dict[str, float] = {}
    if slo.p99_ttft_ms is not None:
        v = _get(metrics, "ttft_ms", "p99")
        ratios["TTFT"] = math.inf if v is None else v / slo.p99_ttft_ms
    if slo.p99_tpot_ms is not None:
        v = _get(metrics, "tpot_ms", "p99")
        ratios["TPOT"] = 0.0 if v is None else v / slo.p99_tpot_ms  # one-token replies have no TPOT
    if slo.goodput is not None:
        g = _get(metrics, "goodput", "fraction")
        ratios["goodput"] = math.inf if not g else slo.goodput / g
    req = metrics.get("requests") or {}
    if slo.goodput is None and req.get("rejected"):
        ratios["rejected"] = math.inf
    return all(r <= 1.0 for r in ratios.values()), ratios


class _Search:
    """The search over one candidate part; simulations are cached by (config, replicas, rate)."""

    def __init__(self, plan: Plan, cand: Candidate, base_dir: Path, runner: Runner | None):
        self.plan, self.cand, self.runner = plan, cand, runner or _default_runner
        self.hw_arg = local_path(cand.hardware, base_dir)
        self.hw = load_hardware(self.hw_arg)
        self.model = load_model(plan.model)
        price = cand.price_per_hour if cand.price_per_hour is not None else self.hw.price_per_hour
        if price is None:
            raise InputError("candidates", cand.hardware, "the hardware has no price_per_hour: give price_per_hour")
        self.price = float(price)
        self.serving = Serving.model_validate(plan.serving)
        s = self.serving
        self.dt = Dtypes(weight=s.weight_dtype, act=s.act_dtype, kv=s.kv_dtype)
        self.prompt = mean_len(plan.workload.prompt_len)
        self.output = mean_len(plan.workload.output_len)
        self.slo = plan.slo.scenario_slo()
        self.cache: dict[tuple, Check] = {}
        self.result = CandidateResult(cand.hardware, self.hw.name, self.price)

    def scenario(self, c: Config, replicas: int, rate: float) -> Scenario:
        s = self.serving.model_copy(update={"tp": c.tp, "pp": c.pp, "replicas": replicas,
                                            "max_batch_size": c.max_batch_size, "scheduler": c.scheduler})
        arr = self.plan.workload.arrival.model_copy(update={"rate": rate})
        wl = self.plan.workload.model_copy(update={"arrival": arr})
        return Scenario(name=f"{self.plan.name}/{self.hw.name}/{c.label}/x{replicas}@{rate:.4g}",
                        model=self.plan.model, hardware=self.hw_arg, serving=s, workload=wl, slo=self.slo,
                        seed=self.plan.seed)

    def check(self, c: Config, replicas: int, rate: float) -> Check:
        key = (c.tp, c.pp, c.max_batch_size, c.scheduler, replicas, round(rate, 9))
        if key not in self.cache:
            m = self.runner(self.scenario(c, replicas, rate))
            ok, ratios = evaluate(m, self.plan.slo)
            ck = Check(replicas, rate, ok, ratios, m, c.label)
            self.cache[key] = ck
            self.result.runs.append(ck)
        return self.cache[key]

    # -- pruning by theory --
    def configs(self) -> list[Config]:
        sr, s = self.plan.search, self.serving
        out: list[Config] = []
        need = int(self.prompt + self.output)  # one average request must fit in the KV cache
        for pp in sorted(set(sr.pp)):
            smaller_fail = False
            for tp in sorted(set(sr.tp), reverse=True):  # a smaller tp needs more memory per device
                cs = [Config(tp, pp, mbs, sched) for mbs in sorted(set(sr.max_batch_size))
                      for sched in dict.fromkeys(sr.scheduler)]
                out += cs
                why = ""
                try:
                    check_parallelism(self.model, self.hw, tp, pp)
                except ValueError as e:
                    why = str(e)
                if why:
                    for c in cs:
                        c.status, c.reason = "pruned: tp", why
                    continue
                if smaller_fail:
                    for c in cs:
                        c.status, c.reason = "pruned: memory", "a larger tp does not fit (monotone)"
                    continue
                fp = footprint(self.model, self.hw, tp, pp, self.dt, s.gpu_memory_utilization, s.activation_reserve_gb)
                if fp.kv_capacity_tokens < need:
                    smaller_fail = True
                    for c in cs:
                        c.status = "pruned: memory"
                        c.reason = (f"{fp.weights_gb:.1f} GB weights leave KV for {fp.kv_capacity_tokens} tokens "
                                    f"of {fp.usable_gb:.1f} GB usable; one request needs {need}")
                    continue
                for c in cs:
                    c.kv_tokens = fp.kv_capacity_tokens
                    tok_s, step1 = decode_bound(self.model, self.hw, tp, pp, s.mode, self.dt, c.max_batch_size,
                                                fp.kv_capacity_tokens, self.prompt, s.async_scheduling)
                    c.decode_tok_s = tok_s
                    if self.plan.slo.p99_tpot_ms is not None and step1 * 1e3 > self.plan.slo.p99_tpot_ms:
                        c.status = "pruned: TPOT bound"
                        c.reason = f"a one-sequence decode step takes {step1 * 1e3:.2f} ms > p99 TPOT bound"
                        continue
                    c.min_replicas = max(1, math.ceil(self.plan.rate * self.output / tok_s - 1e-9))
                    c.lb_cost_per_hour = self.price * tp * pp * c.min_replicas
        return out

    def replica_options(self, lo: int) -> list[int]:
        sr = self.plan.search
        if sr.replicas is not None:
            return sorted(r for r in set(sr.replicas) if r >= lo)
        return list(range(lo, sr.max_replicas + 1))

    def fewest_replicas(self, c: Config, budget: float) -> tuple[Check | None, bool]:
        """The fewest replicas meeting the SLO (more never hurt: gallop, then bisect), among the
        counts whose cost stays within `budget`; None when none does, and whether the budget
        (rather than the search's replica limit) cut the search short."""
        every = self.replica_options(c.min_replicas)
        opts = [r for r in every if self.price * c.tp * c.pp * r <= budget]
        cut = len(opts) < len(every)
        if not opts:
            return None, cut
        last_fail, step, i = -1, 1, 0
        passed: Check | None = None
        pass_i = len(opts)
        while i < len(opts):
            ck = self.check(c, opts[i], self.plan.rate)
            c.check = ck
            if ck.ok:
                passed, pass_i = ck, i
                break
            last_fail = i
            if i == len(opts) - 1:
                break
            i = min(len(opts) - 1, i + step)
            step *= 2
        if passed is None:
            return None, cut
        lo, hi = last_fail, pass_i  # lo fails (or is -1), hi passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ck = self.check(c, opts[mid], self.plan.rate)
            if ck.ok:
                hi, passed = mid, ck
            else:
                lo = mid
        return passed, cut

    def describe(self, ck: Check) -> str:
        """The misses of one run in words: 'p99 TPOT 61.2 ms > 60 ms'."""
        s, m, out = self.plan.slo, ck.metrics, []
        for name, key, bound in (("TTFT", "ttft_ms", s.p99_ttft_ms), ("TPOT", "tpot_ms", s.p99_tpot_ms)):
            if ck.ratios.get(name, 0) > 1:
                out.append(f"p99 {name} {_f(_get(m, key, 'p99'), '.1f')} ms > {bound:g} ms")
        if ck.ratios.get("goodput", 0) > 1:
            out.append(f"goodput {_f(_get(m, 'goodput', 'fraction'), '.1%')} < {s.goodput:.0%}")
        if ck.ratios.get("rejected", 0) > 1:
            out.append(f"{(m.get('requests') or {}).get('rejected')} requests rejected")
        return "; ".join(out) or "meets the SLO"

    def max_rate(self, c: Config, replicas: int, lo: float, hi: float, steps: int) -> tuple[float, str | None]:
        """Bisect (geometrically) for the highest rate meeting the SLO, given lo passes and hi is
        past capacity; returns it and the constraint that broke first above it."""
        binding = None
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            ck = self.check(c, replicas, mid)
            if ck.ok:
                lo = mid
            else:
                hi, binding = mid, ck.worst
        if binding is None:  # never failed within the steps: name the tightest constraint
            ck = self.check(c, replicas, lo)
            binding = ck.worst
        return lo, binding

    def run(self) -> CandidateResult:
        t0 = time.perf_counter()
        res = self.result
        configs = self.configs()
        res.configs = configs
        live = sorted((c for c in configs if c.status == "pending"),
                      key=lambda c: (c.lb_cost_per_hour, -(c.decode_tok_s or 0)))
        best: Config | None = None
        best_cost = math.inf
        for c in live:
            if c.lb_cost_per_hour is not None and c.lb_cost_per_hour >= best_cost:
                c.status = "pruned: cost bound"
                c.reason = (f"at least {c.min_replicas} replica(s) = ${c.lb_cost_per_hour:.2f}/h, "
                            f"not below the ${best_cost:.2f}/h already found")
                continue
            ck, cut = self.fewest_replicas(c, best_cost - 1e-9)
            if ck is None:
                last = c.check
                if cut:
                    c.status, c.reason = "pruned: cost bound", f"needs more replicas than ${best_cost:.2f}/h buys"
                elif last is None:
                    c.status, c.reason = "infeasible", "no replica count allowed by search"
                else:
                    c.status = "infeasible"
                    c.reason = f"at {last.replicas} replicas (the most allowed): {self.describe(last)}"
                continue
            c.status, c.replicas, c.check = "ok", ck.replicas, ck
            cost = self.price * c.tp * c.pp * ck.replicas
            if cost < best_cost:
                best, best_cost = c, cost
        if best is not None and best.check is not None:
            res.best = best
            res.devices = best.tp * best.pp * (best.replicas or 1)
            res.cost_per_hour = best_cost
            res.cost_per_m_output_tokens = cost_per_m_tokens(self.price, res.devices,
                                                             best.check.metrics.get("output_tokens_per_s"))
            cap = (best.decode_tok_s or 0) * (best.replicas or 1) / max(self.output, 1.0)
            hi = max(cap, self.plan.rate * 1.01)
            res.max_rate, res.binding = self.max_rate(best, best.replicas or 1, self.plan.rate, hi,
                                                      self.plan.rate_steps)
        else:
            res.binding = self._why_none(configs)
        res.wall_s = time.perf_counter() - t0
        return res

    def _why_none(self, configs: list[Config]) -> str:
        if all(c.status.startswith("pruned: memory") or c.status == "pruned: tp" for c in configs):
            return "memory"
        if all(c.status.startswith("pruned") for c in configs):
            return "TPOT" if any(c.status == "pruned: TPOT bound" for c in configs) else "memory"
        tried = [c.check for c in configs if c.check is not None]
        if not tried:
            return "memory"
        nearest = min(tried, key=lambda k: max(k.ratios.values(), default=0))
        return nearest.worst or "unknown"


def plan_candidate(plan: Plan, cand: Candidate, base_dir: Path, runner: Runner | None = None) -> CandidateResult:
    """The cheapest configuration of one candidate part (a top-level function: picklable)."""
    return _Search(plan, cand, base_dir, runner).run()


def max_sustainable_rate(plan: Plan, cand: Candidate, base_dir: Path, tp: int, pp: int, max_batch_size: int,
                         scheduler: str, replicas: int, runner: Runner | None = None,
                         steps: int | None = None) -> float:
    """The highest rate one given configuration sustains within the SLO (0 when even a tiny
    rate misses). Bisects between 0 and the analytic capacity bound."""
    s = _Search(plan, cand, base_dir, runner)
    c = next((k for k in s.configs() if (k.tp, k.pp, k.max_batch_size, k.scheduler) == (tp, pp, max_batch_size, scheduler)), None)
    if c is None or c.status != "pending" or not c.decode_tok_s:
        return 0.0
    hi = c.decode_tok_s * replicas / max(s.output, 1.0)
    lo = hi / 256
    if not s.check(c, replicas, lo).ok:
        return 0.0
    return s.max_rate(c, replicas, lo, hi, steps if steps is not None else plan.rate_steps + 3)[0]


# -- the whole plan ------------------------------------------------------------------------------
@dataclass
class PlanResult:
    plan: Plan
    candidates: list[CandidateResult]
    wall_s: float

    @property
    def best(self) -> CandidateResult | None:
        ok = [c for c in self.candidates if c.cost_per_hour is not None]
        return min(ok, key=lambda c: (c.cost_per_hour, -(c.max_rate or 0))) if ok else None

    @property
    def simulations(self) -> int:
        return sum(len(c.runs) for c in self.candidates)


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        plan = Plan.model_validate(load_mapping(p))
    except ValidationError as e:
        raise from_validation(e, str(p)) from None
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


def run_plan(plan: Plan, base_dir: Path, runner: Runner | None = None, workers: int | None = None) -> PlanResult:
    """Every candidate's search, in parallel processes (one candidate each)."""
    t0 = time.perf_counter()
    n = min(len(plan.candidates), workers or os.cpu_count() or 1)
    if n <= 1:
        results = [plan_candidate(plan, c, base_dir, runner) for c in plan.candidates]
    else:
        with ProcessPoolExecutor(max_workers=n) as pool, Progress("plan", interval=0.0) as bar:
            futs = [pool.submit(plan_candidate, plan, c, base_dir, runner) for c in plan.candidates]
            for k, _ in enumerate(as_completed(futs), start=1):  # a plan takes a while: say it is alive
                bar(k / len(futs), f"{k}/{len(futs)} parts searched")
            results = [f.result() for f in futs]
    return PlanResult(plan, results, round(time.perf_counter() - t0, 2))


# -- outputs ---------------------------------------------------------------------------------------
def _config_rows(res: PlanResult) -> list[dict[str, Any]]:
    rows = []
    for cr in res.candidates:
        for c in cr.configs:
            m = c.check.metrics if c.check else {}
            rows.append({
                "hardware": cr.name, "tp": c.tp, "pp": c.pp, "max_batch_size": c.max_batch_size,
                "scheduler": c.scheduler, "status": c.status, "reason": c.reason, "replicas": c.replicas,
                "min_replicas_bound": c.min_replicas, "decode_tok_s_bound": c.decode_tok_s,
                "kv_tokens": c.kv_tokens, "lb_cost_per_hour": c.lb_cost_per_hour,
                "cost_per_hour": cr.price_per_hour * c.tp * c.pp * c.replicas if c.replicas else None,
                "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                "goodput": _get(m, "goodput", "fraction"), "output_tokens_per_s": m.get("output_tokens_per_s"),
            })
    return rows


def _run_rows(res: PlanResult) -> list[dict[str, Any]]:
    rows = []
    for cr in res.candidates:
        for r in cr.runs:
            m = r.metrics
            rows.append({"hardware": cr.name, "config": r.config, "replicas": r.replicas, "rate": r.rate,
                         "ok": r.ok, **{f"ratio_{k}": v for k, v in r.ratios.items()},
                         "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                         "goodput": _get(m, "goodput", "fraction"),
                         "output_tokens_per_s": m.get("output_tokens_per_s")})
    return rows


def write_outputs(res: PlanResult, out: Path) -> dict[str, str]:
    """plan.csv (one row per candidate), configs.csv, runs.csv and plan.png."""
    out.mkdir(parents=True, exist_ok=True)
    best = res.best
    rows = [{**c.summary(), "cheapest": c is best} for c in res.candidates]
    write_csv(rows, out / "plan.csv")
    write_csv(_config_rows(res), out / "configs.csv")
    runs = _run_rows(res)
    if runs:
        write_csv(runs, out / "runs.csv")
    files = {"plan": str(out / "plan.csv"), "configs": str(out / "configs.csv")}
    if runs:
        files["runs"] = str(out / "runs.csv")
    files["plot"] = plot_plan(res, out / "plan.png")
    return files


def plot_plan(res: PlanResult, path: Path) -> str:
    """Each part's USD per million output tokens and highest sustainable rate, the cheapest in red."""
    from simulator.reports.plots import plt, save  # matplotlib only when plotting (Agg)

    cands = res.candidates
    names = [c.name for c in cands]
    best = res.best
    colors = ["tab:red" if c is best else "tab:blue" for c in cands]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    costs = [c.cost_per_m_output_tokens or 0.0 for c in cands]
    axes[0].bar(names, costs, color=colors)
    for i, c in enumerate(cands):
        label = (f"{c.best.label}\nx{c.best.replicas}" if c.best else f"none\n({c.binding})")
        axes[0].annotate(label, (i, costs[i]), ha="center", va="bottom", fontsize=7)
    axes[0].set_ylim(0, max(costs + [1e-9]) * 1.25)  # room for the labels
    axes[0].set_ylabel("USD per million output tokens")
    axes[0].set_title(f"{res.plan.name}: cheapest configuration per part at {res.plan.rate:g} req/s")
    rates = [c.max_rate or 0.0 for c in cands]
    axes[1].bar(names, rates, color=colors)
    axes[1].set_ylim(0, max(rates + [res.plan.rate]) * 1.15)
    axes[1].axhline(res.plan.rate, color="k", ls="--", lw=1, label="target rate")
    for i, c in enumerate(cands):
        if c.binding:
            axes[1].annotate(c.binding, (i, rates[i]), ha="center", va="bottom", fontsize=7)
    axes[1].set_ylabel("highest sustainable rate (req/s)")
    axes[1].set_title("capacity of that configuration (binding constraint)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    return str(path)


def _f(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(res: PlanResult) -> str:
    p, s = res.plan, res.plan.slo
    bounds = [f"p99 TTFT <= {s.p99_ttft_ms:g} ms" if s.p99_ttft_ms else "",
              f"p99 TPOT <= {s.p99_tpot_ms:g} ms" if s.p99_tpot_ms else "",
              f"goodput >= {s.goodput:.0%}" if s.goodput else ""]
    lines = [f"plan {p.name}: {p.model} at {p.rate:g} req/s; SLO {', '.join(b for b in bounds if b)}"]
    head = ["hardware", "configuration", "devices", "$/hour", "$/M tok", "p99 TTFT", "p99 TPOT", "goodput",
            "max rate", "binding"]
    body = []
    order = sorted(res.candidates, key=lambda c: (c.cost_per_hour is None, c.cost_per_hour or 0.0))
    for c in order:
        d = c.summary()
        cfg = f"{c.best.label} x{c.best.replicas}" if c.best else "none meets the SLO"
        body.append([c.name + (" *" if c is res.best else ""), cfg, _f(d["devices"], "d"), _f(d["cost_per_hour"], ".2f"),
                     _f(d["cost_per_m_output_tokens"], ".3f"), _f(d["p99_ttft_ms"], ".0f"), _f(d["p99_tpot_ms"], ".1f"),
                     _f(d["goodput"], ".1%"), _f(d["max_rate"], ".1f"), d["binding"] or "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    b = res.best
    if b and b.best:
        lines.append(f"cheapest: {b.name} {b.best.label} x {b.best.replicas} replicas = {b.devices} devices, "
                     f"${b.cost_per_hour:.2f}/hour, ${_f(b.cost_per_m_output_tokens, '.3f')} per million output tokens")
    else:
        lines.append("no candidate meets the SLO at the target rate")
    lines.append(f"{res.simulations} simulations in {res.wall_s:.1f} s")
    return "\n".join(lines)


def to_json(res: PlanResult, files: dict[str, str]) -> dict[str, Any]:
    b = res.best
    return {
        "plan": res.plan.name, "model": res.plan.model, "target_rate": res.plan.rate,
        "slo": res.plan.slo.model_dump(exclude_none=True),
        "best": {**b.summary()} if b else None,
        "candidates": [c.summary() for c in res.candidates],
        "configs": _config_rows(res), "simulations": res.simulations, "wall_s": res.wall_s, "files": files,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    path = Path(args.plan)
    plan = load_plan(path)
    res = run_plan(plan, path.parent)
    out = Path(args.out) if args.out else path.parent / "out" / path.stem
    files = write_outputs(res, out)
    if args.json:
        print(json.dumps(to_json(res, files), default=_jsonable))
    else:
        print(format_table(res))
        print(f"outputs: {out}/ (plan.csv, configs.csv, runs.csv, plan.png)")
    return 0 if res.best else 1


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)
