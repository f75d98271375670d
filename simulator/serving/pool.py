"""Pools of identical replicas: each replica (or each virtual engine of a pp > 1 replica) is a
SimPy process running the step loop of vLLM V1's EngineCore over its scheduler (engine.py says
how), and a pool routes requests to them. A run has one pool, or a prefill pool and a decode
pool (disaggregated.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import simpy

from hwmodels.errors import InputError
from hwmodels.spec import Hardware
from simulator.moment.cost import StepModel
from simulator.moment.ops import Dtypes
from simulator.moment.power import MomentPower
from simulator.moment.speculative import SpecPower, Speculation
from simulator.serving.kvcache import KVCache
from simulator.serving.offload import HostKV, TieredKVCache
from simulator.serving.result import MomentLog, PoolRun, RequestLog
from simulator.serving.routers import ROUTERS
from simulator.serving.scenario import Serving
from simulator.serving.schedulers import Scheduler, scheduler_class

PCIE_BW = 25e9  # bytes/s host<->device for swap preemption (PCIe 4/5 x16, achieved)
INF = float("inf")

R_KV = "exceeds kv capacity"                    # prompt + output can never fit a replica's KV cache
R_TOKENS = "prompt > max_batched_tokens"        # continuous (vLLM v0) cannot chunk a prompt
R_QUEUE = "queue full"                          # serving.max_queue requests already waiting
R_CONTEXT = "exceeds max_position_embeddings"   # prompt + output longer than the model serves (vLLM: max_model_len)
R_LEN = "exceeds max_model_len"                 # prompt + output longer than serving.max_model_len


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
        self.poke()

    def poke(self) -> None:
        """Something changed (an arrival, blocks given back): an idle engine plans again."""
        if self.idle:
            self.idle = False
            self.wake.succeed()

    def run(self, env: simpy.Environment, cost: Callable[..., float], log: MomentLog) -> Iterator[simpy.Event]:
        sched = self.scheduler
        # speed: bound methods and attributes as locals, read once instead of once per moment
        schedule, done, add, kv, unit = sched.schedule, sched.on_step_done, log.adder(), sched.kv, self.unit
        timeout, capacity, inf = env.timeout, kv.capacity, INF
        started = sched.requests.started_v
        now = env.now
        while True:
            m = schedule()
            if m is None:
                if (sched.waiting or sched.prefilling) and not sched.in_flight:
                    raise RuntimeError(f"{self.name} stalled with {len(sched.waiting)} waiting")
                self.idle = True
                self.wake = env.event()
                yield self.wake
                now = env.now
                continue
            if m.prefills:
                for st, _ln in m.prefills:
                    i = st.request
                    t = started[i]
                    if t != t:  # nan: its first chunk (speed: no isnan call)
                        started[i] = now
            dt = cost(*m.batch) + m.extra_s
            if not 0.0 < dt < inf:  # simulated time must advance by a finite step (schema bounds keep it so)
                raise InputError("hardware", "", f"a moment of {dt} s: simulated time would not advance; check "
                                 "the hardware's and model's numbers")
            add(unit, now, dt, m, capacity - kv.free)  # KV used at its start (speed: kv.used inlined)
            yield timeout(dt)
            now = env.now  # speed: the clock read once per moment
            done(m, now)


@dataclass
class PoolModel:
    """What a pool's replicas are: their serving settings, hardware and dtypes, KV blocks per
    replica, the cost of a moment (a StepModel, or a Speculation with a draft) and its power."""

    serving: Serving
    hw: Hardware
    dt: Dtypes
    cap_blocks: int
    cost: StepModel | Speculation
    power: MomentPower | SpecPower


class Pool:
    """Identical replicas (model, hardware, tp, pp, scheduler) behind one router; the KV capacity
    and step cost are theirs. `submit(i)` is a request's way in. role: "all" (whole requests),
    "prefill" or "decode" (disaggregated.py); replica_offset: the id of its first replica in a
    deployment of several pools."""

    def __init__(self, env: simpy.Environment, pm: PoolModel, requests: RequestLog, moments: MomentLog,
                 seed: int = 0, role: str = "all", replica_offset: int = 0, mixins: tuple[type, ...] = ()):
        serving = pm.serving
        self.env, self.serving, self.requests, self.moments, self.model = env, serving, requests, moments, pm
        self.role, self.replica_offset = role, replica_offset
        self.cap_blocks = cap_blocks = pm.cap_blocks   # per replica
        pp = serving.pp
        blocks = cap_blocks // pp                   # per virtual engine (vLLM: num_gpu_blocks // pp)
        kv_bytes = pm.cost.model.kv_bytes_per_token(serving.kv_dtype, serving.tp, pp)
        offload = serving.kv_offload
        swap_s_per_block = serving.block_size * kv_bytes / (PCIE_BW if offload is None else offload.pcie_gbps * 1e9)
        # a CPU tier per virtual engine: its share of the replica's host memory, in blocks of all
        # the replica's devices' shards
        host_blocks = 0 if offload is None else \
            int(offload.cpu_gb * 1e9 / pp // (serving.block_size * kv_bytes * serving.tp * pp))
        policy = scheduler_class(serving, *mixins)

        def kv() -> KVCache | None:
            if offload is None:
                return None
            return TieredKVCache(blocks, serving.block_size, HostKV(host_blocks), swap_s_per_block)

        self.swap_s_per_block = swap_s_per_block
        self.engines = [Replica(r, e, pp, policy(serving, requests, blocks, swap_s_per_block, kv=kv(),
                                                  seed=seed * 1_000_003 + replica_offset * pp + r * pp + e))
                        for e in range(pp) for r in range(serving.replicas)]  # engine-major
        self.router = ROUTERS[serving.router]([r.scheduler for r in self.engines])
        self.cap_tokens = blocks * serving.block_size  # a request lives on one virtual engine
        # the longest prompt + output served: serving.max_model_len, else the model's context
        self.max_len = serving.max_model_len or pm.cost.model.max_position_embeddings or 1 << 62
        self.len_reason = R_LEN if serving.max_model_len else R_CONTEXT
        self.max_prompt_tokens = self.engines[0].scheduler.max_prompt_tokens
        if self.max_prompt_tokens is None:
            self.max_prompt_tokens = INF
        # speed: what submit reads once per request, as attributes
        self.prompt_only = role == "prefill"  # a prefill pool holds a prompt's KV only
        self.route, self.max_queue = self.router.route, serving.max_queue
        self.siblings = {r.rid: [e for e in self.engines if e.rid == r.rid] for r in self.engines}
        for r in self.engines:
            env.process(r.run(env, pm.cost.moment_s, moments))

    def submit(self, i: int) -> None:
        """Reject request i if it can never run here or the queue is full; else route it."""
        rq = self.requests
        p = rq.prompt_len[i]
        n = p + rq.output_len[i]
        if n > self.max_len:
            rq.reject(i, self.len_reason, self.env.now)
        elif (p if self.prompt_only else n) > self.cap_tokens:
            rq.reject(i, R_KV, self.env.now)
        elif p > self.max_prompt_tokens:
            rq.reject(i, R_TOKENS, self.env.now)
        else:
            r = self.engines[self.route(i)]
            rq.replica_v[i] = r.rid + self.replica_offset
            if r.eng:  # the array starts at 0
                rq.engine[i] = r.eng
            cap = self.max_queue
            if cap is not None and sum(len(e.scheduler.waiting) for e in self.siblings[r.rid]) >= cap:
                rq.reject(i, R_QUEUE, self.env.now)
            else:
                r.arrive(i)

    def run_record(self) -> PoolRun:
        return PoolRun(self.role, self.serving, self.model.hw, self.model.dt, self.cap_blocks, self.moments,
                       self.replica_offset)

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


__all__ = ["Pool", "PoolModel", "Replica", "R_KV", "R_TOKENS", "R_QUEUE", "R_CONTEXT", "R_LEN", "PCIE_BW"]
