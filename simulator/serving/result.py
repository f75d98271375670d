"""What a run records, and the SimResult built from it.

`RequestLog` is the one place a request's life is written (routed, first token, preempted,
finished, rejected): a front-end delay or a closed-loop client hooks in there. `MomentLog` takes
one call per moment: compact columns (with the batch aggregates that energy, the total FLOPs and
bytes and the sampled category seconds need). `build_result` turns both into arrays, exact time
series, totals, category seconds and energy once the run is over.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulator.moment.cost import DEVICE_CATEGORIES, StepModel
from simulator.moment.ops import Batch, Dtypes, attention_ops, dense_ops
from simulator.moment.power import MomentPower, peak_power
from simulator.serving.scenario import Scenario, Serving
from simulator.serving.schedulers.base import DECODE, Moment
from simulator.serving.workload import Requests

CATEGORY_SAMPLES = 2000  # exact breakdowns per stride before the stride doubles (see MomentLog.categories)
TIMESERIES_POINTS = 1000

COMPLETED, REJECTED, UNFINISHED = 0, 1, 2  # requests["status"] (UNFINISHED never survives a run)


@dataclass
class SimResult:
    """Everything a run produced; metrics, CSVs, plots and traces are computed from it.

    requests: per request index (the order of arrival): arrival_s, prompt_len, output_len,
      first_token_s (nan if none), finish_s (nan if not completed), replica (-1 if rejected
      before routing), engine (the virtual engine within the replica, 0 when pp = 1 or when
      rejected before routing), status (0 completed, 1 rejected), preemptions, reached_s (when the engine had it:
      arrival_s plus the front end's way in), started_s (the start of the moment that began its
      prefill; nan if never). first_token_s and finish_s are when the client has the token (the
      engine's time + stats["request_out_s"]). With request classes or priorities also class
      (index into scenario.workload.classes, or the trace's priority levels in order) and
      priority; disaggregated, decode_replica, decode_engine (its virtual engine there), kv_transfer_s
      and decode_admitted_s (when that engine admitted it, engine time; disaggregated.py).
    moments: one entry per moment: start_s, dur_s, replica (the physical replica), engine (the
      virtual engine within it that ran the moment: 0 .. pp-1, all 0 when pp = 1), kind
      (0 prefill-only, 1 decode-only, 2 mixed), tokens, batch (sequences in the step),
      kv_blocks_used (the replica's KV blocks in use at the moment's start, after its
      allocations: the sum over its virtual engines), kv_blocks_engine (the same for the
      moment's virtual engine alone, at most kv_capacity_blocks // pp; the same array as
      kv_blocks_used when pp = 1), running (requests holding KV on the moment's virtual engine
      during the moment), decodes (sequences that got a token), firsts (prefills that ended in
      it: first tokens, or the next token after a recompute), held (its tokens wait for a later
      moment: the earlier steps of a multi-step block), energy_j (its dynamic energy over its
      replica's devices, see energy); disaggregated, pool (the index into pools).
    pp > 1 (see the engine's docstring): a replica runs pp virtual engines concurrently, each
      moment lasting the full pipeline latency step_s of its batch: the balanced-pipeline
      approximation vLLM's design assumes, no stage imbalance or bubbles. Moments of one
      replica's different virtual engines overlap in time; each moment keeps each of the pp
      stages busy for dur_s / pp, so a replica's devices are busy sum(dur_s) / pp of the time.
    category_s: {"prefill": moments with prefill, "decode": decode-only moments} -> category ->
      seconds (the cost model's breakdown; sampled, see MomentLog.categories).
    timeseries: on a grid of TIMESERIES_POINTS equal intervals over [0, makespan]: t_s (interval
      start) and the time average over each interval of queue_len, running, kv_used_frac,
      busy_frac, outstanding (all replicas together), computed exactly from requests and moments
      (busy_frac: the devices' busy fraction, sum(dur_s) / pp per replica, at most 1).
    kv_capacity_blocks: the blocks of one replica (all its virtual engines together).
    pp: virtual engines per replica (serving.pp).
    total_flops, total_bytes: device work of all devices of all replicas, from the sums of the
      batch aggregates (see _work, MomentLog.totals).
    energy: the devices' energy (simulator/moment/power.py): known (False: the hardware has no
      power figures and the numbers are 0), total_j, idle_j, dynamic_j; per replica (arrays by
      replica) replica_j, avg_power_w (its energy over the makespan) and peak_power_w (idle plus
      the highest dynamic power its moments draw at once); idle_power_w and tdp_w of one replica.
      timeseries then also holds power_w (all replicas' devices, interval averages).
    class_names: the request classes' names, by requests["class"] ("all" when there is one).
    cache_stats: prefix_lookups and prefix_hits (requests that carried a shared prefix, and those
      that found its KV computed); with serving.kv_offload also host_capacity_blocks (all
      engines), prefix_host_hits (hits served from CPU memory), copied_in_blocks (for them),
      swapped_out_blocks, swap_fallbacks (swap-outs without room: recomputed), stored_blocks
      (evicted prefixes kept in CPU memory) and transfer_s (host<->device copy seconds charged).
    recomputed_tokens, recomputed_flops: prefill tokens computed again because a recompute
      preemption dropped their KV, and their FLOPs (part of total_flops; not useful work).
    """

    requests: dict[str, np.ndarray]
    reject_reasons: dict[str, int]
    moments: dict[str, np.ndarray]
    category_s: dict[str, dict[str, float]]
    timeseries: dict[str, np.ndarray]
    makespan_s: float
    kv_capacity_blocks: int
    block_size: int
    replicas: int
    devices_per_replica: int
    clock_ghz: float
    peak_flops: float
    mem_bw: float
    total_flops: float
    total_bytes: float
    host_busy_s: float
    scenario: Scenario
    wall_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    pp: int = 1
    energy: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    cache_stats: dict[str, float] = field(default_factory=dict)
    pools: list[dict] = field(default_factory=list)
    recomputed_tokens: int = 0
    recomputed_flops: float = 0.0


class RequestLog:
    """Per request: the inputs schedulers read and what happened to it (arrays by request index)."""

    def __init__(self, req: Requests):
        n = len(req)
        self.extra: dict[str, np.ndarray] = {}  # more per-request arrays a deployment records (results.requests)
        self.requests = req
        # speed: lists, as a Python int from a list is faster to read one at a time than from numpy
        self.prompt_len: list[int] = req.prompt_len.tolist()
        self.output_len: list[int] = req.output_len.tolist()
        self.prefix_id: list[int] = req.prefix_id.tolist()
        self.prefix_len: list[int] = req.prefix_len.tolist()
        self.priority: list[int] = req.priority.tolist()
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        # compact dtypes: a run may hold 10M requests (replicas <= 100k, pp <= 1024)
        self.replica = np.full(n, -1, dtype=np.int32)
        self.engine = np.zeros(n, dtype=np.int16)  # written only when pp > 1
        self.status = np.full(n, UNFINISHED, dtype=np.int8)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.started_s = np.full(n, np.nan)  # the start of the moment that began its prefill
        self.reasons: dict[str, int] = {}
        self.done = 0  # completed or rejected
        # prefill work done twice: chunks, tokens, causal pairs and cached tokens before them (the
        # prefill sums of MomentLog, for the tokens whose KV a recompute preemption had dropped)
        self.recomputed = [0, 0, 0.0, 0]
        self.in_delay: list[float] | None = None  # the stack's front end: client to engine, per request (s)...
        self.out_delay = 0.0                       # ...and engine to client, for every token
        self.reached_s = np.full(n, np.nan)        # when the engine had it (arrival + its in_delay)
        self.on_end: Callable[[int, float], None] | None = None  # a client hears request i ended at a time
        # speed: the arrays written once or twice per request, as memoryviews (a Python number in
        # and out: a third of numpy's time for one element)
        self.first_token_v, self.finish_v, self.status_v = (memoryview(a) for a in (self.first_token_s,
                                                                                    self.finish_s, self.status))
        self.replica_v, self.started_v = memoryview(self.replica), memoryview(self.started_s)

    def __len__(self) -> int:
        return len(self.prompt_len)

    def first_token(self, i: int, now: float) -> None:
        """The engine produced request i's first token at `now`; the client has it out_delay later."""
        self.first_token_v[i] = now + self.out_delay

    def finish(self, i: int, now: float) -> None:
        """The engine produced request i's last token at `now`."""
        t = self.finish_v[i] = now + self.out_delay
        self.status_v[i] = COMPLETED
        self.done += 1
        if self.on_end is not None:
            self.on_end(i, t)

    def preempted(self, i: int) -> None:
        self.preemptions[i] += 1

    def recompute(self, cached: int, tokens: int) -> None:
        """A prefill chunk computes `tokens` tokens again, after `cached` tokens with KV."""
        rc = self.recomputed
        rc[0] += 1
        rc[1] += tokens
        rc[2] += tokens * cached + tokens * (tokens + 1) / 2
        rc[3] += cached

    def reject(self, i: int, reason: str, now: float = 0.0) -> None:
        self.status[i] = REJECTED
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.done += 1
        if self.on_end is not None:
            self.on_end(i, now)


class MomentLog:
    """The moments of a pool's engines, in the order they start, as growable columns; `unit` is
    the engine's id, replica * pp + engine (the replica when pp = 1)."""

    def __init__(self, sm: StepModel, requests: RequestLog, progress: Callable[[float], None] | None,
                 power: MomentPower):
        self.sm = sm
        self.requests = requests
        self.power = power
        self.start, self.dur = array("d"), array("d")
        self.unit, self.kind, self.batch, self.running = array("i"), array("b"), array("i"), array("i")
        self.tokens, self.kv_used = array("q"), array("q")
        # the batch aggregates energy needs beyond tokens and batch (MomentPower.demand_array, after the
        # run): every moment's decode context, and for a moment with prefill its causal pairs, cached
        # tokens before its chunks, logit rows and decode sequences (a decode-only moment's are 0, its
        # tokens, its tokens and its tokens)
        self.decode_ctx = array("q")
        self.prefill_aggs = array("d")
        self.held_at = array("q")  # moments whose tokens are held back (a multi-step block's earlier steps)
        self.progress = progress
        self.t_prog = time.perf_counter()

    @property
    def count(self) -> int:
        """Moments logged."""
        return len(self.start)

    def totals(self, kind: np.ndarray, tokens: np.ndarray, batch: np.ndarray) -> list:
        """The sums of the batch aggregates over all moments (_work's order: moments, logit rows,
        decode sequences and context, prefill chunks, tokens, pairs and cached tokens), from the
        columns. A decode-only moment's logit rows and decode sequences are its tokens; the pairs
        add in moment order (a cumulative sum: the same float as adding them one by one)."""
        pre = np.flatnonzero(kind != DECODE)  # moments with prefill (fewer than decode-only ones)
        pairs, pc, lg, ds = np.frombuffer(self.prefill_aggs, dtype=np.float64).reshape(-1, 4).T
        pre_tokens = _exact_sum(tokens[pre])
        dec_tokens = _exact_sum(tokens) - pre_tokens
        pre_ds = int(ds.sum())  # whole numbers below 2^53: exact in float64
        return [self.count, dec_tokens + int(lg.sum()), dec_tokens + pre_ds,
                _exact_sum(np.frombuffer(self.decode_ctx, dtype=np.int64)),
                _exact_sum(batch[pre]) - pre_ds, pre_tokens - pre_ds,
                float(np.cumsum(pairs)[-1]) if pairs.size else 0.0, int(pc.sum())]

    def adder(self) -> Callable[[int, float, float, Moment, int], None]:
        """add(unit, start, dt, moment, kv_used): one call per moment (the engine's hot path), its
        columns; everything else (the sums of the batch aggregates, category seconds, energy)
        comes from the columns after the run (totals, categories). speed: a closure over the
        columns' bound appends, no attribute lookups per moment."""
        ap_start, ap_dur, ap_unit, ap_kind = self.start.append, self.dur.append, self.unit.append, self.kind.append
        ap_tokens, ap_batch, ap_kv_used = self.tokens.append, self.batch.append, self.kv_used.append
        ap_running, ap_ctx, ap_prefill = self.running.append, self.decode_ctx.append, self.prefill_aggs.append
        held_at, start_col, progress = self.held_at, self.start, self.progress

        def add(unit: int, start: float, dt: float, m: Moment, kv_used: int) -> None:
            ds, dc, ps, pt, pairs, pc, lg = m.batch
            ap_start(start)
            ap_dur(dt)
            ap_unit(unit)
            ap_kind(m.kind)
            ap_tokens(ds + pt)
            ap_batch(ds + ps)
            ap_kv_used(kv_used)
            ap_running(m.running)
            ap_ctx(dc)
            if ps:  # a moment with prefill (kind != DECODE); speed: four appends (extend of a tuple takes twice as long)
                ap_prefill(pairs)
                ap_prefill(pc)
                ap_prefill(lg)
                ap_prefill(ds)
            elif m.held:
                held_at.append(len(start_col) - 1)

        if progress is None:
            return add

        def add_and_report(unit: int, start: float, dt: float, m: Moment, kv_used: int) -> None:
            """add, and the share of requests done to `progress` (at most every 0.1 s)."""
            add(unit, start, dt, m, kv_used)
            if not len(start_col) & 1023:
                now = time.perf_counter()
                if now - self.t_prog >= 0.1:
                    self.t_prog = now
                    progress(self.requests.done / len(self.requests))

        return add_and_report

    def categories(self, kind: np.ndarray, tokens: np.ndarray, batch: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """Category seconds without a breakdown per moment, for the moments with prefill (index 0)
        and the decode-only ones (1): their seconds (summed in moment order) and the exact
        breakdown (sm.cost) of every moment of the kind until CATEGORY_SAMPLES were taken, then of
        every 2nd, 4th, ... (the stride doubles each CATEGORY_SAMPLES samples), each weighted by
        its stride (build_result scales the shares to the seconds). Each sampled moment's batch
        comes back from the columns, as in totals."""
        dur = np.frombuffer(self.dur, dtype=np.float64)
        ctx = np.frombuffer(self.decode_ctx, dtype=np.int64)
        aggs = np.frombuffer(self.prefill_aggs, dtype=np.float64).reshape(-1, 4)
        names = (*DEVICE_CATEGORIES, "host")
        out = []
        for k in (0, 1):
            mask = kind == DECODE if k else kind != DECODE
            js, strides = _sampled(int(np.count_nonzero(mask)))
            at = _positions(mask, js)
            toks, ctxs = tokens[at].tolist(), ctx[at].tolist()
            if k:  # a decode-only moment: (n, its context, 0, 0, 0.0, 0, n)
                batches = (Batch(t, c, 0, 0, 0.0, 0, t) for t, c in zip(toks, ctxs, strict=True))
            else:  # a moment with prefill: its row of prefill aggregates (the j-th such moment)
                batches = (Batch(int(ds), c, b - int(ds), t - int(ds), pairs, int(pc), int(lg))
                           for t, c, b, (pairs, pc, lg, ds) in zip(toks, ctxs, batch[at].tolist(), aggs[js].tolist(),
                                                                   strict=True))
            rows = self.sm.breakdowns(list(batches))
            # each sample weighted by its stride, added in order (a cumulative sum from a row of
            # zeros: the same floats as adding them one by one)
            weighted = rows * (np.asarray(strides, dtype=np.int64) * 1e-3)[:, None]
            est = np.cumsum(np.concatenate((np.zeros((1, len(names))), weighted)), axis=0)[-1]
            out.append((_ordered_sum(dur, mask), est))
        return out


def _sampled(n: int) -> tuple[list[int], list[int]]:
    """Indices and strides of the moments of a kind whose breakdown is sampled (MomentLog.categories)."""
    js, strides = [], []
    j, st, taken = 0, 1, 0
    while j < n:
        js.append(j)
        strides.append(st)
        taken += 1
        if taken >= CATEGORY_SAMPLES:
            taken = 0
            st *= 2
        j = (j // st + 1) * st  # the next multiple of the stride
    return js, strides


def _positions(mask: np.ndarray, js: list[int], chunk: int = 1 << 16) -> np.ndarray:
    """The indices of the js-th True values of mask (js ascending), a chunk at a time (memory:
    a run may have 30M moments)."""
    out, want, seen = [], np.asarray(js, dtype=np.int64), 0
    for lo in range(0, mask.size, chunk):
        nz = np.flatnonzero(mask[lo:lo + chunk])
        sel = want[(want >= seen) & (want < seen + nz.size)]
        out.append(nz[sel - seen] + lo)
        seen += nz.size
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _ordered_sum(x: np.ndarray, mask: np.ndarray, chunk: int = 1 << 16) -> float:
    """The float sum of x[mask] added one by one in order from 0.0 (a cumulative sum, a chunk at a
    time with the running total in front: the same float as a running sum during the run)."""
    total = 0.0
    for lo in range(0, x.size, chunk):
        part = x[lo:lo + chunk][mask[lo:lo + chunk]]
        if part.size:
            total = float(np.cumsum(np.concatenate(([total], part)))[-1])
    return total


# -- after the run ---------------------------------------------------------------------------------

@dataclass
class PoolRun:
    """What build_result needs of one pool: its role (all: serves whole requests; prefill; decode),
    its effective serving settings, hardware, dtypes, KV blocks per replica and moment log, and
    the global id of its first replica."""

    role: str
    serving: Serving
    hw: Any
    dt: Dtypes
    cap_blocks: int
    moments: MomentLog
    replica_offset: int = 0


def _pool_moments(pool: PoolRun) -> dict[str, np.ndarray]:
    """A pool's moment columns as arrays (replicas numbered globally)."""
    moments, pp = pool.moments, pool.serving.pp
    # the columns as stored (views of the log's memory, no copies: a run may have 30M moments)
    unit = np.frombuffer(moments.unit, dtype=np.int32)
    start = np.frombuffer(moments.start, dtype=np.float64)
    dur = np.frombuffer(moments.dur, dtype=np.float64)
    kv_eng = np.frombuffer(moments.kv_used, dtype=np.int64)
    if pp == 1:
        replica, engine, kv_rep = unit, np.broadcast_to(np.int32(0), unit.shape), kv_eng
    else:
        replica, engine = unit.astype(np.int64) // pp, (unit % pp).astype(np.int32)
        kv_rep = _replica_kv(start, dur, replica, engine, kv_eng, pp)
    out = {
        "start_s": start,
        "dur_s": dur,
        "replica": replica + pool.replica_offset if pool.replica_offset else replica,
        "engine": engine,
        "kind": np.frombuffer(moments.kind, dtype=np.int8),
        "tokens": np.frombuffer(moments.tokens, dtype=np.int64),
        "batch": np.frombuffer(moments.batch, dtype=np.int32),
        "kv_blocks_used": kv_rep,
        "kv_blocks_engine": kv_eng,
        "running": np.frombuffer(moments.running, dtype=np.int32),
    }
    out["decodes"], out["firsts"], out["held"] = _token_columns(moments, out["kind"], out["batch"])
    return out


def _token_columns(moments: MomentLog, kind: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, ...]:
    """For the gaps between tokens (metrics.itl): each moment's decode sequences, prefills that
    ended in it (first tokens; a decode-only moment's decodes are its batch), and whether its
    tokens are held back (a multi-step block's earlier steps)."""
    decodes = np.where(kind == DECODE, batch, 0).astype(np.int32, copy=False)  # compact, as the log's columns
    firsts = np.zeros(kind.size, dtype=np.int32)
    at = np.flatnonzero(kind != DECODE)
    if at.size:
        _pairs, _pc, lg, ds = np.frombuffer(moments.prefill_aggs, dtype=np.float64).reshape(-1, 4).T
        decodes[at] = ds
        firsts[at] = lg - ds
    held = np.zeros(kind.size, dtype=bool)
    held[np.frombuffer(moments.held_at, dtype=np.int64)] = True
    return decodes, firsts, held


def build_result(sc: Scenario, log: RequestLog, pools: list[PoolRun], wall: float,
                 prefix: dict[str, int] | None = None) -> SimResult:
    """Arrays, category seconds, work, energy and time series of a finished run. Several pools
    (disaggregated prefill and decode): their moments merged in order of start, with a pool
    column (the index into SimResult.pools), replicas numbered across pools. `prefix`: the
    prompt tokens admitted and those found in the prefix cache (stats)."""
    req = log.requests
    left = int(np.sum(log.status == UNFINISHED))
    if left:
        raise RuntimeError(f"{left} requests neither completed nor rejected (engine bug)")
    parts = [_pool_moments(p) for p in pools]
    ends = [float(np.max(m["start_s"] + m["dur_s"])) for m in parts if m["start_s"].size]
    done = log.finish_s[np.isfinite(log.finish_s)]
    makespan = max(max(ends, default=0.0), float(req.arrival_s[-1]) if len(req) else 0.0,
                   float(done.max()) if done.size else 0.0)
    requests = {
        "arrival_s": req.arrival_s, "prompt_len": req.prompt_len, "output_len": req.output_len,
        "first_token_s": log.first_token_s, "finish_s": log.finish_s, "replica": log.replica,
        "engine": log.engine, "status": log.status, "preemptions": log.preemptions, "started_s": log.started_s,
        "reached_s": log.reached_s,
    }
    if len(req.class_names) > 1 or np.any(req.priority):  # a workload with classes or priorities
        requests.update({"class": req.klass, "priority": req.priority})
    requests.update(log.extra)
    names = list(DEVICE_CATEGORIES) + ["host"]
    cats = {"prefill": dict.fromkeys(names, 0.0), "decode": dict.fromkeys(names, 0.0)}
    infos, watts_of = [], []
    for pool, m in zip(pools, parts, strict=True):
        moments, sv = pool.moments, pool.serving
        for (kind_s, est), name in zip(moments.categories(m["kind"], m["tokens"], m["batch"]), ("prefill", "decode"),
                                       strict=True):
            tot = float(est.sum())
            scale = kind_s / tot if tot > 0 else 0.0
            for c, v in zip(names, est, strict=True):
                cats[name][c] += float(v) * scale
        sm = moments.sm
        sums = moments.totals(m["kind"], m["tokens"], m["batch"])
        flops, bytes_ = _work(sums, sm, pool.dt, sv)
        energy, m["energy_j"], watts = _energy(moments.power, _demand(moments, m), m, makespan, sv.replicas, sv.pp,
                                               pool.replica_offset)
        watts_of.append(watts)
        dev = pool.hw.device
        infos.append({
            "role": pool.role, "hardware": pool.hw.name, "tp": sv.tp, "pp": sv.pp, "replicas": sv.replicas,
            "replica_offset": pool.replica_offset, "devices_per_replica": sv.tp * sv.pp,
            "kv_capacity_blocks": pool.cap_blocks, "block_size": sv.block_size, "scheduler": sv.scheduler,
            "max_batch_size": sv.max_batch_size, "clock_ghz": dev.clock_ghz,
            "peak_flops": dev.peak_flops(pool.dt.compute), "mem_bw": dev.bandwidth, "total_flops": flops,
            "total_bytes": bytes_, "host_busy_s": sm.host_busy_s(moments.count, sums[2] + sums[4]),
            "busy_s": float(m["dur_s"].sum()) / sv.pp, "moments": moments.count, "energy": energy,
        })
    if len(pools) == 1:
        m, watts, busy_w = parts[0], watts_of[0], None
    else:
        pool_of = np.concatenate([np.full(x["start_s"].size, k, dtype=np.int64) for k, x in enumerate(parts)])
        order = np.argsort(np.concatenate([x["start_s"] for x in parts]), kind="stable")
        m = {key: np.concatenate([x[key] for x in parts])[order] for key in parts[0]}
        m["pool"] = pool_of[order]
        watts = np.concatenate(watts_of)[order]
        busy_w = (1.0 / np.asarray([p.serving.pp for p in pools], dtype=float))[m["pool"]]
    first, sv0 = infos[0], pools[0].serving
    replicas = sum(p.serving.replicas for p in pools)
    energy = _total_energy([x["energy"] for x in infos]) if len(pools) > 1 else infos[0]["energy"]
    ts = _timeseries(log, m, makespan, replicas, sv0.pp, sum(x["kv_capacity_blocks"] * x["replicas"] for x in infos),
                     watts if energy["known"] else None, energy["idle_power_w"] * replicas if len(pools) == 1
                     else sum(x["energy"]["idle_power_w"] * x["replicas"] for x in infos), busy_w)
    return SimResult(
        requests=requests, reject_reasons=dict(log.reasons), moments=m, category_s=cats, timeseries=ts,
        makespan_s=makespan, kv_capacity_blocks=first["kv_capacity_blocks"], block_size=sv0.block_size,
        replicas=replicas, devices_per_replica=sv0.tp * sv0.pp, clock_ghz=first["clock_ghz"],
        peak_flops=first["peak_flops"], mem_bw=first["mem_bw"], total_flops=sum(x["total_flops"] for x in infos),
        total_bytes=sum(x["total_bytes"] for x in infos), host_busy_s=sum(x["host_busy_s"] for x in infos),
        scenario=sc, wall_s=wall, pp=sv0.pp, energy=energy,
        stats={"moments": sum(x["moments"] for x in infos), "request_out_s": log.out_delay, **(prefix or {})},
        class_names=req.class_names, pools=infos if len(pools) > 1 else [],
        recomputed_tokens=int(log.recomputed[1]),
        recomputed_flops=_recompute_flops(log.recomputed, pools[0].moments.sm.model, pools[0].dt, sv0),
    )


def _total_energy(parts: list[dict]) -> dict:
    """The energy of several pools together (per replica arrays concatenated in replica order)."""
    cat = lambda key: np.concatenate([e[key] for e in parts])  # noqa: E731
    return {"known": all(e["known"] for e in parts), "total_j": sum(e["total_j"] for e in parts),
            "idle_j": sum(e["idle_j"] for e in parts), "dynamic_j": sum(e["dynamic_j"] for e in parts),
            "replica_j": cat("replica_j"), "avg_power_w": cat("avg_power_w"), "peak_power_w": cat("peak_power_w"),
            "idle_power_w": sum(e["idle_power_w"] * e["replica_j"].size for e in parts) / sum(e["replica_j"].size for e in parts),
            "tdp_w": sum(e["tdp_w"] * e["replica_j"].size for e in parts) / sum(e["replica_j"].size for e in parts)}


def _exact_sum(x: np.ndarray, chunk: int = 1 << 20) -> int:
    """The sum of integers as a Python int, in int64 chunks (each far from overflow)."""
    return sum(int(x[lo:lo + chunk].sum(dtype=np.int64)) for lo in range(0, x.size, chunk))


def _demand(moments: MomentLog, m: dict[str, np.ndarray]) -> np.ndarray:
    """Each moment's energy demand (MomentPower.demand_array) from the logged aggregates: a
    decode-only moment's batch is its sequences (m["tokens"]) and its context; a moment with
    prefill logged its pairs, cached tokens, logit rows and decode sequences."""
    kind, tokens = m["kind"], m["tokens"]
    ctx = np.frombuffer(moments.decode_ctx, dtype=np.int64)
    out = np.empty(kind.size)
    dec = np.flatnonzero(kind == DECODE)
    if dec.size:
        ds = tokens[dec]
        out[dec] = moments.power.demand_array(ds, ctx[dec], 0, 0, 0.0, 0.0, ds)
        del ds
    pre = np.flatnonzero(kind != DECODE)
    if pre.size:
        pairs, pc, lg, ds = np.frombuffer(moments.prefill_aggs, dtype=np.float64).reshape(-1, 4).T
        ds, lg = ds.astype(np.int64), lg.astype(np.int64)
        out[pre] = moments.power.demand_array(ds, ctx[pre], m["batch"][pre] - ds, tokens[pre] - ds, pairs, pc, lg)
    return out


def _energy(power: MomentPower, demand: np.ndarray, m: dict[str, np.ndarray], makespan: float,
            replicas: int, pp: int, offset: int) -> tuple[dict, np.ndarray]:
    """A pool's energy (see SimResult.energy), each moment's dynamic energy (J) and its dynamic
    power in W over its replica's devices (its dynamic energy over its length)."""
    start, dur, replica = m["start_s"], m["dur_s"], m["replica"] - offset if offset else m["replica"]
    e = power.energy(demand, dur)
    del demand
    watts = np.divide(e, dur, out=np.zeros_like(e), where=dur > 0)
    idle = power.idle_w * makespan
    replica_j = np.bincount(replica, weights=e, minlength=replicas)[:replicas] + idle
    dynamic = float(e.sum())
    return {
        "known": power.known, "total_j": idle * replicas + dynamic, "idle_j": idle * replicas, "dynamic_j": dynamic,
        "replica_j": replica_j, "avg_power_w": replica_j / makespan if makespan > 0 else np.zeros(replicas),
        "peak_power_w": power.idle_w + (np.array([watts.max(initial=0.0)]) if replicas == 1 and pp == 1 else
                                        peak_power(start, start + dur, watts, replica, replicas, overlap=pp > 1)),
        "idle_power_w": power.idle_w, "tdp_w": power.tdp_w,
    }, e, watts


def _replica_kv(start: np.ndarray, dur: np.ndarray, replica: np.ndarray, engine: np.ndarray,
                kv: np.ndarray, pp: int) -> np.ndarray:
    """pp > 1: each moment's replica-wide KV blocks, the sum over the replica's virtual engines of
    what each holds at the moment's start. A virtual engine holds, at time t, the KV of its moment
    running at t (kv at that moment's start: blocks change only at moment boundaries) and none
    when idle (an idle engine holds no request; like the time series, cached prefixes of an idle
    engine are not counted). Moments are logged in time order, so a moment's index orders it;
    one sorted search per virtual engine index, vectorised over all moments."""
    M = start.size
    total = np.zeros(M, dtype=np.int64)
    if M == 0:
        return total
    idx = np.arange(M, dtype=np.int64)
    upto = np.searchsorted(start, start, side="right")  # moments that started at or before each start
    key_q = replica * (M + 1) + upto
    end = start + dur
    for e in range(pp):
        sel = np.flatnonzero(engine == e)
        if not sel.size:
            continue
        o = np.argsort(replica[sel], kind="stable")  # (replica, time) order
        j = sel[o]
        keys = replica[j] * (M + 1) + idx[j]
        k = np.searchsorted(keys, key_q, side="left") - 1  # the engine's latest moment started by then
        kc = np.maximum(k, 0)
        hit = (k >= 0) & (replica[j[kc]] == replica) & (end[j[kc]] > start)
        total += np.where(hit, kv[j[kc]], 0)
    return total


def _work(sums: list, sm, dt: Dtypes, sv: Serving) -> tuple[float, float]:
    """Total FLOPs and bytes of a pool's devices (_sums_work); with speculative decoding the
    target's verify passes and the draft's passes (moment/speculative.Speculation.work_sums)."""
    if not hasattr(sm, "work_sums"):
        return _sums_work(sums, sm.model, dt, sv)
    flops_sums, bytes_sums, drafts = sm.work_sums(sums)
    flops = _sums_work(flops_sums, sm.model, dt, sv)[0]
    bytes_ = _sums_work(bytes_sums, sm.model, dt, sv)[1]
    for model, w, ds in drafts:
        f, b = _sums_work(ds, model, dt, sv)
        flops, bytes_ = flops + w * f, bytes_ + w * b
    return flops, bytes_


def _sums_work(sums: list, model, dt: Dtypes, sv: Serving) -> tuple[float, float]:
    """Total FLOPs and bytes of all devices from the running sums of batch aggregates.

    The ops' FLOPs are linear in the aggregates (tokens, logit rows, prefill pairs, decode
    contexts), so the ops of the summed aggregates give the sum exactly. Their bytes are linear
    plus a per-moment constant (the weights streamed once per moment), added (moments - 1) more
    times. Approximations: MoE experts touched and sliding windows are taken at the sums. The ops
    are per device of a tp group over all layers, expert-parallel layers on the average device
    (the busiest one's spread and moe_imbalance shape a step's time, not the work); x tp gives all
    devices of the replicas.
    """
    M, LG, DS, DC, PS, PT, PP, PC = sums
    if M == 0:
        return 0.0, 0.0
    ops = dense_ops(model, DS + PT, LG, dt, sv.tp, sv.pp, sv.ep, busiest=False)
    base = dense_ops(model, 0, 0, dt, sv.tp, sv.pp, sv.ep, busiest=False)
    att = attention_ops(model, Batch(int(DS), int(DC), int(PS), int(PT), float(PP), int(PC)), dt, sv.tp, sv.pp)
    flops = sum(float(np.sum(o.flops)) for o in ops + att)
    by = sum(float(np.sum(o.bytes)) for o in ops + att) + (M - 1) * sum(float(np.sum(o.bytes)) for o in base)
    return flops * sv.tp, by * sv.tp


def _recompute_flops(recomputed: list, model, dt: Dtypes, sv: Serving) -> float:
    """FLOPs of all devices spent computing again the KV that preemptions dropped: the dense and
    attention ops of the recomputed tokens' sums (linear in them, as in _work); no logits (the
    token a re-prefill ends with is new work)."""
    n, tokens, pairs, ctx = recomputed
    if not tokens:
        return 0.0
    ops = dense_ops(model, tokens, 0, dt, sv.tp, sv.pp, sv.ep, busiest=False)
    att = attention_ops(model, Batch(0, 0, int(n), int(tokens), float(pairs), int(ctx)), dt, sv.tp, sv.pp)
    return sum(float(np.sum(o.flops)) for o in ops + att) * sv.tp


def _integral(t: np.ndarray, starts: np.ndarray, ends: np.ndarray, w: np.ndarray | float) -> np.ndarray:
    """For each time in t: integral from 0 of sum_j w_j [starts_j <= x < ends_j] dx (vectorised);
    w: an array, or one weight for all. Times already in order (the moment log's starts) are not
    sorted again: this runs over every moment of a run, and each copy is 8 bytes a moment."""
    out = np.zeros(t.size)
    for times, sign in ((starts, 1.0), (ends, -1.0)):
        if times.size and bool(np.all(times[1:] >= times[:-1])):
            ts, ws = times, w
        else:
            o = np.argsort(times, kind="stable")
            ts, ws = times[o], (w if np.isscalar(w) else w[o])
            del o
        k = np.searchsorted(ts, t, side="right")
        if np.isscalar(ws):
            cw = ws * k  # speed and memory: a constant weight's prefix sums are k * w
            cwt = ws * np.concatenate(([0.0], np.cumsum(ts)))[k]
        else:
            cw = np.concatenate(([0], np.cumsum(ws)))[k]
            cwt = np.concatenate(([0.0], np.cumsum(ws * ts)))[k]
        out += sign * (t * cw - cwt)
    return out


def _timeseries(log: RequestLog, m: dict[str, np.ndarray], makespan: float, replicas: int, pp: int,
                kv_blocks: int, watts: np.ndarray | None, idle_w: float,
                busy_w: np.ndarray | None) -> dict[str, np.ndarray]:
    """Interval averages on a fixed grid, exact: integrals of step functions via sorted prefix sums.
    kv_blocks: all replicas' KV blocks. With `watts` (each moment's dynamic power) also power_w:
    all devices' average power, idle_w (all replicas') included. Pools of different pp: busy_w is
    each moment's 1 / pp. A run of no time (every request rejected at 0 s) gets a grid over 1 s."""
    n = TIMESERIES_POINTS
    span = makespan if makespan > 0 else 1.0
    edges = np.linspace(0.0, span, n + 1)
    width = span / n
    arr = log.requests.arrival_s
    leave = np.where(log.status == COMPLETED, log.finish_s, arr)
    out_i = _integral(edges, arr, leave, 1.0)
    del leave
    st = m["start_s"]
    en = st + m["dur_s"]
    run_i = _integral(edges, st, en, m["running"])
    busy_i = _integral(edges, st, en, 1.0 / pp if busy_w is None else busy_w)  # each of pp stages: dur / pp
    kv_i = _integral(edges, st, en, m["kv_blocks_engine"])  # engines overlap: their sum
    avg = lambda x: np.diff(x) / width
    outstanding = avg(out_i)
    running = avg(run_i)
    out = {
        "t_s": edges[:-1].copy(),
        "queue_len": np.maximum(outstanding - running, 0.0),
        "running": running,
        "kv_used_frac": avg(kv_i) / max(kv_blocks, 1),
        "busy_frac": avg(busy_i) / replicas,
        "outstanding": outstanding,
    }
    if watts is not None:
        out["power_w"] = avg(_integral(edges, st, en, watts)) + idle_w
    return out


__all__ = ["SimResult", "RequestLog", "MomentLog", "PoolRun", "build_result", "COMPLETED", "REJECTED"]
