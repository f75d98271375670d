"""Every op of an MLA attention block and of a MoE layer, field by field, against hand counts
from the published architectures (DeepSeek-V3: hidden 7168, 128 heads, q_lora_rank 1536,
kv_lora_rank 512, qk_nope 128 + rope 64, v 128, 61 layers of which 58 MoE with 256 routed
experts of width 2048, 8 per token, and one shared expert of width 2048; DeepSeek-V2-Lite:
hidden 2048, 16 heads, no q_lora, 27 layers). A GEMM of m rows, n columns over k streams its
weights once per distinct matrix (bytes per weight x n x k x copies) and reads and writes its
activations (bytes per activation x m x (n + k)); an element-wise op reads and writes its
elements (bytes per activation x elements x (reads + writes))."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import (
    Batch,
    Dtypes,
    attention_ops,
    check_tp,
    dense_ops,
    mla_ops,
    moe_ops,
    pairs_of_chunk,
)

BF16 = Dtypes()


def fields(o) -> dict:
    return {f: getattr(o, f) for f in ("name", "category", "kind", "layers", "kernels", "fmt")}


def gemm(o, name, cat, m, n, k, layers, w_bytes, a_bytes=2.0, copies=1.0, kernels=1, fmt="bf16", dequant=0.0):
    assert fields(o) == {"name": name, "category": cat, "kind": "gemm", "layers": layers, "kernels": kernels,
                         "fmt": fmt}
    assert (float(o.m), float(o.n), float(o.k), float(o.copies)) == pytest.approx((m, n, k, copies), rel=1e-12)
    assert float(o.flops) == pytest.approx(2 * m * n * k * layers, rel=1e-12)
    assert float(o.bytes) == pytest.approx((w_bytes * n * k * copies + a_bytes * m * (n + k)) * layers, rel=1e-12)
    assert float(o.dequant) == pytest.approx(dequant, rel=1e-12)
    assert float(o.elems) == pytest.approx(m * n, rel=1e-12)


def stream(o, name, cat, elems, rows, layers, flops_per, kernels, moved=3):
    """`moved`: reads + writes per element (bf16 activations)."""
    assert fields(o) == {"name": name, "category": cat, "kind": "stream", "layers": layers, "kernels": kernels,
                         "fmt": ""}
    assert (float(o.elems), float(o.m)) == pytest.approx((elems, rows), rel=1e-12)
    assert float(o.flops) == pytest.approx(flops_per * elems * layers, rel=1e-12)
    assert float(o.bytes) == pytest.approx(moved * 2 * elems * layers, rel=1e-12)


# -- multi-head latent attention -------------------------------------------------------------------

def test_every_mla_projection_of_deepseek_v3_by_hand():
    m = load_model("deepseek-v3")
    for tp, ops in ((1, mla_ops(m, 3, BF16)), (8, mla_ops(m, 3, BF16, 8))):
        heads = 128 // tp  # q_a and kv_a are replicated; q_b and kv_b split by heads
        assert [o.name for o in ops] == ["q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj",
                                         "rope"]
        q_a, q_norm, q_b, kv_a, kv_norm, kv_b, rope = ops
        gemm(q_a, "q_a_proj", "qkv_proj", 3, 1536, 7168, 61, 2)
        # an RMSNorm reads and writes each element (4 FLOPs: square, sum, scale, weight), 8 eager kernels
        stream(q_norm, "q_a_norm", "norm", 3 * 1536, 3, 61, 4.0, 8, moved=2)
        gemm(q_b, "q_b_proj", "qkv_proj", 3, heads * (128 + 64), 1536, 61, 2)
        gemm(kv_a, "kv_a_proj", "qkv_proj", 3, 512 + 64, 7168, 61, 2)
        stream(kv_norm, "kv_a_norm", "norm", 3 * 512, 3, 61, 4.0, 8, moved=2)
        gemm(kv_b, "kv_b_proj", "qkv_proj", 3, heads * (128 + 128), 512, 61, 2)
        # RoPE on the 64 rope dims of every query head and of the one shared key: 6 FLOPs per element
        # (two multiplies, an add, and the rotated half), 10 eager kernels
        stream(rope, "rope", "rope", 3 * (heads + 1) * 64, 3, 61, 6.0, 10, moved=2)


def test_mla_without_a_q_lora_rank_projects_q_directly():
    m = load_model("deepseek-v2-lite")  # hidden 2048, 16 heads, kv_lora 512, nope 128, rope 64, v 128
    ops = mla_ops(m, 5, BF16, 2)
    assert [o.name for o in ops] == ["q_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj", "rope"]
    gemm(ops[0], "q_proj", "qkv_proj", 5, 8 * 192, 2048, 27, 2)
    gemm(ops[1], "kv_a_proj", "qkv_proj", 5, 576, 2048, 27, 2)
    stream(ops[2], "kv_a_norm", "norm", 5 * 512, 5, 27, 4.0, 8, moved=2)
    gemm(ops[3], "kv_b_proj", "qkv_proj", 5, 8 * 256, 512, 27, 2)
    stream(ops[4], "rope", "rope", 5 * 9 * 64, 5, 27, 6.0, 10, moved=2)


# -- mixture of experts ----------------------------------------------------------------------------

# fp8 dense weights, int4 experts, bf16 activations: each op's storage format shows in its bytes
MIXED = Dtypes(weight="fp8", act="bf16", kv="bf16", expert="int4")


def test_every_op_of_a_deepseek_v3_moe_layer_without_expert_parallelism_by_hand():
    m = load_model("deepseek-v3")
    t, L = 64, 58
    # tp = 8 slices every expert 8 ways: width 2048 / 8; each token goes to 8 of 256 experts, and 64
    # tokens touch 256 (1 - (1 - 8/256)^64) of them in expectation (uniform routing)
    touched = 256 * (1 - (1 - 8 / 256) ** 64)
    rows, w = 64 * 8, 256
    ops = moe_ops(m, t, MIXED, 8)
    assert [o.name for o in ops] == ["router", "experts_up", "experts_act", "experts_down", "shared_up", "shared_act",
                                     "shared_down"]
    router, up, act, down, s_up, s_act, s_down = ops
    # the router runs in the activation dtype (bf16) on every token: 6 eager kernels (linear, softmax, top-k, ...)
    gemm(router, "router", "ffn_up", t, 256, 7168, L, 2, kernels=6)
    # int4 experts: 0.5 byte a weight, 3 vector ops per weight to unpack them for every 128-row tile
    tiles = math.ceil(rows / touched / 128)
    gemm(up, "experts_up", "ffn_up", rows, 2 * w, 7168, L, 0.5, copies=touched, fmt="int4",
         dequant=3 * 2 * w * 7168 * touched * tiles * L)
    # SiLU and the gate multiply: read gate and up, write one; 4 FLOPs per element; 2 eager kernels
    stream(act, "experts_act", "ffn_act", rows * w, rows, L, 4.0, 2)
    gemm(down, "experts_down", "ffn_down", rows, 7168, w, L, 0.5, copies=touched, fmt="int4",
         dequant=3 * 7168 * w * touched * tiles * L)
    # the shared expert (fp8 like the dense weights, 2 ops a weight to dequantise where there are no
    # fp8 units) sees every token, sliced over tp like the routed ones
    gemm(s_up, "shared_up", "ffn_up", t, 2 * 256, 7168, L, 1, fmt="fp8", dequant=2 * 512 * 7168 * L)
    stream(s_act, "shared_act", "ffn_act", t * 256, t, L, 4.0, 2)
    gemm(s_down, "shared_down", "ffn_down", t, 7168, 256, L, 1, fmt="fp8", dequant=2 * 7168 * 256 * L)
    # the defaults are one device, no expert parallelism, no imbalance
    one = moe_ops(m, t, MIXED)
    assert float(one[1].n) == 2 * 2048 and float(one[1].m) == rows and float(one[4].n) == 2 * 2048


@pytest.mark.parametrize("imbalance", [1.0, 1.5])
def test_every_op_of_a_deepseek_v3_moe_layer_with_expert_parallelism_by_hand(imbalance):
    m = load_model("deepseek-v3")
    t, L, ep = 64, 58, 8
    # ep = tp = 8: 32 whole experts a device; each device routes 64 / 8 tokens and runs the shared
    # expert (whole) on them. The busiest device's rows: the mean 64 x 8 / 8 = 64 plus the expected
    # largest of 8 binomial loads, Blom's z for 8 (Phi^-1(7.625 / 8.25) = 1.434) standard deviations
    # sqrt(64 (1 - 1/8)), times the imbalance
    z = NormalDist().inv_cdf(7.625 / 8.25)
    assert z == pytest.approx(1.434, abs=1e-3)
    rows = (64 + z * math.sqrt(64 * 7 / 8)) * imbalance
    touched = 32 * (1 - (1 - 1 / 32) ** rows)
    ops = moe_ops(m, t, MIXED, ep, ep, imbalance)
    assert [o.name for o in ops] == ["router", "experts_up", "experts_act", "experts_down", "shared_up", "shared_act",
                                     "shared_down", "moe_dispatch", "moe_combine"]
    router, up, act, down, s_up, s_act, s_down, disp, comb = ops
    gemm(router, "router", "ffn_up", 8, 256, 7168, L, 2, kernels=6)
    tiles = math.ceil(rows / touched / 128)
    gemm(up, "experts_up", "ffn_up", rows, 2 * 2048, 7168, L, 0.5, copies=touched, fmt="int4",
         dequant=3 * 4096 * 7168 * touched * tiles * L)
    stream(act, "experts_act", "ffn_act", rows * 2048, rows, L, 4.0, 2)
    gemm(down, "experts_down", "ffn_down", rows, 7168, 2048, L, 0.5, copies=touched, fmt="int4",
         dequant=3 * 7168 * 2048 * touched * tiles * L)
    gemm(s_up, "shared_up", "ffn_up", 8, 2 * 2048, 7168, L, 1, fmt="fp8", dequant=2 * 4096 * 7168 * L)
    stream(s_act, "shared_act", "ffn_act", 8 * 2048, 8, L, 4.0, 2)
    gemm(s_down, "shared_down", "ffn_down", 8, 7168, 2048, L, 1, fmt="fp8", dequant=2 * 7168 * 2048 * L)
    # dispatch and combine: the busiest device receives its rows' hidden states from the 7 others
    # (7/8 of them live elsewhere) and sends the outputs back, bf16, once per MoE layer
    for o, name in ((disp, "moe_dispatch"), (comb, "moe_combine")):
        assert (o.name, o.category, o.kind, o.layers, float(o.flops)) == (name, "comm", "alltoall", L, 0.0)
        assert float(o.bytes) == pytest.approx(rows * 7168 * 2 * 7 / 8 * L, rel=1e-12)
        assert float(o.m) == pytest.approx(rows, rel=1e-12)


# -- a dense decoder: every op of a step ----------------------------------------------------------

def test_every_op_of_a_llama_3_8b_step_by_hand():
    """Llama-3-8B: hidden 4096, 32 layers, 32 query heads and 8 KV heads of 128, SwiGLU FFN 14336,
    vocab 128256, bf16. 40 tokens in the step, 3 of which get logits."""
    m = load_model("llama-3-8b")
    t, lg, L, h = 40, 3, 32, 4096
    ops = dense_ops(m, t, lg, BF16)  # defaults: one device, one stage
    assert [o.name for o in ops] == ["embed", "input_norm", "qkv_proj", "rope", "o_proj", "attn_residual",
                                     "post_attn_norm", "ffn_up", "ffn_act", "ffn_down", "ffn_residual", "final_norm",
                                     "lm_head"]
    o = {x.name: x for x in ops}
    # the embedding gather reads a row and writes it (no FLOPs), once per step
    stream(o["embed"], "embed", "embed", t * h, t, 1, 0.0, 1, moved=2)
    stream(o["input_norm"], "input_norm", "norm", t * h, t, L, 4.0, 8, moved=2)
    gemm(o["qkv_proj"], "qkv_proj", "qkv_proj", t, 4096 + 2 * 1024, h, L, 2)
    stream(o["rope"], "rope", "rope", t * (4096 + 1024), t, L, 6.0, 10, moved=2)  # q and k rotated
    gemm(o["o_proj"], "o_proj", "o_proj", t, h, 4096, L, 2)
    # a residual add reads two tensors and writes one: 1 FLOP an element, one kernel
    stream(o["attn_residual"], "attn_residual", "residual_add", t * h, t, L, 1.0, 1)
    stream(o["post_attn_norm"], "post_attn_norm", "norm", t * h, t, L, 4.0, 8, moved=2)
    gemm(o["ffn_up"], "ffn_up", "ffn_up", t, 2 * 14336, h, L, 2)  # gate and up together
    stream(o["ffn_act"], "ffn_act", "ffn_act", t * 14336, t, L, 4.0, 2)
    gemm(o["ffn_down"], "ffn_down", "ffn_down", t, h, 14336, L, 2)
    stream(o["ffn_residual"], "ffn_residual", "residual_add", t * h, t, L, 1.0, 1)
    stream(o["final_norm"], "final_norm", "norm", lg * h, lg, 1, 4.0, 8, moved=2)  # only the rows with logits
    gemm(o["lm_head"], "lm_head", "lm_head", lg, 128256, h, 1, 2, kernels=2)


def test_a_sharded_staged_llama_3_8b_step_adds_its_collectives_by_hand():
    m = load_model("llama-3-8b")
    t, lg, L, h = 40, 3, 32, 4096
    ops = dense_ops(m, t, lg, BF16, tp=2, pp=2)
    o = {x.name: x for x in ops}
    gemm(o["qkv_proj"], "qkv_proj", "qkv_proj", t, (4096 + 2 * 1024) / 2, h, L, 2)
    gemm(o["ffn_down"], "ffn_down", "ffn_down", t, h, 14336 / 2, L, 2)
    gemm(o["lm_head"], "lm_head", "lm_head", lg, 128256 / 2, h, 1, 2, kernels=2)
    # after attention and after the FFN each device's partial sums are all-reduced (bf16), the
    # logits' vocabulary shards gathered (fp32), and the activations sent across 1 stage boundary
    for name, by, layers, rows in (("attn_allreduce", t * h * 2 * L, L, t), ("ffn_allreduce", t * h * 2 * L, L, t),
                                   ("logits_gather", lg * 128256 / 2 * 4, 1, lg), ("stage_send", t * h * 2, 1, t)):
        x = o[name]
        assert (x.category, x.kind, x.layers, float(x.flops)) == ("comm", "send" if name == "stage_send" else "allreduce",
                                                                  layers, 0.0), name
        assert (float(x.bytes), float(x.m)) == pytest.approx((by, rows), rel=1e-12), name
        assert x.kernels == 1, name  # one collective call each time
    # 4 stages of Llama-3.2-1B (16 layers): its activations cross 3 boundaries, 3 sends
    sends = [x for x in dense_ops(load_model("llama-3.2-1b"), t, lg, BF16, pp=4) if x.name == "stage_send"]
    assert len(sends) == 1 and sends[0].layers == 3
    assert float(sends[0].bytes) == pytest.approx(t * 2048 * 2 * 3, rel=1e-12)
    # 8-way: one KV head a device (the K and V projections never shrink below one head)
    o8 = {x.name: x for x in dense_ops(m, t, lg, BF16, tp=8)}
    gemm(o8["qkv_proj"], "qkv_proj", "qkv_proj", t, 512 + 2 * 128, h, L, 2)


def test_a_qkv_bias_is_one_element_wise_kernel_over_q_k_and_v():
    m = load_model("qwen2-7b")  # 28 heads and 4 KV heads of 128: q 3584, k and v 512 each
    o = {x.name: x for x in dense_ops(m, 5, 1, BF16)}
    # added in place: read and write each element once, 1 FLOP, one kernel
    stream(o["qkv_bias"], "qkv_bias", "qkv_proj", 5 * (3584 + 2 * 512), 5, 28, 1.0, 1, moved=2)


def test_every_attention_op_of_a_llama_3_8b_step_by_hand():
    """Decode: 3 sequences with 300 cached tokens in all; prefill: 2 chunks of 50 new tokens in all
    after 100 cached ones in all (pairs as given)."""
    m = load_model("llama-3-8b")
    b = Batch(decode_seqs=3, decode_ctx=300, prefill_seqs=2, prefill_tokens=50, prefill_pairs=1900.0, prefill_ctx=100)
    for tp in (1, 2, 8):
        heads, kvh = 32 / tp, max(8 / tp, 1)
        pre, dec = attention_ops(m, b, BF16, tp)
        # prefill: QK^T and PV, 2 x 128 multiply-adds each per pair and head; it reads the cached
        # K and V (2 x kvh x 128 bf16 per cached token) and per new token reads q, k, v, writes the
        # output, and writes k and v to the cache
        assert (pre.name, pre.category, pre.kind, pre.layers, pre.seqs, pre.kernels) == (
            "attn_prefill", "attention", "attn_prefill", 32, 2, 3)
        assert float(pre.flops) == pytest.approx(4 * heads * 128 * 1900 * 32, rel=1e-12)
        new = (heads + 2 * kvh) * 128 * 2 + heads * 128 * 2 + 2 * kvh * 128 * 2
        assert float(pre.bytes) == pytest.approx((2 * kvh * 128 * 2 * 100 + new * 50) * 32, rel=1e-12)
        # decode: each sequence attends to its cache and itself (303 keys), reading K and V per key;
        # its query in and output out per sequence
        assert (dec.name, dec.category, dec.kind, dec.layers, dec.seqs, dec.kernels) == (
            "attn_decode", "attention", "attn_decode", 32, 3, 3)
        assert float(dec.flops) == pytest.approx(4 * heads * 128 * 303 * 32, rel=1e-12)
        assert float(dec.bytes) == pytest.approx((2 * kvh * 128 * 2 * 303 + 2 * heads * 128 * 2 * 3) * 32, rel=1e-12)


def test_sliding_window_prefill_pairs_after_a_cache_by_hand():
    """Mistral-7B: a 4096-token window on every layer. One chunk of 100 tokens after 4050 cached:
    query i (1..100) at position 4050 + i sees min(4050 + i, 4096) keys."""
    m = load_model("mistral-7b")
    b = Batch(prefill_seqs=1, prefill_tokens=100, prefill_pairs=pairs_of_chunk(100, 4050), prefill_ctx=4050)
    (pre,) = attention_ops(m, b, BF16)
    pairs = sum(min(4050 + i, 4096) for i in range(1, 101))
    assert pre.name == "attn_prefill_sliding4096"
    assert float(pre.flops) == pytest.approx(4 * 32 * 128 * pairs * 32, rel=1e-12)
    # two such chunks (two sequences alike) see twice the pairs
    b2 = Batch(prefill_seqs=2, prefill_tokens=200, prefill_pairs=2 * pairs_of_chunk(100, 4050), prefill_ctx=8100)
    (pre2,) = attention_ops(m, b2, BF16)
    assert float(pre2.flops) == pytest.approx(2 * 4 * 32 * 128 * pairs * 32, rel=1e-12)


def test_mla_attention_bytes_of_a_chunk_after_a_cache_by_hand():
    """DeepSeek-V3 prefill of 10 new tokens after 1000 cached: each cached token's 576-value latent
    is read and decompressed into its 128 heads' K (128 nope) and V (128), written and read in bf16."""
    m = load_model("deepseek-v3")
    b = Batch(prefill_seqs=1, prefill_tokens=10, prefill_pairs=pairs_of_chunk(10, 1000), prefill_ctx=1000)
    (pre,) = attention_ops(m, b, BF16)
    ctx_bytes = 576 * 2 + 2 * 128 * (128 + 128) * 2
    new_bytes = 128 * (2 * 192 + 2 * 128) * 2 + 576 * 2
    assert float(pre.bytes) == pytest.approx((ctx_bytes * 1000 + new_bytes * 10) * 61, rel=1e-12)
    assert float(pre.flops) == pytest.approx((128 * 640 * pairs_of_chunk(10, 1000) + 2 * 512 * 128 * 256 * 1000) * 61,
                                             rel=1e-12)


