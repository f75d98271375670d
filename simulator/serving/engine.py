"""The discrete-event engine: pools of replicas serving requests, one moment (forward pass) at a time.

A SimPy Environment runs a workload process that releases arrivals at their times and hands
each to a pool; the pool rejects what can never run, its router picks one of its engines, and
that engine wakes if it is idle. Each engine is a process running the step loop of vLLM V1's
EngineCore: its scheduler (a policy object from `schedulers.SCHEDULERS`) plans a Moment, the
moment lasts `StepModel.step_agg(batch) + moment.extra_s` seconds (`yield env.timeout(dt)`: the
replica's GPUs are busy; step_agg already includes the host's issue time and per-step
overhead), then `scheduler.on_step_done` hands out tokens and KV blocks. An idle engine waits on
an event that the next arrival routed to it triggers: no polling.

A pool (pool.py) is a set of identical replicas (model, hardware, tp, pp, scheduler, router). A
run has one pool, or with `serving.disaggregated` a prefill pool and a decode pool, each with its
own hardware, parallelism and replica count, and a KV transfer between them (disaggregated.py).
Features that change how a replica schedules (priorities, a CPU KV tier, speculative decoding)
are scheduler mixins (schedulers/); speculative decoding also swaps the moment's cost
(moment/speculative.py).

Pipeline parallelism (pp > 1) is modelled as vLLM runs it: each replica runs pp virtual engines,
each a process of the same loop with its own scheduler, queue and 1/pp of the replica's KV cache
blocks (cap_blocks // pp), so pp batches are in flight at once. The router spreads requests over
all virtual engines of all replicas. A virtual engine's moment lasts step_s, the full pipeline
latency of its batch (all pp stages and the pp-1 sends), and the pp virtual engines of a replica
run concurrently, independently of each other: the balanced-pipeline approximation vLLM's design
assumes (every stage takes step_s / pp of each batch, so pp batches of similar size keep every
stage busy). Stage imbalance, bubbles when the virtual engines' batches differ in size, and
contention between them for a stage are not modelled: a pipelined replica that is full runs pp
batches per step_s. Each moment keeps each of the pp stages busy for dur / pp, so a replica's
devices are busy sum(dur) / pp of the time.

Speed (the hot loop runs millions of moments) comes from never touching every running request
in a step: the decode set (decodeset.py) advances all decoding requests at once, the KV cache
(kvcache.py) keeps counts, per-request results go into preallocated arrays by request index and
moments into compact growable arrays (result.py). The step cost is StepModel.step_agg: a table
lookup over token counts plus attention in closed form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import simpy

from hwmodels.errors import InputError, open_regular
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import check_parallelism, step_model
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Dtypes
from simulator.moment.power import MomentPower
from simulator.moment.speculative import Draft, SpecPower, Speculation, draft_of
from simulator.serving.budget import check_memory
from simulator.serving.disaggregated import Disaggregation, transfer_path
from simulator.serving.pool import R_CONTEXT, R_KV, R_QUEUE, R_TOKENS, Pool, PoolModel, Replica
from simulator.serving.result import (
    COMPLETED,
    REJECTED,
    MomentLog,
    RequestLog,
    SimResult,
    build_result,
)
from simulator.serving.scenario import Scenario, Serving, pool_serving
from simulator.serving.schedulers import DECODE, MIXED, PREFILL
from simulator.serving.workload import make_requests

INF = float("inf")
ARRIVAL_CHUNK = 65_536


def _arrivals(env: simpy.Environment, arrival_s: np.ndarray, submit: Callable[[int], None]) -> Iterator[simpy.Event]:
    """Hand each request to the pool at its arrival time (all of one instant at once). The times
    are read a chunk at a time: a list of 10M floats would hold 320 MB for the whole run."""
    i = 0
    instant = -INF
    for lo in range(0, arrival_s.size, ARRIVAL_CHUNK):
        for t in arrival_s[lo:lo + ARRIVAL_CHUNK].tolist():  # speed: Python floats, a chunk at a time
            if t > instant:  # a new instant: wait for it
                instant = t
                if t > env.now:
                    yield env.timeout(t - env.now)
            submit(i)
            i += 1


# -- checks before simulating --------------------------------------------------------------------
def _nested(err: InputError, where: str, field: str) -> InputError:
    """Re-address a resolver's error to the scenario file and field; keep a deeper file's name."""
    generic = err.where in ("model", "hardware")
    msg = (f"{err.field}: {err.message}" if err.field else err.message) if generic else str(err)
    return InputError(where, field, msg)


def check_scenario(sc: Scenario, where: str = "scenario") -> tuple[ModelSpec, Hardware, Dtypes]:
    """Resolve model and hardware and check tp/pp and memory (a KV block for each of the pp
    virtual engines), of every pool and of a speculative draft: raise one InputError line
    before anything is simulated."""
    try:
        model = load_model(sc.model)
    except InputError as e:
        raise _nested(e, where, "model") from None
    try:
        hw = load_hardware(sc.hardware)
    except InputError as e:
        raise _nested(e, where, "hardware") from None
    s = sc.serving
    dt = Dtypes.of(model, s.weight_dtype, s.act_dtype, s.kv_dtype, plain="bf16")
    arr = sc.workload.arrival
    if arr.process == "trace" and arr.path:
        try:
            open_regular(arr.path, "trace file").close()
        except InputError as e:
            raise InputError(where, "workload.arrival.path", f"{arr.path}: {e.message}") from None
    pools = pools_of(sc, hw, where)
    for prefix, sv, part in pools:
        check_pool(model, part, dt, sv, where, prefix)
    if s.disaggregated is not None:
        transfer_path(s.disaggregated.transfer, pools[0][2], where)
    check_memory(sc, where)
    return model, hw, dt


def pools_of(sc: Scenario, hw: Hardware, where: str) -> list[tuple[str, Serving, Hardware]]:
    """(field prefix, serving settings, hardware) of each pool: one, or a disaggregated pair."""
    dis = sc.serving.disaggregated
    if dis is None:
        return [("serving", sc.serving, hw)]
    out = []
    for role, spec in (("prefill", dis.prefill), ("decode", dis.decode)):
        field = f"serving.disaggregated.{role}"
        part = hw
        if spec.hardware is not None:
            try:
                part = load_hardware(spec.hardware)
            except InputError as e:
                raise _nested(e, where, f"{field}.hardware") from None
        out.append((field, pool_serving(sc.serving, spec), part))
    return out


def check_pool(model: ModelSpec, hw: Hardware, dt: Dtypes, s: Serving, where: str, prefix: str = "serving") -> None:
    """tp/pp/ep of the model and a draft on this hardware, and their memory (one InputError line)."""
    try:
        check_parallelism(model, hw, s.tp, s.pp, s.ep)
    except ValueError as e:
        field = next((f"{prefix}.{f}" for f in ("pp", "ep") if str(e).startswith(f"{f}=")), f"{prefix}.tp")
        raise InputError(where, field, str(e)) from None
    draft = _draft(model, hw, dt, s, where, prefix)
    extra = (draft.weight_bytes, draft.kv_bytes_per_token) if draft else (0.0, 0.0)
    check_fits(model, hw, s.tp, s.pp, dt, s.gpu_memory_utilization, s.activation_reserve_gb,
               min_tokens=s.block_size * s.pp, where=f"{where}: model/hardware" + ("" if prefix == "serving" else
                                                                                   f" ({prefix})"),
               ep=s.ep, extra_weight_bytes=extra[0], extra_kv_bytes=extra[1])


def _draft(model: ModelSpec, hw: Hardware, dt: Dtypes, s: Serving, where: str, prefix: str = "serving") -> Draft | None:
    """The speculative draft of serving.speculative (None without it), on the pool's devices."""
    sp = s.speculative
    if sp is None:
        return None
    field = f"{prefix}.speculative.draft_model"
    draft = None
    if sp.method == "draft_model":
        try:
            draft = load_model(sp.draft_model)
        except InputError as e:
            raise _nested(e, where, field) from None
        try:
            check_parallelism(draft, hw, s.tp, s.pp)
        except ValueError as e:
            raise InputError(where, field, f"the draft: {e}") from None
    return draft_of(model, hw, s.tp, s.pp, s.mode, dt, s.async_scheduling, s.kernels, draft, sp.head_layers)


