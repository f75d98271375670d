"""The closed-form constants behind StepModel.attention_s, by hand: a new token's cache write,
the attention kernels' floors, a decode sequence's fixed cost and MLA's per-cached-token
up-projection. `attention_ops_s` (the vectorised check in test_cost) adds these same constants
to its own kernel times, so only a count from the model's shapes and the profile's numbers
tells a wrong one."""

from __future__ import annotations

import pytest

from hwmodels.load import load_hardware
from hwmodels.roofline import floor_us
from simulator.moment.cost import StepModel
from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes

H100 = load_hardware("h100-sxm")
CPU = load_hardware("calibration/profiles/cpu-2core.json")
LLAMA = load_model("llama-3-8b")  # 32 layers, 32 heads, 8 KV heads of 128


def groups(model=LLAMA, hw=H100, tp: int = 1, mode: str = "graph", kernels: str = "fused", dt: Dtypes = Dtypes()):
    return StepModel(model, hw, tp, 1, mode, dt, kernels=kernels)._groups


@pytest.mark.parametrize("kernels, kv, category, layer_bytes", [
    # K and V of 8 heads x 128: read in bf16 (the activations), written in the cache's format
    ("fused", "bf16", "kv_write", 2 * 8 * 128 * 2 + 2 * 8 * 128 * 2),
    ("pytorch", "bf16", "index_copy", 2 * 8 * 128 * 2 + 2 * 8 * 128 * 2),
    ("fused", "fp8", "kv_write", 2 * 8 * 128 * 2 + 2 * 8 * 128 * 1),
])
def test_a_new_tokens_cache_write_streams_its_keys_and_values_by_hand(kernels, kv, category, layer_bytes):
    """Per new token and layer the cache-write kernel reads the token's K and V and writes them
    into the cache, at its bandwidth category's share (H100: index_copy_ at 0.22 of the
    bandwidth; the fused kernel has no share of its own and streams at the GEMMs' 0.95)."""
    eff = H100.efficiency
    share = eff.elementwise_memory.get(category, eff.gemm_memory)
    (g,) = groups(kernels=kernels, dt=Dtypes("bf16", kv=kv))
    assert g.kv_tok == pytest.approx(32 * layer_bytes / (H100.device.bandwidth * share), rel=1e-12)
    if kernels == "pytorch":
        assert share == pytest.approx(0.2197)


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("kernels, cache_writes", [("fused", 1), ("pytorch", 2)])
def test_each_layers_attention_kernels_pay_their_floors_by_hand(mode, kernels, cache_writes):
    """Per layer: one attention kernel (SDPA or the fused one) at the GEMM-class floor and the
    cache writes (an index_copy_ each for K and V in plain PyTorch, one reshape_and_cache fused)
    at the element-wise floor, eager or inside a CUDA graph (H100: 5.16 / 1.57 us eager)."""
    graph = mode == "graph"
    # H100, and an H100 whose launches (8 us) outlast both floors: eager kernels take the launch
    slow = H100.model_copy(update={"device": H100.device.model_copy(update={"kernel_launch_us": 8.0})})
    for hw in (H100, slow):
        eff, launch = hw.efficiency, hw.device.kernel_launch_us
        per_layer_us = floor_us(eff, True, graph, launch) + cache_writes * floor_us(eff, False, graph, launch)
        (g,) = groups(hw=hw, mode=mode, kernels=kernels)
        assert g.floor == pytest.approx(32 * per_layer_us * 1e-6, rel=1e-12)
    if not graph:
        assert floor_us(slow.efficiency, True, False, 8.0) == floor_us(slow.efficiency, False, False, 8.0) == 8.0
    eff, launch = H100.efficiency, H100.device.kernel_launch_us
    if not graph:
        assert (floor_us(eff, True, graph, launch), floor_us(eff, False, graph, launch)) == pytest.approx((5.1607, 1.5691))


@pytest.mark.parametrize("name, tp, kv_heads", [("llama-3-8b", 1, 8), ("llama-3-8b", 2, 4), ("llama-3-8b", 8, 1),
                                                 ("deepseek-v3", 8, 1), ("deepseek-v3", 1, 1)])
def test_a_decode_sequences_fixed_cost_by_hand(name, tp, kv_heads):
    """Per decoding sequence and layer: its query read and output written (GQA: 2 x heads x
    head_dim activations; MLA absorbed: heads x (2 x 512 + 64)), plus a fixed time per sequence
    and per thread block: one block per KV head on this device (at least one; one latent for
    MLA, whatever tp), spread over the compute units."""
    m = load_model(name)
    heads = m.num_attention_heads / tp
    seq_bytes = heads * (2 * 512 + 64) * 2 if m.is_mla else 2 * heads * 128 * 2
    eff, dev = H100.efficiency, H100.device
    L = m.num_hidden_layers
    (g,) = groups(m, tp=tp)
    assert g.d_q == pytest.approx(seq_bytes * L / (dev.bandwidth * eff.attn_decode_memory), rel=1e-12)
    fixed_us = eff.attn_decode_seq_us + eff.attn_decode_cta_us * kv_heads / dev.compute_units
    assert g.d_seq == pytest.approx(fixed_us * 1e-6 * L, rel=1e-12)


