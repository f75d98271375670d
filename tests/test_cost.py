"""Step costs: monotone in batch and context, host-bound in eager mode, roofline-bound at scale."""

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from hwmodels.roofline import allreduce_time, soft_max
from hwmodels.spec import Efficiency, Link
from simulator.moment.cost import TAIL_OPS, Launch, op_seconds, step_model
from simulator.moment.model import load_model
from simulator.moment.ops import Batch

H100 = load_hardware("h100-sxm")
H100_OWN_BF16 = H100.model_copy(update={"efficiency": H100.efficiency.model_copy(update={
    "attn_prefill_compute_dtype": {"bf16": 0.05}, "attn_decode_compute_dtype": {"bf16": 0.002}})})


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


# Llama-3-8B's GEMMs per layer as (output columns n, reduction k): q,k,v fused (4096 + 2 x 1024),
# o, gate+up fused (2 x 14336), down; 32 layers, bf16 (2 bytes per weight and activation).
LLAMA3_8B_GEMMS = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "ffn_up": (28672, 4096),
                   "ffn_down": (4096, 14336)}


def gemm_by_hand(m: int, n: int, k: int) -> tuple[float, float, float]:
    """One layer's GEMM on the H100 profile, written out from hwmodels/roofline.py's docstring:
    (compute, memory, floor) seconds. 2mnk FLOPs at peak x gemm_compute x (1 - wave + wave x
    the useful share of the tiles' waves); weights and activations, 2(nk + m(n + k)) bytes, at
    bandwidth x gemm_memory; the kernel floor inside a CUDA graph (the floor less the
    element-wise floor's excess over the graph floor)."""
    e, d = H100.efficiency, H100.device
    tiles = math.ceil(m / 128) * math.ceil(n / 128)
    useful = m * n / (math.ceil(tiles / d.compute_units) * d.compute_units * 128 * 128)
    compute = 2 * m * n * k / (d.peak_flops("bf16") * e.gemm_compute * (1 - e.gemm_wave + e.gemm_wave * useful))
    memory = 2 * (n * k + m * (n + k)) / (d.bandwidth * e.gemm_memory)
    floor = max(e.graph_floor_us, e.floor_us - max(e.elementwise_floor_us - e.graph_floor_us, 0.0)) * 1e-6
    return compute, memory, floor


@pytest.mark.parametrize("m, batch", [(1, Batch.of(decode=[(1, 16)])), (16384, Batch.of(prefill=[(8, 2048)]))])
def test_gemm_categories_by_hand(m, batch):
    """Each GEMM category of a step is 32 layers of its roofline by hand: (compute^p + memory^p)^(1/p)
    + floor. A batch-1 decode is memory-bound (within 0.05 % of its weights at bandwidth x
    gemm_memory); 8 x 2048 prompt tokens are compute-bound (within 2 % of their FLOPs at the
    waves' share of peak x gemm_compute)."""
    c = sm().cost(batch)
    p = H100.efficiency.softmax_p
    for cat, (n, k) in LLAMA3_8B_GEMMS.items():
        got = c.breakdown_ms[cat] * 1e-3
        compute, memory, floor = gemm_by_hand(m, n, k)
        assert got == pytest.approx(32 * ((compute ** p + memory ** p) ** (1 / p) + floor), rel=1e-9), cat
        bound = memory if m == 1 else compute
        assert got == pytest.approx(32 * (bound + floor), rel=5e-4 if m == 1 else 0.02), cat


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
       st.integers(0, 4), st.integers(0, 9000), st.integers(0, 10**5), st.booleans())
def test_closed_form_attention_equals_the_vectorised_model(name, kernels, mode, ds, dc, ps, pt, pc, own):
    # the engine's O(1) attention term is hwmodels.attention's vectorised functions in closed form,
    # also where bf16 attention has rates of its own (a CPU's SDPA: compute-bound decode)
    s = sm(name, hw=H100_OWN_BF16 if own else H100, kernels=kernels, mode=mode)
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


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["llama-3.2-1b", "mixtral-8x7b", "gemma-2-9b"]), st.sampled_from(["graph", "eager"]),
       st.integers(0, 600), st.integers(0, 10**6), st.integers(0, 3), st.integers(0, 9000), st.integers(0, 10**5))
