"""The discrete-event engine: replicas serving requests, one moment (forward pass) at a time.

A SimPy Environment runs a workload process that releases arrivals at their times, routes each
to a replica (round_robin | least_outstanding) and wakes that replica if it is idle; and one
process per replica that loops: its scheduler forms a batch, the moment lasts
`StepModel.step_s(batch)` seconds (`yield env.timeout(dt)`: the replica's GPUs are busy, and
step_s already includes the host's issue time and per-step overhead), then requests and the
KV cache are updated. An idle replica waits on an event that the next arrival routed to it
triggers: no polling.

Pipeline parallelism (pp > 1) is modelled as vLLM runs it: each replica runs pp virtual engines,
each a process of the same replica logic with its own scheduler, queue and 1/pp of the
replica's KV cache blocks (cap_blocks // pp), so pp batches are in flight at once. The router
spreads requests over all virtual engines of all replicas. A virtual engine's moment lasts
step_s, the full pipeline latency of its batch (all pp stages and the pp-1 sends), and the pp
virtual engines of a replica run concurrently, independently of each other: the balanced-
pipeline approximation vLLM's design assumes (every stage takes step_s / pp of each batch, so
pp batches of similar size keep every stage busy). Stage imbalance, bubbles when the virtual
engines' batches differ in size, and contention between them for a stage are not modelled:
a pipelined replica that is full runs pp batches per step_s. Each moment keeps each of the pp
stages busy for dur / pp, so a replica's devices are busy sum(dur) / pp of the time.

Speed (the hot loop runs millions of moments) comes from never touching every running request
in a step. Each replica keeps a decode step counter s. A request that enters decode at s0 with
t0 tokens cached has t0 + (s - s0) cached at step s and finishes at a known step f, kept in a
heap (only finishers are popped). The sum of decode contexts is a running sum D + B*s; it needs
a new KV block at step s exactly when (s0 - t0) % block_size == s % block_size, so a count per
residue gives a step's new blocks in one lookup. Per-request results go into preallocated
arrays by request index; moments into compact growable arrays (array.array). The step cost is
StepModel.step_agg: a table lookup over token counts plus attention in closed form.
"""

from __future__ import annotations

import heapq
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from hwmodels.spec import Hardware
from simulator.moment.cost import DEVICE_CATEGORIES, StepModel, check_parallelism, step_model
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Batch, Dtypes, attention_ops, dense_ops
from simulator.serving.budget import check_memory
from simulator.serving.kvcache import FAIL, KVCache
from simulator.serving.scenario import Scenario
from simulator.serving.workload import Requests, make_requests

PCIE_BW = 25e9           # bytes/s host<->device for swap preemption (PCIe 4/5 x16, achieved)
ADMIT_WATERMARK = 0.01   # vLLM: keep 1% of blocks free when admitting, unless nothing runs
CATEGORY_SAMPLES = 2000  # exact breakdowns per stride before the stride doubles (see _Sim.account)
TIMESERIES_POINTS = 1000
INF = float("inf")

PREFILL, DECODE, MIXED = 0, 1, 2  # moments["kind"]
COMPLETED, REJECTED, UNFINISHED = 0, 1, 2  # requests["status"] (UNFINISHED never survives a run)

R_KV = "exceeds kv capacity"                    # prompt + output can never fit a replica's KV cache
R_TOKENS = "prompt > max_batched_tokens"        # continuous (vLLM v0) cannot chunk a prompt
R_QUEUE = "queue full"                          # serving.max_queue requests already waiting
R_CONTEXT = "exceeds max_position_embeddings"   # prompt + output longer than the model serves (vLLM: max_model_len)


