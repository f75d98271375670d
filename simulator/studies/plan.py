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

`search.pd_ratios: ["1:1", "1:2"]` adds disaggregated configurations: x units of P prefill and D
decode replicas of the part (serving.disaggregated; the replica count searched is then x, and the
decode bound counts the D x decoding replicas). `electricity_usd_per_kwh` prices the energy the
runs draw beside the devices' hourly price.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import check_parallelism, step_model
from simulator.moment.memory import footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Batch, Dtypes
from simulator.reports.progress import Progress
from simulator.serving.scenario import (
    Disaggregated,
    PoolSpec,
    Scenario,
    Serving,
    local_path,
)
from simulator.studies.plan_schema import Candidate, Plan, PlanSlo
from simulator.studies.runner import Runner, default_runner
from simulator.studies.sweep_report import cost_per_m_tokens

# -- results -------------------------------------------------------------------------------------
SPREAD = {"p99_ttft_ms": ("ttft_ms", "p99"), "p99_tpot_ms": ("tpot_ms", "p99"), "goodput": ("goodput", "fraction"),
          "output_tokens_per_s": ("output_tokens_per_s", None)}


@dataclass
class Check:
    """One (configuration, replicas, rate), simulated under one seed or more. It meets the SLO
    when every seed run does (with the headroom); `ratios` are the share of each limit used by
    the worst seed (value / bound; goodput: misses / misses allowed), `metrics` that seed's run."""

    replicas: int
    rate: float
    config: str = ""
    ok: bool = True
    ratios: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    by_seed: list[dict[str, Any]] = field(default_factory=list)  # each seed's metrics, in seed order
    seed_ok: list[bool] = field(default_factory=list)
    seed_ratios: list[dict[str, float]] = field(default_factory=list)
    worst_seed: int | None = None  # the seed whose run `metrics` is

    def add(self, seed: int, metrics: dict[str, Any], ok: bool, ratios: dict[str, float]) -> None:
        """One more seed's run: the check fails if it fails; the worst seed sets the ratios."""
        if not self.seeds or max(ratios.values(), default=0.0) > max(self.ratios.values(), default=0.0):
            self.metrics, self.worst_seed = metrics, seed
        self.seeds.append(seed)
        self.by_seed.append(metrics)
        self.seed_ok.append(ok)
        self.seed_ratios.append(ratios)
        self.ok = self.ok and ok
        self.ratios = {k: max(v, self.ratios.get(k, -math.inf)) for k, v in ratios.items()}

    @property
    def worst(self) -> str | None:
        """The constraint nearest to (or furthest past) its bound."""
        return max(self.ratios, key=lambda k: self.ratios[k]) if self.ratios else None

    def spread(self) -> dict[str, dict[str, float | None]]:
        """min, mean and max over the seeds run of p99 TTFT, p99 TPOT, goodput and throughput."""
        out: dict[str, dict[str, float | None]] = {}
        for name, (a, b) in SPREAD.items():
            v = [x for x in (_get(m, a, b) for m in self.by_seed) if isinstance(x, (int, float))]
            out[name] = ({"min": min(v), "mean": sum(v) / len(v), "max": max(v)} if v
                         else {"min": None, "mean": None, "max": None})
        return out


class ConfigStatus(str, Enum):
    """What became of one configuration of a candidate part."""

    PENDING = "pending"
    OK = "ok"                            # meets the SLO; `replicas` is the fewest that do
    INFEASIBLE = "infeasible"            # simulated, and no replica count allowed meets the SLO
    PRUNED_MEMORY = "pruned: memory"     # the weights and one request's KV do not fit
    PRUNED_TP = "pruned: tp"             # tp/pp do not divide the model
    PRUNED_TPOT = "pruned: TPOT bound"   # one sequence's decode step is already over the TPOT limit
    PRUNED_COST = "pruned: cost bound"   # cannot be cheaper than the best already found


PRUNED_NOT_TRIED = (ConfigStatus.PRUNED_MEMORY, ConfigStatus.PRUNED_TP)


