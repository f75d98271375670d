"""hwmodels.attention: flash-attention prefill and decode against closed forms worked out by hand
(tiles, waves, head size, causal masking, the decode stream), and properties (monotone in every
size). The numbers a model was fitted to are checked in tests/test_h200.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels import attention
from hwmodels.attention import pair_seconds, standard, tile_rows
from hwmodels.load import load_hardware
from hwmodels.spec import Efficiency

H = load_hardware("h200-sxm")


def prefill_s(hw, seqs, new, pairs, cached, heads, kv_heads, hd, **kw):
    """Standard attention in bf16 (the counts ops.attention_shapes gives it)."""
    s = standard(heads, kv_heads, hd, 2.0, 2.0)
    return attention.prefill_s(hw, "bf16", seqs, new, pairs, cached, heads, s["pair_flops"], s["ctx_flops"],
                               s["ctx_bytes"], s["new_bytes"], **kw)


def decode_s(hw, seqs, keys, heads, kv_heads, hd):
    s = standard(heads, kv_heads, hd, 2.0, 2.0)
    return attention.decode_s(hw, "bf16", seqs, keys, s["key_flops"], s["key_bytes"], s["seq_bytes"], kv_heads)
# a device where only the compute term counts: attention's memory never binds
PURE = H.model_copy(update={"efficiency": Efficiency(attn_prefill_compute=0.5, attn_softmax_cycles=0.0625,
                                                     attn_tail=0.25, softmax_p=64.0)})


def test_pair_time_by_hand():
    # 4 x head_dim FLOPs at half of one SM's bf16 peak, plus 1/16 cycle of softmax
    per_sm = 989.5e12 / 132
    for hd in (64, 128):
        want = 4 * hd / (per_sm * 0.5) + 0.0625 / 1.83e9
        assert pair_seconds(PURE, "bf16", 4 * hd) == pytest.approx(want, rel=2e-3)
    # the softmax does not shrink with the head: head dim 64 gets a smaller share of the peak
    share = lambda hd: 4 * hd / pair_seconds(H, "bf16", 4 * hd) / (H.device.peak_flops("bf16") / 132)  # noqa: E731
    assert share(64) < share(128)
    assert tile_rows(128) == 128 and tile_rows(256) == 64


def test_few_tiles_leave_units_idle():
    # one 128-token prompt: one tile per head. 32 or 64 heads are fewer blocks than 132 SMs, so
    # the kernel lasts one block (plus the tail), whatever the heads
    tau = pair_seconds(PURE, "bf16", 4 * 128)
    one_block = 128 * 128 * tau * (1 + 0.25)
    for heads in (32, 64):
        t = prefill_s(PURE, 1, 128, 128 * 129 / 2, 0, heads, 8, 128)
        assert float(t) == pytest.approx(one_block)


def test_many_tiles_fill_the_units():
    # 8 x 8192 tokens, 32 heads: 64 causal tiles each, 16,384 blocks: the work over the SMs, plus
    # the tail of the longest block; the 64-token tile rounding is visible but small
    tau = pair_seconds(PURE, "bf16", 4 * 128)
    n, T = 8192, 64
    padded = 128 * 128 * T * (T + 1) / 2
    longest = 128 * n * tau
    want = 32 * 8 * padded * tau / 132 + 0.25 * longest
    t = prefill_s(PURE, 8, 8 * n, 8 * n * (n + 1) / 2, 0, 32, 8, 128)
    assert float(t) == pytest.approx(want)
    assert padded / (n * (n + 1) / 2) == pytest.approx(65 / 64 * 8192 / 8193)  # what tile rounding costs: 1.6 %


def test_causal_masking_halves_the_work_not_the_longest_block():
    pairs = 4096 * 4097 / 2
    causal = prefill_s(PURE, 4, 4 * 4096, 4 * pairs, 0, 32, 8, 128)
    full = prefill_s(PURE, 4, 4 * 4096, 4 * 4096 * 4096, 0, 32, 8, 128, causal=False)
    # 32 query tiles of 128: causal blocks see 128, 256, ... 4096 keys, full ones 4096 each; the
    # last block of either sees 4096 keys, and a quarter of it is the tail
    per_block = 4 * 32 * 128 * 128 / 132
    tail = 0.25 * 128 * 4096
    assert float(full) / float(causal) == pytest.approx((per_block * 32 * 32 + tail) / (per_block * 32 * 33 / 2 + tail))


def test_decode_is_a_kv_stream_with_a_start_up():
    eff = Efficiency(attn_decode_memory=0.9, attn_decode_ramp_us=10.0, attn_decode_cta_us=0.0,
                     attn_decode_seq_us=0.0, softmax_p=64.0)
    hw = H.model_copy(update={"efficiency": eff})
    bw = hw.device.bandwidth * 0.9

    def t(b, ctx):
        return float(decode_s(hw, b, b * (ctx + 1), 32, 8, 128))
    kv = lambda b, ctx: b * (ctx + 1) * 2 * 8 * 128 * 2  # noqa: E731  (K and V, bf16)
    # a long stream: the start-up is paid once, every extra byte at the fitted bandwidth
    assert t(64, 16384) - t(32, 16384) == pytest.approx((kv(64, 16384) - kv(32, 16384)) / bw, rel=1e-3)
    # a short one runs at about half the rate
    small = t(1, 128)
    assert small == pytest.approx(2 * kv(1, 128) / bw + 2 * 64 * 128 * 2 / bw, rel=0.01)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.integers(1, 8192), st.integers(0, 8192), st.integers(1, 64), st.integers(1, 4096))
def test_attention_never_gets_faster_with_more_work(seqs, length, cached, more_seqs, more_len):
    def pre(b, n, c):
        return float(prefill_s(H, b, b * n, b * (n * c + n * (n + 1) / 2), b * c, 32, 8, 128))

    def dec(b, c):
        return float(decode_s(H, b, b * (c + 1), 32, 8, 128))
    assert pre(seqs, length + more_len, cached) >= pre(seqs, length, cached)
    assert pre(seqs, length, cached + more_len) >= pre(seqs, length, cached)
    assert pre(seqs + more_seqs, length, cached) >= pre(seqs, length, cached)
    assert dec(seqs + more_seqs, length) >= dec(seqs, length)
    assert dec(seqs, length + more_len) >= dec(seqs, length)


def test_a_sliding_window_makes_long_prefills_linear():
    def pre(n):
        pairs = n * (n + 1) / 2
        return float(prefill_s(PURE, 1, n, min(pairs, n * 4096), 0, 32, 8, 128, reach=4096))
    assert pre(65536) / pre(32768) == pytest.approx(2.0, rel=0.05)


def test_a_dtypes_own_attention_rate_replaces_the_shared_one_for_it():
    # PyTorch's bf16 SDPA on a CPU converts to fp32: its matmuls get their own share of bf16's
    # peak (prefill and decode apart); fp32 keeps the shared one
    eff = Efficiency(attn_prefill_compute=0.5, attn_decode_compute=0.25, attn_decode_memory=0.9, attn_softmax_cycles=0.0,
                     attn_prefill_compute_dtype={"bf16": 0.1}, attn_decode_compute_dtype={"bf16": 0.01}, softmax_p=64.0)
    hw = H.model_copy(update={"efficiency": eff})
    per_sm = hw.device.peak_flops("bf16") / 132
    assert pair_seconds(hw, "bf16", 512) == pytest.approx(512 / (per_sm * 0.1), rel=1e-12)
    assert pair_seconds(hw, "fp32", 512) == pytest.approx(512 / (hw.device.peak_flops("fp32") / 132 * 0.5), rel=1e-12)
    # decode: 4 x 128 x 32 FLOPs per key at 1 % of the bf16 peak dwarf its 4 KB per key read at 90 %
    # of the bandwidth, so the soft maximum is the compute term
    s = standard(32, 8, 128, 2.0, 2.0)
    keys = 8 * 4097
    t = attention.decode_s(hw, "bf16", 8, keys, s["key_flops"], s["key_bytes"], s["seq_bytes"], 8)
    assert float(t) == pytest.approx(s["key_flops"] * keys / (hw.device.peak_flops("bf16") * 0.01), rel=1e-3)
    shared = hw.model_copy(update={"efficiency": eff.model_copy(update={"attn_decode_compute_dtype": {}})})
    t_shared = attention.decode_s(shared, "bf16", 8, keys, s["key_flops"], s["key_bytes"], s["seq_bytes"], 8)
    # with the shared 25 % the compute is 2 us and the 134 MB KV stream (31 us) binds again
    kv = keys * s["key_bytes"] + 8 * s["seq_bytes"]
    assert float(t_shared) == pytest.approx(kv / (hw.device.bandwidth * 0.9), rel=1e-3)
    assert float(t) > 1.7 * float(t_shared)
    for name in ("attn_prefill_compute_dtype", "attn_decode_compute_dtype"):
        with pytest.raises(ValueError, match=f"unknown dtype 'bf17' in {name}"):
            Efficiency(**{name: {"bf17": 0.5}})
        for bad in (0.0, 1.5, float("nan")):
            with pytest.raises(ValueError):
                Efficiency(**{name: {"bf16": bad}})