def test_the_engines_step_agg_is_step_s(name, mode, ds, dc, ps, pt, pc):
    """StepModel.step_agg (the engine's hot path: tables grown on demand) equals step_s, and a
    step's breakdown is its ops priced one by one: the token-count table (dense[tokens] +
    lm[logits]) is only a cache of op_seconds, attention is attention_s."""
    s = sm(name, mode=mode)
    pt = pt if ps else 0
    ds = ds if ds + pt else 1
    dc = dc if ds else 0
    b = Batch(ds, dc, ps, pt, pt * (pt + 1) / 2 + pt * pc, pc if ps else 0, ds + ps)
    assert s.step_agg(*(b.decode_seqs, b.decode_ctx, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs,
                        b.prefill_ctx, b.logit_rows)) == s.step_s(b)
    c = s.cost(b)
    by_op = dict.fromkeys(c.breakdown_ms, 0.0)
    for o in s.ops(b.tokens, b.logit_rows):
        by_op[o.category] += float(op_seconds(o, s.hw, s.dtypes, s.tp, s.graph)) * 1e3
    by_op["attention"] += s.attention_s(ds, dc, pt, b.prefill_pairs, b.prefill_ctx, ps) * 1e3
    for k, v in by_op.items():
        if k != "host":
            assert c.breakdown_ms[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert c.host_ms == pytest.approx((s.issue_s + s.overhead_s) * 1e3, rel=1e-12)
    assert (c.step_ms, c.device_ms) == (pytest.approx(s.step_s(b) * 1e3, rel=1e-12),
                                        pytest.approx(s.device_s(b) * 1e3, rel=1e-12))
    assert c.breakdown_ms["host"] == pytest.approx(c.step_ms - c.device_ms, rel=1e-9, abs=1e-12)


def test_a_step_without_tokens_is_refused_and_the_json_rounds_to_nanoseconds():
    with pytest.raises(ValueError, match="^a step needs at least one token$"):
        sm().cost(Batch())
    c = sm().cost(Batch.of(decode=[(3, 100)]))
    d = c.as_dict()
    assert d == {"step_ms": round(c.step_ms, 6), "device_ms": round(c.device_ms, 6), "host_ms": round(c.host_ms, 6),
                 "breakdown_ms": {k: round(v, 6) for k, v in c.breakdown_ms.items()}}
    assert 0 < d["step_ms"] and d["step_ms"] != c.step_ms  # rounded: 1 ns in ms


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["llama-3-8b", "gemma-2-9b", "mistral-7b", "qwen3-30b-a3b"]), st.integers(0, 300),
       st.integers(0, 10**6), st.integers(0, 4), st.integers(0, 9000), st.integers(0, 10**5))
def test_closed_form_attention_at_tp_2(name, ds, dc, ps, pt, pc):
    s = sm(name, tp=2)
    pt = pt if ps else 0
    b = Batch(ds, dc if ds else 0, ps, pt, pt * (pt + 1) / 2 + pt * pc, pc if ps else 0)
    assert s.attention_s(b.decode_seqs, b.decode_ctx, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                         b.prefill_seqs) == pytest.approx(s.attention_ops_s(b), rel=1e-9, abs=1e-15)
    if ds or pt:
        one = sm(name)
        assert s.attention_s(ds, b.decode_ctx, pt, b.prefill_pairs, b.prefill_ctx, ps) < one.attention_s(
            ds, b.decode_ctx, pt, b.prefill_pairs, b.prefill_ctx, ps)  # half the heads per device


