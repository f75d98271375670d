"""Attention kernels on a device: flash-attention prefill and decode over a KV cache.

Pure functions of numbers (scalars or numpy arrays). They price the attention kernel itself;
the kernels around it (KV-cache writes) and the per-kernel floors belong to the implementation
(simulator/moment/kernels.py).

Prefill (FlashAttention-2's forward, what PyTorch's SDPA and vLLM run): the grid is one thread
block per (sequence, head, tile of `tile_rows` queries). A block streams the keys its queries
see (all cached ones, then causally up to its own tile) and spends, per query-key pair,
4 x head_dim FLOPs in the matrix units plus `attn_softmax_cycles` outside them (the exp of
the online softmax; it does not shrink with head_dim, which is why head dim 64 reaches a
smaller share of peak than 128). Blocks are spread over the compute units: the makespan is the
total work over the units, at least the longest block, plus `attn_tail` of the longest block
(the last wave, partly filled). With few blocks (one short prompt) only some units work.

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
from hwmodels.spec import DTYPE_BYTES, Hardware


def tile_rows(head_dim):
    """Queries per thread block of FlashAttention-2's forward kernel (128 up to head dim 128)."""
    return np.where(np.asarray(head_dim) <= 128, 128.0, 64.0)


def pair_seconds(hw: Hardware, dtype: str, head_dim: float) -> float:
    """Seconds one compute unit spends on one query-key pair: the two matmuls at the
    attention's share of the unit's peak, and the softmax."""
    dev, eff = hw.device, hw.efficiency
    per_unit = dev.peak_flops(dtype) / dev.compute_units
    return 4.0 * head_dim / (per_unit * eff.attn_prefill_compute) + eff.attn_softmax_cycles / (dev.clock_ghz * 1e9)


def prefill_s(hw: Hardware, dtype: str, kv_dtype: str, seqs, new, pairs, cached, heads: float, kv_heads: float,
              head_dim: float, layers: int = 1, causal: bool = True, window: int | None = None):
    """Seconds of the prefill attention kernels of `layers` layers: `seqs` chunks of `new`
    tokens in all, attending to `pairs` query-key pairs in all, after `cached` tokens in all
    (`window`: a sliding window caps the keys each query sees)."""
    dev, eff = hw.device, hw.efficiency
    seqs = np.maximum(np.asarray(seqs, dtype=float), 1.0)
    new = np.asarray(new, dtype=float)
    pairs = np.asarray(pairs, dtype=float)
    cached = np.asarray(cached, dtype=float)
    rows = tile_rows(head_dim)
    length, ctx = new / seqs, cached / seqs                       # the mean chunk and its cache
    if window:
        pairs = np.minimum(pairs, new * window)
        ctx = np.minimum(ctx, window)
    tiles = np.ceil(length / rows)
    if causal:  # tile i sees the cache and keys up to the end of its own tile
        padded = rows * tiles * ctx + rows * rows * tiles * (tiles + 1) / 2
        longest = rows * (ctx + tiles * rows)
    else:
        padded = rows * tiles * (ctx + length)
        longest = rows * (ctx + length)
    if window:  # a query tile sees at most the window and its own tile
        reach = window + rows
        full = np.clip(np.floor((reach - ctx) / rows), 0.0, tiles)  # tiles that still see all before them
        padded = rows * (full * ctx + rows * full * (full + 1) / 2) + (tiles - full) * rows * reach
        longest = np.minimum(longest, rows * reach)
    exact = np.maximum(pairs / seqs, 1.0)
    pad = np.maximum(padded / exact, 1.0)                            # tile quantisation of the work
    tau = pair_seconds(hw, dtype, head_dim)
    work = heads * pairs * pad * tau
    longest = np.minimum(longest, padded) * tau
    compute = np.maximum(work / dev.compute_units, longest) + eff.attn_tail * longest
    a, kvb = DTYPE_BYTES[dtype], DTYPE_BYTES[kv_dtype]
    memory = (cached * 2 * kv_heads * head_dim * kvb + new * (2 * heads + 2 * kv_heads) * head_dim * a) \
        / (dev.bandwidth * eff.gemm_memory)
    t = soft_max(compute, memory, eff.softmax_p)
    return np.where(new > 0, t, 0.0) * layers


def decode_s(hw: Hardware, dtype: str, kv_dtype: str, seqs, keys, heads: float, kv_heads: float, head_dim: float,
             layers: int = 1, window: int | None = None):
    """Seconds of the decode attention kernels of `layers` layers: `seqs` sequences of one
    query each, attending to `keys` keys in all (their caches and themselves)."""
    dev, eff = hw.device, hw.efficiency
    seqs = np.asarray(seqs, dtype=float)
    keys = np.asarray(keys, dtype=float)
    if window:
        keys = np.minimum(keys, seqs * window)
    a, kvb = DTYPE_BYTES[dtype], DTYPE_BYTES[kv_dtype]
    t_m = (keys * 2 * kv_heads * head_dim * kvb + seqs * 2 * heads * head_dim * a) / (dev.bandwidth * eff.attn_decode_memory)
    ramp = eff.attn_decode_ramp_us * 1e-6
    if ramp > 0:
        t_m = t_m + ramp * -np.expm1(-t_m / ramp)
    t_c = 4.0 * heads * head_dim * keys / (dev.peak_flops(dtype) * eff.attn_decode_compute)
    fixed = seqs * (eff.attn_decode_seq_us + eff.attn_decode_cta_us * kv_heads / dev.compute_units) * 1e-6
    t = soft_max(t_c, t_m, eff.softmax_p) + fixed
    return np.where(seqs > 0, t, 0.0) * layers


__all__ = ["prefill_s", "decode_s", "pair_seconds", "tile_rows"]
