"""The length of one moment: the step's ops (simulator.moment.ops) as an implementation runs
them (simulator.moment.kernels) timed on a device (hwmodels), and the host issuing them.

`StepModel` caches, per (model, hardware, tp, pp, mode, dtypes, kernels), a table of the
token-count dependent part of a step (GEMMs, element-wise ops, collectives) over token counts,
so that the engine costs a step in O(1): a table lookup plus the attention terms in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hwmodels import attention as attn
from hwmodels.roofline import floor_us, op_time
from hwmodels.spec import DTYPE_BYTES, Hardware, gemm_dtype
from simulator.moment import kernels as kn
from simulator.moment.model import ModelSpec
from simulator.moment.ops import (
    CATEGORIES,
    Batch,
    Dtypes,
    Op,
    attention_shapes,
    check_tp,
    dense_ops,
    windowed_keys,
    windowed_pairs,
)

DEVICE_CATEGORIES = tuple(c for c in CATEGORIES if c != "host")
_ATTN = DEVICE_CATEGORIES.index("attention")
TAIL_OPS = ("final_norm", "lm_head", "lm_head_epilogue")  # what the device still runs after the host's last call


def op_seconds(op: Op, hw: Hardware, dt: Dtypes, group: int = 1, graph: bool = False):
    """An op's time on a device of `hw` (an array if the op holds arrays), one floor per kernel
    (`Op.kernels` per layer: compose the ops for an implementation first). A GEMM runs in its
    weights' tensor dtype where the part has those units (fp8 weights run fp8 GEMMs), else in
    the activation dtype after dequantising the weights; element-wise kernels in the activation
    dtype. Attention is priced from its shapes (StepModel.attention_s, hwmodels.attention)."""
    launches = op.layers * op.kernels
    if op.kind == "gemm":
        dtype, dequantised = gemm_dtype(op.fmt or dt.weight, dt.act, hw.device)
        c = np.maximum(op.copies, 1.0)  # a grouped GEMM (MoE): `copies` GEMMs of m / copies rows, their tiles
        return op_time(op.kind, op.category, op.flops, op.bytes, launches, dtype, hw, m=op.m / c, n=op.n * c,
                       graph=graph, dequant=op.dequant if dequantised else 0.0)
    return op_time(op.kind, op.category, op.flops, op.bytes, launches, dt.compute, hw, m=op.m, n=op.n,
                   group=group, graph=graph, elems=op.elems)


def check_parallelism(model: ModelSpec, hw: Hardware, tp: int, pp: int, ep: int = 1) -> None:
    """tp, pp and ep must shard the model's heads, layers and experts and fit the part's devices
    (ValueError)."""
    if tp < 1 or pp < 1:
        raise ValueError(f"tp and pp must be >= 1, got tp={tp}, pp={pp}")
    check_tp(model, tp, pp, ep)
    if tp * pp > hw.total_devices:
        raise ValueError(f"tp x pp = {tp * pp} exceeds the {hw.total_devices} devices of {hw.name} "
                         f"(devices_per_node x nodes)")
    if tp * pp > 1 and hw.link is None:
        raise ValueError(f"tp x pp = {tp * pp} needs a link between devices, and {hw.name} has none "
                         "(hardware field link: {bw_gbps: ..., latency_us: ...})")
    if tp > hw.devices_per_node and hw.network is None:
        raise ValueError(f"tp = {tp} spans nodes of {hw.devices_per_node} devices, and {hw.name} has no "
                         "network between them (hardware field network: {bw_gbps: ..., latency_us: ...})")


@dataclass(frozen=True)
class Launch:
    """How a serving stack launches a step (simulator/serving/stacks.py sets these per stack).

    `sizes`: the batch sizes captured as CUDA graphs, in sequences for a decode-only step and in
    tokens for a step with prefill tokens when `mixed` (vLLM V1's piecewise graphs). A batch is
    padded to the next captured size (`padding`; without it only exact sizes replay a graph, as
    TensorRT-LLM by default) and its dense ops and logits cost the padded size; attention costs
    the real sequences (padding rows have no context). A batch above the largest size, or a
    prefill step without `mixed`, runs eager: the host issues every kernel. `piecewise`: decode
    graphs are piecewise too. A piecewise step replays a graph per layer and issues attention's
    calls eagerly between them. Empty `sizes` with graphs: every step is one launch (a TensorRT
    engine's enqueue).

    `step_s + seq_s x sequences` is the stack's own host work per step (scheduling, inputs,
    sampling, outputs), which the device waits for unless the stack overlaps it with the
    previous step (StepModel.async_scheduling); with `steps` > 1 (vLLM V0 multi-step) a decode
    step pays 1/steps of it."""

    sizes: tuple[int, ...] = ()
    padding: bool = True
    mixed: bool = False
    piecewise: bool = False
    step_s: float = 0.0
    seq_s: float = 0.0
    steps: int = 1


@dataclass(frozen=True)
class StepCost:
    step_ms: float
    device_ms: float
    host_ms: float
    breakdown_ms: dict[str, float]

    def as_dict(self) -> dict:
        r = lambda x: round(float(x), 6)  # noqa: E731
        return {"step_ms": r(self.step_ms), "device_ms": r(self.device_ms), "host_ms": r(self.host_ms),
                "breakdown_ms": {k: r(v) for k, v in self.breakdown_ms.items()}}


@dataclass(frozen=True)
class _AttnGroup:
    """The scalars attention_s needs for one window group of layers (precomputed per StepModel)."""

    kind: str
    size: float | None
    cap: float                   # keys a decode query sees at most (window, half a chunk, inf)
    heads: float
    rows: float                  # prefill query tile
    tau: float                   # s per pair and head on one compute unit
    p_cc: float                  # per cached token: a latent's up-projection (MLA)
    p_cm: float                  # per cached token: its K and V read
    p_tm: float                  # per new token: q, k, v, output
    d_c: float                   # per key: compute
    d_m: float                   # per key: its K and V read
    d_q: float                   # per sequence: query and output
    d_seq: float                 # per sequence: fixed costs
    kv_tok: float                # per new token: the cache-write kernels
    floor: float                 # the group's kernel floors, all its layers
    layers: int


class StepModel:
    """Step costs of one serving configuration. Build with `step_model(...)` to share the cache.

    The host: in eager mode (and always on a CPU) it makes every framework call of the step
    (kernels.host_calls, each `Host.call_us`); with CUDA graphs it launches one graph per
    pipeline stage. A GPU runs while the host issues, so an eager step lasts the longer of the
    device's work and the host's calls plus the work left after the last call (final norm,
    logits); a CPU does both in turn. Then the per-step overhead (inputs, sampling, sync).
    """

    def __init__(self, model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, mode: str = "graph",
                 dtypes: Dtypes = Dtypes(), async_scheduling: bool = False, ep: int = 1, moe_imbalance: float = 1.0,
                 kernels: str = "fused", launch: Launch | None = None):
        check_parallelism(model, hw, tp, pp, ep)
        if mode not in ("graph", "eager"):
            raise ValueError(f"mode {mode!r}; allowed: graph, eager")
        kn.check(kernels)
        self.model, self.hw, self.tp, self.pp, self.mode, self.dtypes = model, hw, tp, pp, mode, dtypes
        self.ep, self.moe_imbalance = ep, moe_imbalance
        self.impl = kernels
        # a server that prepares step n+1 on the host while the device runs step n (vLLM v1's
        # async scheduling) hides its per-step overhead behind the device's work
        self.async_scheduling = async_scheduling
        host = hw.host
        self.cpu = hw.device.kind == "cpu"
        self.graph = mode == "graph" and not self.cpu
        self.calls = kn.host_calls(model, kernels, dtypes, tp, pp, ep)
        self.kernels = kn.kernel_count(self.calls)
        if mode == "eager" or self.cpu:
            self.issue_s = kn.host_seconds(self.calls, host.call_us)
        else:
            self.issue_s = host.graph_launch_us * 1e-6 * pp
        self.overhead_s = host.step_overhead_us * 1e-6
        self._tail_weight = 0.0 if self.graph else 1.0  # a graph's launch already holds its last kernels
        self._dense = np.zeros((len(DEVICE_CATEGORIES), 0))
        self._lm = np.zeros((len(DEVICE_CATEGORIES), 0))
        self._dense_tot = np.zeros(0)
        self._lm_tot = np.zeros(0)
        self._dense_l: list[float] = []
        self._lm_l: list[float] = []
        self._tail_l: list[float] = []
        self._attention_coefficients()
        self._grow(4096)
        self.launch = launch
        if launch is not None:
            self._launch_tables(launch)

    @property
    def moment_s(self):
        """The engine's cost of a moment from its batch aggregates: step_agg (as `_agg_closure`
        computes it), or with a serving stack's launch (graph sizes, its host work) step_launched
        (read once per engine)."""
        return self._agg_closure() if self.launch is None else self.step_launched

    def _agg_closure(self) -> Callable[[int, float, int, int, float, float, int], float]:
        """step_agg as a closure over this model's constants and tables (which _grow fills in
        place), with the engine's common moments inline: a decode-only one of one full-attention
        group (attention_s's first branch and _soft) and a prefill-only one of one unwindowed
        group (its loop), and _combine. The same operations in the same order, so the same floats
        (tests/test_cost.py checks), without the attribute lookups and three calls per moment."""
        dense_l, lm_l, tail_l, grow, attention_s = self._dense_l, self._lm_l, self._tail_l, self._grow, self.attention_s
        soft = self._soft
        cpu, asyn, issue_s, overhead_s, tail_weight = (self.cpu, self.async_scheduling, self.issue_s, self.overhead_s,
                                                       self._tail_weight)
        full = self._full is not None
        d_c, d_m, d_q, d_seq, floor, ramp = self._full or (0.0,) * 6
        p, negligible = self.p, self._negligible
        hard = p >= 64  # _soft is the plain max
        inv_p = 1.0 / p
        expm1, ceil = math.expm1, math.ceil
        g = self._groups[0]
        whole = full and not g.size  # a prefill-only moment of one unwindowed group: inline too
        rows, tau, heads, layers, p_cc, p_cm, p_tm = g.rows, g.tau, g.heads, g.layers, g.p_cc, g.p_cm, g.p_tm
        kv_tok, g_floor, units, tail_rows = g.kv_tok, g.floor, self.units, self.tail

        def agg(ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
            tok = ds + pt
            try:  # the tables hold every count seen so far; a larger one grows them
                dev = dense_l[tok] + lm_l[lg]
                tail = tail_l[lg]
            except IndexError:
                grow(max(tok, lg))
                dev = dense_l[tok] + lm_l[lg]
                tail = tail_l[lg]
            if pt and whole and not ds:  # attention_s's loop for one group without a window, prefill only
                n = ps if ps > 0 else 1
                ctx = pc / n
                tiles = ceil(pt / n / rows)
                padded = rows * tiles * ctx + rows * rows * tiles * (tiles + 1) / 2
                longest = rows * (ctx + tiles * rows)
                longest = (padded if padded < longest else longest) * tau  # min(longest, padded)
                exact = pairs / n if pairs > n else 1.0
                pad = padded / exact if padded > exact else 1.0
                work = heads * pairs * pad * tau / units
                c = ((work if work > longest else longest) + tail_rows * longest) * layers + pc * p_cc
                mem = pc * p_cm + pt * p_tm
                dev += (c if mem < negligible * c else soft(c, mem)) + pt * kv_tok + g_floor  # compute-bound, mostly
            elif pt or not full:
                dev += attention_s(ds, dc, pt, pairs, pc, ps)
            elif ds:  # attention_s's decode-only branch, _soft inline
                keys = dc + ds
                t_m = keys * d_m + ds * d_q
                if ramp > 0:
                    t_m -= ramp * expm1(-t_m / ramp)
                t_c = keys * d_c
                if t_c < negligible * t_m:
                    dev += t_m + ds * d_seq + floor
                else:
                    hi = t_c if t_c > t_m else t_m
                    if not hard and hi > 0.0:
                        hi = hi * ((t_c / hi) ** p + (t_m / hi) ** p) ** inv_p
                    dev += hi + ds * d_seq + floor
            if cpu:  # _combine
                return dev + issue_s + overhead_s
            issued = issue_s + tail * tail_weight
            if asyn:
                issued += overhead_s
                return dev if dev > issued else issued
            return (dev if dev > issued else issued) + overhead_s

        return agg

    def _launch_tables(self, ln: Launch) -> None:
        """Padding lookups and host costs of a stack's launches (see Launch)."""
        graphs = self.graph
        sizes = sorted(ln.sizes) if graphs else []
        self._gmax = sizes[-1] if sizes else -1  # the largest graph (no sizes with graphs: _whole, one launch)
        pad = [0] * ((sizes[-1] if sizes else 0) + 1)  # batch -> the graph it replays (0: eager)
        if sizes:
            if ln.padding:
                j = 0
                for b in range(1, len(pad)):
                    while sizes[j] < b:
                        j += 1
                    pad[b] = sizes[j]
            else:
                for b in sizes:
                    pad[b] = b
        self._pad = pad
        self._whole = graphs and not sizes  # every step one launch
        host = self.hw.host
        act = DTYPE_BYTES[self.dtypes.act]
        per_layer_attn = sum(host.call_us(c.host_op(act)) for c in kn.calls(self.impl, "attention"))
        layers = self.model.num_hidden_layers / self.pp
        # an eager step's kernels have eager floors (a launch gap each): the eager twin's tables
        self._eager = self if not graphs else step_model(self.model, self.hw, self.tp, self.pp, "eager", self.dtypes,
                                                         self.async_scheduling, self.ep, self.moe_imbalance, self.impl)
        self._eager_s = kn.host_seconds(self.calls, host.call_us)
        self._graph_s = host.graph_launch_us * 1e-6 * self.pp
        self._piece_s = (host.graph_launch_us * (layers + 1) + per_layer_attn * layers) * 1e-6 * self.pp
        self._decode_graph_s = self._piece_s if ln.piecewise else self._graph_s
        self._host_step = ln.step_s
        self._host_seq = ln.seq_s
        self._steps = ln.steps
        self._mixed = ln.mixed and graphs

    def host_busy_s(self, moments: int, seqs: int) -> float:
        """The host's seconds over `moments` steps holding `seqs` sequences in all: each step's
        issue and per-step work (with a stack's launch, as if every step replayed a graph: eager
        steps issue more, multi-step decodes schedule less; an estimate for host_busy_frac)."""
        if self.launch is None:
            return moments * (self.issue_s + self.overhead_s)
        issue = self._graph_s if self.graph else self._eager_s
        return moments * (issue + self._host_step) + self._host_seq * seqs

    def step_launched(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        """step_s from the batch aggregates with a serving stack's launch (Launch): the padded
        graph, or eager issue, and the stack's host work; the engine's hot path then."""
        tok = ds + pt
        m = self
        if pt == 0:
            if self._whole:
                issue = self._graph_s
            elif ds <= self._gmax and self._pad[ds]:
                tok = lg = self._pad[ds]  # padded rows run every dense op and the logits
                issue = self._decode_graph_s
            else:
                m = self._eager
        elif self._whole:
            issue = self._graph_s
        elif self._mixed and tok <= self._gmax and self._pad[tok]:
            tok = self._pad[tok]
            issue = self._piece_s
        else:
            m = self._eager
        if tok >= m._size or lg >= m._size:
            m._grow(max(tok, lg))
        dev = m._dense_l[tok] + m._lm_l[lg] + m.attention_s(ds, dc, pt, pairs, pc, ps)
        host = self._host_step + self._host_seq * (ds + ps)
        if pt == 0 and self._steps > 1:
            host /= self._steps
        if self.cpu:  # it issues every call and runs every kernel in turn (_combine): the tail is in dev
            return dev + self._eager_s + host
        if m is not self or not self.graph:  # eager: the host issues every call, then the device finishes
            issue = self._eager_s + m._tail_l[lg]
        if self.async_scheduling:
            issue += host
            return dev if dev > issue else issue
        return (dev if dev > issue else issue) + host

    def ops(self, tokens, logits) -> list[Op]:
        """The token-count dependent ops as this implementation runs them."""
        ops = dense_ops(self.model, tokens, logits, self.dtypes, self.tp, self.pp, self.ep, self.moe_imbalance)
        return kn.compose(ops, self.impl, DTYPE_BYTES[self.dtypes.act])

    def _attention_coefficients(self) -> None:
        """Attention (hwmodels.attention) from the batch aggregates in closed form: the scalars it
        needs per window group of layers (ops.attention_shapes: full, sliding, chunked),
        precomputed. tests/test_cost.py checks attention_s against the vectorised
        hwmodels.attention functions (attention_ops_s)."""
        m, hw, dt = self.model, self.hw, self.dtypes
        dev, eff = hw.device, hw.efficiency
        self.p = float(eff.softmax_p)
        self._negligible = 1e-12 ** (1.0 / self.p)  # below this ratio the smaller term moves a soft max by < 1e-12
        self.units = dev.compute_units
        self.tail = eff.attn_tail
        self.ramp = eff.attn_decode_ramp_us * 1e-6
        bw, peak = dev.bandwidth, dev.peak_flops(dt.act)
        a = DTYPE_BYTES[dt.act]
        cat, n_kv = kn.kv_write(self.impl)
        ew = eff.elementwise_memory.get(cat, eff.gemm_memory)
        heavy = sum(1 for c in kn.calls(self.impl, "attention") if c.launches(a) and c.op in kn.HEAVY)
        launch = dev.kernel_launch_us
        per_kernel = heavy * floor_us(eff, True, self.graph, launch) + n_kv * floor_us(eff, False, self.graph, launch)
        kvh = 1.0 if m.is_mla else max(m.kv_heads / self.tp, 1.0)
        heads = m.num_attention_heads / self.tp
        groups = []
        for s in attention_shapes(m, dt, self.tp):
            L = s.layers
            head = s.pair_flops / heads
            write = s.key_bytes * (1.0 + a / DTYPE_BYTES[dt.kv])  # read the new K and V, write them to the cache
            groups.append(_AttnGroup(
                s.kind, s.size, float(windowed_keys(s.kind, s.size, 1, float("inf"))), heads,
                float(attn.tile_rows(head / 4.0)), float(attn.pair_seconds(hw, dt.act, head)),
                s.ctx_flops * L / (peak * attn.prefill_compute(hw, dt.act)), s.ctx_bytes * L / (bw * eff.gemm_memory),
                (s.new_bytes - s.key_bytes) * L / (bw * eff.gemm_memory),
                s.key_flops * L / (peak * attn.decode_compute(hw, dt.act)), s.key_bytes * L / (bw * eff.attn_decode_memory),
                s.seq_bytes * L / (bw * eff.attn_decode_memory),
                (eff.attn_decode_seq_us + eff.attn_decode_cta_us * kvh / self.units) * 1e-6 * L,
                write * L / (bw * ew), per_kernel * 1e-6 * L, L))
        self._groups = tuple(groups)
        self._kvh = kvh
        g = groups[0]
        # speed: most models have one group of full-attention layers, whose decode terms attention_s
        # reads from one tuple
        self._full = (g.d_c, g.d_m, g.d_q, g.d_seq + g.kv_tok, g.floor, self.ramp * g.layers) \
            if len(groups) == 1 and g.kind == "full" else None

    def _soft(self, x: float, y: float) -> float:
        p = self.p
        hi = x if x > y else y
        if p >= 64 or hi <= 0.0:
            return hi
        return hi * ((x / hi) ** p + (y / hi) ** p) ** (1.0 / p)

    def attention_s(self, ds: int, dc: float, pt: int, pairs: float, pc: float, ps: int = 1) -> float:
        """Seconds of attention for decode (ds seqs, dc cached tokens in all) and prefill (ps
        chunks of pt new tokens in all, `pairs` causal query-key pairs, pc cached tokens before
        the chunks): the attention kernels, the cache writes, their floors. Prefill tiles are
        quantised at the mean chunk length (hwmodels.attention)."""
        if not pt and self._full is not None:  # speed: a decode-only moment of one full-attention group
            if not ds:
                return 0.0
            d_c, d_m, d_q, d_seq, floor, ramp = self._full
            keys = dc + ds  # each attends to its cache plus itself
            t_m = keys * d_m + ds * d_q
            if ramp > 0:
                t_m -= ramp * math.expm1(-t_m / ramp)
            t_c = keys * d_c
            if t_c < self._negligible * t_m:  # speed: memory-bound (decode almost always is): soft max = t_m
                return t_m + ds * d_seq + floor
            return self._soft(t_c, t_m) + ds * d_seq + floor
        t = 0.0
        soft = self._soft
        for g in self._groups:
            if pt:
                n = ps if ps > 0 else 1
                pr = pairs if g.kind == "full" else windowed_pairs(g.kind, g.size, n, pt, pairs, pc)
                length, ctx = pt / n, pc / n
                rows, reach = g.rows, g.size
                if reach and ctx > reach:
                    ctx = reach
                tiles = math.ceil(length / rows)
                padded = rows * tiles * ctx + rows * rows * tiles * (tiles + 1) / 2
                longest = rows * (ctx + tiles * rows)
                if reach:  # a query tile sees at most the window and its own tile
                    span = reach + rows
                    full = min(max(math.floor((span - ctx) / rows), 0.0), tiles)
                    windowed = rows * (full * ctx + rows * full * (full + 1) / 2) + (tiles - full) * rows * span
                    padded = min(padded, windowed)
                    longest = min(longest, rows * span)
                longest = min(longest, padded) * g.tau
                exact = pr / n if pr > n else 1.0
                pad = padded / exact if padded > exact else 1.0
                work = g.heads * pr * pad * g.tau / self.units
                c = ((work if work > longest else longest) + self.tail * longest) * g.layers + pc * g.p_cc
                m = pc * g.p_cm + pt * g.p_tm
                if m < self._negligible * c:  # speed: compute-bound (a prefill almost always is)
                    t += c + pt * g.kv_tok + g.floor
                else:
                    t += soft(c, m) + pt * g.kv_tok + g.floor
            if ds:
                keys = dc + ds  # each attends to its cache plus itself
                if keys > ds * g.cap:  # speed: windowed_keys inlined
                    keys = ds * g.cap
                t_m = keys * g.d_m + ds * g.d_q
                if self.ramp > 0:
                    t_m += self.ramp * g.layers * -math.expm1(-t_m / (self.ramp * g.layers))
                t += soft(keys * g.d_c, t_m) + ds * g.d_seq + ds * g.kv_tok + g.floor
        return t

    def verify_attention_s(self, ds: int, dc: float, q: int) -> float:
        """Decode attention of ds sequences (dc cached tokens in all) that each run q new tokens
        through it in one pass (a speculative verify: q = k + 1): each sequence's KV is read once,
        its q queries see their cache plus the new tokens before them (q dc + ds q (q + 1) / 2
        query-key pairs), q query and output rows and q cache writes per sequence. q = 1 is
        attention_s's decode."""
        if not ds:
            return 0.0
        t = 0.0
        soft = self._soft
        for g in self._groups:
            keys = dc + q * ds  # read: the cache plus the new tokens' K and V
            pairs = q * dc + ds * q * (q + 1) / 2
            if keys > ds * g.cap:
                keys = ds * g.cap
            if pairs > q * ds * g.cap:
                pairs = q * ds * g.cap
            t_m = keys * g.d_m + q * ds * g.d_q
            if self.ramp > 0:
                t_m += self.ramp * g.layers * -math.expm1(-t_m / (self.ramp * g.layers))
            t += soft(pairs * g.d_c, t_m) + ds * g.d_seq + q * ds * g.kv_tok + g.floor
        return t

    def forward_s(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        """step_agg without the per-step overhead (scheduling, inputs, sampling): one forward pass
        of several in a moment, as a speculative draft's."""
        tok = ds + pt
        if tok >= self._size or lg >= self._size:
            self._grow(max(tok, lg))
        dev = self._dense_l[tok] + self._lm_l[lg] + self.attention_s(ds, dc, pt, pairs, pc, ps)
        if self.cpu:
            return dev + self.issue_s
        issued = self.issue_s + self._tail_l[lg] * self._tail_weight
        return dev if dev > issued else issued

    def step_agg(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        """step_s from the batch aggregates as plain numbers: the engine's hot path."""
        tok = ds + pt
        if tok >= self._size or lg >= self._size:
            self._grow(max(tok, lg))
        dev = self._dense_l[tok] + self._lm_l[lg] + self.attention_s(ds, dc, pt, pairs, pc, ps)
        return self._combine(dev, self._tail_l[lg])

    # -- tables over token counts ---------------------------------------------------------------
    def _table(self, tokens: np.ndarray, logits: np.ndarray, only: tuple[str, ...] = ()) -> np.ndarray:
        out = np.zeros((len(DEVICE_CATEGORIES), len(tokens)))
        for op in self.ops(tokens, logits):
            if only and op.name not in only:
                continue
            t = op_seconds(op, self.hw, self.dtypes, self.tp, self.graph)
            out[DEVICE_CATEGORIES.index(op.category)] += np.broadcast_to(t, (len(tokens),))
        return out

    def _grow(self, n: int) -> None:
        """Tables up to n tokens. Every op depends on the token count or on the logit rows, not
        both, so a step is dense[tokens] (all ops, no logits) + lm[logits] (the logit ops' growth)."""
        size = max(n + 1, 2 * self._dense_tot.size, 256)
        t = np.arange(size, dtype=float)
        zero = np.zeros(size)
        self._dense = self._table(t, zero)
        self._dense[:, 0] = 0.0
        self._lm = self._table(zero, t) - self._table(zero, zero)
        self._dense_tot = self._dense.sum(axis=0)
        self._lm_tot = self._lm.sum(axis=0)
        # python floats: faster to index one at a time; filled in place (_agg_closure holds them)
        self._dense_l[:] = self._dense_tot.tolist()
        self._lm_l[:] = self._lm_tot.tolist()
        self._tail_l[:] = self._table(zero, t, TAIL_OPS).sum(axis=0).tolist()
        self._size = len(self._dense_l)

    def tail_s(self, logit_rows: int) -> float:
        """Device time of what follows the host's last eager call: final norm and logits."""
        if logit_rows >= self._size:
            self._grow(logit_rows)
        return self._tail_l[logit_rows]

    def _attn_b(self, b: Batch) -> float:
        return self.attention_s(b.decode_seqs, b.decode_ctx, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                                b.prefill_seqs)

    def attention_ops_s(self, b: Batch) -> float:
        """The same attention time through the vectorised hwmodels.attention functions (for checking)."""
        m, dt, hw = self.model, self.dtypes, self.hw
        t = 0.0
        for s, g in zip(attention_shapes(m, dt, self.tp), self._groups, strict=True):
            L = s.layers
            if b.prefill_tokens:
                pr = windowed_pairs(s.kind, s.size, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx)
                t += float(attn.prefill_s(hw, dt.act, b.prefill_seqs, b.prefill_tokens, pr, b.prefill_ctx,
                                          m.num_attention_heads / self.tp, s.pair_flops, s.ctx_flops, s.ctx_bytes,
                                          s.new_bytes - s.key_bytes, L, reach=s.size))
                t += b.prefill_tokens * g.kv_tok + g.floor
            if b.decode_seqs:
                keys = windowed_keys(s.kind, s.size, b.decode_seqs, b.decode_ctx + b.decode_seqs)
                t += float(attn.decode_s(hw, dt.act, b.decode_seqs, keys, s.key_flops, s.key_bytes, s.seq_bytes,
                                         self._kvh, L))
                t += b.decode_seqs * g.kv_tok + g.floor
        return t

    # -- the two entry points --------------------------------------------------------------------
    def device_s(self, b: Batch) -> float:
        n = max(b.tokens, b.logit_rows)
        if n >= self._size:
            self._grow(n)
        return self._dense_l[b.tokens] + self._lm_l[b.logit_rows] + self._attn_b(b)

    def step_s(self, b: Batch) -> float:
        """Seconds of one moment: the device's work, the host issuing it, the per-step overhead."""
        dev = self.device_s(b)
        return self._combine(dev, self._tail_l[b.logit_rows])

    def _combine(self, dev: float, tail: float) -> float:
        if self.cpu:  # the CPU both issues and runs the kernels: nothing overlaps
            return dev + self.issue_s + self.overhead_s
        issued = self.issue_s + tail * self._tail_weight
        if self.async_scheduling:
            issued += self.overhead_s
            return dev if dev > issued else issued
        return (dev if dev > issued else issued) + self.overhead_s  # speed: no max() call

    def cost(self, b: Batch) -> StepCost:
        """The contract's breakdown: device categories over all layers, and the host's share."""
        if b.tokens <= 0:
            raise ValueError("a step needs at least one token")
        n = max(b.tokens, b.logit_rows)
        if n >= self._size:
            self._grow(n)
        per = self._dense[:, b.tokens] + self._lm[:, b.logit_rows]
        per[_ATTN] += self._attn_b(b)
        dev = float(per.sum())
        step = self._combine(dev, self._tail_l[b.logit_rows]) if self.launch is None else \
            self.step_launched(b.decode_seqs, b.decode_ctx, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs,
                               b.prefill_ctx, b.logit_rows)
        bd = {c: float(v) * 1e3 for c, v in zip(DEVICE_CATEGORIES, per, strict=True)}
        bd["host"] = (step - dev) * 1e3  # time the device waits on the host
        return StepCost(step * 1e3, dev * 1e3, (self.issue_s + self.overhead_s) * 1e3, bd)

    def breakdowns(self, batches: list[Batch]) -> np.ndarray:
        """cost(b).breakdown_ms of each batch as a row (DEVICE_CATEGORIES, then host): the same
        floats, with the tables looked up for all batches at once (a run's category seconds
        price thousands of moments after it ends: MomentLog.categories)."""
        names = len(DEVICE_CATEGORIES)
        if not batches:
            return np.zeros((0, names + 1))
        tok = np.fromiter((b.tokens for b in batches), dtype=np.int64, count=len(batches))
        rows = np.fromiter((b.logit_rows for b in batches), dtype=np.int64, count=len(batches))
        if tok.min() <= 0:
            raise ValueError("a step needs at least one token")
        n = int(max(tok.max(), rows.max()))
        if n >= self._size:
            self._grow(n)
        per = np.ascontiguousarray((self._dense[:, tok] + self._lm[:, rows]).T)  # a batch per row, as cost's column
        per[:, _ATTN] += np.fromiter(map(self._attn_b, batches), dtype=np.float64, count=len(batches))
        dev = per.sum(axis=1)  # each row summed as cost sums its column (pairwise, contiguous)
        if self.launch is None:
            step = [self._combine(d, self._tail_l[b.logit_rows]) for d, b in zip(dev.tolist(), batches, strict=True)]
        else:
            step = [self.step_launched(b.decode_seqs, b.decode_ctx, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs,
                                       b.prefill_ctx, b.logit_rows) for b in batches]
        out = np.empty((len(batches), names + 1))
        out[:, :names] = per * 1e3
        out[:, names] = (np.asarray(step) - dev) * 1e3
        return out


_CACHE: dict[tuple, StepModel] = {}


def step_model(model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, mode: str = "graph",
               dtypes: Dtypes = Dtypes(), async_scheduling: bool = False, ep: int = 1,
               moe_imbalance: float = 1.0, kernels: str = "fused", launch: Launch | None = None) -> StepModel:
    """A shared StepModel per configuration (specs hold dicts, so key on their JSON)."""
    key = (model.model_dump_json(), hw.model_dump_json(), tp, pp, mode, dtypes, async_scheduling, ep, moe_imbalance,
           kernels, launch)
    sm = _CACHE.get(key)
    if sm is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        sm = _CACHE[key] = StepModel(model, hw, tp, pp, mode, dtypes, async_scheduling, ep, moe_imbalance, kernels,
                                     launch)
    return sm
