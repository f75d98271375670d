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

from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes, mla_ops, moe_ops

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