@pytest.mark.parametrize("entry", ["step_agg", "cost", "tail_s"])
def test_a_fresh_step_model_grows_its_tables_for_any_step(entry):
    """However many tokens or logit rows a step has, a new StepModel answers as one that was
    already grown (the tables over token counts grow on demand, to any size)."""
    from simulator.moment.cost import StepModel
    m = load_model("llama-3.2-1b")
    grown = StepModel(m, H100)
    grown.step_s(Batch(1, 1, 1, 20000, 1.0, 0, 20000))  # tables past every size below
    for n in [*range(4090, 4105), *range(8190, 8200), 16384, 16385]:
        fresh = StepModel(m, H100)
        if entry == "step_agg":
            assert fresh.step_agg(n, n, 0, 0, 0.0, 0, n) == grown.step_agg(n, n, 0, 0, 0.0, 0, n)
            fresh = StepModel(m, H100)
            assert fresh.step_agg(0, 0, 1, n, n * (n + 1) / 2, 0, 1) == grown.step_agg(0, 0, 1, n, n * (n + 1) / 2, 0, 1)
        elif entry == "cost":
            assert fresh.cost(Batch(n, n)).step_ms == grown.cost(Batch(n, n)).step_ms
        else:
            assert fresh.tail_s(n) == grown.tail_s(n)


def _with_p(name: str):
    """A preset, or "NAME@P": the preset with softmax_p P (64: the bare roofline's max, which
    takes the closure's plain-max and memory-bound-decode branches; 2: a soft ridge)."""
    base, _, p = name.partition("@")
    hw = load_hardware(base)
    if not p:
        return hw
    return hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update={"softmax_p": float(p)})})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["llama-3.2-1b", "llama-3-8b", "gemma-2-9b", "deepseek-v2-lite", "qwen3-30b-a3b"]),
       st.sampled_from(["h100-sxm", "cpu", "mi300x", "h100-sxm@64", "h100-sxm@2", "h100-sxm@100"]),
       st.sampled_from(["graph", "eager"]), st.booleans(),
       st.integers(0, 300), st.integers(0, 10**6), st.integers(0, 4), st.integers(0, 9000), st.integers(0, 10**5),
       st.integers(0, 20000))
@example("llama-3-8b", "h100-sxm@64", "graph", False, 0, 0, 1, 1, 0, 0)      # one 1-token chunk: pairs = chunks
@example("llama-3-8b", "h100-sxm@64", "graph", False, 0, 0, 3, 3, 0, 0)      # three of them
@example("llama-3-8b", "h100-sxm@64", "graph", False, 8, 4000, 0, 0, 0, 0)   # memory-bound decode, plain max
@example("deepseek-v2-lite", "h100-sxm@64", "graph", False, 8, 4000, 0, 0, 0, 0)  # MLA decode: compute-heavy
@example("deepseek-v2-lite", "h100-sxm@2", "eager", True, 8, 4000, 0, 0, 0, 0)
@example("llama-3-8b", "h100-sxm", "graph", False, 0, 0, 1, 2000, 0, 0)     # long prefill: memory negligible
@example("llama-3-8b", "cpu", "graph", False, 0, 0, 1, 1, 0, 0)     # 32 heads on 2 cores: the pairs' work decides
@example("llama-3-8b", "cpu", "graph", False, 0, 0, 2, 2, 0, 0)
@example("llama-3-8b", "h100-sxm", "graph", False, 0, 0, 1, 60, 50000, 0)   # short chunk after a long context
def test_the_engines_step_cost_is_step_agg_to_the_bit(name, hw, mode, asy, ds, dc, ps, pt, pc, grow):
    # moment_s (a closure with the common cases inline) must give step_agg's float exactly, also
    # for counts beyond the tables (grown on the way) and for a model built after another grew
    s = step_model(load_model(name), _with_p(hw), mode=mode, async_scheduling=asy)
    pt = pt if ps else 0
    ds = ds if ds or pt else 1
    args = (ds, dc if ds else 0, ps, pt, pt * (pt + 1) / 2 + pt * pc, pc if ps else 0, ds + ps)
    fast = s.moment_s
    big = (grow, grow * 700, 0, 0, 0.0, 0, grow) if grow else args
    assert fast(*big) == s.step_agg(*big)
    assert fast(*args) == s.step_agg(*args)


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_the_hosts_busy_seconds_by_hand(mode):
    """host_busy_s (the host's share behind host_busy_frac): each moment's issue and per-step
    work; with a serving stack's launch, as if every step replayed a graph (graph mode: one
    graph launch per stage) or issued every call (eager), plus the stack's work per step and
    per sequence held."""
    hw = H100
    plain = sm("llama-3-8b", mode=mode)
    host = hw.host
    issue = host.graph_launch_us * 1e-6 if mode == "graph" else plain.issue_s
    assert plain.host_busy_s(10, 7) == pytest.approx(10 * (issue + host.step_overhead_us * 1e-6), rel=1e-12)
    ln = Launch(sizes=(1, 2, 4, 8), step_s=1e-3, seq_s=2e-5)
    stacked = sm("llama-3-8b", mode=mode, launch=ln)
    assert stacked.host_busy_s(10, 7) == pytest.approx(10 * (issue + 1e-3) + 7 * 2e-5, rel=1e-12)
    assert stacked.host_busy_s(0, 0) == 0.0


