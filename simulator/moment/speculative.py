"""The cost of a speculative-decoding moment: each decoding sequence gets k tokens proposed by a
draft (a small model, or draft heads on the target's hidden states: EAGLE, MTP) and verified by
one target pass of k + 1 tokens.

A decode sequence in a moment's batch (ops.Batch, Moment.batch) stands for one verify of
q = k + 1 tokens: the target's token-count ops see ds x q tokens and ds x q more logit rows than
the plain step would, less ds (every verified position gets logits), and its attention reads each
sequence's KV once for q queries (StepModel.verify_attention_s). The draft then runs k decode
passes of its own over the same sequences, costed at their mean context dc + ds (k - 1) / 2
(exact where a pass is linear in the context), and prefills whatever the target prefills (the
draft keeps its own KV of the prompt). The moment's per-step overhead is paid once: draft passes
cost their forward (StepModel.forward_s). Acceptance changes what a moment yields, not what it
costs (serving/decodeset.SpecDecodeSet draws it).

Draft heads of `layers` target layers (EAGLE and MTP: one; a lighter head: a fraction) are a copy
of the target cut to 1 and 2 layers, interpolated linearly in the layer count: a head's pass costs
f(1) + (layers - 1) (f(2) - f(1)), its weights and KV per token likewise; the target's embedding
and output head are shared, not counted twice in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwmodels.spec import Hardware
from simulator.moment.cost import DEVICE_CATEGORIES, StepCost, StepModel, step_model
from simulator.moment.model import ModelSpec
from simulator.moment.ops import Batch, Dtypes
from simulator.moment.power import MomentPower


def head_model(model: ModelSpec, layers: int) -> ModelSpec:
    """The target cut to its first `layers` layers (per-layer lists cut too)."""
    update: dict = {"num_hidden_layers": layers}
    for f in ("layer_types", "no_rope_layers"):
        v = getattr(model, f, None)
        if v:
            update[f] = list(v[:layers])
    return model.model_copy(update=update)


def acceptance_probs(acceptance: float | list[float], k: int) -> list[float]:
    """P(A = a) for a = 1 .. k + 1 tokens a step yields per sequence: the accepted drafts and the
    target's own next token. `acceptance`: one alpha for every position, or the chance that
    position j is accepted given positions before it were."""
    alpha = [acceptance] * k if isinstance(acceptance, (int, float)) else list(acceptance)
    reach = [1.0]  # P(A >= a)
    for a in alpha:
        reach.append(reach[-1] * a)
    return [reach[a] - (reach[a + 1] if a + 1 < len(reach) else 0.0) for a in range(k + 1)]


def expected_tokens(acceptance: float | list[float], k: int) -> float:
    """E[A]: (1 - alpha^(k+1)) / (1 - alpha) for one alpha; 1 + a1 + a1 a2 + ... in general."""
    return sum((a + 1) * p for a, p in enumerate(acceptance_probs(acceptance, k)))


@dataclass(frozen=True)
class Draft:
    """What proposes the tokens: step models weighted to one pass (one model, or two head cuts
    interpolated), and their extra bytes per device."""

    parts: tuple[tuple[StepModel, float], ...]
    weight_bytes: float       # per device
    kv_bytes_per_token: float  # per device


def draft_of(target: ModelSpec, hw: Hardware, tp: int, pp: int, mode: str, dt: Dtypes, async_scheduling: bool,
             kernels: str, draft: ModelSpec | None = None, layers: float = 1.0) -> Draft:
    """A draft model (any model spec) or draft heads of `layers` target layers, on the target's devices."""
    if draft is not None:
        sm = step_model(draft, hw, tp, pp, mode, dt, async_scheduling, kernels=kernels)
        return Draft(((sm, 1.0),), draft.weight_bytes(dt.weight, tp, pp), draft.kv_bytes_per_token(dt.kv, tp, pp))
    one, two = head_model(target, 1), head_model(target, 2)
    w = lambda m: m.weight_bytes(dt.weight, tp, 1)  # noqa: E731
    kv = lambda m: m.kv_bytes_per_token(dt.kv, tp, 1)  # noqa: E731
    parts = ((step_model(one, hw, tp, 1, mode, dt, async_scheduling, kernels=kernels), 2.0 - layers),
             (step_model(two, hw, tp, 1, mode, dt, async_scheduling, kernels=kernels), layers - 1.0))
    return Draft(parts, layers * (w(two) - w(one)), layers * (kv(two) - kv(one)))


ATTN = DEVICE_CATEGORIES.index("attention")