def pool_model(model: ModelSpec, hw: Hardware, dt: Dtypes, s: Serving, where: str = "scenario",
               prefix: str = "serving") -> PoolModel:
    """A pool's KV blocks per replica, moment cost and power (with a draft if speculative)."""
    draft = _draft(model, hw, dt, s, where, prefix)
    extra = (draft.weight_bytes, draft.kv_bytes_per_token) if draft else (0.0, 0.0)
    fp = footprint(model, hw, s.tp, s.pp, dt, s.gpu_memory_utilization, s.activation_reserve_gb, s.ep, *extra)
    sm = step_model(model, hw, s.tp, s.pp, s.mode, dt, s.async_scheduling, s.ep, s.moe_imbalance, s.kernels)
    power = MomentPower(sm, hw.device.power, s.max_batch_size)
    if draft is None:
        return PoolModel(s, hw, dt, fp.kv_capacity_tokens // s.block_size, sm, power)
    k = s.speculative.k
    spec_power = SpecPower(power, tuple((MomentPower(d, hw.device.power, s.max_batch_size), w) for d, w in draft.parts), k)
    return PoolModel(s, hw, dt, fp.kv_capacity_tokens // s.block_size, Speculation(sm, draft, k), spec_power)


# -- entry point ---------------------------------------------------------------------------------
def simulate(scenario: Scenario, progress: Callable[[float], None] | None = None) -> SimResult:
    """Run a scenario to the end: every request completes or is rejected with a reason."""
    t_wall = time.perf_counter()
    model, hw, dt = check_scenario(scenario)
    req = make_requests(scenario.workload, scenario.seed, where="scenario")
    env = simpy.Environment()
    requests = RequestLog(req)
    if scenario.serving.disaggregated is not None:
        pms = [pool_model(model, part, dt, sv, prefix=prefix) for prefix, sv, part in pools_of(scenario, hw, "scenario")]
        deployment = Disaggregation(env, scenario, pms, requests, progress)
        pools, submit = deployment.pools, deployment.submit
    else:
        pm = pool_model(model, hw, dt, scenario.serving)
        pools = [Pool(env, pm, requests, MomentLog(pm.cost, requests, progress, pm.power), scenario.seed)]
        submit = pools[0].submit
    env.process(_arrivals(env, req.arrival_s, submit))
    env.run()
    if progress is not None:
        progress(1.0)
    for pool in pools:
        pool.check_drained()
    r = build_result(scenario, requests, [p.run_record() for p in pools], time.perf_counter() - t_wall)
    stats = [p.kv_stats() for p in pools]
    r.cache_stats = {k: sum(st.get(k, 0) for st in stats) for k in stats[0] | stats[-1]}
    return r


__all__ = ["SimResult", "simulate", "check_scenario", "pool_model", "Pool", "PoolModel", "Replica", "PREFILL",
           "DECODE", "MIXED", "COMPLETED", "REJECTED", "R_KV", "R_QUEUE", "R_TOKENS", "R_CONTEXT"]