@dataclass
class SimResult:
    """Everything a run produced; metrics, CSVs, plots and traces are computed from it.

    requests: per request index (the order of arrival): arrival_s, prompt_len, output_len,
      first_token_s (nan if none), finish_s (nan if not completed), replica (-1 if rejected
      before routing), engine (the virtual engine within the replica, 0 when pp = 1 or when
      rejected before routing), status (0 completed, 1 rejected), preemptions.
    moments: one entry per moment: start_s, dur_s, replica (the physical replica), engine (the
      virtual engine within it that ran the moment: 0 .. pp-1, all 0 when pp = 1), kind
      (0 prefill-only, 1 decode-only, 2 mixed), tokens, batch (sequences in the step),
      kv_blocks_used (the replica's KV blocks in use at the moment's start, after its
      allocations: the sum over its virtual engines), kv_blocks_engine (the same for the
      moment's virtual engine alone, at most kv_capacity_blocks // pp; the same array as
      kv_blocks_used when pp = 1), running (requests holding KV on the moment's virtual engine
      during the moment).
    pp > 1 (see the module docstring): a replica runs pp virtual engines concurrently, each moment
      lasting the full pipeline latency step_s of its batch: the balanced-pipeline approximation
      vLLM's design assumes, no stage imbalance or bubbles. Moments of one replica's different
      virtual engines overlap in time; each moment keeps each of the pp stages busy for
      dur_s / pp, so a replica's devices are busy sum(dur_s) / pp of the time.
    category_s: {"prefill": moments with prefill, "decode": decode-only moments} -> category ->
      seconds (the cost model's breakdown; sampled, see _Sim.account).
    timeseries: on a grid of TIMESERIES_POINTS equal intervals over [0, makespan]: t_s (interval
      start) and the time average over each interval of queue_len, running, kv_used_frac,
      busy_frac, outstanding (all replicas together), computed exactly from requests and moments
      (busy_frac: the devices' busy fraction, sum(dur_s) / pp per replica, at most 1).
    kv_capacity_blocks: the blocks of one replica (all its virtual engines together).
    pp: virtual engines per replica (serving.pp).
    total_flops, total_bytes: device work of all devices of all replicas, from running sums of
      the batch aggregates (see _Sim.work).
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
    recomputed_tokens: int = 0
    recomputed_flops: float = 0.0


# -- the simulation ------------------------------------------------------------------------------

class _Sim:
    """State shared by the workload process and the replicas: requests, results, moment log."""

    def __init__(self, sc: Scenario, req: Requests, sm: StepModel, cap_blocks: int,
                 progress: Callable[[float], None] | None):
        self.sc, self.req, self.sm = sc, req, sm
        self.cost = sm.step_agg  # O(1) from the batch aggregates
        self.env = simpy.Environment()
        sv = sc.serving
        n = len(req)
        self.n = n
        self.P = req.prompt_len.tolist()
        self.O = req.output_len.tolist()
        self.pid = req.prefix_id.tolist()
        self.plen = req.prefix_len.tolist()
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.replica_of = np.full(n, -1, dtype=np.int64)
        self.pp = sv.pp
        self.engine_of = np.zeros(n, dtype=np.int64)  # written only when pp > 1
        self.status = np.full(n, UNFINISHED, dtype=np.int64)
        self.preempt = np.zeros(n, dtype=np.int64)
        self.reasons: dict[str, int] = {}
        self.done = 0
        self.cap_blocks = cap_blocks                 # per replica
        self.eng_blocks = cap_blocks // sv.pp        # per virtual engine (vLLM: num_gpu_blocks // pp)
        self.bs = sv.block_size
        # moment log: compact growable columns
        self.m_start, self.m_dur = array("d"), array("d")
        self.m_rep, self.m_kind, self.m_batch, self.m_run = array("i"), array("b"), array("i"), array("i")
        self.m_tok, self.m_kv = array("q"), array("q")
        # running sums of batch aggregates (see work()); index: kind 0 prefill-bearing, 1 decode-only
        self.ap_start, self.ap_dur, self.ap_rep = self.m_start.append, self.m_dur.append, self.m_rep.append
        self.ap_kind, self.ap_tok, self.ap_batch = self.m_kind.append, self.m_tok.append, self.m_batch.append
        self.ap_kv, self.ap_run = self.m_kv.append, self.m_run.append
        self.sums = [0] * 4 + [0, 0, 0.0, 0]  # moments, logits, ds, dc, ps, pt, pairs, pc
        # the same prefill sums for tokens recomputed after a preemption: chunks, tokens, pairs, ctx
        self.recomputed = [0, 0, 0.0, 0]
        self.kind_s = [0.0, 0.0]
        self.kind_n = [0, 0]
        self.stride = [1, 1]
        self.taken = [0, 0]
        self.cat_est = [np.zeros(len(DEVICE_CATEGORIES) + 1), np.zeros(len(DEVICE_CATEGORIES) + 1)]
        self.progress = progress
        self.t_prog = time.perf_counter()
        self.moments = 0

    # one call per moment: log it, add to the sums, maybe sample its breakdown, report progress;
    # rep is the virtual engine's unit id, replica * pp + engine (the replica when pp = 1)
    def account(self, rep: int, start: float, dt: float, kind: int, ds: int, dc: int, ps: int, pt: int,
                pairs: float, pc: int, lg: int, running: int, kv_used: int) -> None:
        self.ap_start(start)
        self.ap_dur(dt)
        self.ap_rep(rep)
        self.ap_kind(kind)
        self.ap_tok(ds + pt)
        self.ap_batch(ds + ps)
        self.ap_kv(kv_used)
        self.ap_run(running)
        s = self.sums
        s[0] += 1
        s[1] += lg
        s[2] += ds
        s[3] += dc
        if ps:
            s[4] += ps
            s[5] += pt
            s[6] += pairs
            s[7] += pc
        # Category seconds without a breakdown per moment: the exact breakdown (sm.cost) of every
        # moment of a kind until CATEGORY_SAMPLES were taken, then of every 2nd, 4th, ... (the
        # stride doubles each CATEGORY_SAMPLES samples), each weighted by its stride. The shares
        # are then scaled to the kind's exact total seconds (see _result).
        k = 1 if kind == DECODE else 0
        self.kind_s[k] += dt
        i = self.kind_n[k]
        self.kind_n[k] = i + 1
        st = self.stride[k]
        if i % st == 0:
            c = self.sm.cost(Batch(ds, dc, ps, pt, pairs, pc, lg))
            v = [c.breakdown_ms[x] for x in DEVICE_CATEGORIES] + [c.breakdown_ms["host"]]
            self.cat_est[k] += np.asarray(v) * (st * 1e-3)
            self.taken[k] += 1
            if self.taken[k] >= CATEGORY_SAMPLES:
                self.taken[k] = 0
                self.stride[k] = st * 2
        self.moments += 1
        if self.progress is not None and not self.moments & 1023:
            now = time.perf_counter()
            if now - self.t_prog >= 0.1:
                self.t_prog = now
                self.progress(self.done / self.n)

    def reject(self, i: int, reason: str) -> None:
        self.status[i] = REJECTED
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.done += 1


class _Replica:
    """One replica, or one virtual engine of a pp > 1 replica: its queue, running set, KV cache
    (its share of the replica's) and scheduler; a SimPy process."""

    def __init__(self, sim: _Sim, rid: int, eng: int = 0):
        self.sim, self.rid, self.eng = sim, rid, eng
        self.unit = rid * sim.pp + eng  # the moment log's id (= rid when pp = 1)
        sv = sim.sc.serving
        self.env = sim.env
        self.kind = sv.scheduler
        self.maxb = sv.max_batch_size
        self.mbt = sv.max_batched_tokens
        if self.kind == "chunked":  # every running decode must fit the token budget
            self.maxb = min(self.maxb, self.mbt)
        self.bs = sim.bs
        self.kv = KVCache(sim.eng_blocks, self.bs)
        self.wm = int(ADMIT_WATERMARK * sim.eng_blocks)
        self.swap = sv.preemption == "swap"
        self.pc = sv.prefix_caching and self.kind != "static"  # static reserves whole requests: no sharing
        self.preemptible = self.kind != "static"
        kvbpt = _kv_bytes_per_token(sim)
        self.swap_s_per_block = self.bs * kvbpt / PCIE_BW
        self.waiting: deque[int] = deque()
        self.outstanding = 0
        self.idle = False
        self.wake = None
        # decode set (see the module docstring)
        self.B = 0
        self.D = 0
        self.s = 0
        self.cnt = [0] * self.bs
        self.heap: list[tuple[int, int, int]] = []
        self.info: dict[int, tuple[int, int, int, int, int, int]] = {}  # idx -> t0, s0, g0, tok, pb, pid
        self.stack: list[tuple[int, int]] = []  # (tok, idx) in admission order, for preemption
        self.tok = 0
        self.partial: dict[int, list[int]] = {}  # chunked: idx -> [done, target, g_prev, pb, pid, tok]
        self.progress: dict[int, int] = {}      # preempted (recompute): tokens generated so far
        self.computed: dict[int, int] = {}      # preempted, KV dropped: tokens it had (recomputed on return)
        self.preempted = False                  # a preemption in the step being planned
        self.swapped: dict[int, tuple[int, int]] = {}  # preempted (swap): (tokens cached, generated)
        self.extra = 0.0
        self.pending: list = []
        self.decoding = False
        self.plan = {"static": self._plan_static, "continuous": self._plan_continuous,
                     "chunked": self._plan_chunked}[self.kind]

    # -- the process -----------------------------------------------------------------------------
    def run(self):
        env = self.env
        timeout = env.timeout
        plan = self.plan
        commit = self._commit
        while True:
            dt = plan()
            if dt is None:
                if self.waiting or self.partial:
                    raise RuntimeError(f"{self.name} stalled with {len(self.waiting)} waiting")
                self.idle = True
                self.wake = env.event()
                yield self.wake
                continue
            yield timeout(dt)
            commit()

    @property
    def name(self) -> str:
        return f"replica {self.rid}" + (f" engine {self.eng}" if self.sim.pp > 1 else "")

    def arrive(self, i: int) -> None:
        self.waiting.append(i)
        self.outstanding += 1
        if self.idle:
            self.idle = False
            self.wake.succeed()

    # -- decode set ------------------------------------------------------------------------------
    def _enter_decode(self, i: int, t0: int, g: int, pb: int, pid: int) -> None:
        s = self.s
        self.tok += 1
        tok = self.tok
        heapq.heappush(self.heap, (s + self.sim.O[i] - g, tok, i))
        if self.preemptible:
            self.stack.append((tok, i))
        self.info[i] = (t0, s, g, tok, pb, pid)
        self.B += 1
        self.D += t0 - s
        self.cnt[(s - t0) % self.bs] += 1

    def _leave_decode(self, i: int) -> tuple[int, int, int, int]:
        t0, s0, g0, _tok, pb, pid = self.info.pop(i)
        self.B -= 1
        self.D -= t0 - s0
        self.cnt[(s0 - t0) % self.bs] -= 1
        d = self.s - s0
        return t0 + d, g0 + d, pb, pid

    def _release(self, i: int, t: int, pb: int, pid: int) -> None:
        if self.kind == "static":
            sim = self.sim
            self.kv.release(-(-(sim.P[i] + sim.O[i]) // self.bs))
            return
        self.kv.release(-(-t // self.bs) - pb)
        if pid >= 0:
            self.kv.release_prefix(pid)

    def _finish(self, i: int, now: float) -> None:
        sim = self.sim
        sim.finish[i] = now
        sim.status[i] = COMPLETED
        sim.done += 1
        self.outstanding -= 1

    def _preempt_one(self) -> bool:
        """Preempt the most recently admitted running request (decoding or mid-prefill)."""
        stack, info, partial = self.stack, self.info, self.partial
        while stack:
            tok, i = stack.pop()
            ent = info.get(i)
            if ent is not None and ent[3] == tok:
                t, g, pb, pid = self._leave_decode(i)
                own = -(-t // self.bs) - pb
                self.kv.release(own)
                if pid >= 0:
                    self.kv.release_prefix(pid)
                if self.swap:
                    self.swapped[i] = (t, g)
                    self.extra += (own + pb) * self.swap_s_per_block  # copy out (prefix too, conservatively)
                else:
                    self.progress[i] = g
                    self.computed[i] = max(t, self.computed.get(i, 0))
                self.waiting.appendleft(i)
                self.sim.preempt[i] += 1
                self.preempted = True
                return True
            st = partial.get(i)
            if st is not None and st[5] == tok:
                done, _target, g_prev, pb, pid, _ = partial.pop(i)
                self.kv.release(-(-done // self.bs) - pb)
                if pid >= 0:
                    self.kv.release_prefix(pid)
                if g_prev:
                    self.progress[i] = g_prev
                self.computed[i] = max(done, self.computed.get(i, 0))
                self.waiting.appendleft(i)
                self.sim.preempt[i] += 1
                self.preempted = True
                return True
        return False

    def _grow_decode(self) -> None:
        """Blocks for this decode step's new tokens; preempt until they fit."""
        kv, cnt, bs = self.kv, self.cnt, self.bs
        need = cnt[self.s % bs]
        while not kv.alloc(need):
            if not self._preempt_one():
                raise RuntimeError("KV cache cannot hold the running requests")
            need = cnt[self.s % bs]
        if len(self.stack) > 2 * (self.B + len(self.partial)) + 64:
            info, partial = self.info, self.partial
            self.stack = [(t, i) for t, i in self.stack
                          if (i in info and info[i][3] == t) or (i in partial and partial[i][5] == t)]

    def _swap_in(self, i: int, n_seq: int) -> bool:
        """Bring a swapped-out request back into the decode set if its blocks fit."""
        t, g = self.swapped[i]
        sim = self.sim
        pb, pid = 0, -1
        if self.pc and sim.pid[i] >= 0 and sim.plen[i] >= self.bs:
            pb, pid = sim.plen[i] // self.bs, sim.pid[i]
        own = -(-t // self.bs) - pb
        if self.kv.available < own + pb + (self.wm if n_seq else 0):
            return False
        if pid >= 0:
            self.kv.acquire_prefix(pid, pb)
        self.kv.alloc(own)
        del self.swapped[i]
        self.waiting.popleft()
        self.extra += (own + pb) * self.swap_s_per_block
        self._enter_decode(i, t, g, pb, pid)
        return True

    # -- schedulers: plan a moment, return its seconds (None: idle) -------------------------------
    def _plan_static(self) -> float | None:
        sim, kv = self.sim, self.kv
        if self.B:
            return self._decode_moment()
        batch = []
        P, OUT, bs = sim.P, sim.O, self.bs
        w = self.waiting
        pt = 0
        pairs = 0.0
        while w and len(batch) < self.maxb:
            i = w[0]
            if not kv.alloc(-(-(P[i] + OUT[i]) // bs)):  # static reserves prompt + output up front
                break
            w.popleft()
            batch.append(i)
            p = P[i]
            pt += p
            pairs += p * (p + 1) / 2
        if not batch:
            return None
        self.pending = [(i, 0, P[i], 0, 0, -1) for i in batch]
        n = len(batch)
        return self._moment(PREFILL, 0, 0, n, pt, pairs, 0, n, n)

    def _admit_one(self, i: int, n_seq: int, chunk_room: int, whole_limit: int = 0) -> tuple[int, int, int, int, int] | None:
        """Blocks and prefix for request i's (first) prefill chunk of at most chunk_room tokens,
        or (chunk_room -1) its whole prefill if at most whole_limit tokens are left to compute.
        Returns (chunk tokens, cached before, target, pb, pid)."""
        sim, kv, bs = self.sim, self.kv, self.bs
        g_prev = self.progress.get(i, 0)
        target = sim.P[i] + g_prev
        pb, pid, cached = 0, -1, 0
        if self.pc and sim.pid[i] >= 0 and sim.plen[i] >= bs:
            pb, pid = sim.plen[i] // bs, sim.pid[i]
            if kv.resident(pid):
                cached = pb * bs
        room = kv.available - pb - (self.wm if n_seq else 0)  # blocks for this request's own tokens
        if chunk_room < 0:
            ln = target - cached
            if ln > whole_limit or -(-target // bs) - pb > room:
                return None
        else:  # vLLM v1: the chunk the token budget allows, if its blocks are free; never a sliver
            ln = min(target - cached, chunk_room)
            if -(-(cached + ln) // bs) - pb > room:
                return None
        if pid >= 0 and kv.acquire_prefix(pid, pb) == FAIL:  # cannot fail: room counted pb
            return None
        kv.alloc(-(-(cached + ln) // bs) - pb)
        return ln, cached, target, pb, pid

    def _plan_continuous(self) -> float | None:
        """vLLM v0: a step with new admissions runs only their full prefills; else one decode step."""
        sim = self.sim
        while True:
            w = self.waiting
            if w and self.B < self.maxb:
                n_seq = self.B
                adm = []
                pt = 0
                pairs = 0.0
                pc = 0
                while w and n_seq < self.maxb:
                    i = w[0]
                    if i in self.swapped:
                        if adm or not self._swap_in(i, n_seq):
                            break
                        n_seq += 1
                        continue
                    # the step's prefill tokens stay within the budget (a lone re-prefill of
                    # prompt + generated after a preemption may exceed it: vLLM would drop it)
                    got = self._admit_one(i, n_seq, -1, self.mbt - pt if adm else 1 << 62)
                    if got is None:
                        break
                    ln, cached, target, pb, pid = got
                    w.popleft()
                    self.progress.pop(i, None)
                    adm.append((i, cached, target, target - sim.P[i], pb, pid))
                    pt += ln
                    pairs += ln * cached + ln * (ln + 1) / 2
                    pc += cached
                    n_seq += 1
                    if self.computed:
                        self._recomputed(i, cached, ln)
                if adm:
                    self.pending = adm
                    n = len(adm)
                    return self._moment(PREFILL, 0, 0, n, pt, pairs, pc, n, self.B + n)
            if not self.B:
                return None
            self._grow_decode()
            if self.B:
                return self._decode_moment()

    def _plan_chunked(self) -> float | None:
        """Sarathi-Serve: all running decodes (1 token each), then prefill chunks fill the budget."""
        kv, bs = self.kv, self.bs
        self.preempted = False
        while True:
            w = self.waiting
            while w and w[0] in self.swapped and self.B + len(self.partial) < self.maxb:
                if not self._swap_in(w[0], self.B + len(self.partial)):  # back into this step's decodes
                    break
            if self.B:
                self._grow_decode()
            B = self.B
            rest = self.mbt - B
            chunks = []
            pt = 0
            pairs = 0.0
            pc = 0
            for i, st in self.partial.items():
                if rest <= 0:
                    break
                done, target = st[0], st[1]
                ln = min(target - done, rest)  # vLLM v1: the chunk the budget allows, or none this step
                if not kv.alloc(-(-(done + ln) // bs) - -(-done // bs)):
                    continue
                chunks.append((i, ln, done))
                rest -= ln
            n_seq = B + len(self.partial)
            # vLLM v1: no new request joins a step that had to preempt one (it would take the
            # blocks just freed, and be the next victim: thrashing), unless nothing else runs
            blocked = self.preempted and (B or chunks)
            while rest > 0 and w and n_seq < self.maxb and not blocked:
                i = w[0]
                if i in self.swapped:  # swapped requests rejoin first, at the next step
                    break
                got = self._admit_one(i, n_seq, rest)
                if got is None:
                    break
                ln, cached, target, pb, pid = got
                w.popleft()
                g_prev = self.progress.pop(i, 0)
                self.tok += 1
                self.partial[i] = [cached, target, g_prev, pb, pid, self.tok]
                self.stack.append((self.tok, i))
                chunks.append((i, ln, cached))
                rest -= ln
                n_seq += 1
            if not B and not chunks:
                if self.partial:  # mid-prefill requests starved of blocks: restart the newest
                    self._preempt_one()
                    continue
                return None
            for i, ln, c in chunks:
                pt += ln
                pairs += ln * c + ln * (ln + 1) / 2
                pc += c
                if self.computed:
                    self._recomputed(i, c, ln)
            self.pending = chunks
            completing = sum(1 for i, ln, c in chunks if c + ln == self.partial[i][1])
            kind = DECODE if not chunks else (PREFILL if not B else MIXED)
            running = self.B + len(self.partial)
            return self._moment(kind, B, self.D + B * self.s, len(chunks), pt, pairs, pc, B + completing, running)

    def _recomputed(self, i: int, cached: int, ln: int) -> None:
        """Count the part of a prefill chunk (ln tokens after `cached`) that request i had computed
        before a preemption dropped its KV: work done twice (not useful for MFU)."""
        hw = self.computed.get(i, 0)
        r = min(cached + ln, hw) - cached
        if r <= 0:
            return
        rc = self.sim.recomputed
        rc[0] += 1
        rc[1] += r
        rc[2] += r * cached + r * (r + 1) / 2
        rc[3] += cached
        if cached + ln >= hw:
            del self.computed[i]

    def _decode_moment(self) -> float:
        B = self.B
        self.pending = []
        return self._moment(DECODE, B, self.D + B * self.s, 0, 0, 0.0, 0, B, B)

    def _moment(self, kind: int, ds: int, dc: int, ps: int, pt: int, pairs: float, pc: int, lg: int,
                running: int) -> float:
        sim = self.sim
        dt = sim.cost(ds, dc, ps, pt, pairs, pc, lg) + self.extra
        if not 0.0 < dt < INF:  # simulated time must advance by a finite step (schema bounds keep it so)
            raise InputError("hardware", "", f"a moment of {dt} s: simulated time would not advance; check the "
                             "hardware's and model's numbers")
        self.extra = 0.0
        self.decoding = ds > 0
        sim.account(self.unit, self.env.now, dt, kind, ds, dc, ps, pt, pairs, pc, lg, running, self.kv.used)
        return dt

    # -- after the moment ------------------------------------------------------------------------
    def _commit(self) -> None:
        now = self.env.now
        if self.decoding:
            self.s += 1
            s = self.s
            heap, info = self.heap, self.info
            while heap and heap[0][0] <= s:
                _f, tok, i = heapq.heappop(heap)
                ent = info.get(i)
                if ent is None or ent[3] != tok:
                    continue  # preempted since
                t, _g, pb, pid = self._leave_decode(i)
                self._release(i, t, pb, pid)
                self._finish(i, now)
        if not self.pending:
            return
        if self.kind == "chunked":
            partial = self.partial
            for i, ln, _c in self.pending:
                st = partial[i]
                st[0] += ln
                if st[0] < st[1]:
                    continue
                done, target, g_prev, pb, pid, _ = partial.pop(i)
                self._prefilled(i, target, g_prev, pb, pid, now)
        else:
            for i, _cached, target, g_prev, pb, pid in self.pending:
                self._prefilled(i, target, g_prev, pb, pid, now)
        self.pending = []

    def _prefilled(self, i: int, target: int, g_prev: int, pb: int, pid: int, now: float) -> None:
        """The prefill of request i ended: it has its first (or next) token; decode or finish."""
        sim = self.sim
        if g_prev == 0:
            sim.first[i] = now
        g = g_prev + 1
        if g >= sim.O[i]:
            self._release(i, target, pb, pid)
            self._finish(i, now)
        else:
            self._enter_decode(i, target, g, pb, pid)


def _kv_bytes_per_token(sim: _Sim) -> float:
    sv = sim.sc.serving
    return sim.sm.model.kv_bytes_per_token(sv.kv_dtype, sv.tp, sv.pp)


# -- the workload process and router ------------------------------------------------------------

def _workload(sim: _Sim, reps: list[_Replica]):
    """reps: every virtual engine, engine-major (engine 0 of each replica, then engine 1, ...), so
    round robin spreads consecutive requests over the replicas first; ties of least_outstanding
    go to the first in this order. With pp = 1 they are the replicas in order."""
    env = sim.env
    sv = sim.sc.serving
    arr = sim.req.arrival_s.tolist()
    P, OUT = sim.P, sim.O
    cap_tokens = sim.eng_blocks * sim.bs  # a request lives on one virtual engine
    max_len = sim.sm.model.max_position_embeddings or 1 << 62
    pp = sim.pp
    group: dict[int, list[_Replica]] = {}
    for r in reps:
        group.setdefault(r.rid, []).append(r)
    max_tokens = sv.max_batched_tokens if sv.scheduler == "continuous" else None
    max_queue = sv.max_queue
    lo = sv.router == "least_outstanding"
    R = len(reps)
    outs = range(R)
    rr = 0
    n = len(arr)
    i = 0
    while i < n:
        t = arr[i]
        if t > env.now:
            yield env.timeout(t - env.now)
        while i < n and arr[i] <= t:
            if P[i] + OUT[i] > max_len:
                sim.reject(i, R_CONTEXT)
            elif P[i] + OUT[i] > cap_tokens:
                sim.reject(i, R_KV)
            elif max_tokens is not None and P[i] > max_tokens:
                sim.reject(i, R_TOKENS)
            else:
                if lo:
                    r = reps[min(outs, key=lambda k: reps[k].outstanding)] if R > 1 else reps[0]
                else:
                    r = reps[rr]
                    rr = rr + 1 if rr + 1 < R else 0
                sim.replica_of[i] = r.rid
                if pp > 1:
                    sim.engine_of[i] = r.eng
                if max_queue is not None and (len(r.waiting) if pp == 1 else
                                              sum(len(e.waiting) for e in group[r.rid])) >= max_queue:
                    sim.reject(i, R_QUEUE)
                else:
                    r.arrive(i)
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
    check_memory(sc, where)
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
    sim = _Sim(scenario, req, sm, cap_blocks, progress)
    reps = [_Replica(sim, r, e) for e in range(sv.pp) for r in range(sv.replicas)]  # engine-major
    for r in reps:
        sim.env.process(r.run())
    sim.env.process(_workload(sim, reps))
    sim.env.run()
    if progress is not None:
        progress(1.0)
    return _result(sim, reps, model, hw, dt, time.perf_counter() - t_wall)


def _result(sim: _Sim, reps: list[_Replica], model, hw, dt: Dtypes, wall: float) -> SimResult:
    sc, req = sim.sc, sim.req
    left = int(np.sum(sim.status == UNFINISHED))
    if left:
        raise RuntimeError(f"{left} requests neither completed nor rejected (engine bug)")
    for r in reps:  # every block came back: only cached prefixes may stay resident
        if r.B or r.partial or r.swapped or r.kv.free + r.kv.evictable != r.kv.capacity:
            raise RuntimeError(f"{r.name} ended holding KV blocks (engine bug)")
    pp = sim.pp
    unit = np.frombuffer(sim.m_rep, dtype=np.int32).astype(np.int64)
    start = np.frombuffer(sim.m_start, dtype=np.float64)  # shares the array's memory
    dur = np.frombuffer(sim.m_dur, dtype=np.float64)
    kv_eng = np.frombuffer(sim.m_kv, dtype=np.int64)
    if pp == 1:
        replica, engine, kv_rep = unit, np.zeros(unit.size, dtype=np.int64), kv_eng
    else:
        replica, engine = unit // pp, unit % pp
        kv_rep = _replica_kv(start, dur, replica, engine, kv_eng, pp)
    m = {
        "start_s": start,
        "dur_s": dur,
        "replica": replica,
        "engine": engine,
        "kind": np.frombuffer(sim.m_kind, dtype=np.int8).astype(np.int64),
        "tokens": np.frombuffer(sim.m_tok, dtype=np.int64),
        "batch": np.frombuffer(sim.m_batch, dtype=np.int32).astype(np.int64),
        "kv_blocks_used": kv_rep,
        "kv_blocks_engine": kv_eng,
        "running": np.frombuffer(sim.m_run, dtype=np.int32).astype(np.int64),
    }
    end = float(np.max(m["start_s"] + m["dur_s"])) if m["start_s"].size else 0.0
    makespan = max(end, float(req.arrival_s[-1]) if len(req) else 0.0)
    requests = {
        "arrival_s": req.arrival_s, "prompt_len": req.prompt_len, "output_len": req.output_len,
        "first_token_s": sim.first, "finish_s": sim.finish, "replica": sim.replica_of,
        "engine": sim.engine_of, "status": sim.status, "preemptions": sim.preempt,
    }
    cats = {}
    for k, name in ((0, "prefill"), (1, "decode")):
        est = sim.cat_est[k]
        tot = float(est.sum())
        scale = sim.kind_s[k] / tot if tot > 0 else 0.0
        names = list(DEVICE_CATEGORIES) + ["host"]
        cats[name] = {c: float(v) * scale for c, v in zip(names, est, strict=True)}
    flops, bytes_ = _work(sim, model, dt)
    re_flops = _recompute_flops(sim, model, dt)
    sv = sc.serving
    ts = _timeseries(sim, m, makespan, sv.replicas)
    sm = sim.sm
    return SimResult(
        requests=requests, reject_reasons=dict(sim.reasons), moments=m, category_s=cats, timeseries=ts,
        makespan_s=makespan, kv_capacity_blocks=sim.cap_blocks, block_size=sv.block_size, replicas=sv.replicas,
        devices_per_replica=sv.tp * sv.pp, clock_ghz=hw.device.clock_ghz, peak_flops=hw.device.peak_flops(dt.compute),
        mem_bw=hw.device.bandwidth, total_flops=flops, total_bytes=bytes_,
        host_busy_s=sim.moments * (sm.issue_s + sm.overhead_s), scenario=sc, wall_s=wall,
        stats={"moments": sim.moments}, pp=pp, recomputed_tokens=int(sim.recomputed[1]), recomputed_flops=re_flops,
    )


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


def _work(sim: _Sim, model, dt: Dtypes) -> tuple[float, float]:
    """Total FLOPs and bytes of all devices from the running sums of batch aggregates.

    The ops' FLOPs are linear in the aggregates (tokens, logit rows, prefill pairs, decode
    contexts), so the ops of the summed aggregates give the sum exactly. Their bytes are linear
    plus a per-moment constant (the weights streamed once per moment), added (moments - 1) more
    times. Approximations: MoE experts touched and sliding windows are taken at the sums. The ops
    are per device of a tp group over all layers; x tp gives all devices of the replicas.
    """
    sv = sim.sc.serving
    M, LG, DS, DC, PS, PT, PP, PC = sim.sums
    if M == 0:
        return 0.0, 0.0
    ops = dense_ops(model, DS + PT, LG, dt, sv.tp, sv.pp, sv.ep, sv.moe_imbalance)
    base = dense_ops(model, 0, 0, dt, sv.tp, sv.pp, sv.ep, sv.moe_imbalance)
    att = attention_ops(model, Batch(int(DS), int(DC), int(PS), int(PT), float(PP), int(PC)), dt, sv.tp, sv.pp)
    flops = sum(float(np.sum(o.flops)) for o in ops + att)
    by = sum(float(np.sum(o.bytes)) for o in ops + att) + (M - 1) * sum(float(np.sum(o.bytes)) for o in base)
    return flops * sv.tp, by * sv.tp


def _recompute_flops(sim: _Sim, model, dt: Dtypes) -> float:
    """FLOPs of all devices spent computing again the KV that preemptions dropped: the dense and
    attention ops of the recomputed tokens' sums (linear in them, as in _work); no logits (the
    token a re-prefill ends with is new work)."""
    n, tokens, pairs, ctx = sim.recomputed
    if not tokens:
        return 0.0
    sv = sim.sc.serving
    ops = dense_ops(model, tokens, 0, dt, sv.tp, sv.pp, sv.ep, sv.moe_imbalance)
    att = attention_ops(model, Batch(0, 0, int(n), int(tokens), float(pairs), int(ctx)), dt, sv.tp, sv.pp)
    return sum(float(np.sum(o.flops)) for o in ops + att) * sv.tp


def _integral(t: np.ndarray, starts: np.ndarray, ends: np.ndarray, w: np.ndarray) -> np.ndarray:
    """For each time in t: integral from 0 of sum_j w_j [starts_j <= x < ends_j] dx (vectorised)."""
    out = np.zeros(t.size)
    for times, sign in ((starts, 1.0), (ends, -1.0)):
        o = np.argsort(times, kind="stable")
        ts, ws = times[o], w[o]
        cw = np.concatenate(([0.0], np.cumsum(ws)))
        cwt = np.concatenate(([0.0], np.cumsum(ws * ts)))
        k = np.searchsorted(ts, t, side="right")
        out += sign * (t * cw[k] - cwt[k])
    return out


def _timeseries(sim: _Sim, m: dict[str, np.ndarray], makespan: float, replicas: int) -> dict[str, np.ndarray]:
    """Interval averages on a fixed grid, exact: integrals of step functions via sorted prefix sums."""
    n = TIMESERIES_POINTS
    span = makespan if makespan > 0 else 1.0
    edges = np.linspace(0.0, span, n + 1)
    width = span / n
    arr = sim.req.arrival_s
    leave = np.where(sim.status == COMPLETED, sim.finish, arr)
    ones = np.ones(arr.size)
    out_i = _integral(edges, arr, leave, ones)
    st, en = m["start_s"], m["start_s"] + m["dur_s"]
    run_i = _integral(edges, st, en, m["running"].astype(float))
    busy_i = _integral(edges, st, en, np.full(st.size, 1.0 / sim.pp))  # each of pp stages: dur / pp
    kv_i = _integral(edges, st, en, m["kv_blocks_engine"].astype(float))  # engines overlap: their sum
    avg = lambda x: np.diff(x) / width
    outstanding = avg(out_i)
    running = avg(run_i)
    return {
        "t_s": edges[:-1].copy(),
        "queue_len": np.maximum(outstanding - running, 0.0),
        "running": running,
        "kv_used_frac": avg(kv_i) / max(sim.cap_blocks * replicas, 1),
        "busy_frac": avg(busy_i) / replicas,
        "outstanding": outstanding,
    }


__all__ = ["SimResult", "simulate", "PREFILL", "DECODE", "MIXED",
           "COMPLETED", "REJECTED"]