def test_tp_and_ep_checks_name_what_is_allowed():
    llama = load_model("llama-3-8b")  # 32 heads, 8 KV heads
    for tp in (1, 2, 4, 8, 16, 32):
        check_tp(llama, tp)  # divides the heads; divides or is a multiple of the KV heads
    with pytest.raises(ValueError, match=r"^tp=3 must divide num_attention_heads=32$"):
        check_tp(llama, 3)
    with pytest.raises(ValueError, match=r"^tp=0 must divide num_attention_heads=32$"):
        check_tp(llama, 0)
    qwen = load_model("qwen2-7b")  # 28 heads, 4 KV heads
    with pytest.raises(ValueError, match=r"^tp=14 must divide or be a multiple of num_key_value_heads=4$"):
        check_tp(qwen, 14)
    odd = ModelSpec(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=4,
                    intermediate_size=2048, vocab_size=1000)
    with pytest.raises(ValueError, match=r"^tp=3 must divide num_key_value_heads=4$"):
        check_tp(odd, 3)
    with pytest.raises(ValueError, match=r"^ep=4 must be 1 or equal tp=8 \(the experts spread over the "
                                         r"tensor-parallel devices\)$"):
        check_tp(load_model("deepseek-v3"), 8, ep=4)


def test_two_way_expert_parallelism_moves_tokens_by_all_to_all():
    m = load_model("deepseek-v3")
    ops = moe_ops(m, 64, BF16, 2, 2)
    names = [o.name for o in ops]
    assert names[-2:] == ["moe_dispatch", "moe_combine"]
    rows = float(ops[1].m)
    assert float(ops[-1].bytes) == pytest.approx(rows * 7168 * 2 * 1 / 2 * 58, rel=1e-12)  # half live elsewhere


