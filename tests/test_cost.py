"""Step costs: monotone in batch and context, host-bound in eager mode, roofline-bound at scale."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from hwmodels.roofline import allreduce_time, soft_max
from hwmodels.spec import Efficiency, Link
from simulator.moment.cost import TAIL_OPS, op_seconds, step_model
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, step_ops, total_flops

H100 = load_hardware("h100-sxm")


def sm(name="llama-3-8b", hw=H100, **kw):
    return step_model(load_model(name), hw, **kw)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["llama-3.2-1b", "llama-3-8b", "mixtral-8x7b"]), st.sampled_from(["graph", "eager"]),
       st.integers(1, 512), st.integers(1, 16384), st.integers(1, 64), st.integers(1, 4096))
def test_more_batch_or_context_never_faster(name, mode, b, ctx, db, dctx):
    s = sm(name, mode=mode)
    base = s.step_s(Batch.of(decode=[(b, ctx)]))
    assert s.step_s(Batch.of(decode=[(b + db, ctx)])) >= base
    assert s.step_s(Batch.of(decode=[(b, ctx + dctx)])) >= base
    p = s.step_s(Batch.of(prefill=[(1, ctx)]))
    assert s.step_s(Batch.of(prefill=[(1, ctx + dctx)])) >= p
    assert s.step_s(Batch.of(decode=[(b, ctx)], prefill=[(1, dctx)])) >= base


def test_eager_decode_is_host_bound_and_flat():
    # The issue's H100 observation: plain eager PyTorch Llama-3-8B decode takes ~30-40 ms at
    # any batch up to 256 while the GPU is busy for only 9-24 ms of it.
    s = sm(mode="eager", kernels="pytorch")
    costs = [s.cost(Batch.of(decode=[(b, 512)])) for b in (1, 16, 64, 256)]
    assert 30 < costs[0].step_ms < 40
    for c in costs:
        assert c.device_ms < c.step_ms
        assert c.breakdown_ms["host"] > 0
    assert costs[-1].step_ms / costs[0].step_ms < 1.3
    g = sm(mode="graph", kernels="pytorch").cost(Batch.of(decode=[(1, 512)]))
    assert g.step_ms < costs[0].step_ms / 2  # CUDA graphs remove the dispatch bound


def test_breakdown_sums_to_step():
    c = sm().cost(Batch.of(decode=[(16, 4096)], prefill=[(2, 300)]))
    assert sum(c.breakdown_ms.values()) == pytest.approx(c.step_ms)
    assert sum(v for k, v in c.breakdown_ms.items() if k != "host") == pytest.approx(c.device_ms)


def test_large_prefill_is_compute_bound():
    # 8 x 2048 prompt tokens: FLOPs / (peak x GEMM efficiency) is a lower bound, and
    # the step stays within 2x of it (attention and element-wise ops add the rest)
    s = sm()
    b = Batch.of(prefill=[(8, 2048)])
    fl = total_flops(step_ops(load_model("llama-3-8b"), b))
    bound = fl / (H100.device.peak_flops("bf16") * H100.efficiency.gemm_compute)
    t = s.device_s(b)
    assert bound * 0.95 < t < 2 * bound


def test_small_decode_is_memory_bound():
    # batch 1: the weights stream once; time ~ 16 GB / (3.35 TB/s x efficiency)
    s = sm()
    t = s.device_s(Batch.of(decode=[(1, 16)]))
    weights = load_model("llama-3-8b").weight_bytes("bf16")
    floor = weights / H100.device.bandwidth
    assert floor < t < 1.6 * floor


def test_soft_max_bounds():
    assert soft_max(3.0, 4.0, 64) == 4.0
    v = float(soft_max(3.0, 4.0, 4.0))
    assert 4.0 < v < 4.0 * 2 ** 0.25 + 1e-9


def test_ring_allreduce_by_hand():
    # 8 GPUs, 100 MB, 100 GB/s links at full efficiency, 1 us hops: 2*7/8*1e8/1e11 + 14e-6
    t = allreduce_time(1e8, 8, 1, Link(bw_gbps=100, latency_us=1.0), Efficiency(comm_bw=1.0))
    assert float(t) == pytest.approx(1.75e-3 + 14e-6)


def test_faster_memory_makes_decode_faster(tmp_path):
    p = tmp_path / "fast.yaml"
    p.write_text("base: h100-sxm\nname: h100-2xbw\ndevice:\n  memory_bw_gbps: 6700\n")
    fast = load_hardware(str(p))
    b = Batch.of(decode=[(8, 2048)])
    slow_t = sm(hw=H100).device_s(b)
    fast_t = sm(hw=fast).device_s(b)
    assert fast_t < 0.65 * slow_t  # memory-bound step: close to half


def test_more_tp_is_not_slower_per_device_for_big_models():
    b = Batch.of(decode=[(32, 2048)])
    t2 = sm("llama-3-70b", tp=2).device_s(b)
    t8 = sm("llama-3-70b", tp=8).device_s(b)
    assert t8 < t2


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["llama-3.2-1b", "mistral-7b", "qwen2-7b", "gemma-2-9b", "gpt-oss-20b", "deepseek-v2-lite",
                        "llama-4-scout", "qwen3-30b-a3b"]), st.sampled_from(["pytorch", "fused"]),
       st.sampled_from(["graph", "eager"]), st.integers(0, 300), st.integers(0, 10**6),
       st.integers(0, 4), st.integers(0, 9000), st.integers(0, 10**5))
def test_closed_form_attention_equals_the_vectorised_model(name, kernels, mode, ds, dc, ps, pt, pc):
    # the engine's O(1) attention term is hwmodels.attention's vectorised functions in closed form
    s = sm(name, kernels=kernels, mode=mode)
    pt = pt if ps else 0
    b = Batch(ds, dc if ds else 0, ps, pt, pt * (pt + 1) / 2 + pt * pc, pc if ps else 0)
    assert s.attention_s(b.decode_seqs, b.decode_ctx, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                         b.prefill_seqs) == pytest.approx(s.attention_ops_s(b), rel=1e-9, abs=1e-15)


def test_async_scheduling_hides_the_per_step_overhead():
    # by hand: synchronous = max(device, issue) + overhead; async = max(device, issue + overhead)
    b = Batch.of(decode=[(8, 512)])
    sync, asy = sm(mode="graph"), sm(mode="graph", async_scheduling=True)
    dev = sync.device_s(b)
    assert sync.step_s(b) == pytest.approx(max(dev, sync.issue_s) + sync.overhead_s)
    assert asy.step_s(b) == pytest.approx(max(dev, asy.issue_s + asy.overhead_s))
    assert asy.step_s(b) == pytest.approx(dev)  # a 1 ms device step covers 0.36 ms of host work
    # in eager mode the host is the bottleneck, and async scheduling cannot hide it: the step is
    # the host's calls, then the device's work left after the last one (final norm, logits)
    e = sm(mode="eager", async_scheduling=True)
    assert e.step_s(b) == pytest.approx(e.issue_s + e.tail_s(8) + e.overhead_s)
    by_hand = sum(float(op_seconds(o, H100, e.dtypes)) for o in e.ops(0, 8) if o.name in TAIL_OPS)
    assert e.tail_s(8) == pytest.approx(by_hand)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["llama-3.2-1b", "llama-3-8b", "gemma-2-9b", "deepseek-v2-lite", "qwen3-30b-a3b"]),
       st.sampled_from(["h100-sxm", "cpu", "mi300x"]), st.sampled_from(["graph", "eager"]), st.booleans(),
       st.integers(0, 300), st.integers(0, 10**6), st.integers(0, 4), st.integers(0, 9000), st.integers(0, 10**5),
       st.integers(0, 20000))
def test_the_engines_step_cost_is_step_agg_to_the_bit(name, hw, mode, asy, ds, dc, ps, pt, pc, grow):
    # moment_s (a closure with the common cases inline) must give step_agg's float exactly, also
    # for counts beyond the tables (grown on the way) and for a model built after another grew
    s = step_model(load_model(name), load_hardware(hw), mode=mode, async_scheduling=asy)
    pt = pt if ps else 0
    ds = ds if ds or pt else 1
    args = (ds, dc if ds else 0, ps, pt, pt * (pt + 1) / 2 + pt * pc, pc if ps else 0, ds + ps)
    fast = s.moment_s
    big = (grow, grow * 700, 0, 0, 0.0, 0, grow) if grow else args
    assert fast(*big) == s.step_agg(*big)
    assert fast(*args) == s.step_agg(*args)