@pytest.mark.parametrize("p", [64.0, 100.0])
def test_the_closure_prices_a_balanced_decode_attention_as_step_agg(p):
    """A part whose decode attention takes as long to compute as to stream (compute slowed until
    the two match): the soft maximum's both terms count, where the plain max (softmax_p >= 64)
    and the memory-bound shortcut differ; the engine's closure must still give step_agg's float."""
    base = _with_p(f"h100-sxm@{p:g}")
    s = step_model(load_model("llama-3-8b"), base)
    d_c, d_m = s._full[0], s._full[1]  # seconds per key of compute and of memory
    eff = base.efficiency
    hw = base.model_copy(update={"efficiency": eff.model_copy(
        update={"attn_decode_compute": eff.attn_decode_compute * d_c / d_m})})
    b = step_model(load_model("llama-3-8b"), hw)
    assert b._full[0] == pytest.approx(b._full[1], rel=1e-9)  # balanced
    for ds, dc in ((8, 40000), (64, 10**6), (1, 0)):
        args = (ds, dc, 0, 0, 0.0, 0, ds)
        assert b.moment_s(*args) == b.step_agg(*args)


def test_step_models_are_shared_per_configuration_and_keep_their_arguments():
    """step_model hands out one StepModel per configuration (the engine and the studies build the
    same one many times), with every argument it was given."""
    m, hw = load_model("deepseek-v2-lite"), H100
    a = step_model(m, hw, tp=2, ep=2)
    assert a is step_model(m, hw, tp=2, ep=2, moe_imbalance=1.0)  # the default imbalance is none
    skew = step_model(m, hw, tp=2, ep=2, moe_imbalance=1.5)
    assert skew is not a and skew.moe_imbalance == 1.5
    b = Batch.of(decode=[(64, 100)])
    assert skew.step_s(b) > a.step_s(b)  # the busiest device's extra rows cost time
    ln = Launch(sizes=(1, 2, 4), step_s=1e-3)
    launched = step_model(m, hw, tp=2, ep=2, launch=ln)
    assert launched.launch == ln and a.launch is None
    # with a stack's launch, a step's cost is the launched step of the same batch, field for field
    from simulator.moment.ops import pairs_of_chunk

    for b2 in (Batch(3, 300, 1, 20, pairs_of_chunk(20, 5), 5), Batch(2, 50), Batch(0, 0, 2, 30, 2 * pairs_of_chunk(15, 0))):
        agg = (b2.decode_seqs, b2.decode_ctx, b2.prefill_seqs, b2.prefill_tokens, b2.prefill_pairs, b2.prefill_ctx,
               b2.logit_rows)
        assert launched.cost(b2).step_ms == launched.step_launched(*agg) * 1e3 == launched.moment_s(*agg) * 1e3


