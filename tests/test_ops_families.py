"""FLOPs and bytes of the ops of 2025-26 models against hand counts: MoE as grouped GEMMs over the
experts touched, shared experts, expert parallelism's all-to-all and imbalance, MLA prefill and
absorbed decode, per-layer sliding and chunked windows, q/k norms, qkv bias, gated GELU; weight
formats and their dequantisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from hwmodels.spec import DTYPE_BYTES, gemm_dtype
from simulator.moment.cost import op_seconds, step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import (
    Batch,
    Dtypes,
    attention_ops,
    check_tp,
    dense_ops,
    gemm_op,
    pairs_of_chunk,
    step_ops,
    total_flops,
)

BF16 = Dtypes()


def op(ops, name):
    found = [o for o in ops if o.name == name]
    assert len(found) == 1, [o.name for o in ops]
    return found[0]


def flops(ops, *names):
    return sum(float(np.sum(o.flops)) for o in ops if o.name in names)


# -- mixture of experts -------------------------------------------------------------------------------

def test_qwen3_moe_decode_runs_k_experts_per_token():
    m = load_model("qwen3-30b-a3b")  # 48 MoE layers, 128 experts of 768, 8 per token, hidden 2048
    ops = dense_ops(m, 1, 1, BF16)
    # 8 experts x (gate+up 2048 x 1536, down 768 x 2048) x 2 FLOPs x 48 layers
    assert flops(ops, "experts_up", "experts_down") == 48 * 8 * 2 * 3 * 2048 * 768
    assert flops(ops, "router") == 48 * 2 * 2048 * 128
    # one token touches exactly its 8 experts: their weights stream once, plus the activations
    up = op(ops, "experts_up")
    assert float(up.copies) == pytest.approx(8)
    assert float(up.bytes) == pytest.approx(48 * (8 * 2048 * 1536 * 2 + 2 * 8 * (1536 + 2048)))
    # no dense FFN anywhere, and a decode token costs 2 FLOPs per active weight (less the input
    # embedding, a gather, and attention's context part)
    assert not [o for o in ops if o.name.startswith("ffn_up")]
    active = m.num_params(active=True) - m.vocab_size * m.hidden_size
    assert total_flops(ops) == pytest.approx(2 * active, rel=0.02)


@pytest.mark.parametrize("tokens", [1, 4, 16, 64, 256])
def test_experts_touched_match_random_routing(tokens):
    # Monte Carlo of the router: each token picks 8 distinct experts of 128 uniformly
    rng = np.random.default_rng(0)
    trials = 400
    hit = [len(np.unique(np.argsort(rng.random((tokens, 128)), axis=1)[:, :8])) for _ in range(trials)]
    copies = float(op(dense_ops(load_model("qwen3-30b-a3b"), tokens, 0, BF16), "experts_up").copies)
    assert copies == pytest.approx(np.mean(hit), rel=0.02)


def test_expert_bytes_grow_from_k_to_all_experts():
    m = load_model("qwen3-30b-a3b")
    per_expert = 3 * 2048 * 768 * 2 * 48  # one expert's weights in all layers, bf16
    weights = [float(sum(np.sum(o.bytes) - 2 * np.sum(o.m) * (o.n + o.k) * o.layers
                         for o in dense_ops(m, t, 0, BF16) if o.name in ("experts_up", "experts_down")))
               for t in (1, 2, 1024)]
    assert weights[0] == pytest.approx(8 * per_expert)
    # two tokens: 128 (1 - (120/128)^2) = 15.5 experts expected, not 16
    assert weights[1] == pytest.approx(128 * (1 - (120 / 128) ** 2) * per_expert)
    assert weights[2] == pytest.approx(128 * per_expert)  # a big batch streams every expert


def test_shared_experts_and_dense_layers_of_deepseek_v3():
    m = load_model("deepseek-v3")
    ops = dense_ops(m, 1, 1, BF16)
    # 58 MoE layers: 1 shared expert of 2048 and 8 routed; first 3 layers dense with 18432
    assert flops(ops, "shared_up", "shared_down") == 58 * 2 * 3 * 7168 * 2048
    assert flops(ops, "experts_up", "experts_down") == 58 * 8 * 2 * 3 * 7168 * 2048
    assert flops(ops, "ffn_up", "ffn_down") == 3 * 2 * 3 * 7168 * 18432
    assert op(ops, "ffn_up").layers == 3 and op(ops, "experts_up").layers == 58


def test_llama4_shared_expert_and_interleaved_dense_layers():
    m = load_model("llama-4-maverick")  # 24 MoE layers (1 routed of 128 + 1 shared, 8192), 24 dense (16384)
    ops = dense_ops(m, 1, 1, BF16)
    assert flops(ops, "experts_up", "experts_down") == 24 * 2 * 3 * 5120 * 8192
    assert flops(ops, "shared_up", "shared_down") == 24 * 2 * 3 * 5120 * 8192
    assert flops(ops, "ffn_up", "ffn_down") == 24 * 2 * 3 * 5120 * 16384


def test_tp_splits_every_expert():
    m = load_model("mixtral-8x7b")
    one, four = dense_ops(m, 64, 0, BF16, tp=1), dense_ops(m, 64, 0, BF16, tp=4)
    assert flops(four, "experts_up", "experts_down") == pytest.approx(flops(one, "experts_up", "experts_down") / 4)
    assert op(four, "ffn_allreduce").layers == 32  # the experts' partial sums are all-reduced


# -- expert parallelism ---------------------------------------------------------------------------------

def test_ep_all_to_all_by_hand():
    m = load_model("deepseek-v3")
    t, ep = 64, 8
    ops = dense_ops(m, t, 0, BF16, tp=8, ep=ep)
    # busiest device: mean rows 64 x 8 / 8 = 64, plus the random-routing spread: the largest of 8
    # normal loads lies 1.4236 standard deviations up (order statistics tables; Blom's 1.434),
    # one load's deviation sqrt(64 x 7/8) = 7.483
    rows = 64 + 1.434 * math.sqrt(64 * 7 / 8)
    assert rows == pytest.approx(74.73, abs=0.01)
    up = op(ops, "experts_up")
    assert float(up.m) == pytest.approx(rows, rel=1e-3)
    assert up.n == 2 * 2048 and up.k == 7168  # whole experts (not split by tp)
    # 256 / 8 = 32 experts per device, hit at random by its 74.73 rows: 32 (1 - (31/32)^74.73)
    assert float(up.copies) == pytest.approx(32 * (1 - (31 / 32) ** rows), rel=1e-3)
    # dispatch and combine: the rows' hidden states, 7/8 of them from other devices, bf16, 58 layers
    for name in ("moe_dispatch", "moe_combine"):
        a2a = op(ops, name)
        assert a2a.kind == "alltoall" and float(a2a.bytes) == pytest.approx(rows * 7168 * 2 * 7 / 8 * 58, rel=1e-3)
    # the MoE layers combine by all-to-all: only the 3 dense layers all-reduce their FFN
    assert op(ops, "ffn_allreduce").layers == 3 and op(ops, "attn_allreduce").layers == 61
    # the shared expert is replicated and runs on this device's 64 / 8 tokens
    sh = op(ops, "shared_up")
    assert float(sh.m) == 8 and sh.n == 2 * 2048


def test_ep_busiest_device_matches_simulated_routing():
    # 64 tokens x 8 distinct experts of 256, 32 experts per device: the expected most loaded of 8 devices
    for tokens in (4, 64, 512):
        rng = np.random.default_rng(1)
        loads, hit = [], []
        for _ in range(300):
            picks = np.argsort(rng.random((tokens, 256)), axis=1)[:, :8]
            dev = picks // 32
            busiest = np.bincount(dev.ravel(), minlength=8).argmax()
            loads.append(np.sum(dev == busiest))
            hit.append(len(np.unique(picks[dev == busiest])))  # its experts that must be read
        up = op(dense_ops(load_model("deepseek-v3"), tokens, 0, BF16, tp=8, ep=8), "experts_up")
        # a normal approximation of binomial loads: within 8 % at 4 tokens (32 picks), closer above
        assert float(up.m) == pytest.approx(np.mean(loads), rel=0.08 if tokens < 64 else 0.03)
        assert float(up.copies) == pytest.approx(np.mean(hit), rel=0.08 if tokens < 64 else 0.03)


def test_ep_imbalance_scales_the_busiest_device_up_to_all_its_experts():
    m = load_model("deepseek-v3")
    base = float(op(dense_ops(m, 64, 0, BF16, tp=8, ep=8), "experts_up").m)
    assert float(op(dense_ops(m, 64, 0, BF16, tp=8, ep=8, moe_imbalance=1.5), "experts_up").m) == \
        pytest.approx(1.5 * base)
    # never more rows than every token sending all 8 of its picks to this device
    assert float(op(dense_ops(m, 64, 0, BF16, tp=8, ep=8, moe_imbalance=64), "experts_up").m) == 64 * 8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2048), st.floats(1.0, 4.0))
def test_more_imbalance_is_never_faster(batch, imbalance):
    m, hw = load_model("deepseek-v3"), load_hardware("h200-sxm")
    dt = Dtypes.of(m)
    b = Batch.of(decode=[(batch, 1024)])
    even = step_model(m, hw, tp=8, dtypes=dt, ep=8).step_s(b)
    assert step_model(m, hw, tp=8, dtypes=dt, ep=8, moe_imbalance=imbalance).step_s(b) >= even


def test_ep_rules():
    v3 = load_model("deepseek-v3")
    check_tp(v3, 8, ep=8)
    with pytest.raises(ValueError, match="ep=4 must be 1 or equal tp=8"):
        check_tp(v3, 8, ep=4)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        check_tp(load_model("llama-3-70b"), 8, ep=8)
    with pytest.raises(ValueError, match="divide the 60 routed experts"):
        check_tp(load_model("qwen1.5-moe-a2.7b"), 8, ep=8)


def test_ep_replicates_the_shared_experts_in_memory():
    m = load_model("deepseek-v3")
    tp8 = m.weight_bytes("fp8-block", tp=8)
    ep8 = m.weight_bytes("fp8-block", tp=8, ep=8)
    shared = 58 * 3 * 7168 * 2048 * DTYPE_BYTES["fp8-block"]  # 58 layers of one 2048-wide shared expert
    assert ep8 - tp8 == pytest.approx(shared * (1 - 1 / 8))


# -- multi-head latent attention ---------------------------------------------------------------------------

def test_mla_projections_by_hand():
    m = load_model("deepseek-v3")  # hidden 7168, 128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128
    ops = dense_ops(m, 1, 1, BF16)
    proj = (7168 * 1536            # q_a
            + 1536 * 128 * 192     # q_b: 128 heads x (128 nope + 64 rope)
            + 7168 * (512 + 64)    # kv_a: the latent and the shared rope key
            + 512 * 128 * 256)     # kv_b: latent -> 128 heads x (128 k_nope + 128 v), absorbed in decode
    assert sum(float(o.flops) for o in ops if o.category == "qkv_proj") == 61 * 2 * proj
    assert float(op(ops, "o_proj").flops) == 61 * 2 * 128 * 128 * 7168
    # q_a and kv_a are replicated over tp, the rest splits by heads
    t8 = dense_ops(m, 1, 1, BF16, tp=8)
    assert op(t8, "q_a_proj").n == 1536 and op(t8, "kv_a_proj").n == 576
    assert op(t8, "q_b_proj").n == 16 * 192 and op(t8, "kv_b_proj").n == 16 * 256


def test_mla_absorbed_decode_attention_by_hand():
    m = load_model("deepseek-v3")
    (a,) = attention_ops(m, Batch.of(decode=[(1, 4095)]), BF16)
    # 4096 keys; per key and head QK^T over 512 + 64 dims and PV over 512: 2 x 576 + 2 x 512 = 2176 FLOPs
    assert float(a.flops) == 61 * 128 * 2176 * 4096
    # one 576-value latent per key read once for all heads; the query (576) and output (512) per head
    assert float(a.bytes) == 61 * (4096 * 576 * 2 + 128 * (576 + 512) * 2)
    # 8-way tp: each device has 16 heads but the whole latent cache
    (a8,) = attention_ops(m, Batch.of(decode=[(1, 4095)]), BF16, tp=8)
    assert float(a8.flops) == float(a.flops) / 8
    assert float(a8.bytes) == 61 * (4096 * 576 * 2 + 16 * 1088 * 2)
    # against GQA: ~240 FLOPs per byte of cache where Llama-3-70B has 8: MLA decode is compute-heavy
    (g,) = attention_ops(load_model("llama-3-70b"), Batch.of(decode=[(1, 4095)]), BF16)
    assert float(a.flops) / float(a.bytes) > 200 > 10 > float(g.flops) / float(g.bytes)


def test_mla_prefill_attention_by_hand():
    m = load_model("deepseek-v3")
    (a,) = attention_ops(m, Batch.of(prefill=[(1, 1024)]), BF16)
    pairs = 1024 * 1025 / 2
    # decompressed heads: QK^T over 128 + 64 dims, PV over 128: 2 x 192 + 2 x 128 = 640 FLOPs per pair and head
    assert float(a.flops) == pytest.approx(61 * 128 * 640 * pairs)
    # per new token: q, k (192 each), v, output (128 each) for 128 heads, and the 576-value latent written
    assert float(a.bytes) == pytest.approx(61 * 1024 * (128 * 640 * 2 + 576 * 2))
    # a chunk after 1024 cached tokens also up-projects their latents: 2 x 512 x 128 x 256 FLOPs each
    b = Batch(prefill_seqs=1, prefill_tokens=512, prefill_pairs=pairs_of_chunk(512, 1024), prefill_ctx=1024)
    (c,) = attention_ops(m, b, BF16)
    assert float(c.flops) == pytest.approx(61 * (128 * 640 * pairs_of_chunk(512, 1024) + 1024 * 2 * 512 * 128 * 256))


# -- windows per layer ---------------------------------------------------------------------------------------

def test_gemma2_alternates_full_and_sliding_layers():
    m = load_model("gemma-2-9b")  # 21 full and 21 sliding (4096) layers, 16 heads of 256
    ops = attention_ops(m, Batch.of(prefill=[(1, 8192)]), BF16)
    full, slide = op(ops, "attn_prefill"), op(ops, "attn_prefill_sliding4096")
    assert float(full.flops) == 21 * 4 * 16 * 256 * (8192 * 8193 / 2)
    # token i sees min(i, 4096) keys: the first 4096 tokens the triangle, the other 4096 all 4096
    assert float(slide.flops) == 21 * 4 * 16 * 256 * (4096 * 4097 / 2 + 4096 * 4096)
    d = attention_ops(m, Batch.of(decode=[(2, 9999)]), BF16)
    assert float(op(d, "attn_decode").flops) == 21 * 4 * 16 * 256 * 2 * 10000
    assert float(op(d, "attn_decode_sliding4096").flops) == 21 * 4 * 16 * 256 * 2 * 4096


def test_gpt_oss_sliding_128_halves_long_context_decode():
    m = load_model("gpt-oss-120b")  # 18 full + 18 sliding (128) layers, 64 heads of 64, 8 KV heads
    d = attention_ops(m, Batch.of(decode=[(1, 9999)]), BF16)
    assert float(op(d, "attn_decode").bytes) == 18 * (10000 * 2 * 8 * 64 * 2 + 2 * 64 * 64 * 2)
    assert float(op(d, "attn_decode_sliding128").bytes) == 18 * (128 * 2 * 8 * 64 * 2 + 2 * 64 * 64 * 2)


def test_llama4_chunked_attention_by_hand():
    m = load_model("llama-4-scout")  # 36 chunked (8192) + 12 full layers, 40 heads of 128
    ops = attention_ops(m, Batch.of(prefill=[(1, 20000)]), BF16)
    per_pair = 4 * 40 * 128
    assert float(op(ops, "attn_prefill").flops) == 12 * per_pair * 20000 * 20001 / 2
    # two whole 8192-token chunks and 3616 tokens of a third, each causal within its chunk
    chunks = 2 * 8192 * 8193 / 2 + 3616 * 3617 / 2
    assert float(op(ops, "attn_prefill_chunked8192").flops) == pytest.approx(36 * per_pair * chunks)
    # decode: half a chunk of keys, the mean over a long request's positions
    d = attention_ops(m, Batch.of(decode=[(4, 50000)]), BF16)
    assert float(op(d, "attn_decode_chunked8192").flops) == 36 * per_pair * 4 * 4096


# -- q/k norm, biases, gated GELU, sinks ---------------------------------------------------------------------

def test_qwen3_normalises_q_and_k_per_head():
    m = load_model("qwen3-8b")  # 32 q heads + 8 kv heads of 128, 36 layers
    n = op(dense_ops(m, 10, 0, BF16), "qk_norm")
    assert float(n.bytes) == 36 * 10 * (32 + 8) * 128 * 2 * 2  # read and write, bf16
    assert m.attn_params() == 4096 * 4096 * 2 + 4096 * 1024 * 2 + 2 * 128  # + the two norms' weights
    assert not [o for o in dense_ops(load_model("llama-3-8b"), 10, 0, BF16) if o.name == "qk_norm"]


def test_qkv_bias():
    q = op(dense_ops(load_model("qwen2.5-7b"), 10, 0, BF16), "qkv_bias")
    assert float(q.flops) == 28 * 10 * (3584 + 2 * 512)  # one add per q, k, v output
    gpt = load_model("gpt-oss-20b")  # q, k, v and o carry biases; plus one sink per head
    assert gpt.attn_params() == 2880 * 4096 * 2 + 2880 * 512 * 2 + (4096 + 2 * 512) + 2880 + 64
    assert not [o for o in dense_ops(load_model("qwen3-8b"), 10, 0, BF16) if o.name == "qkv_bias"]


def test_gemma_gated_gelu_mlp():
    m = load_model("gemma-2-9b")
    ops = dense_ops(m, 10, 0, BF16)
    assert op(ops, "ffn_up").n == 2 * 14336  # gate and up, as SwiGLU
    act = op(ops, "ffn_act")
    assert float(act.bytes) == 42 * 10 * 14336 * 3 * 2  # reads gate and up, writes one
    assert float(act.flops) == 42 * 10 * 14336 * 8  # tanh-GELU and the gating multiply
    # four norms per layer (before and after each sublayer)
    assert {"attn_out_norm", "ffn_out_norm"} <= {o.name for o in ops}


# -- formats ------------------------------------------------------------------------------------------------

def test_format_bytes_by_hand():
    assert DTYPE_BYTES["nvfp4"] == 0.5 + 1 / 16      # 4-bit values, one 8-bit scale per 16
    assert DTYPE_BYTES["mxfp4"] == 0.5 + 1 / 32      # 4-bit values, one 8-bit scale per 32
    assert DTYPE_BYTES["fp8-block"] == 1 + 4 / 16384  # one fp32 scale per 128 x 128 block
    assert DTYPE_BYTES["int4-awq"] == 0.5 + (2 + 0.5) / 128  # fp16 scale + 4-bit zero per group of 128
    g = gemm_op("w", "ffn_up", 1, 4096, 4096, 1, Dtypes("nvfp4"))
    assert float(g.bytes) == 4096 * 4096 * 0.5625 + 2 * (4096 + 4096)


def test_fp4_runs_on_blackwell_and_dequantises_on_hopper():
    b200, h100 = load_hardware("b200").device, load_hardware("h100-sxm").device
    assert gemm_dtype("nvfp4", "bf16", b200) == ("fp4", False)
    assert gemm_dtype("nvfp4", "bf16", h100) == ("bf16", True)
    assert gemm_dtype("fp8-block", "bf16", h100) == ("fp8", False)
    assert gemm_dtype("fp8", "bf16", load_hardware("a100-sxm-80gb").device) == ("bf16", True)
    assert gemm_dtype("int4-awq", "bf16", b200) == ("bf16", True)  # weight-only everywhere
    # a large prefill GEMM: fp4 on a B200 about twice as fast as fp8
    m = load_model("llama-3.1-70b")
    hw = load_hardware("b200")
    t = {w: float(sum(np.sum(op_seconds(o, hw, Dtypes(w))) for o in dense_ops(m, 8192, 0, Dtypes(w))
                      if o.category in ("ffn_up", "ffn_down"))) for w in ("fp8", "nvfp4")}
    assert 1.6 < t["fp8"] / t["nvfp4"] < 2.05


def test_int4_weights_win_small_batches_and_pay_for_dequantising_large_ones():
    m, hw = load_model("llama-3-8b"), load_hardware("h100-sxm")

    def gemms(tokens, w):
        return float(sum(np.sum(op_seconds(o, hw, Dtypes(w))) for o in dense_ops(m, tokens, 0, Dtypes(w))
                         if o.kind == "gemm"))

    # batch 1: memory-bound, the dequantisation hides behind ~3.8x fewer weight bytes; per-kernel
    # floors and the output head (kept in 16 bits, as vLLM and AWQ checkpoints do) keep it below
    assert 2.2 < gemms(1, "bf16") / gemms(1, "int4-awq") < 3.85
    up = op(dense_ops(m, 1, 0, Dtypes("int4-awq")), "ffn_up")
    memory = float(up.bytes) / (hw.device.bandwidth * hw.efficiency.gemm_memory)
    floor = hw.efficiency.floor_us * 1e-6 * 32
    assert float(op_seconds(up, hw, Dtypes("int4-awq"))) < 1.1 * memory + floor
    # 8192 tokens: compute-bound in bf16 either way, plus unpacking the weights for every 128 rows
    assert gemms(8192, "int4-awq") > 1.05 * gemms(8192, "bf16")
    ffn = op(dense_ops(m, 8192, 0, Dtypes("int4-awq")), "ffn_up")
    assert float(ffn.dequant) == 3 * 4096 * 2 * 14336 * (8192 / 128) * 32  # 3 ops per weight per 128-row tile


def test_gpt_oss_120b_fits_one_h100_in_its_own_format():
    m, hw = load_model("gpt-oss-120b"), load_hardware("h100-sxm")
    experts = 36 * 128 * 3 * 2880 * 2880  # MXFP4 (4.25 bits); the rest (2.17B) in bf16
    rest = m.num_params() - experts
    fp = footprint(m, hw, dt=Dtypes.of(m))
    assert fp.weights_gb == pytest.approx((experts * 0.53125 + rest * 2) / 1e9)
    assert 60 < fp.weights_gb < 66 and fp.kv_capacity_tokens > 50_000  # OpenAI: runs within 80 GB
    assert footprint(m, hw, dt=Dtypes("bf16")).kv_capacity_tokens == 0  # bf16 does not (234 GB)


def test_deepseek_v3_fp8_on_eight_h200():
    m, hw = load_model("deepseek-v3"), load_hardware("h200-sxm")
    fp = footprint(m, hw, tp=8, dt=Dtypes.of(m))
    # 671B in fp8 with block scales over 8 GPUs, the 16-bit embeddings, norms and routers aside
    assert fp.weights_gb == pytest.approx(671.0 * 1.0 / 8, rel=0.02)
    assert footprint(m, hw, tp=8, dt=Dtypes("bf16")).kv_capacity_tokens == 0


# -- the engine's closed form and monotonicity on the new families ---------------------------------------------

NEW = ["qwen3-30b-a3b", "deepseek-v2-lite", "gemma-2-2b", "gpt-oss-20b", "gemma-3-1b", "phi-3-mini"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NEW), st.integers(1, 256), st.integers(1, 16384), st.integers(1, 64), st.integers(1, 4096))
def test_more_batch_or_context_never_faster_on_new_families(name, b, ctx, db, dctx):
    m = load_model(name)
    s = step_model(m, load_hardware("h100-sxm"), dtypes=Dtypes.of(m))
    base = s.step_s(Batch.of(decode=[(b, ctx)]))
    assert s.step_s(Batch.of(decode=[(b + db, ctx)])) >= base
    assert s.step_s(Batch.of(decode=[(b, ctx + dctx)])) >= base
    assert s.step_s(Batch.of(prefill=[(1, ctx + dctx)])) >= s.step_s(Batch.of(prefill=[(1, ctx)]))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["llama-4-scout", "deepseek-v3", "qwen3-235b-a22b"]), st.sampled_from([1, 8]),
       st.integers(1, 512), st.integers(1, 65536))
def test_big_moe_models_scale_with_batch_and_context_at_tp8(name, ep, b, ctx):
    m = load_model(name)
    s = step_model(m, load_hardware("h200-sxm"), tp=8, dtypes=Dtypes.of(m), ep=ep)
    one = s.step_s(Batch.of(decode=[(b, ctx)]))
    assert s.step_s(Batch.of(decode=[(b + 1, ctx)])) >= one
    assert s.step_s(Batch.of(decode=[(b, ctx + 1024)])) >= one


def test_step_ops_total_equals_the_cost_models_work():
    # what the StepModel prices is exactly step_ops: the same FLOPs through both paths
    m = load_model("deepseek-v3")
    b = Batch.of(decode=[(32, 2048)], prefill=[(1, 512)])
    ops = step_ops(m, b, Dtypes.of(m), tp=8, ep=8)
    dense = dense_ops(m, b.tokens, b.logit_rows, Dtypes.of(m), 8, 1, 8)
    assert total_flops(ops) == pytest.approx(total_flops(dense) + total_flops(attention_ops(m, b, Dtypes.of(m), 8)))
