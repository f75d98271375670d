"""The length of one moment: the step's ops (simulator.moment.ops) timed on a device (hwmodels).

`StepModel` caches, per (model, hardware, tp, pp, mode, dtypes), a table of the token-count
dependent part of a step (GEMMs, element-wise ops, collectives) over token counts, so that the
engine costs a step in O(1): a table lookup plus the attention terms in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwmodels.roofline import op_time
from hwmodels.spec import Hardware, gemm_dtype
from simulator.moment.model import ModelSpec
from simulator.moment.ops import (
    CATEGORIES,
    Batch,
    Dtypes,
    Op,
    attention_ops,
    attention_shapes,
    check_tp,
    dense_ops,
    eager_kernels,
    windowed_keys,
    windowed_pairs,
)

DEVICE_CATEGORIES = tuple(c for c in CATEGORIES if c != "host")
_ATTN = DEVICE_CATEGORIES.index("attention")


def op_seconds(op: Op, hw: Hardware, dt: Dtypes, group: int = 1):
    """An op's time on a device of `hw` (an array if the op holds arrays): attention runs in the
    activation dtype; a GEMM in its weights' tensor dtype where the part has those units (fp8
    weights run fp8 GEMMs), else in the activation dtype after dequantising the weights."""
    if op.kind.startswith("attn"):
        return op_time(op.kind, op.category, op.flops, op.bytes, op.layers, dt.act, hw, seqs=op.seqs)
    if op.kind == "gemm":
        dtype, dequantised = gemm_dtype(op.fmt or dt.weight, dt.act, hw.device)
        c = np.maximum(op.copies, 1.0)  # a grouped GEMM (MoE): `copies` GEMMs of m / copies rows, their tiles
        return op_time(op.kind, op.category, op.flops, op.bytes, op.layers, dtype, hw, m=op.m / c, n=op.n * c,
                       dequant=op.dequant if dequantised else 0.0)
    return op_time(op.kind, op.category, op.flops, op.bytes, op.layers, dt.compute, hw, m=op.m, n=op.n,
                   group=group)


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
class StepCost:
    step_ms: float
    device_ms: float
    host_ms: float
    breakdown_ms: dict[str, float]

    def as_dict(self) -> dict:
        r = lambda x: round(float(x), 6)  # noqa: E731
        return {"step_ms": r(self.step_ms), "device_ms": r(self.device_ms), "host_ms": r(self.host_ms),
                "breakdown_ms": {k: r(v) for k, v in self.breakdown_ms.items()}}


class StepModel:
    """Step costs of one serving configuration. Build with `step_model(...)` to share the cache."""

    def __init__(self, model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, mode: str = "graph",
                 dtypes: Dtypes = Dtypes(), async_scheduling: bool = False, ep: int = 1, moe_imbalance: float = 1.0):
        check_parallelism(model, hw, tp, pp, ep)
        if mode not in ("graph", "eager"):
            raise ValueError(f"mode {mode!r}; allowed: graph, eager")
        self.model, self.hw, self.tp, self.pp, self.mode, self.dtypes = model, hw, tp, pp, mode, dtypes
        self.ep, self.moe_imbalance = ep, moe_imbalance
        # a server that prepares step n+1 on the host while the device runs step n (vLLM v1's
        # async scheduling) hides its per-step overhead behind the device's work
        self.async_scheduling = async_scheduling
        host = hw.host
        self.cpu = hw.device.kind == "cpu"
        self.kernels = eager_kernels(model, tp, pp, ep)
        if mode == "eager" or self.cpu:
            self.issue_s = self.kernels * host.dispatch_us * 1e-6
        else:
            self.issue_s = host.graph_launch_us * 1e-6 * pp
        self.overhead_s = host.step_overhead_us * 1e-6
        self._dense = np.zeros((len(DEVICE_CATEGORIES), 0))
        self._lm = np.zeros((len(DEVICE_CATEGORIES), 0))
        self._dense_tot = np.zeros(0)
        self._lm_tot = np.zeros(0)
        self._attention_coefficients()
        self._grow(4096)

    def _attention_coefficients(self) -> None:
        """Attention's FLOPs and bytes are linear in the batch aggregates (ops.attention_shapes), so
        its time is roofline.op_time in closed form: seconds per pair / per cached token here, one
        set per window group of layers (full, sliding, chunked). tests/test_cost.py checks this
        against op_time(attention_ops(...))."""
        dev, eff, dt = self.hw.device, self.hw.efficiency, self.dtypes
        peak, bw = dev.peak_flops(dt.act), dev.bandwidth
        self.p = float(eff.softmax_p)
        groups = []
        for s in attention_shapes(self.model, dt, self.tp):
            L = s.layers
            groups.append((
                s.kind, s.size, windowed_keys(s.kind, s.size, 1, float("inf")),  # keys per decode query at most
                s.pair_flops * L / (peak * eff.attn_prefill_compute),   # per pair
                s.ctx_flops * L / (peak * eff.attn_prefill_compute),    # per cached token (MLA up-projection)
                s.ctx_bytes * L / (bw * eff.gemm_memory),               # per cached token
                s.new_bytes * L / (bw * eff.gemm_memory),               # per new token
                s.key_flops * L / (peak * eff.attn_decode_compute),     # per context token
                s.key_bytes * L / (bw * eff.attn_decode_memory),        # per context token
                s.seq_bytes * L / (bw * eff.attn_decode_memory),        # per sequence
                eff.attn_decode_seq_us * 1e-6 * L,
                self.hw.floor_us() * 1e-6 * L,
            ))
        self._groups = tuple(groups)
        # speed: most models have one group of full-attention layers: attention_s skips the loop
        self._full = groups[0][3:] if len(groups) == 1 and groups[0][0] == "full" else None

    def _soft(self, x: float, y: float) -> float:
        p = self.p
        hi = x if x > y else y
        if p >= 64 or hi <= 0.0:
            return hi
        return hi * ((x / hi) ** p + (y / hi) ** p) ** (1.0 / p)

    def attention_s(self, ds: int, dc: float, pt: int, pairs: float, pc: float, ps: int = 1) -> float:
        """Seconds of attention for decode (ds seqs, dc cached tokens in all) and prefill (pt new
        tokens in ps chunks, `pairs` causal query-key pairs, pc cached tokens before the chunks)."""
        t = 0.0
        if self._full is not None:
            p_c, p_cc, p_cm, p_tm, d_c, d_m, d_q, d_seq, floor = self._full
            if pt:
                t = self._soft(pairs * p_c + pc * p_cc, pc * p_cm + pt * p_tm) + floor
            if ds:
                ctx = dc + ds  # each attends to its cache plus itself
                t += self._soft(ctx * d_c, ctx * d_m + ds * d_q) + floor + ds * d_seq
            return t
        soft = self._soft
        for kind, size, cap, p_c, p_cc, p_cm, p_tm, d_c, d_m, d_q, d_seq, floor in self._groups:
            if pt:
                pr = pairs if kind == "full" else windowed_pairs(kind, size, ps, pt, pairs, pc)
                t += soft(pr * p_c + pc * p_cc, pc * p_cm + pt * p_tm) + floor
            if ds:
                ctx = dc + ds  # each attends to its cache plus itself
                if ctx > ds * cap:  # speed: windowed_keys inlined
                    ctx = ds * cap
                t += soft(ctx * d_c, ctx * d_m + ds * d_q) + floor + ds * d_seq
        return t

    def step_agg(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        """step_s from the batch aggregates as plain numbers: the engine's hot path."""
        tok = ds + pt
        if tok >= self._size or lg >= self._size:
            self._grow(max(tok, lg))
        return self._combine(self._dense_l[tok] + self._lm_l[lg] + self.attention_s(ds, dc, pt, pairs, pc, ps))

    # -- tables over token counts ---------------------------------------------------------------
    def _table(self, tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        out = np.zeros((len(DEVICE_CATEGORIES), len(tokens)))
        for op in dense_ops(self.model, tokens, logits, self.dtypes, self.tp, self.pp, self.ep, self.moe_imbalance):
            t = op_seconds(op, self.hw, self.dtypes, self.tp)
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
        self._dense_l = self._dense_tot.tolist()  # python floats: faster to index one at a time
        self._lm_l = self._lm_tot.tolist()
        self._size = len(self._dense_l)

    def _attn_b(self, b: Batch) -> float:
        return self.attention_s(b.decode_seqs, b.decode_ctx, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                                b.prefill_seqs)

    def attention_ops_s(self, b: Batch) -> float:
        """The same attention time through ops.attention_ops and roofline.op_time (for checking)."""
        return sum(float(op_seconds(op, self.hw, self.dtypes))
                   for op in attention_ops(self.model, b, self.dtypes, self.tp, self.pp))

    # -- the two entry points --------------------------------------------------------------------
    def device_s(self, b: Batch) -> float:
        n = max(b.tokens, b.logit_rows)
        if n >= self._size:
            self._grow(n)
        return self._dense_l[b.tokens] + self._lm_l[b.logit_rows] + self._attn_b(b)

    def step_s(self, b: Batch) -> float:
        """Seconds of one moment: the device's work, the host issuing it, the per-step overhead."""
        return self._combine(self.device_s(b))

    def _combine(self, dev: float) -> float:
        if self.cpu:  # the CPU both issues and runs the kernels: nothing overlaps
            return dev + self.issue_s + self.overhead_s
        if self.async_scheduling:
            return max(dev, self.issue_s + self.overhead_s)
        return max(dev, self.issue_s) + self.overhead_s

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
        step = self._combine(dev)
        bd = {c: float(v) * 1e3 for c, v in zip(DEVICE_CATEGORIES, per, strict=True)}
        bd["host"] = (step - dev) * 1e3  # time the device waits on the host
        return StepCost(step * 1e3, dev * 1e3, (self.issue_s + self.overhead_s) * 1e3, bd)


_CACHE: dict[tuple, StepModel] = {}


def step_model(model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, mode: str = "graph",
               dtypes: Dtypes = Dtypes(), async_scheduling: bool = False, ep: int = 1,
               moe_imbalance: float = 1.0) -> StepModel:
    """A shared StepModel per configuration (specs hold dicts, so key on their JSON)."""
    key = (model.model_dump_json(), hw.model_dump_json(), tp, pp, mode, dtypes, async_scheduling, ep, moe_imbalance)
    sm = _CACHE.get(key)
    if sm is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        sm = _CACHE[key] = StepModel(model, hw, tp, pp, mode, dtypes, async_scheduling, ep, moe_imbalance)
    return sm