def test_parallelism_checks_name_the_limit_each_layout_breaks():
    """check_parallelism refuses each impossible layout with its own numbers: a degree below 1,
    more devices than the part has (devices_per_node x nodes), several devices without a link
    between them (tensor or pipeline parallel alike), tensor parallelism across nodes without a
    network, and an expert-parallel degree other than 1 or tp."""
    from simulator.moment.cost import check_parallelism

    m = load_model("llama-3-8b")
    no_link = H100.model_copy(update={"link": None})
    two_nodes = H100.model_copy(update={"nodes": 2, "network": None})
    refused = [
        (H100, 0, 1, 1, "tp and pp must be >= 1, got tp=0, pp=1"),
        (H100, 1, 0, 1, "tp and pp must be >= 1, got tp=1, pp=0"),
        (H100, 16, 1, 1, "tp x pp = 16 exceeds the 8 devices of h100-sxm (devices_per_node x nodes)"),
        (H100, 4, 4, 1, "tp x pp = 16 exceeds the 8 devices of h100-sxm (devices_per_node x nodes)"),
        (no_link, 2, 1, 1, "tp x pp = 2 needs a link between devices, and h100-sxm has none "
                           "(hardware field link: {bw_gbps: ..., latency_us: ...})"),
        (no_link, 1, 2, 1, "tp x pp = 2 needs a link between devices, and h100-sxm has none "
                           "(hardware field link: {bw_gbps: ..., latency_us: ...})"),
        (two_nodes, 16, 1, 1, "tp = 16 spans nodes of 8 devices, and h100-sxm has no network between them "
                              "(hardware field network: {bw_gbps: ..., latency_us: ...})"),
    ]
    for hw, tp, pp, ep, message in refused:
        with pytest.raises(ValueError) as e:
            check_parallelism(m, hw, tp, pp, ep)
        assert str(e.value) == message
    with pytest.raises(ValueError, match="^ep=3 must be 1 or equal tp=1"):
        check_parallelism(load_model("mixtral-8x7b"), H100, 1, 1, 3)
    for hw, tp, pp in ((H100, 8, 1), (H100, 2, 4), (no_link, 1, 1), (two_nodes, 8, 1)):
        check_parallelism(m, hw, tp, pp)  # fits: nothing raised


