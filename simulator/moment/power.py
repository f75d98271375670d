"""Electrical power and energy of moments: a device draws its idle power, plus a dynamic share that
grows with how busy its tensor units and its memory are.

Per device, over a moment of dt seconds (hwmodels.spec.Power holds the four numbers):

    P = idle_w + (tdp_w - idle_w) x min(1, compute_share x t_c / dt + memory_share x t_m / dt)

t_c is the moment's tensor FLOPs (GEMMs and attention) at a large GEMM's rate (peak of their dtype
x efficiency.gemm_compute), t_m its bytes moved at a weight stream's rate (bandwidth x
efficiency.gemm_memory): t_c / dt is how busy the tensor units are relative to the best a GEMM
does, t_m / dt the same for memory, and each share says what the device draws at that best rate.
The min is the board's power limit. Over a replica's busy devices (tp of them per stage; with pp
stages each is busy dt / pp, so tp x dt device-seconds either way) a moment's dynamic energy is

    E = min(dyn_w x dt, demand),   demand = dyn_w x (compute_share x t_c + memory_share x t_m)

with dyn_w = (tdp_w - idle_w) x tp. The demand is linear in the batch aggregates (causal pairs,
keys read, cached tokens) except the token-count dependent ops (GEMMs, element-wise, MoE experts
touched), which come from tables over the token count like the step cost's, so it costs O(1) per
moment. Idle power counts for every device over the whole run, busy or not. The host CPU's power is
not modelled.
"""

from __future__ import annotations

import numpy as np

from hwmodels.spec import Power, gemm_dtype
from simulator.moment.cost import StepModel
from simulator.moment.ops import attention_shapes, windowed_pairs

NO_POWER = Power(tdp_w=1.0, idle_w=0.0, compute_share=0.0, memory_share=0.0)  # a part without figures


