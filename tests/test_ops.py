"""FLOP and byte counts of a step against numbers worked out by hand."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes, check_tp, pairs_of_chunk, step_ops, total_flops


def gemm_flops(ops):
    return sum(float(o.flops) for o in ops if o.kind == "gemm")


def attn(ops, kind):
    return [o for o in ops if o.kind == kind]


def test_decode_token_is_two_flops_per_weight_plus_attention():
    m = load_model("llama-2-7b")
    # linear weights: 32 x (4 x 4096^2 + 3 x 4096 x 11008) + lm_head 32000 x 4096
    linear = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    assert linear == 6_607_077_376
    ctx = 1000
    ops = step_ops(m, Batch.of(decode=[(1, ctx)]))
    assert gemm_flops(ops) == pytest.approx(2 * linear)
    # attention: QK^T and PV over ctx+1 keys: 4 x 32 layers x 32 heads x 128 x 1001
    assert float(attn(ops, "attn_decode")[0].flops) == pytest.approx(4 * 32 * 4096 * (ctx + 1))
    # and 2 x params overall within 3% (embeddings are gathered, not multiplied)
    assert total_flops(ops) == pytest.approx(2 * m.num_params(), rel=0.03)


def test_decode_attention_reads_the_whole_kv_cache():
    m = load_model("llama-3-8b")
    ops = step_ops(m, Batch.of(decode=[(16, 4096)]))
    a = attn(ops, "attn_decode")[0]
    kv = 16 * 4097 * 131072  # every cached token's K and V in all 32 layers (128 KiB per token)
    assert float(a.bytes) >= kv
    assert float(a.bytes) < kv * 1.01  # plus only the queries and outputs


def test_prefill_attention_grows_with_square_of_prompt():
    m = load_model("llama-3-8b")
    f = [float(attn(step_ops(m, Batch.of(prefill=[(1, n)])), "attn_prefill")[0].flops) for n in (1024, 2048, 4096)]
    # causal pairs n(n+1)/2: doubling n gives 4x minus a vanishing linear term
    assert f[1] / f[0] == pytest.approx(4 * (2049 / 2050), rel=1e-3)
    assert f[2] / f[1] == pytest.approx(4.0, rel=1e-3)
    assert f[0] == pytest.approx(4 * 32 * 32 * 128 * 1024 * 1025 / 2)


def test_chunk_pairs():
    # a chunk of 2 new tokens after 3 cached: token 4 sees 4 keys, token 5 sees 5
    assert pairs_of_chunk(2, 3) == 9
    assert pairs_of_chunk(4, 0) == 10


def test_prefill_gemms_scale_with_tokens():
    m = load_model("llama-3-8b")
    one = gemm_flops([o for o in step_ops(m, Batch.of(prefill=[(1, 512)])) if o.category != "lm_head"])
    two = gemm_flops([o for o in step_ops(m, Batch.of(prefill=[(2, 512)])) if o.category != "lm_head"])
    assert two == pytest.approx(2 * one)


def test_mixtral_uses_two_experts_per_token():
    m = load_model("mixtral-8x7b")
    ops = step_ops(m, Batch.of(decode=[(1, 1)]))
    expert = sum(float(o.flops) for o in ops if o.name.startswith("experts_") and o.kind == "gemm")
    # 2 experts x 3 matrices 4096 x 14336 x 32 layers x 2 FLOPs
    assert expert == pytest.approx(2 * 2 * 3 * 4096 * 14336 * 32)


def test_tp_shards_gemms_and_adds_allreduces():
    m = load_model("llama-3-70b")
    b = Batch.of(decode=[(8, 1024)])
    one = step_ops(m, b, tp=1)
    four = step_ops(m, b, tp=4)
    assert gemm_flops(four) == pytest.approx(gemm_flops(one) / 4)
    ar = [o for o in four if o.kind == "allreduce" and o.name != "logits_gather"]
    # two all-reduces per layer of 8 tokens x 8192 hidden x 2 bytes
    assert sum(float(o.bytes) for o in ar) == pytest.approx(2 * 80 * 8 * 8192 * 2)
    assert not [o for o in one if o.kind == "allreduce"]


def test_fp8_weights_halve_weight_bytes():
    m = load_model("llama-3-8b")
    b = Batch.of(decode=[(1, 1)])
    w16 = sum(float(o.bytes) for o in step_ops(m, b) if o.kind == "gemm" and o.name != "lm_head")
    w8 = sum(float(o.bytes) for o in step_ops(m, b, Dtypes(weight="fp8")) if o.kind == "gemm" and o.name != "lm_head")
    assert w8 == pytest.approx(w16 / 2, rel=0.01)
    # the output head stays bf16 (vLLM does not quantise it): 128256 x 4096 x 2 bytes either way
    head = [float(o.bytes) for o in step_ops(m, b, Dtypes(weight="fp8")) if o.name == "lm_head"]
    assert head[0] == pytest.approx(128256 * 4096 * 2, rel=1e-3)


def test_bad_tp():
    m = load_model("llama-3-8b")
    with pytest.raises(ValueError, match="divide"):
        check_tp(m, 3)
    with pytest.raises(ValueError, match="divide"):
        check_tp(m, 1, pp=5)


MODELS = ["llama-3.2-1b", "llama-3-8b", "mixtral-8x7b", "qwen2-7b", "llama-2-13b"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODELS), st.sampled_from([1, 2, 4]), st.integers(1, 256), st.integers(1, 32768))
def test_more_tp_never_adds_per_device_flops(name, tp, batch, ctx):
    m = load_model(name)
    if m.num_attention_heads % (2 * tp) or (m.kv_heads % (2 * tp) and (2 * tp) % m.kv_heads):
        return
    b = Batch.of(decode=[(batch, ctx)])
    assert total_flops(step_ops(m, b, tp=2 * tp)) <= total_flops(step_ops(m, b, tp=tp))