@pytest.mark.parametrize("graph", [False, True])
def test_op_seconds_prices_each_op_in_the_dtype_its_weights_run_in(graph):
    """op_seconds hands each op to the roofline (hwmodels.roofline.op_time, checked by hand in
    test_roofline) with the dtype chosen by hand here: fp8 weights on an H100 (fp8 tensor cores)
    run fp8 GEMMs with nothing to unpack; int4 (AWQ) weights have no int4 units there and run as
    bf16 GEMMs after unpacking (`dequant` vector ops); bf16 runs bf16. A MoE layer's grouped GEMM
    is `copies` GEMMs of m / copies rows over n columns each (its tiles), element-wise kernels
    and collectives run in the compute dtype over `group` devices (default 1), and every kernel
    of every layer pays a floor. The 2-core CPU profile adds the thread pool's hand-off by
    element count."""
    from hwmodels.roofline import op_time
    from simulator.moment.ops import Dtypes, dense_ops

    cpu = load_hardware("calibration/profiles/cpu-2core.json")
    # a CPU whose element-wise kernels hand off to a thread pool (parallel_us: by element count)
    pool = cpu.model_copy(update={"efficiency": cpu.efficiency.model_copy(
        update={"parallel_us": cpu.efficiency.parallel_us + 5.0})})
    # each storage format on these parts: (GEMM dtype, unpacked on the way); the output head
    # stays bf16 under fp8 and int4 weights (its own format)
    runs_as = {"fp8": ("fp8", False), "int4-awq": ("bf16", True), "bf16": ("bf16", False), "fp32": ("fp32", False)}
    cases = [("llama-3-8b", "fp8", H100), ("llama-3-8b", "int4-awq", H100), ("llama-3-8b", "bf16", H100),
             ("mixtral-8x7b", "bf16", H100), ("llama-3.2-1b", "fp32", cpu), ("llama-3.2-1b", "fp32", pool)]
    seen_grouped = seen_unpacked = seen_head = seen_parallel = seen_allreduce = 0
    for name, weight, hw in cases:
        dt = Dtypes(weight, act="fp32" if weight == "fp32" else "bf16")
        for tp in (1, 2) if hw is H100 else (1,):
            for op in dense_ops(load_model(name), 512.0, 8.0, dt, tp):
                launches = op.layers * op.kernels
                if op.kind == "gemm":
                    gemm_dt, unpacks = runs_as[op.fmt]
                    c = max(op.copies, 1.0)
                    want = op_time("gemm", op.category, op.flops, op.bytes, launches, gemm_dt, hw, m=op.m / c,
                                   n=op.n * c, graph=graph, dequant=op.dequant if unpacks else 0.0)
                    seen_grouped += c > 1
                    seen_unpacked += unpacks and op.dequant > 0
                    seen_head += op.name == "lm_head" and op.fmt != weight
                else:
                    want = op_time(op.kind, op.category, op.flops, op.bytes, launches, dt.compute, hw, m=op.m,
                                   n=op.n, group=1, graph=graph, elems=op.elems)
                    seen_parallel += hw is pool and float(want) > float(op_time(
                        op.kind, op.category, op.flops, op.bytes, launches, dt.compute, cpu, m=op.m, elems=op.elems))
                    if op.kind == "allreduce":  # over the tp devices: the group a StepModel passes
                        grouped = op_time(op.kind, op.category, op.flops, op.bytes, launches, dt.compute, hw,
                                          group=tp, graph=graph)
                        assert float(op_seconds(op, hw, dt, tp, graph)) == pytest.approx(float(grouped), rel=1e-12)
                        seen_allreduce += tp > 1 and float(grouped) > 0
                assert float(op_seconds(op, hw, dt, graph=graph)) == pytest.approx(float(want), rel=1e-12), (name, op.name)
    assert seen_grouped and seen_unpacked and seen_head and seen_parallel and seen_allreduce


def test_a_step_model_is_built_from_its_own_layout_and_defaults():
    """StepModel wires tp, pp and ep to each part in its place: the eager host calls and the ops
    (checked against kernels.host_calls and ops.dense_ops with the same layout, where any swap
    of the three changes them), the kernel count (every call but views), a graph step's issue
    (one graph launch per pipeline stage), the ep check; a bad mode is named with what is
    allowed; and built bare it has the documented defaults (no async scheduling, no expert
    imbalance, graph mode, one device)."""
    from simulator.moment import kernels as kn
    from simulator.moment.cost import StepModel
    from simulator.moment.ops import Dtypes, dense_ops

    mix, dt = load_model("mixtral-8x7b"), Dtypes()
    sm = StepModel(mix, H100, tp=2, pp=4, mode="eager", ep=2, kernels="pytorch")
    assert sm.calls == kn.host_calls(mix, "pytorch", dt, 2, 4, 2)
    assert all(sm.calls != kn.host_calls(mix, "pytorch", dt, *lay) for lay in ((4, 2, 1), (2, 2, 1), (2, 4, 1)))
    assert sm.kernels == sum(n for call, n in sm.calls.items() if call != "view") > 0
    want = kn.compose(dense_ops(mix, 64.0, 4.0, dt, 2, 4, 2, 1.0), "pytorch", 2)
    assert [(o.name, o.flops, o.bytes) for o in sm.ops(64.0, 4.0)] == [(o.name, o.flops, o.bytes) for o in want]
    assert [(o.name, o.bytes) for o in sm.ops(64.0, 4.0)] != [(o.name, o.bytes) for o in StepModel(
        mix, H100, tp=2, pp=4, mode="eager", ep=1, kernels="pytorch").ops(64.0, 4.0)]
    assert StepModel(mix, H100, tp=2, pp=4, ep=2).issue_s == pytest.approx(4 * H100.host.graph_launch_us * 1e-6)
    with pytest.raises(ValueError, match="^ep=3 must be 1 or equal tp=1"):
        StepModel(mix, H100, ep=3)
    with pytest.raises(ValueError) as e:
        StepModel(mix, H100, mode="lazy")
    assert str(e.value) == "mode 'lazy'; allowed: graph, eager"
    b = (32, 32 * 2000.0, 0, 0, 0.0, 0.0, 32)  # 32 decodes of 2000 tokens
    bare = StepModel(mix, H100).step_agg(*b)
    assert bare == StepModel(mix, H100, 1, 1, "graph", dt, False, 1, 1.0).step_agg(*b)
    assert bare != StepModel(mix, H100, async_scheduling=True).step_agg(*b)
    spread = StepModel(mix, H100, tp=2, ep=2).step_agg(*b)  # (the imbalance weighs on experts spread over devices)
    assert spread == StepModel(mix, H100, tp=2, ep=2, moe_imbalance=1.0).step_agg(*b)
    assert spread != StepModel(mix, H100, tp=2, ep=2, moe_imbalance=2.0).step_agg(*b)