class Speculation:
    """Step costs of speculative decoding with k proposed tokens: the engine's `cost` (step_agg)
    and the breakdown (cost), in place of the target's StepModel."""

    def __init__(self, target: StepModel, draft: Draft, k: int):
        self.target, self.draft, self.k = target, draft, k
        self.q = k + 1
        # the target's attributes the engine and the results read
        self.model, self.issue_s, self.overhead_s = target.model, target.issue_s, target.overhead_s
        self.moment_s = self.step_agg  # a serving stack's graph padding is not applied to a verify

    def host_busy_s(self, moments: int, seqs: int) -> float:
        return self.target.host_busy_s(moments, seqs)

    def draft_s(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float) -> float:
        """The draft's k decode passes over ds sequences and its prefill of the moment's chunks."""
        t = 0.0
        ctx = dc + ds * (self.k - 1) / 2
        for sm, w in self.draft.parts:
            if ds:
                t += w * self.k * sm.forward_s(ds, ctx, 0, 0, 0.0, 0, ds)
            if pt:
                t += w * sm.forward_s(0, 0, ps, pt, pairs, pc, ps)
        return t

    def step_agg(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        """Seconds of a moment whose ds decode sequences each verify k + 1 tokens."""
        sm, q = self.target, self.q
        tok, rows = ds * q + pt, lg + ds * self.k
        if tok >= sm._size or rows >= sm._size:
            sm._grow(max(tok, rows))
        dev = sm._dense_l[tok] + sm._lm_l[rows] + sm.verify_attention_s(ds, dc, q)
        if pt:
            dev += sm.attention_s(0, 0, pt, pairs, pc, ps)
        return sm._combine(dev, sm._tail_l[rows]) + self.draft_s(ds, dc, ps, pt, pairs, pc)

    def breakdowns(self, batches: list[Batch]) -> np.ndarray:
        """cost(b).breakdown_ms of each batch as a row (StepModel.breakdowns' layout)."""
        names = (*DEVICE_CATEGORIES, "host")
        return np.asarray([[c.breakdown_ms[x] for x in names] for c in map(self.cost, batches)],
                          dtype=np.float64).reshape(-1, len(names))

    def cost(self, b: Batch) -> StepCost:
        """The breakdown: the target's verify pass (as StepModel.cost, with ds x q tokens and the
        verify attention) and the draft's passes, each added to its category."""
        sm, q, k = self.target, self.q, self.k
        ds = b.decode_seqs
        tok, rows = ds * q + b.prefill_tokens, b.logit_rows + ds * k
        if max(tok, rows) >= sm._size:
            sm._grow(max(tok, rows))
        per = sm._dense[:, tok] + sm._lm[:, rows]
        per[ATTN] += sm.verify_attention_s(ds, b.decode_ctx, q) + sm.attention_s(
            0, 0, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx, b.prefill_seqs)
        dev = float(per.sum())
        bd = {c: float(v) * 1e3 for c, v in zip(DEVICE_CATEGORIES, per, strict=True)}
        step = sm._combine(dev, sm._tail_l[rows])
        bd["host"] = (step - dev) * 1e3
        draft_ms = 0.0
        for dsm, w in self.draft.parts:
            parts = []
            if ds:
                parts.append((k * w, Batch(ds, int(b.decode_ctx + ds * (k - 1) / 2))))
            if b.prefill_tokens:
                parts.append((w, Batch(0, 0, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                                       b.prefill_seqs)))
            for n, db in parts:
                d = dsm.cost(db)
                for cat, v in d.breakdown_ms.items():
                    if cat != "host":
                        bd[cat] += n * v
                draft_ms += n * d.device_ms
        return StepCost(step * 1e3 + draft_ms, dev * 1e3 + draft_ms, (sm.issue_s + sm.overhead_s) * 1e3, bd)

    def work_sums(self, sums: list) -> tuple[list, list, list[tuple[ModelSpec, float, list]]]:
        """The running sums of the moment log (result._work's order: moments, logits, decode
        seqs and context, prefill seqs, tokens, pairs, context) as the target's work: for its
        FLOPs (each verified token a query over its keys), for its bytes (the extra verified tokens
        as new tokens, the KV read once), and the draft's (model, weight, sums)."""
        M, LG, DS, DC, PS, PT, PP, PC = sums
        q, k = self.q, self.k
        flops = [M, LG + DS * k, DS * q, DC * q + DS * q * (q - 1) / 2, PS, PT, PP, PC]
        by = [M, LG + DS * k, DS, DC, PS + (DS if DS else 0), PT + DS * k, PP, PC]
        # the draft's logit rows: k a decode sequence, one a prefill chunk (as draft_s prices them)
        draft = [(sm.model, w, [M * k, DS * k + PS, DS * k, (DC + DS * (k - 1) / 2) * k, PS, PT, PP, PC])
                 for sm, w in self.draft.parts]
        return flops, by, draft


class SpecPower:
    """Energy demand of speculative moments (power.MomentPower's interface): the target's verify
    pass and the draft's passes, as Speculation costs them."""

    def __init__(self, target: MomentPower, draft: tuple[tuple[MomentPower, float], ...], k: int):
        self.target, self.draft, self.k, self.q = target, draft, k, k + 1
        self.known, self.idle_w, self.tdp_w, self.dyn_w = target.known, target.idle_w, target.tdp_w, target.dyn_w
        self.energy = target.energy

    def demand(self, ds: int, dc: float, ps: int, pt: int, pairs: float, pc: float, lg: int) -> float:
        e = self.target.demand(ds, dc, ps, pt, pairs, pc, lg, self.q)
        ctx = dc + ds * (self.k - 1) / 2
        for p, w in self.draft:
            if ds:
                e += w * self.k * p.demand(ds, ctx, 0, 0, 0.0, 0, ds)
            if pt:
                e += w * p.demand(0, 0, ps, pt, pairs, pc, ps)
        return e

    def demand_array(self, ds, dc, ps, pt, pairs, pc, lg) -> np.ndarray:
        e = self.target.demand_array(ds, dc, ps, pt, pairs, pc, lg, self.q)
        zero = np.zeros(np.shape(ds))
        ctx = np.asarray(dc, dtype=float) + np.asarray(ds) * (self.k - 1) / 2
        for p, w in self.draft:
            e += w * self.k * p.demand_array(ds, ctx, zero, zero, zero, zero, ds)
            e += w * p.demand_array(zero, zero, ps, pt, pairs, pc, ps)
        return e


__all__ = ["Speculation", "SpecPower", "Draft", "draft_of", "head_model", "acceptance_probs", "expected_tokens"]