@dataclass
class Config:
    tp: int
    pp: int
    max_batch_size: int
    scheduler: str
    pd: tuple[int, int] | None = None  # disaggregated: a unit of P prefill and D decode replicas
    status: ConfigStatus = ConfigStatus.PENDING
    reason: str = ""
    replicas: int | None = None   # fewest that meet the SLO
    min_replicas: int = 1         # the analytic lower bound
    decode_tok_s: float | None = None  # analytic per-replica upper bound
    kv_tokens: int | None = None
    lb_cost_per_hour: float | None = None
    check: Check | None = None    # the answer (ok), else the last simulated point
    fewer: Check | None = None    # ok: the same with one replica fewer, when it was simulated

    @property
    def label(self) -> str:
        pp = f" pp{self.pp}" if self.pp > 1 else ""
        pd = f" P:D {self.pd[0]}:{self.pd[1]}" if self.pd else ""
        return f"tp{self.tp}{pp} bs{self.max_batch_size} {self.scheduler}{pd}"

    def devices(self, replicas: int) -> int:
        """Devices of `replicas` replicas (disaggregated: units of P + D replicas)."""
        return self.tp * self.pp * replicas * (sum(self.pd) if self.pd else 1)

    def decoders(self, replicas: int) -> int:
        """Replicas that decode: all of them, or D per unit."""
        return replicas * (self.pd[1] if self.pd else 1)


@dataclass
class CandidateResult:
    hardware: str
    name: str
    price_per_hour: float
    usd_per_kwh: float = 0.0      # electricity (plan.electricity_usd_per_kwh; 0: not priced)
    idle_kw: float = 0.0          # one device's idle power: the least its electricity can cost
    best: Config | None = None
    devices: int | None = None
    cost_per_hour: float | None = None
    cost_per_m_output_tokens: float | None = None
    max_rate: float | None = None
    binding: str | None = None
    configs: list[Config] = field(default_factory=list)
    runs: list[Check] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def simulations(self) -> int:
        return sum(len(ck.seeds) for ck in self.runs)

    def bound_per_hour(self, devices: int) -> float:
        """The least `devices` can cost an hour: their price and, if electricity is priced, idle power."""
        return devices * (self.price_per_hour + self.idle_kw * self.usd_per_kwh)

    def electricity_per_hour(self, ck: Check | None) -> float:
        """USD an hour for the energy a check's runs drew (their mean average power over the seeds)."""
        if not self.usd_per_kwh or ck is None:
            return 0.0
        watts = [_get(m, "energy", "avg_power_w") for m in ck.by_seed]
        watts = [w for w in watts if isinstance(w, (int, float))]
        return sum(watts) / len(watts) / 1e3 * self.usd_per_kwh if watts else 0.0

    def cost_per_hour_of(self, c: Config, ck: Check) -> float:
        """A simulated configuration's hourly cost: its devices' price plus the electricity it drew."""
        return self.price_per_hour * c.devices(ck.replicas) + self.electricity_per_hour(ck)

    def summary(self) -> dict[str, Any]:
        """The answer for this part: p99s and goodput are the worst over its seeds (`spread`: their
        min, mean and max), throughput and cost the seeds' mean; `limit_used` is the share of each
        limit it uses at the target rate, `nearest_limit` the largest of those, and `binding` the
        constraint that breaks first above `max_rate`."""
        b = self.best
        ck = b.check if b else None
        spread = ck.spread() if ck else {}
        worst = {k: (v["min"] if k == "goodput" else v["max"]) for k, v in spread.items()}
        fewer = b.fewer if b else None
        return {
            "hardware": self.name, "hardware_arg": self.hardware, "price_per_hour": self.price_per_hour,
            "feasible": b is not None, "tp": b.tp if b else None, "pp": b.pp if b else None,
            "replicas": b.replicas if b else None, "max_batch_size": b.max_batch_size if b else None,
            "scheduler": b.scheduler if b else None, "devices": self.devices, "cost_per_hour": self.cost_per_hour,
            "electricity_per_hour": self.electricity_per_hour(ck) if ck and self.usd_per_kwh else None,
            "avg_power_w": _mean_of(ck, "energy", "avg_power_w") if ck else None,
            "energy_j_per_token": _mean_of(ck, "energy_j_per_token", None) if ck else None,
            "cost_per_m_output_tokens": self.cost_per_m_output_tokens,
            "output_tokens_per_s": (spread.get("output_tokens_per_s") or {}).get("mean"),
            "p99_ttft_ms": worst.get("p99_ttft_ms"), "p99_tpot_ms": worst.get("p99_tpot_ms"),
            "goodput": worst.get("goodput"), "seeds": ck.seeds if ck else [], "spread": spread,
            "limit_used": dict(ck.ratios) if ck else {}, "nearest_limit": ck.worst if ck else None,
            "one_replica_fewer": ({"replicas": fewer.replicas, "fails_on": fewer.worst,
                                   "limit_used": dict(fewer.ratios)} if fewer else None),
            "max_rate": self.max_rate, "binding": self.binding, "simulations": self.simulations,
            "wall_s": round(self.wall_s, 2),
        }


def _get(m: dict[str, Any], a: str, b: str | None) -> Any:
    v = m.get(a)
    if b is None:
        return v
    return v.get(b) if isinstance(v, dict) else None


