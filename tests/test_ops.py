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


# -- windows, formats, parallelism: by hand -------------------------------------------------------------

@pytest.mark.parametrize("kind, size, seqs, tokens, ctx, want", [
    # sliding window 4: a 3-token chunk after 2 cached sees min(i, 4) keys at positions 3, 4, 5
    ("sliding", 4, 1, 3, 2, 3 + 4 + 4),
    ("sliding", 4, 1, 2, 1, 2 + 3),           # inside the window: the causal pairs
    ("sliding", 4, 2, 6, 4, 2 * (3 + 4 + 4)),  # two chunks alike (3 new after 2 cached each)
    ("sliding", 4, 0, 3, 0, 1 + 2 + 3),        # no sequence count: one chunk
    ("sliding", 4, 1, 2, 6, 4 + 4),            # far past the window: 4 keys each
    # chunked attention, chunks of 4: positions 3..7 see 3, 4, then 1, 2, 3 keys of their own chunk
    ("chunked", 4, 1, 5, 2, 3 + 4 + 1 + 2 + 3),
])
def test_windowed_pairs_by_hand(kind, size, seqs, tokens, ctx, want):
    from simulator.moment.ops import windowed_pairs
    assert windowed_pairs(kind, size, seqs, tokens, 1e12, ctx) == want  # unbounded by the causal pairs
    assert windowed_pairs(kind, size, seqs, tokens, want - 1, ctx) == want - 1  # never above them
    assert windowed_pairs("full", size, seqs, tokens, 7.0, ctx) == 7.0
    assert windowed_pairs(kind, None, seqs, tokens, 7.0, ctx) == 7.0
    assert windowed_pairs(kind, size, seqs, 0, 7.0, ctx) == 7.0


def test_dtypes_of_a_run():
    plain, fp8 = load_model("llama-3-8b"), load_model("deepseek-v3")
    assert Dtypes.of(plain) == Dtypes("bf16", "bf16", "bf16")
    assert Dtypes.of(plain, "int4", "fp16", "fp8") == Dtypes("int4", "fp16", "fp8")
    assert Dtypes.of(plain, "int4", "fp16") == Dtypes("int4", "fp16", "fp16")  # the KV cache as activations
    assert Dtypes.of(plain, act="fp16", plain="bf16") == Dtypes("bf16", "fp16", "fp16")
    assert Dtypes.of(plain, act="fp16", kv="fp8") == Dtypes("fp16", "fp16", "fp8")
    assert Dtypes.of(fp8, act="fp16") == Dtypes("fp8-block", "fp16", "fp16", "")  # experts as the rest: no override
    assert Dtypes.of(fp8, kv="fp8") == Dtypes("fp8-block", "bf16", "fp8", "")


def test_pipeline_stages_and_expert_parallel_checks_reach_the_ops():
    m = load_model("qwen3-30b-a3b")
    b = Batch.of(decode=[(4, 100)])
    one, two = step_ops(m, b), step_ops(m, b, pp=2)
    # a moment is one batch through every stage: every layer once, plus one send between stages
    assert total_flops(two) == pytest.approx(total_flops(one))
    assert [o.layers for o in attn(two, "attn_decode")] == [o.layers for o in attn(one, "attn_decode")]
    assert [o.name for o in two if o.kind == "send"] and not [o for o in one if o.kind == "send"]
    # expert parallelism: the busiest device's expert rows scale with the imbalance asked for
    rows = [next(float(o.m) for o in step_ops(m, Batch.of(decode=[(64, 100)]), tp=2, ep=2, moe_imbalance=x)
                 if o.name == "experts_up") for x in (1.0, 1.5)]
    assert rows[1] == pytest.approx(1.5 * rows[0])
    with pytest.raises(ValueError, match="ep=2 must be 1 or equal tp=1"):
        step_ops(m, b, ep=2)
    with pytest.raises(ValueError, match="pp=5 must divide num_hidden_layers=48"):
        step_ops(m, b, pp=5)