def test_qk_norms_and_the_mla_block_sit_between_the_input_norm_and_o_proj():
    q3 = load_model("qwen3-8b")  # 32 query heads and 8 KV heads of 128, an RMSNorm on q and k in all 36 layers
    o = {x.name: x for x in dense_ops(q3, 6, 1, BF16)}
    stream(o["qk_norm"], "qk_norm", "norm", 6 * (4096 + 1024), 6, 36, 4.0, 8, moved=2)
    names = [x.name for x in dense_ops(load_model("deepseek-v3"), 6, 1, BF16)]
    assert names[:9] == ["embed", "input_norm", "q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm",
                         "kv_b_proj", "rope"]
    assert names[9] == "o_proj"


def test_gemmas_extra_norms_a_plain_mlp_and_the_output_heads_format():
    g = load_model("gemma-2-9b")  # hidden 3584, 42 layers, FFN 14336, tanh-GELU gate; 4 norms a layer
    o = {x.name: x for x in dense_ops(g, 7, 1, BF16)}
    for name in ("attn_out_norm", "ffn_out_norm"):  # the sublayers' outputs are normed too
        stream(o[name], name, "norm", 7 * 3584, 7, 42, 4.0, 8, moved=2)
    stream(o["ffn_act"], "ffn_act", "ffn_act", 7 * 14336, 7, 42, 8.0, 2)  # tanh-GELU costs 8 FLOPs, not 4
    # a plain (ungated) GELU MLP: one up projection of the FFN width, one activation kernel reading one tensor
    plain = ModelSpec(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                      vocab_size=100, hidden_act="gelu")
    o = {x.name: x for x in dense_ops(plain, 3, 1, BF16)}
    gemm(o["ffn_up"], "ffn_up", "ffn_up", 3, 512, 256, 2, 2)
    stream(o["ffn_act"], "ffn_act", "ffn_act", 3 * 512, 3, 2, 8.0, 1, moved=2)
    assert "attn_out_norm" not in o and "ffn_out_norm" not in o
    # the output head keeps 16- and 32-bit weights as they are and runs quantised checkpoints in bf16
    llama = load_model("llama-3-8b")
    for weight, head, wb in (("fp16", "fp16", 2), ("fp32", "fp32", 4), ("fp8", "bf16", 2), ("int4", "bf16", 2)):
        dt = Dtypes(weight=weight, act="bf16", kv="bf16")
        (lm,) = [x for x in dense_ops(llama, 4, 2, dt) if x.name == "lm_head"]
        gemm(lm, "lm_head", "lm_head", 2, 128256, 4096, 1, wb, kernels=2, fmt=head)
