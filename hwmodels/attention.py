"""Attention kernels on a device: flash-attention prefill and decode over a KV cache.

Pure functions of numbers (scalars or numpy arrays). They price the attention kernel itself,
from the work of one layer per query-key pair, per cached token and per key (the hardware-free
counts of simulator.moment.ops.attention_shapes: standard, grouped-query or latent attention);
the kernels around it (the KV-cache writes) and the per-kernel floors belong to the
implementation (simulator/moment/kernels.py).

Prefill (FlashAttention-2's forward, what PyTorch's SDPA and vLLM run): the grid is one thread
block per (sequence, head, tile of `tile_rows` queries). A block streams the keys its queries
see (all cached ones, then causally up to its own tile, at most a window) and spends, per
query-key pair and head, its matmul FLOPs in the matrix units at `attn_prefill_compute` of
their peak plus `attn_softmax_cycles` outside them (the exp of the online softmax; it does not
shrink with the head size, which is why head dim 64 reaches a smaller share of peak than 128).
Blocks are spread over the compute units: the makespan is the total work over the units, at
least the longest block, plus `attn_tail` of the longest block (the last wave, partly filled).
With few blocks (one short prompt) only some units work. Where a dtype's attention takes a path
of its own (PyTorch's bf16 SDPA on a CPU computes in fp32), `attn_prefill_compute_dtype` and
`attn_decode_compute_dtype` give that dtype's matmul shares instead.

Decode (one query per sequence): reads every cached key and value once, so it is memory-bound
at `attn_decode_memory` of bandwidth, plus the stream's start-up (`attn_decode_ramp_us`: a
stream of t seconds takes ramp x (1 - exp(-t / ramp)) more, so short ones run at about half
rate) and a fixed cost per (sequence, KV head) work unit spread over the units (short
contexts at large batch) and per sequence.

Batches of unequal lengths are priced from their aggregates (sequences, tokens, pairs), with
the tile quantisation of the mean length: the engine costs a moment in O(1).
"""

from __future__ import annotations

import numpy as np

from hwmodels.roofline import soft_max
from hwmodels.spec import Hardware


def tile_rows(head_dim):
    """Queries per thread block of FlashAttention-2's forward kernel (128 up to head dim 128)."""
    return np.where(np.asarray(head_dim) <= 128, 128.0, 64.0)


def pair_seconds(hw: Hardware, dtype: str, head_flops):
    """Seconds one compute unit spends on one query-key pair of one head that costs `head_flops`
    in its matmuls (4 x head_dim for QK^T and PV): those at attention's share of the unit's
    peak, and the softmax."""
    dev, eff = hw.device, hw.efficiency
    per_unit = dev.peak_flops(dtype) / dev.compute_units
    return np.asarray(head_flops) / (per_unit * prefill_compute(hw, dtype)) \
        + eff.attn_softmax_cycles / (dev.clock_ghz * 1e9)


def prefill_compute(hw: Hardware, dtype: str) -> float:
    """Attention's share of `dtype`'s matrix peak in prefill (that dtype's own, where it has one)."""
    eff = hw.efficiency
    return eff.attn_prefill_compute_dtype.get(dtype, eff.attn_prefill_compute)


def decode_compute(hw: Hardware, dtype: str) -> float:
    """Decode attention's share of `dtype`'s peak (that dtype's own, where it has one)."""
    eff = hw.efficiency
    return eff.attn_decode_compute_dtype.get(dtype, eff.attn_decode_compute)


def padded_pairs(rows, length, ctx, reach=None, causal: bool = True):
    """Query-key pairs a chunk of `length` queries after `ctx` cached keys costs in tiles of
    `rows` queries, and the pairs of its longest tile: every tile's rows work on the keys the
    last of them sees (causal: up to the tile's end; `reach`: at most a window past the tile)."""
    tiles = np.ceil(length / rows)
    if causal:
        padded = rows * tiles * ctx + rows * rows * tiles * (tiles + 1) / 2
        longest = rows * (ctx + tiles * rows)
    else:
        padded = rows * tiles * (ctx + length)
        longest = rows * (ctx + length)
    if reach:  # a query tile sees at most the window and its own tile
        span = reach + rows
        full = np.clip(np.floor((span - ctx) / rows), 0.0, tiles)  # tiles that still see all before them
        padded = np.minimum(padded, rows * (full * ctx + rows * full * (full + 1) / 2) + (tiles - full) * rows * span)
        longest = np.minimum(longest, rows * span)
    return padded, np.minimum(longest, padded)