def _mean_of(ck: Check, a: str, b: str | None) -> float | None:
    """The mean over a check's seeds of a metric (None where no seed has it)."""
    v = [x for x in (_get(m, a, b) for m in ck.by_seed) if isinstance(x, (int, float))]
    return sum(v) / len(v) if v else None


def _f(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


# -- theory ----------------------------------------------------------------------------------------
def mean_len(spec: Any) -> float:
    """Mean of a length distribution (a trace has none: the planner needs a drawn workload)."""
    mean = spec.expected()
    if mean is None:
        raise InputError("workload", "prompt_len/output_len", "a plan needs drawn lengths, not dist: trace")
    return mean


def decode_bound(model: ModelSpec, hw: Hardware, tp: int, pp: int, mode: str, dt: Dtypes, batch: int,
                 kv_tokens: int, prompt: float, async_scheduling: bool = False, ep: int = 1,
                 moe_imbalance: float = 1.0) -> tuple[float, float]:
    """(an upper bound on one replica's decode tokens/s, the decode step of one sequence in s).

    The batch is the cap or what the KV cache holds at the shortest context a decode sees (the
    prompt); contexts are set to the prompt, so steps are no longer than real ones; prefill is
    left out; a pipeline keeps up to pp batches in flight. Every choice errs high."""
    sm = step_model(model, hw, tp, pp, mode, dt, async_scheduling, ep, moe_imbalance)
    ctx = max(1, int(prompt))
    b = max(1, min(batch, kv_tokens // ctx))
    step_b = sm.step_s(Batch(decode_seqs=b, decode_ctx=b * ctx))
    step_1 = sm.step_s(Batch(decode_seqs=1, decode_ctx=ctx))
    return b / step_b * pp, step_1


# -- simulations -----------------------------------------------------------------------------------
def evaluate(metrics: dict[str, Any], slo: PlanSlo) -> tuple[bool, dict[str, float]]:
    """Whether one run meets the SLO with its headroom, and the share of each limit it uses:
    p99 / bound for TTFT and TPOT, misses / misses allowed for goodput. It meets the SLO when
    every share is at most 1 - headroom. A run whose queue grows without bound ("throughput")
    or that rejects requests (when no goodput target allows for them) fails whatever its
    percentiles say: they measure the run's length, not the server."""
    ratios: dict[str, float] = {}
    if slo.p99_ttft_ms is not None:
        v = _get(metrics, "ttft_ms", "p99")
        ratios["TTFT"] = math.inf if v is None else v / slo.p99_ttft_ms
    if slo.p99_tpot_ms is not None:
        v = _get(metrics, "tpot_ms", "p99")
        ratios["TPOT"] = 0.0 if v is None else v / slo.p99_tpot_ms  # one-token replies have no TPOT
    if slo.goodput is not None:
        g = _get(metrics, "goodput", "fraction")
        allowed = 1.0 - slo.goodput
        misses = 1.0 if g is None else 1.0 - g
        ratios["goodput"] = misses / allowed if allowed > 0 else (0.0 if misses <= 0 else math.inf)
    req = metrics.get("requests") or {}
    if slo.goodput is None and req.get("rejected"):
        ratios["rejected"] = math.inf
    if metrics.get("overloaded"):
        ratios["throughput"] = math.inf
    limit = 1.0 - slo.headroom
    return all(r <= limit for r in ratios.values()), ratios


class _Search:
    """The search over one candidate part; simulations are cached by (config, replicas, rate)."""

    def __init__(self, plan: Plan, cand: Candidate, base_dir: Path, runner: Runner | None):
        self.plan, self.cand, self.runner = plan, cand, runner or default_runner
        self.hw_arg = local_path(cand.hardware, base_dir)
        self.hw = load_hardware(self.hw_arg)
        self.model = load_model(plan.model)
        price = cand.price_per_hour if cand.price_per_hour is not None else self.hw.price_per_hour
        if price is None:
            raise InputError("candidates", cand.hardware, "the hardware has no price_per_hour: give price_per_hour")
        self.price = float(price)
        self.serving = Serving.model_validate(plan.serving)
        s = self.serving
        self.dt = Dtypes.of(self.model, s.weight_dtype, s.act_dtype, s.kv_dtype, plain="bf16")
        self.prompt = mean_len(plan.workload.prompt_len)
        self.output = mean_len(plan.workload.output_len)
        self.slo = plan.slo.scenario_slo()
        self.cache: dict[tuple, Check] = {}
        power = self.hw.device.power
        self.result = CandidateResult(cand.hardware, self.hw.name, self.price, plan.electricity_usd_per_kwh or 0.0,
                                      power.idle_w / 1e3 if power else 0.0)

    def scenario(self, c: Config, replicas: int, rate: float, seed: int) -> Scenario:
        s = self.serving.model_copy(update={"tp": c.tp, "pp": c.pp, "replicas": replicas,
                                            "max_batch_size": c.max_batch_size, "scheduler": c.scheduler})
        fixed = self.serving.disaggregated  # the plan's serving may fix the transfer of its P/D configurations
        s = s.model_copy(update={"disaggregated": Disaggregated(
            prefill=PoolSpec(replicas=c.pd[0] * replicas), decode=PoolSpec(replicas=c.pd[1] * replicas),
            **({"transfer": fixed.transfer} if fixed else {})) if c.pd else None})
        arr = self.plan.workload.arrival.model_copy(update={"rate": rate})
        wl = self.plan.workload.model_copy(update={"arrival": arr})
        return Scenario(name=f"{self.plan.name}/{self.hw.name}/{c.label}/x{replicas}@{rate:.4g}",
                        model=self.plan.model, hardware=self.hw_arg, serving=s, workload=wl, slo=self.slo,
                        seed=seed)

    def check(self, c: Config, replicas: int, rate: float) -> Check:
        """Simulate under the plan's seeds in turn, stopping at the first that fails: a pass
        needs every seed, a failure one (so a miss costs one simulation, a pass `seeds`)."""
        key = (c.tp, c.pp, c.max_batch_size, c.scheduler, c.pd, replicas, round(rate, 9))
        ck = self.cache.get(key)
        if ck is None:
            ck = self.cache[key] = Check(replicas, rate, c.label)
            self.result.runs.append(ck)
        for seed in range(self.plan.seed + len(ck.seeds), self.plan.seed + self.plan.seeds):
            if not ck.ok:
                break
            m = self.runner(self.scenario(c, replicas, rate, seed))
            ck.add(seed, m, *evaluate(m, self.plan.slo))
        return ck

    # -- pruning by theory --
    def configs(self) -> list[Config]:
        sr, s = self.plan.search, self.serving
        out: list[Config] = []
        need = int(self.prompt + self.output)  # one average request must fit in the KV cache
        slo = self.plan.slo
        tpot_limit = None if slo.p99_tpot_ms is None else slo.p99_tpot_ms * (1 - slo.headroom)
        for pp in sorted(set(sr.pp)):
            smaller_fail = False
            for tp in sorted(set(sr.tp), reverse=True):  # a smaller tp needs more memory per device
                layouts = ([None] if sr.colocated else []) + sr.ratios
                cs = [Config(tp, pp, mbs, sched, pd) for pd in layouts for mbs in sorted(set(sr.max_batch_size))
                      for sched in dict.fromkeys(sr.scheduler) if not (pd and sched == "static")]
                out += cs
                why = ""
                try:
                    check_parallelism(self.model, self.hw, tp, pp, s.ep)
                except ValueError as e:
                    why = str(e)
                if why:
                    for c in cs:
                        c.status, c.reason = ConfigStatus.PRUNED_TP, why
                    continue
                if smaller_fail:
                    for c in cs:
                        c.status, c.reason = ConfigStatus.PRUNED_MEMORY, "a larger tp does not fit (monotone)"
                    continue
                fp = footprint(self.model, self.hw, tp, pp, self.dt, s.gpu_memory_utilization, s.activation_reserve_gb,
                               s.ep)
                if fp.kv_capacity_tokens < need:
                    smaller_fail = True
                    for c in cs:
                        c.status = ConfigStatus.PRUNED_MEMORY
                        c.reason = (f"{fp.weights_gb:.1f} GB weights leave KV for {fp.kv_capacity_tokens} tokens "
                                    f"of {fp.usable_gb:.1f} GB usable; one request needs {need}")
                    continue
                for c in cs:
                    c.kv_tokens = fp.kv_capacity_tokens
                    tok_s, step1 = decode_bound(self.model, self.hw, tp, pp, s.mode, self.dt, c.max_batch_size,
                                                fp.kv_capacity_tokens, self.prompt, s.async_scheduling, s.ep,
                                                s.moe_imbalance)
                    c.decode_tok_s = tok_s
                    if tpot_limit is not None and step1 * 1e3 > tpot_limit:
                        c.status = ConfigStatus.PRUNED_TPOT
                        c.reason = (f"a one-sequence decode step takes {step1 * 1e3:.2f} ms > {tpot_limit:.3g} ms "
                                    "(the p99 TPOT bound less the headroom)")
                        continue
                    c.min_replicas = max(1, math.ceil(self.plan.rate * self.output / (c.decoders(1) * tok_s) - 1e-9))
                    c.lb_cost_per_hour = self.result.bound_per_hour(c.devices(c.min_replicas))
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
        opts = [r for r in every if self.result.bound_per_hour(c.devices(r)) <= budget]
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
        c.fewer = self.check(c, opts[lo], self.plan.rate) if lo >= 0 else None  # cached: it failed
        return passed, cut

    def describe(self, ck: Check) -> str:
        """The misses of the worst seed in words: 'p99 TPOT 61.2 ms > 54 ms (60 ms less 10 % headroom)'."""
        s, m, out = self.plan.slo, ck.metrics, []
        limit = 1 - s.headroom
        room = f" less {s.headroom:.0%} headroom" if s.headroom else ""
        seed = f" (seed {ck.worst_seed})" if len(ck.seeds) > 1 else ""
        for name, key, bound in (("TTFT", "ttft_ms", s.p99_ttft_ms), ("TPOT", "tpot_ms", s.p99_tpot_ms)):
            if bound is not None and ck.ratios.get(name, 0) > limit:
                out.append(f"p99 {name} {_f(_get(m, key, 'p99'), '.1f')} ms > {bound * limit:.3g} ms "
                           f"({bound:g} ms{room})")
        if s.goodput is not None and ck.ratios.get("goodput", 0) > limit:
            out.append(f"goodput {_f(_get(m, 'goodput', 'fraction'), '.1%')} < "
                       f"{1 - (1 - s.goodput) * limit:.1%} ({s.goodput:.0%}{room})")
        if ck.ratios.get("rejected", 0) > limit:
            out.append(f"{(m.get('requests') or {}).get('rejected')} requests rejected")
        if ck.ratios.get("throughput", 0) > limit:
            out.append("overloaded: the queue grows")
        return ("; ".join(out) or "meets the SLO") + seed

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
        live = sorted((c for c in configs if c.status == ConfigStatus.PENDING),
                      key=lambda c: (c.lb_cost_per_hour, -(c.decode_tok_s or 0)))
        best: Config | None = None
        best_cost = math.inf
        for c in live:
            if c.lb_cost_per_hour is not None and c.lb_cost_per_hour >= best_cost:
                c.status = ConfigStatus.PRUNED_COST
                c.reason = (f"at least {c.min_replicas} replica(s) = ${c.lb_cost_per_hour:.2f}/h, "
                            f"not below the ${best_cost:.2f}/h already found")
                continue
            ck, cut = self.fewest_replicas(c, best_cost - 1e-9)
            if ck is None:
                last = c.check
                if cut:
                    c.status, c.reason = ConfigStatus.PRUNED_COST, f"needs more replicas than ${best_cost:.2f}/h buys"
                elif last is None:
                    c.status, c.reason = ConfigStatus.INFEASIBLE, "no replica count allowed by search"
                else:
                    c.status = ConfigStatus.INFEASIBLE
                    c.reason = f"at {last.replicas} replicas (the most allowed): {self.describe(last)}"
                continue
            c.status, c.replicas, c.check = ConfigStatus.OK, ck.replicas, ck
            cost = res.cost_per_hour_of(c, ck)
            if cost < best_cost:
                best, best_cost = c, cost
        if best is not None and best.check is not None:
            res.best = best
            res.devices = best.devices(best.replicas or 1)
            res.cost_per_hour = best_cost
            res.cost_per_m_output_tokens = cost_per_m_tokens(
                best_cost / res.devices, res.devices, best.check.spread()["output_tokens_per_s"]["mean"])
            cap = (best.decode_tok_s or 0) * best.decoders(best.replicas or 1) / max(self.output, 1.0)
            hi = max(cap, self.plan.rate * 1.01)
            res.max_rate, res.binding = self.max_rate(best, best.replicas or 1, self.plan.rate, hi,
                                                      self.plan.rate_steps)
        else:
            res.binding = self._why_none(configs)
        res.wall_s = time.perf_counter() - t0
        return res

    def _why_none(self, configs: list[Config]) -> str:
        if all(c.status in PRUNED_NOT_TRIED for c in configs):
            return "memory"
        if all(c.status in (*PRUNED_NOT_TRIED, ConfigStatus.PRUNED_TPOT) for c in configs):
            return "TPOT"
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
    if c is None or c.status != ConfigStatus.PENDING or not c.decode_tok_s:
        return 0.0
    hi = c.decode_tok_s * c.decoders(replicas) / max(s.output, 1.0)
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
        return sum(c.simulations for c in self.candidates)


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
