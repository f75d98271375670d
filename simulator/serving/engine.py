"""The discrete-event engine: pools of replicas serving requests, one moment (forward pass) at a time.

A SimPy Environment runs a workload process that releases arrivals at their times and hands
each to a pool; the pool rejects what can never run, its router picks one of its engines, and
that engine wakes if it is idle. Each engine is a process running the step loop of vLLM V1's
EngineCore: its scheduler (a policy object from `schedulers.SCHEDULERS`) plans a Moment, the
moment lasts `StepModel.moment_s(*batch) + moment.extra_s` seconds (`yield env.timeout(dt)`: the
replica's GPUs are busy; moment_s, step_agg as a closure, already includes the host's issue time
and per-step overhead), then `scheduler.on_step_done` hands out tokens and KV blocks. An idle engine waits on
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
moments into compact growable arrays (result.py), everything derived from them (category
seconds, energy, totals) after the run. The step cost is StepModel.moment_s: a table lookup over
token counts plus attention in closed form, the common moments inline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import simpy
from pydantic import ValidationError

from hwmodels.errors import InputError, from_validation, open_regular
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import Launch, check_parallelism, step_model
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Dtypes
from simulator.moment.power import MomentPower
from simulator.moment.speculative import Draft, SpecPower, Speculation, draft_of
from simulator.serving.budget import check_memory
from simulator.serving.disaggregated import Disaggregation, transfer_path
from simulator.serving.pool import (
    R_CONTEXT,
    R_KV,
    R_LEN,
    R_QUEUE,
    R_TOKENS,
    Pool,
    PoolModel,
    Replica,
)
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
from simulator.serving.stacks import resolve
from simulator.serving.workload import make_requests

INF = float("inf")
ARRIVAL_CHUNK = 65_536
FRONT_SPREAD = 1.0  # a request's way in through the front end: uniform on [0, 2 x its mean] (front_end)


def _arrivals(env: simpy.Environment, arrival_s: np.ndarray, submit: Callable[[int], None],
              order: np.ndarray | None = None) -> Iterator[simpy.Event]:
    """Hand each request to the pool at its time (all of one instant at once); `arrival_s` are
    the times the engine has them, taken in `order` (None: index order, the order of arrival).
    They are read a chunk at a time: a list of 10M floats would hold 320 MB for the whole run."""
    instant = -INF
    n = arrival_s.size
    for lo in range(0, n, ARRIVAL_CHUNK):
        if order is None:
            ids: range | list[int] = range(lo, min(lo + ARRIVAL_CHUNK, n))
            times = arrival_s[lo:lo + ARRIVAL_CHUNK].tolist()  # speed: Python floats, a chunk at a time
        else:
            part = order[lo:lo + ARRIVAL_CHUNK]
            ids, times = part.tolist(), arrival_s[part].tolist()
        for i, t in zip(ids, times, strict=True):
            if t > instant:  # a new instant: wait for it
                instant = t
                if t > env.now:
                    yield env.timeout(t - env.now)
            submit(i)


def front_end(requests: RequestLog, sv: Serving, hw: Hardware, seed: int) -> None:
    """The stack's front end on `requests`: each request's way in is drawn uniformly within
    +-FRONT_SPREAD of request_in_ms (seeded apart from the workload; 1: on [0, 2 x the mean]), the
    way out is the same for every token. The spread is an assumption: a front end shares its host
    with the other clients' streams, and without a spread of about a step a closed loop of
    clients locks to the decode steps' grid (its requests would always reach the engine at the
    same point of a step, and TTFT would jump by a step as request_in_ms crosses a multiple)."""
    if not sv.api_server:
        return
    o, speed = sv.overheads, hw.host.speed
    requests.out_delay = o.request_out_ms * 1e-3 / speed
    if o.request_in_ms:
        rng = np.random.default_rng([seed, 0x46524F4E54])  # "FRONT": a stream of its own, the workload's unchanged
        mean = o.request_in_ms * 1e-3 / speed
        requests.in_delay = (mean * rng.uniform(1 - FRONT_SPREAD, 1 + FRONT_SPREAD, len(requests))).tolist()


class Clients:
    """`workload.concurrency`: N clients as `vllm bench serve --max-concurrency N` runs them. Each
    takes the next request in order, sends it at its planned arrival time or at once if that has
    passed (a burst plans them all at 0: a closed loop), and waits for its last token (or its
    rejection) and the think time before taking another. The time a request is sent is its
    arrival (written into arrival_s); the engine has it the front end's delay later."""

    def __init__(self, env: simpy.Environment, requests: RequestLog, submit: Callable[[int], None],
                 clients: int, think_s: float, delay: list[float] | None):
        self.env, self.submit, self.think_s, self.delay = env, submit, think_s, delay
        self.arrival_s = requests.requests.arrival_s  # planned times in, send times out
        self.reached_s = requests.reached_s
        self.planned = self.arrival_s.tolist()
        self.next = 0
        requests.on_end = self.ended
        for _ in range(min(clients, len(self.planned))):
            self._take(0.0)

    def _take(self, wait: float) -> None:
        """A free client takes the next request and sends it after `wait` or at its planned time."""
        i = self.next
        if i >= len(self.planned):
            return
        self.next = i + 1
        t = max(self.env.now + wait, self.planned[i])
        self.arrival_s[i] = t
        self.reached_s[i] = reach = t + (self.delay[i] if self.delay is not None else 0.0)
        self.env.timeout(reach - self.env.now).callbacks.append(lambda _e: self.submit(i))

    def ended(self, i: int, t: float) -> None:
        """Request i's client has its response at time t (>= now): it sends again after thinking."""
        self._take(t - self.env.now + self.think_s)


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
    s = stack_serving(sc.serving, hw, model, where)
    dt = Dtypes.of(model, s.weight_dtype, s.act_dtype, s.kv_dtype, plain="bf16")
    arr = sc.workload.arrival
    if arr.process == "trace" and arr.path:
        try:
            open_regular(arr.path, "trace file").close()
        except InputError as e:
            raise InputError(where, "workload.arrival.path", f"{arr.path}: {e.message}") from None
    pools = pools_of(sc.serving, sc.hardware, hw, model, where)
    for prefix, sv, part in pools:
        check_pool(model, part, dt, sv, where, prefix)
    if s.disaggregated is not None:
        transfer_path(s.disaggregated.transfer, pools[0][2], where)
    check_memory(sc, where)
    return model, hw, dt