def test_mla_prefill_up_projects_each_cached_latent_by_hand():
    """A DeepSeek-V3 prefill over cached tokens first decompresses each cached latent (512
    values) into every head's key (128 no-RoPE dims) and value (128): 2 x 512 x 128 x 256 FLOPs
    per cached token and layer, at the part's attention-prefill share of its peak (the 2-core
    CPU's 0.44: a share below 1 shows whether it divides or multiplies)."""
    m = load_model("deepseek-v3")
    (g,) = groups(m, hw=CPU, dt=Dtypes("fp32", act="fp32", kv="fp32"))
    eff = CPU.efficiency
    assert eff.attn_prefill_compute == pytest.approx(0.4397)
    want = 2 * 512 * 128 * (128 + 128) * 61 / (CPU.device.peak_flops("fp32") * eff.attn_prefill_compute)
    assert g.p_cc == pytest.approx(want, rel=1e-12)


def test_a_single_chunk_is_the_default_prefill():
    """attention_s without a chunk count prices one chunk of all the prompt's tokens."""
    sm = StepModel(LLAMA, H100)
    pairs = 2048 * 2049 / 2
    assert sm.attention_s(0, 0.0, 2048, pairs, 0.0) == sm.attention_s(0, 0.0, 2048, pairs, 0.0, 1)
    assert sm.attention_s(0, 0.0, 2048, pairs, 0.0) != sm.attention_s(0, 0.0, 2048, pairs / 2, 0.0, 2)


@pytest.mark.parametrize("name", ["gemma-2-9b", "gpt-oss-20b", "llama-4-scout"])
def test_a_prefill_sums_the_attention_of_every_window_group(name):
    """Models that mix full and windowed (or chunked) layers pay each group's prefill attention:
    the scalar closed form equals the vectorised hwmodels.attention functions summed over the
    groups (each group's time is added, not the last one's kept)."""
    from simulator.moment.ops import Batch

    m = load_model(name)
    b = Batch(prefill_seqs=2, prefill_tokens=2 * 3000, prefill_pairs=2 * (3000 * 3001 / 2 + 3000 * 1000),
              prefill_ctx=2 * 1000)
    # H100's soft maximum, and a plain one (softmax_p 100), where the compute-bound shortcut runs
    plain = H100.model_copy(update={"efficiency": H100.efficiency.model_copy(update={"softmax_p": 100.0})})
    for hw in (H100, plain):
        sm = StepModel(m, hw)
        total = sm.attention_s(0, 0.0, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx, 2)
        assert len(sm._groups) == 2
        assert total == pytest.approx(sm.attention_ops_s(b), rel=1e-9)


def test_a_forward_pass_is_a_step_without_its_overhead():
    """forward_s (a speculative draft's passes) is step_agg less the per-step overhead: on a
    GPU the longer of the device's work and the host's issue, on a CPU the two in turn."""
    b = (8, 8 * 1500.0, 1, 500, 500 * 501 / 2, 0.0, 9)
    for hw in (H100, CPU):
        for mode in ("graph", "eager"):
            sm = StepModel(LLAMA, hw, mode=mode)
            assert sm.forward_s(*b) == pytest.approx(sm.step_agg(*b) - sm.overhead_s, rel=1e-12)
            assert sm.forward_s(*b) > sm.issue_s > 0


@pytest.mark.parametrize("hardware", ["b200", "mi300x", "h100-sxm"])
def test_a_verify_of_one_token_is_a_decode_with_or_without_a_ramp(hardware):
    """A speculative verify with q = 1 is attention_s's decode, on parts whose decode attention
    has a ramp (H100) and on parts without one (B200, MI300X: no ramp term at all)."""
    hw = load_hardware(hardware)
    sm = StepModel(LLAMA, hw)
    assert (hw.efficiency.attn_decode_ramp_us > 0) == (hardware == "h100-sxm")
    for ds, dc in ((1, 100.0), (16, 16 * 3000.0)):
        assert sm.verify_attention_s(ds, dc, 1) == pytest.approx(sm.attention_s(ds, dc, 0, 0.0, 0.0), rel=1e-12)


@pytest.mark.parametrize("ctx", [100, 1000, 6000])
def test_a_verifys_causal_pairs_and_window_by_hand(ctx):
    """A verify of q tokens per sequence, compute-bound (decode attention at 1/1000 of peak):
    query i of q (1-based) after ctx cached tokens sees ctx + i keys, at most its layer's window
    (Gemma 2 2B: 13 layers of a 4096-token window, 13 of full attention; 8 heads of 256, 4 FLOPs
    a query-key pair and head dimension). Added to it, each group's per-sequence, cache-write and
    floor terms (checked above)."""
    m = load_model("gemma-2-2b")
    hw = H100.model_copy(update={"efficiency": H100.efficiency.model_copy(update={
        "attn_decode_compute": 1e-3, "softmax_p": 64.0})})
    sm = StepModel(m, hw)
    ds, q = 3, 4
    peak = hw.device.peak_flops("bf16") * 1e-3
    want = 0.0
    for g in sm._groups:
        window = 4096 if g.cap < 1e9 else float("inf")
        pairs = ds * sum(min(ctx + i, window) for i in range(1, q + 1))
        want += pairs * 4 * 8 * 256 * g.layers / peak + ds * g.d_seq + q * ds * g.kv_tok + g.floor
    assert [g.layers for g in sm._groups] == [13, 13]
    assert sm.verify_attention_s(ds, ds * ctx, q) == pytest.approx(want, rel=1e-9)