def prefill_s(hw: Hardware, dtype: str, seqs, new, pairs, cached, heads: float, pair_flops: float,
              ctx_flops: float, ctx_bytes: float, new_bytes: float, layers: int = 1, causal: bool = True,
              reach: float | None = None):
    """Seconds of the prefill attention kernels of `layers` layers: `seqs` chunks of `new`
    tokens in all, attending to `pairs` query-key pairs in all (already capped by any window),
    after `cached` tokens in all. Per layer: `pair_flops` per pair (all `heads`), `ctx_flops`
    per cached token (a latent's up-projection), `ctx_bytes` read per cached token,
    `new_bytes` moved per new token; `reach`: the window or chunk that bounds a query's keys."""
    dev, eff = hw.device, hw.efficiency
    seqs = np.maximum(np.asarray(seqs, dtype=float), 1.0)
    new = np.asarray(new, dtype=float)
    pairs = np.asarray(pairs, dtype=float)
    cached = np.asarray(cached, dtype=float)
    head = pair_flops / heads
    rows = tile_rows(head / 4.0)
    length, ctx = new / seqs, cached / seqs                       # the mean chunk and its cache
    if reach:
        ctx = np.minimum(ctx, reach)
    padded, longest = padded_pairs(rows, length, ctx, reach, causal)
    exact = np.maximum(pairs / seqs, 1.0)
    pad = np.maximum(padded / exact, 1.0)                            # tile quantisation of the work
    tau = pair_seconds(hw, dtype, head)
    longest = longest * tau
    compute = np.maximum(heads * pairs * pad * tau / dev.compute_units, longest) + eff.attn_tail * longest
    compute = compute + ctx_flops * cached / (dev.peak_flops(dtype) * prefill_compute(hw, dtype))
    memory = (cached * ctx_bytes + new * new_bytes) / (dev.bandwidth * eff.gemm_memory)
    t = soft_max(compute, memory, eff.softmax_p)
    return np.where(new > 0, t, 0.0) * layers


def decode_s(hw: Hardware, dtype: str, seqs, keys, key_flops: float, key_bytes: float, seq_bytes: float,
             kv_heads: float, layers: int = 1):
    """Seconds of the decode attention kernels of `layers` layers: `seqs` sequences of one
    query each, attending to `keys` keys in all (their caches and themselves, already capped by
    any window). Per layer: `key_flops` and `key_bytes` per key, `seq_bytes` per sequence (its
    query and output), `kv_heads` work units per sequence."""
    dev, eff = hw.device, hw.efficiency
    seqs = np.asarray(seqs, dtype=float)
    keys = np.asarray(keys, dtype=float)
    t_m = (keys * key_bytes + seqs * seq_bytes) / (dev.bandwidth * eff.attn_decode_memory)
    ramp = eff.attn_decode_ramp_us * 1e-6
    if ramp > 0:
        t_m = t_m + ramp * -np.expm1(-t_m / ramp)
    t_c = key_flops * keys / (dev.peak_flops(dtype) * decode_compute(hw, dtype))
    fixed = seqs * (eff.attn_decode_seq_us + eff.attn_decode_cta_us * kv_heads / dev.compute_units) * 1e-6
    t = soft_max(t_c, t_m, eff.softmax_p) + fixed
    return np.where(seqs > 0, t, 0.0) * layers


def standard(heads: float, kv_heads: float, head_dim: float, act_bytes: float, kv_bytes: float) -> dict[str, float]:
    """The per-layer counts of standard (grouped-query) attention, as ops.attention_shapes gives
    them, less the cache write (a kernel of its own): for calibration's attention records."""
    return {"pair_flops": 4.0 * heads * head_dim, "ctx_flops": 0.0, "ctx_bytes": 2 * kv_heads * head_dim * kv_bytes,
            "new_bytes": (2 * heads + 2 * kv_heads) * head_dim * act_bytes,
            "key_flops": 4.0 * heads * head_dim, "key_bytes": 2 * kv_heads * head_dim * kv_bytes,
            "seq_bytes": 2 * heads * head_dim * act_bytes}


__all__ = ["prefill_s", "decode_s", "pair_seconds", "prefill_compute", "decode_compute", "padded_pairs", "tile_rows", "standard"]