def pools_of(s: Serving, hardware: str, hw: Hardware, model: ModelSpec,
             where: str) -> list[tuple[str, Serving, Hardware]]:
    """(field prefix, serving settings, hardware) of each pool: one, or a disaggregated pair. `s`
    as the scenario gives it: a stack's defaults are resolved for each pool's own part and tp
    (a prefill pool of H100s and a decode pool of H200s get each part's batch and memory tiers)."""
    dis = s.disaggregated
    if dis is None:
        return [("serving", stack_serving(s, hw, model, where), hw)]
    out = []
    for role, spec in (("prefill", dis.prefill), ("decode", dis.decode)):
        field = f"serving.disaggregated.{role}"
        part = hw
        if spec.hardware is not None and spec.hardware != hardware:
            try:
                part = load_hardware(spec.hardware)
            except InputError as e:
                raise _nested(e, where, f"{field}.hardware") from None
        out.append((field, stack_serving(pool_serving(s, spec), part, model, where), part))
    return out


def check_pool(model: ModelSpec, hw: Hardware, dt: Dtypes, s: Serving, where: str, prefix: str) -> None:
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
               ep=s.ep, fraction_of=s.memory_fraction_of, extra_weight_bytes=extra[0], extra_kv_bytes=extra[1])


def _draft(model: ModelSpec, hw: Hardware, dt: Dtypes, s: Serving, where: str, prefix: str) -> Draft | None:
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
    fp = footprint(model, hw, s.tp, s.pp, dt, s.gpu_memory_utilization, s.activation_reserve_gb, s.ep,
                   s.memory_fraction_of, *extra)
    sm = step_model(model, hw, s.tp, s.pp, s.mode, dt, s.async_scheduling, s.ep, s.moe_imbalance, s.kernels,
                    launch(s, hw))
    power = MomentPower(sm, hw.device.power, s.max_batch_size)
    if draft is None:
        return PoolModel(s, hw, dt, fp.kv_capacity_tokens // s.block_size, sm, power)
    k = s.speculative.k
    spec_power = SpecPower(power, tuple((MomentPower(d, hw.device.power, s.max_batch_size), w) for d, w in draft.parts), k)
    return PoolModel(s, hw, dt, fp.kv_capacity_tokens // s.block_size, Speculation(sm, draft, k), spec_power)


def stack_serving(sv: Serving, hw: Hardware, model: ModelSpec, where: str = "scenario") -> Serving:
    """Serving settings under their stack's defaults for this part (stacks.resolve), or one line."""
    try:
        return resolve(sv, hw, model)
    except ValidationError as e:
        raise from_validation(e, f"{where} (serving.stack {sv.stack})") from None


# -- entry point ---------------------------------------------------------------------------------
def launch(sv: Serving, hw: Hardware) -> Launch | None:
    """A serving stack's launches and host work for the cost model (None: neither is set, and a
    graph-mode step is one graph plus the hardware's per-step overhead, as without a stack)."""
    o = sv.overheads
    if sv.stack is None and sv.cuda_graph_sizes is None and o.step_us is None and not o.step_seq_us \
            and sv.num_scheduler_steps == 1:
        return None
    speed = hw.host.speed
    step_us = hw.host.step_overhead_us if o.step_us is None else o.step_us / speed
    return Launch(tuple(sv.cuda_graph_sizes or ()), sv.cuda_graph_padding, sv.graph_mixed, sv.graph_piecewise,
                  step_us * 1e-6, o.step_seq_us / speed * 1e-6, sv.num_scheduler_steps)


def effective(scenario: Scenario) -> tuple[Scenario, ModelSpec, Hardware, Dtypes]:
    """The scenario as it runs: a stack's defaults under the fields the file sets (stacks.resolve),
    with its model, hardware and dtypes checked."""
    model, hw, dt = check_scenario(scenario)
    sv = stack_serving(scenario.serving, hw, model)
    if sv is scenario.serving:
        return scenario, model, hw, dt
    return scenario.model_copy(update={"serving": sv}), model, hw, dt


def simulate(scenario: Scenario, progress: Callable[[float], None] | None = None) -> SimResult:
    """Run a scenario to the end: every request completes or is rejected with a reason."""
    t_wall = time.perf_counter()
    given = scenario.serving  # as set: a disaggregated pool resolves its stack for its own part
    scenario, model, hw, dt = effective(scenario)
    sv = scenario.serving
    wl = scenario.workload
    req = make_requests(wl, scenario.seed, where="scenario")
    env = simpy.Environment()
    requests = RequestLog(req)
    front_end(requests, sv, hw, scenario.seed)
    if sv.disaggregated is not None:
        pms = [pool_model(model, part, dt, s, prefix=prefix) for prefix, s, part in
               pools_of(given, scenario.hardware, hw, model, "scenario")]
        deployment = Disaggregation(env, scenario, pms, requests, progress)
        pools, submit = deployment.pools, deployment.submit
    else:
        pm = pool_model(model, hw, dt, sv)
        pools = [Pool(env, pm, requests, MomentLog(pm.cost, requests, progress, pm.power), scenario.seed)]
        submit = pools[0].submit
    if wl.concurrency is not None:
        Clients(env, requests, submit, wl.concurrency, wl.think_ms * 1e-3, requests.in_delay)
    elif requests.in_delay is None:
        requests.reached_s[:] = req.arrival_s
        env.process(_arrivals(env, req.arrival_s, submit))
    else:
        reach = req.arrival_s + np.asarray(requests.in_delay)
        requests.reached_s[:] = reach
        env.process(_arrivals(env, reach, submit, np.argsort(reach, kind="stable")))
    env.run()
    if progress is not None:
        progress(1.0)
    for pool in pools:
        pool.check_drained()
    engines = [e.scheduler for pool in pools for e in pool.engines]
    prefix = {"prompt_tokens_admitted": sum(s.lookup_tokens for s in engines),
              "prefix_hit_tokens": sum(s.hit_tokens for s in engines)}
    r = build_result(scenario, requests, [p.run_record() for p in pools], time.perf_counter() - t_wall, prefix)
    stats = [p.kv_stats() for p in pools]  # the same counters in each: kv_offload is the deployment's
    r.cache_stats = {k: sum(st[k] for st in stats) for k in stats[0]}
    return r


__all__ = ["SimResult", "simulate", "check_scenario", "effective", "pool_model", "Pool", "PoolModel", "Replica",
           "Clients", "PREFILL", "DECODE", "MIXED", "COMPLETED", "REJECTED", "R_KV", "R_QUEUE", "R_TOKENS",
           "R_CONTEXT", "R_LEN"]