_BATCHES = st.lists(st.tuples(st.integers(0, 64), st.integers(1, 4096), st.integers(0, 4), st.integers(1, 700),
                              st.integers(0, 3000)), min_size=1, max_size=12)


def _batch(ds: int, ctx: int, ps: int, pt: int, cached: int) -> Batch:
    """ds sequences decoding after ctx tokens each, ps chunks of pt tokens after `cached` each."""
    ps = ps or int(ds == 0)
    return Batch(ds, ds * ctx, ps, ps * pt, ps * (pt * cached + pt * (pt + 1) / 2), ps * cached)


@settings(max_examples=25, deadline=None)
@given(rows=_BATCHES)
def test_breakdowns_are_each_batchs_cost_to_the_last_bit(rows):
    """A run's category seconds price its sampled moments with breakdowns (all at once): the
    same floats as cost(b).breakdown_ms, one batch at a time, for plain, eager PyTorch, a
    serving stack's launches, a CPU, an MoE model and speculative decoding."""
    from simulator.moment.cost import DEVICE_CATEGORIES
    from simulator.moment.ops import Dtypes
    from simulator.moment.speculative import Speculation, draft_of
    from simulator.serving.engine import launch
    from simulator.serving.scenario import Serving

    h100, llama = load_hardware("h100-sxm"), load_model("llama-3-8b")
    models = [step_model(llama, h100), step_model(llama, h100, mode="eager", kernels="pytorch"),
              step_model(llama, h100, launch=launch(Serving(stack="vllm-v1"), h100)),
              step_model(load_model("llama-3.2-1b"), load_hardware("calibration/profiles/cpu-2core.json"),
                         mode="eager", kernels="pytorch"),
              step_model(load_model("mixtral-8x7b"), h100, tp=2)]
    models.append(Speculation(models[0], draft_of(llama, h100, 1, 1, "graph", Dtypes(), False, "fused", None, 1.0), 3))
    batches = [_batch(*r) for r in rows]
    names = (*DEVICE_CATEGORIES, "host")
    for sm in models:
        got = sm.breakdowns(batches)
        want = [[sm.cost(b).breakdown_ms[c] for c in names] for b in batches]
        assert got.tolist() == want
    assert models[0].breakdowns([]).shape == (0, len(names))
    with pytest.raises(ValueError, match="at least one token"):
        models[0].breakdowns([Batch(0, 0, 0, 0, 0.0, 0, 0)])