class MomentPower:
    """Dynamic energy demand of one replica's moments (J), from its StepModel and its devices' Power."""

    def __init__(self, sm: StepModel, power: Power | None, max_batch: int = 256):
        self.known = power is not None
        p = power or NO_POWER
        dev, eff, dt = sm.hw.device, sm.hw.efficiency, sm.dtypes
        self.sm = sm
        self.devices = sm.tp * sm.pp
        self.idle_w = p.idle_w * self.devices if self.known else 0.0   # per replica
        self.tdp_w = p.tdp_w * self.devices if self.known else 0.0
        self.dyn_w = (p.tdp_w - p.idle_w) * sm.tp if self.known else 0.0  # busy devices at the power limit
        self.j_per_peak_s = p.compute_share * self.dyn_w / eff.gemm_compute   # J per second of work at peak
        self.j_per_byte = p.memory_share * self.dyn_w / (dev.bandwidth * eff.gemm_memory)
        peak_act = dev.peak_flops(dt.act)
        groups = []
        for s in attention_shapes(sm.model, dt, sm.tp):
            L = s.layers
            c, m = self.j_per_peak_s * L / peak_act, self.j_per_byte * L
            cap = float("inf") if s.kind == "full" or s.size is None else (s.size if s.kind == "sliding" else s.size / 2)
            groups.append((s.kind, s.size, c * s.pair_flops, c * s.ctx_flops + m * s.ctx_bytes, m * s.new_bytes,
                           c * s.key_flops, m * s.key_bytes, m * s.seq_bytes, cap))
        self._groups = tuple(groups)
        self._size = 0
        self._grow(max(max_batch, 256))

    def _table(self, tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Demand of the token-count dependent ops as this implementation runs them."""
        dev, dt = self.sm.hw.device, self.sm.dtypes
        out = np.zeros(len(tokens))
        for op in self.sm.ops(tokens, logits):
            e = self.j_per_byte * np.asarray(op.bytes, dtype=float)
            if op.kind == "gemm":
                peak = dev.peak_flops(gemm_dtype(op.fmt or dt.weight, dt.act, dev)[0])
                e = e + self.j_per_peak_s * np.asarray(op.flops, dtype=float) / peak
            out += np.broadcast_to(e, out.shape)
        return out

    def _grow(self, n: int) -> None:
        size = max(n + 1, 2 * self._size, 256)
        t = np.arange(size, dtype=float)
        zero = np.zeros(size)
        tok = self._table(t, zero)
        tok[0] = 0.0  # no tokens, no moment (as the step cost's table)
        self._tok_np = tok
        self._lg_np = self._table(zero, t) - self._table(zero, zero)
        self._tok, self._lg = tok.tolist(), self._lg_np.tolist()  # python floats: faster one at a time
        self._size = size

    def demand(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int, q: int = 1) -> float:
        """J the moment's work asks for over the replica's devices (before the power limit), from
        the batch aggregates of ops.Batch in their order (Moment.batch). q > 1: each decode
        sequence verifies q tokens in the pass (speculative decoding): ds x q tokens and logit
        rows, its KV read once for q queries (as StepModel.verify_attention_s)."""
        n, rows = ds * q + pt, lg + ds * (q - 1)
        if n >= self._size or rows >= self._size:
            self._grow(max(n, rows))
        e = self._tok[n] + self._lg[rows]
        for kind, size, k_pair, k_ctx, k_new, c_key, m_key, k_seq, cap in self._groups:
            if pt:
                pr = pairs if kind == "full" else windowed_pairs(kind, size, ps, pt, pairs, pc)
                e += k_pair * pr + k_ctx * pc + k_new * pt
            if ds:
                keys, prs = dc + q * ds, q * dc + ds * q * (q + 1) / 2
                if keys > ds * cap:  # ops.windowed_keys
                    keys = ds * cap
                if prs > q * ds * cap:
                    prs = q * ds * cap
                e += c_key * prs + m_key * keys + k_seq * q * ds
        return e

    def demand_array(self, ds: np.ndarray, dc: np.ndarray, ps: np.ndarray, pt: np.ndarray, pairs: np.ndarray,
                     pc: np.ndarray, lg: np.ndarray, q: int = 1) -> np.ndarray:
        """demand() over arrays of moments (numpy, after the run: the moment log keeps the batch
        aggregates, not the energy)."""
        ds, ps, pt, lg = (np.asarray(x, dtype=np.int64) for x in (ds, ps, pt, lg))  # scalars stay scalars
        dc, pairs, pc = (np.asarray(x, dtype=float) for x in (dc, pairs, pc))
        n, rows = ds * q + pt if q > 1 or pt.ndim else ds, lg + ds * (q - 1) if q > 1 else lg
        top = int(max(np.max(n, initial=0), np.max(rows, initial=0)))
        if top >= self._size:
            self._grow(top)
        e = self._tok_np[n] + self._lg_np[rows]
        for kind, size, k_pair, k_ctx, k_new, c_key, m_key, k_seq, cap in self._groups:
            if pt.ndim or pt:  # moments with prefill
                pr = pairs if kind == "full" or size is None else _windowed_pairs(kind, size, ps, pt, pairs, pc)
                e += k_pair * pr + k_ctx * pc + k_new * pt
            keys = dc + q * ds
            if cap != float("inf"):  # ops.windowed_keys
                keys = np.minimum(keys, ds * cap)
            if q == 1:  # a decode: each key is read and used once (speed: one pass fewer)
                e += (c_key + m_key) * keys
            else:
                prs = q * dc + ds * q * (q + 1) / 2
                if cap != float("inf"):
                    prs = np.minimum(prs, q * ds * cap)
                e += c_key * prs + m_key * keys
            e += k_seq * q * ds
        return e

    def energy(self, demand: np.ndarray, dur: np.ndarray) -> np.ndarray:
        """Each moment's dynamic energy (J): its demand, at most the power limit for its length."""
        return np.minimum(demand, self.dyn_w * dur)


def _reach(kind: str, size: float, p: np.ndarray) -> np.ndarray:
    """ops._reach over an array of positions."""
    if kind == "sliding":
        return np.where(p <= size, p * (p + 1) / 2, size * (size + 1) / 2 + (p - size) * size)
    q, r = np.divmod(p, size)
    return q * size * (size + 1) / 2 + r * (r + 1) / 2


def _windowed_pairs(kind: str, size: float, seqs: np.ndarray, tokens: np.ndarray, pairs: np.ndarray,
                    ctx: np.ndarray) -> np.ndarray:
    """ops.windowed_pairs over arrays of moments."""
    some = seqs > 0
    n = np.maximum(seqs, 1)
    c = np.where(some, ctx / n, 0.0)
    t = np.where(some, tokens / n, tokens)
    out = np.minimum(pairs, n * (_reach(kind, size, c + t) - _reach(kind, size, c)))
    return np.where(tokens > 0, out, pairs)


def peak_power(start: np.ndarray, end: np.ndarray, watts: np.ndarray, group: np.ndarray, groups: int,
               overlap: bool = True) -> np.ndarray:
    """The highest total of `watts` drawn at once by the intervals [start, end) of each group (a
    replica: with pp > 1 its virtual engines' moments overlap). A sweep over the interval ends,
    vectorised: the running sum of +w at starts and -w at ends, in (group, time) order with ends
    before starts at equal times. overlap=False: a group's intervals never overlap, so its peak is
    its largest w."""
    out = np.zeros(groups)
    if not start.size:
        return out
    if not overlap:
        np.maximum.at(out, group, watts)
        return out
    t = np.concatenate((start, end))
    w = np.concatenate((watts, -watts))
    g = np.concatenate((group, group))
    is_start = np.concatenate((np.ones(start.size), np.zeros(end.size)))
    o = np.lexsort((is_start, t, g))
    level = np.cumsum(w[o])  # each group's starts and ends cancel, so the running sum restarts near 0
    np.maximum.at(out, g[o], level)
    return out


__all__ = ["MomentPower", "peak_power", "NO_POWER"]
