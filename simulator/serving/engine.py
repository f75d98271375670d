"""The discrete-event engine: pools of replicas serving requests, one moment (forward pass) at a time.

A SimPy Environment runs a workload process that releases arrivals at their times and hands
each to a pool; the pool rejects what can never run, its router picks one of its engines, and
that engine wakes if it is idle. Each engine is a process running the step loop of vLLM V1's
EngineCore: its scheduler (a policy object from `schedulers.SCHEDULERS`) plans a Moment, the
moment lasts `StepModel.step_agg(batch) + moment.extra_s` seconds (`yield env.timeout(dt)`: the
replica's GPUs are busy; step_agg already includes the host's issue time and per-step
overhead), then `scheduler.on_step_done` hands out tokens and KV blocks. An idle engine waits on
an event that the next arrival routed to it triggers: no polling.

A pool is a set of identical replicas (model, hardware, tp, pp, scheduler, router). A run has one
pool today; disaggregated serving would add a second (prefill and decode pools), each with its
own hardware, parallelism and replica count, and a KV transfer between them.

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
from pathlib import Path

import simpy

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import StepModel, check_parallelism, step_model
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Dtypes
from simulator.moment.power import MomentPower
from simulator.serving.kvcache import KVCache
from simulator.serving.offload import HostKV, TieredKVCache
from simulator.serving.result import (
    COMPLETED,
    REJECTED,
    MomentLog,
    RequestLog,
    SimResult,
    build_result,
)
from simulator.serving.routers import ROUTERS
from simulator.serving.scenario import Scenario, Serving
from simulator.serving.schedulers import DECODE, MIXED, PREFILL, Scheduler, scheduler_class
from simulator.serving.workload import make_requests

PCIE_BW = 25e9  # bytes/s host<->device for swap preemption (PCIe 4/5 x16, achieved)

R_KV = "exceeds kv capacity"                    # prompt + output can never fit a replica's KV cache
R_TOKENS = "prompt > max_batched_tokens"        # continuous (vLLM v0) cannot chunk a prompt
R_QUEUE = "queue full"                          # serving.max_queue requests already waiting


class Replica:
    """One replica, or one virtual engine of a pp > 1 replica: a scheduler and the SimPy process
    that runs its moments."""

    def __init__(self, rid: int, eng: int, pp: int, scheduler: Scheduler):
        self.rid, self.eng = rid, eng
        self.unit = rid * pp + eng  # the moment log's id (= rid when pp = 1)
        self.name = f"replica {rid}" + (f" engine {eng}" if pp > 1 else "")
        self.scheduler = scheduler
        self.idle = False
        self.wake: simpy.Event | None = None

    def arrive(self, i: int) -> None:
        self.scheduler.add(i)
        if self.idle:
            self.idle = False
            self.wake.succeed()

    def run(self, env: simpy.Environment, cost: Callable[..., float], log: MomentLog) -> Iterator[simpy.Event]:
        sched = self.scheduler
        # speed: bound methods and attributes as locals, read once instead of once per moment
        schedule, done, add, kv, unit = sched.schedule, sched.on_step_done, log.add, sched.kv, self.unit
        timeout = env.timeout
        while True:
            m = schedule()
            if m is None:
                if sched.waiting or sched.prefilling:
                    raise RuntimeError(f"{self.name} stalled with {len(sched.waiting)} waiting")
                self.idle = True
                self.wake = env.event()
                yield self.wake
                continue
            dt = cost(*m.batch) + m.extra_s
            add(unit, env.now, dt, m, kv.capacity - kv.free)  # KV used at its start (speed: kv.used inlined)
            yield timeout(dt)
            done(m, env.now)


class Pool:
    """Identical replicas (model, hardware, tp, pp, scheduler) behind one router; the KV capacity
    and step cost are theirs. `submit(i)` is a request's way in."""

    def __init__(self, env: simpy.Environment, serving: Serving, sm: StepModel, cap_blocks: int,
                 requests: RequestLog, moments: MomentLog):
        self.serving, self.sm, self.requests, self.moments = serving, sm, requests, moments
        self.cap_blocks = cap_blocks                # per replica
        pp = serving.pp
        blocks = cap_blocks // pp                   # per virtual engine (vLLM: num_gpu_blocks // pp)
        kv_bytes = sm.model.kv_bytes_per_token(serving.kv_dtype, serving.tp, pp)
        offload = serving.kv_offload
        swap_s_per_block = serving.block_size * kv_bytes / (PCIE_BW if offload is None else offload.pcie_gbps * 1e9)
        # a CPU tier per virtual engine: its share of the replica's host memory, in blocks of all
        # the replica's devices' shards
        host_blocks = 0 if offload is None else \
            int(offload.cpu_gb * 1e9 / pp // (serving.block_size * kv_bytes * serving.tp * pp))
        policy = scheduler_class(serving)

        def kv() -> KVCache | None:
            if offload is None:
                return None
            return TieredKVCache(blocks, serving.block_size, HostKV(host_blocks), swap_s_per_block)

        self.swap_s_per_block = swap_s_per_block
        self.engines = [Replica(r, e, pp, policy(serving, requests, blocks, swap_s_per_block, kv=kv()))
                        for e in range(pp) for r in range(serving.replicas)]  # engine-major
        self.router = ROUTERS[serving.router]([r.scheduler for r in self.engines])
        self.cap_tokens = blocks * serving.block_size  # a request lives on one virtual engine
        self.max_prompt_tokens = self.engines[0].scheduler.max_prompt_tokens
        self.siblings = {r.rid: [e for e in self.engines if e.rid == r.rid] for r in self.engines}
        for r in self.engines:
            env.process(r.run(env, sm.step_agg, moments))

    def submit(self, i: int) -> None:
        """Reject request i if it can never run here or the queue is full; else route it."""
        rq = self.requests
        p = rq.prompt_len[i]
        if p + rq.output_len[i] > self.cap_tokens:
            rq.reject(i, R_KV)
        elif self.max_prompt_tokens is not None and p > self.max_prompt_tokens:
            rq.reject(i, R_TOKENS)
        else:
            r = self.engines[self.router.route(i)]
            rq.replica[i] = r.rid
            if r.eng:  # the array starts at 0
                rq.engine[i] = r.eng
            cap = self.serving.max_queue
            if cap is not None and sum(len(e.scheduler.waiting) for e in self.siblings[r.rid]) >= cap:
                rq.reject(i, R_QUEUE)
            else:
                r.arrive(i)

    def kv_stats(self) -> dict[str, float]:
        """Prefix-cache and CPU-tier counters summed over the engines (SimResult.cache_stats)."""
        out = {"prefix_lookups": 0, "prefix_hits": 0}
        for r in self.engines:
            kv = r.scheduler.kv
            out["prefix_lookups"] += kv.lookups
            out["prefix_hits"] += kv.hits
            if isinstance(kv, TieredKVCache):
                h = kv.host
                for k, v in (("host_capacity_blocks", h.capacity), ("prefix_host_hits", kv.host_hits),
                             ("copied_in_blocks", kv.copied_in), ("swapped_out_blocks", h.swapped_out),
                             ("swap_fallbacks", h.fallbacks), ("stored_blocks", h.stored)):
                    out[k] = out.get(k, 0) + v
        if "copied_in_blocks" in out:  # a swap is copied out and back in
            out["transfer_s"] = (out["copied_in_blocks"] + 2 * out["swapped_out_blocks"]) * self.swap_s_per_block
        return out

    def check_drained(self) -> None:
        for r in self.engines:  # every block came back: only cached prefixes may stay resident
            if not r.scheduler.drained:
                raise RuntimeError(f"{r.name} ended holding KV blocks (engine bug)")


def _arrivals(env: simpy.Environment, arrival_s: list[float], submit: Callable[[int], None]) -> Iterator[simpy.Event]:
    """Hand each request to the pool at its arrival time (all of one instant at once)."""
    n = len(arrival_s)
    i = 0
    while i < n:
        t = arrival_s[i]
        if t > env.now:
            yield env.timeout(t - env.now)
        while i < n and arrival_s[i] <= t:
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
    virtual engines): raise one InputError line before anything is simulated."""
    try:
        model = load_model(sc.model)
    except InputError as e:
        raise _nested(e, where, "model") from None
    try:
        hw = load_hardware(sc.hardware)
    except InputError as e:
        raise _nested(e, where, "hardware") from None
    s = sc.serving
    try:
        check_parallelism(model, hw, s.tp, s.pp, s.ep)
    except ValueError as e:
        field = next((f"serving.{f}" for f in ("pp", "ep") if str(e).startswith(f"{f}=")), "serving.tp")
        raise InputError(where, field, str(e)) from None
    dt = Dtypes.of(model, s.weight_dtype, s.act_dtype, s.kv_dtype, plain="bf16")
    arr = sc.workload.arrival
    if arr.process == "trace" and arr.path and not Path(arr.path).is_file():
        raise InputError(where, "workload.arrival.path", f"trace file not found: {arr.path}")
    check_fits(model, hw, s.tp, s.pp, dt, s.gpu_memory_utilization, s.activation_reserve_gb,
               min_tokens=s.block_size * s.pp, where=f"{where}: model/hardware", ep=s.ep)
    return model, hw, dt


# -- entry point ---------------------------------------------------------------------------------
def simulate(scenario: Scenario, progress: Callable[[float], None] | None = None) -> SimResult:
    """Run a scenario to the end: every request completes or is rejected with a reason."""
    t_wall = time.perf_counter()
    sv = scenario.serving
    model, hw, dt = check_scenario(scenario)
    fp = footprint(model, hw, sv.tp, sv.pp, dt, sv.gpu_memory_utilization, sv.activation_reserve_gb, sv.ep)
    cap_blocks = fp.kv_capacity_tokens // sv.block_size
    sm = step_model(model, hw, sv.tp, sv.pp, sv.mode, dt, sv.async_scheduling, sv.ep, sv.moe_imbalance, sv.kernels)
    req = make_requests(scenario.workload, scenario.seed, where="scenario")
    env = simpy.Environment()
    requests = RequestLog(req)
    power = MomentPower(sm, hw.device.power, sv.max_batch_size)
    pool = Pool(env, sv, sm, cap_blocks, requests, MomentLog(sm, requests, progress, power))
    env.process(_arrivals(env, req.arrival_s.tolist(), pool.submit))
    env.run()
    if progress is not None:
        progress(1.0)
    pool.check_drained()
    r = build_result(scenario, requests, pool.moments, hw, dt, cap_blocks, time.perf_counter() - t_wall)
    r.cache_stats = pool.kv_stats()
    return r


__all__ = ["SimResult", "simulate", "check_scenario", "Pool", "Replica", "PREFILL", "DECODE", "MIXED",
           "COMPLETED", "REJECTED"]
