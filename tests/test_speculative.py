"""Speculative decoding: the expected tokens per step against (1 - alpha^(k+1)) / (1 - alpha), the
token rate of runs against it (with the renewal theorem's spread), alpha = 0 as plain decoding
plus the draft's cost, the verify attention's q = 1 limit, the decode set's block windows by hand,
the draft's memory by hand, and KV bookkeeping under preemption."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from simulator.moment.cost import step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes
from simulator.moment.speculative import Speculation, acceptance_probs, draft_of, expected_tokens
from simulator.reports.metrics import summarize
from simulator.serving.decodeset import SpecDecodeSet
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario, Speculative


def test_expected_tokens_per_step_closed_form():
    for alpha, k in ((0.7, 4), (0.5, 1), (0.9, 7), (0.25, 3)):
        assert expected_tokens(alpha, k) == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha), rel=1e-12)
        assert sum(acceptance_probs(alpha, k)) == pytest.approx(1.0)
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 5) == 6.0
    # per position: 1 + a1 + a1 a2 + a1 a2 a3
    assert expected_tokens([0.9, 0.5, 0.2], 3) == pytest.approx(1 + 0.9 + 0.45 + 0.09)
    assert acceptance_probs([0.9, 0.5], 2) == pytest.approx([0.1, 0.45, 0.45])


@pytest.mark.parametrize("model", ["llama-3-8b", "gemma-3-1b", "deepseek-v2-lite", "gpt-oss-20b"])
def test_a_verify_of_one_token_is_a_decode(model):
    sm = step_model(load_model(model), load_hardware("h100-sxm"))
    for ds, dc in ((1, 100), (64, 64 * 3000), (7, 7 * 100_000)):
        assert sm.verify_attention_s(ds, dc, 1) == pytest.approx(sm.attention_s(ds, dc, 0, 0, 0.0, 0), rel=1e-12)
        assert sm.verify_attention_s(ds, dc, 5) > sm.verify_attention_s(ds, dc, 1)


def test_spec_decode_set_opens_blocks_over_its_window_by_hand():
    # blocks of 4; a request enters with 6 tokens cached: its blocks grow at tokens 8 and 12, so
    # a step of 3 tokens (6 -> 9) opens 1 block, the next of 3 (9 -> 12) none, then 12 -> 15 one
    d = SpecDecodeSet(4, [0.0, 0.0, 1.0], seed=0)  # always a = 3
    d.enter(7, 6, 1, 100, token=1, prefix_blocks=0, prefix_id=-1)
    opened = []
    for _ in range(3):
        opened.append(d.new_blocks())
        d.advance()
    assert opened == [1, 0, 1] and d.context == 15
    assert d.leave(7)[:2] == (15, 10)  # cached, generated: 1 + 9
    # finishers are keyed by tokens: 5 more wanted, 3 per step: it ends in its second step
    d.enter(8, 0, 0, 5, token=2, prefix_blocks=0, prefix_id=-1)
    assert d.advance() == () and d.advance() == [8]


def scen(spec: dict | None, out: int = 20001, n: int = 1, **serving: Any) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 11,
        "serving": {"scheduler": "continuous", "max_batch_size": 64, "speculative": spec, **serving},
        "workload": {"num_requests": n, "prompt_len": {"dist": "fixed", "value": 100},
                     "output_len": {"dist": "fixed", "value": out}}})


@pytest.mark.parametrize("acceptance, k", [(0.7, 4), (0.5, 2), ([0.9, 0.7, 0.5, 0.3, 0.1], 5)])
def test_the_token_rate_matches_the_expected_accepted_tokens_per_step(acceptance, k):
    # one request of 20,000 decode tokens: its decode steps N make T = 20,000 tokens, a renewal
    # process with E[A] = mu per step: N ~ T / mu with spread sqrt(T var(A) / mu^3)
    spec = {"method": "heads", "k": k, "acceptance": acceptance}
    r = simulate(scen(spec))
    steps = int((r.moments["kind"] == 1).sum())
    probs = acceptance_probs(acceptance, k)
    mu = expected_tokens(acceptance, k)
    var = sum((a + 1) ** 2 * p for a, p in enumerate(probs)) - mu ** 2
    T = 20000
    assert abs(steps - T / mu) < 4 * math.sqrt(T * var / mu ** 3) + 1
    # TPOT is the step over the tokens each step yields
    s = summarize(r)
    step_ms = float(r.moments["dur_s"][r.moments["kind"] == 1].mean()) * 1e3
    assert s["tpot_ms"]["mean"] == pytest.approx(step_ms * steps / T, rel=1e-6)


def test_a_batch_shares_its_draws_and_keeps_the_rate():
    # 16 requests decoding together: sequence-steps per generated token is 1 / mu
    r = simulate(scen({"method": "heads", "k": 4, "acceptance": 0.6}, out=3001, n=16))
    dec = r.moments["kind"] == 1
    seq_steps = int(r.moments["batch"][dec].sum())
    mu = expected_tokens(0.6, 4)
    assert seq_steps / (16 * 3000) == pytest.approx(1 / mu, rel=0.05)



def test_same_seed_same_draws_and_another_seed_others():
    """The accepted-token draws come from the scenario's seed: a rerun is identical to the bit."""
    spec = {"method": "heads", "k": 4, "acceptance": 0.6}
    a, b = simulate(scen(spec, out=2001)), simulate(scen(spec, out=2001))
    assert a.moments["dur_s"].tolist() == b.moments["dur_s"].tolist()
    other = scen(spec, out=2001).model_copy(update={"seed": 12})
    assert simulate(other).moments["start_s"].tolist() != a.moments["start_s"].tolist()

def test_alpha_zero_is_plain_decoding_plus_the_drafts_cost():
    # nothing is accepted: every step yields one token, as plain decoding does, so the runs have
    # the same moments with the same batches; each decode step costs the plain step plus k draft
    # passes, and a little more for verifying k + 1 tokens instead of one (memory-bound: < 5 %)
    k = 3
    spec = {"method": "draft_model", "draft_model": "llama-3.2-1b", "k": k, "acceptance": 0.0}
    base = Scenario.model_validate({"model": "llama-3-8b", "hardware": "h100-sxm",
                                    "workload": {"num_requests": 2, "output_len": {"dist": "fixed", "value": 50}}})
    plain = simulate(base)
    sc = base.model_copy(update={"serving": base.serving.model_copy(update={"speculative": Speculative(**spec)})})
    spec_r = simulate(sc)
    for key in ("kind", "tokens", "batch"):
        np.testing.assert_array_equal(spec_r.moments[key], plain.moments[key])
    hw = load_hardware("h100-sxm")
    draft_sm = step_model(load_model("llama-3.2-1b"), hw)
    dec = plain.moments["kind"] == 1
    extra = spec_r.moments["dur_s"][dec] - plain.moments["dur_s"][dec]
    draft_pass = draft_sm.forward_s(2, 2 * 600, 0, 0, 0.0, 0, 2)  # two sequences; it barely depends on the context
    assert np.all(extra > k * draft_pass * 0.98)
    assert np.all(extra < k * draft_pass * 1.02 + 0.05 * plain.moments["dur_s"][dec])
    np.testing.assert_array_equal(spec_r.requests["finish_s"] > plain.requests["finish_s"], [True, True])


def test_the_draft_takes_memory_from_the_kv_cache():
    # Llama 3 8B with a Llama 3.2 1B draft on one H100: KV tokens = (usable - both weights -
    # reserve) / (both KV bytes per token): 8B 128 KiB + 1B 32 KiB per token
    t, d, hw = load_model("llama-3-8b"), load_model("llama-3.2-1b"), load_hardware("h100-sxm")
    usable = 80e9 * 0.9
    hand = int((usable - t.weight_bytes("bf16") - d.weight_bytes("bf16") - 1e9) // (131072 + 32768))
    draft = draft_of(t, hw, 1, 1, "graph", Dtypes(), False, "fused", d)
    fp = footprint(t, hw, 1, 1, Dtypes(), 0.9, 1.0, 1, extra_weight_bytes=draft.weight_bytes,
                   extra_kv_bytes=draft.kv_bytes_per_token)
    assert fp.kv_capacity_tokens == hand
    # EAGLE-style heads of one layer: one layer's weights (218 M parameters) and KV (4 KiB a token)
    heads = draft_of(t, hw, 1, 1, "graph", Dtypes(), False, "fused", None, 1.0)
    layer_params = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
    assert heads.weight_bytes == pytest.approx(2 * layer_params, rel=1e-9)
    assert heads.kv_bytes_per_token == 2 * 8 * 128 * 2
    half = draft_of(t, hw, 1, 1, "graph", Dtypes(), False, "fused", None, 0.5)
    assert half.weight_bytes == pytest.approx(heads.weight_bytes / 2)
    sm = step_model(t, hw)
    # a head of half a layer costs half a layer's pass more than none (the shared head and overheads)
    one, halfc = Speculation(sm, heads, 1), Speculation(sm, half, 1)
    b = (8, 8000, 0, 0, 0.0, 0)
    assert one.draft_s(*b) > halfc.draft_s(*b) > 0


def test_a_speculative_pool_holds_the_draft_beside_its_kv_and_powers_its_passes():
    """engine.pool_model with a draft: the KV blocks are what both models' weights and the
    reserve leave, over both KV bytes per token (vLLM's share of the whole memory, or
    TensorRT-LLM's share of what the weights leave), and each decode step's energy has the
    draft's k passes, each streaming its weights at least once (the device's joules per byte)."""
    from simulator.serving.engine import pool_model
    from simulator.serving.scenario import Serving

    t, d, hw = load_model("llama-3-8b"), load_model("llama-3.2-1b"), load_hardware("h100-sxm")
    both = t.weight_bytes("bf16") + d.weight_bytes("bf16")
    k = 3
    sv = Serving.model_validate({"block_size": 16, "speculative": {
        "method": "draft_model", "draft_model": "llama-3.2-1b", "k": k, "acceptance": 0.7}})
    for share_of, free in (("total", 0.9 * 80e9 - both - 1e9), ("free", 0.9 * (80e9 - both - 1e9))):
        pm = pool_model(t, hw, Dtypes(), sv.model_copy(update={"memory_fraction_of": share_of}))
        assert pm.cap_blocks == int(free // (131072 + 32768)) // 16
    # draft heads of half a layer: half of one Llama 3 8B layer's weights (218 M parameters) and
    # half its KV (4 KiB a token) beside the target's
    layer = 2 * (4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096)
    heads = sv.model_copy(update={"speculative": sv.speculative.model_copy(update={
        "method": "heads", "draft_model": None, "head_layers": 0.5})})
    free = 0.9 * 80e9 - t.weight_bytes("bf16") - 0.5 * layer - 1e9
    assert pool_model(t, hw, Dtypes(), heads).cap_blocks == int(free // (131072 + 0.5 * 4096)) // 16
    p = hw.device.power
    j_per_byte = p.memory_share * (p.tdp_w - p.idle_w) / (hw.device.bandwidth * hw.efficiency.gemm_memory)
    decode = (2, 1200.0, 0, 0, 0.0, 0, 2)  # two sequences, 600 tokens each
    extra = pm.power.demand(*decode) - pm.power.target.demand(*decode, k + 1)
    assert extra >= k * d.weight_bytes("bf16") * j_per_byte


@settings(max_examples=12, deadline=None)
@given(alpha=st.floats(0.0, 0.95), k=st.integers(1, 6), preemption=st.sampled_from(["recompute", "swap"]),
       scheduler=st.sampled_from(["continuous", "chunked"]))
def test_every_request_completes_with_tight_kv_and_speculation(alpha, k, preemption, scheduler):
    sc = Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 4,
        "serving": {"scheduler": scheduler, "max_batch_size": 16, "max_batched_tokens": 1024, "block_size": 4,
                    "preemption": preemption, "gpu_memory_utilization": 0.047,
                    "speculative": {"method": "heads", "k": k, "acceptance": alpha}},
        "workload": {"num_requests": 60, "arrival": {"process": "poisson", "rate": 100.0},
                     "prompt_len": {"dist": "uniform", "low": 10, "high": 600},
                     "output_len": {"dist": "uniform", "low": 1, "high": 300}}})
    r = simulate(sc)  # the engine checks every block came back
    assert (r.requests["status"] == 0).all()
    assert np.all(r.moments["kv_blocks_used"] <= r.kv_capacity_blocks)


def test_speculative_settings_are_checked():
    with pytest.raises(ValueError, match="one rate per proposed token"):
        Speculative(method="heads", k=3, acceptance=[0.5, 0.5])
    with pytest.raises(ValueError, match="needs draft_model"):
        Speculative(method="draft_model", k=3, acceptance=0.5)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Speculative(method="heads", k=1, acceptance=1.5)


def test_a_verify_pass_without_sequences_costs_nothing_and_a_window_caps_its_keys():
    """verify_attention_s: no sequences, no attention; on a sliding-window model (Mistral-7B,
    4096) a sequence reads at most its window however long its cache, so past the window the
    verify pass costs the same."""
    from hwmodels.load import load_hardware
    from simulator.moment.cost import step_model
    from simulator.moment.model import load_model

    sm = step_model(load_model("mistral-7b"), load_hardware("h100-sxm"))
    assert sm.verify_attention_s(0, 0, 4) == 0.0 == sm.verify_attention_s(0, 5000, 1)
    far = [sm.verify_attention_s(2, 2 * c, 4) for c in (5000, 9000, 50000)]
    assert far[0] == far[1] == far[2] > sm.verify_attention_s(2, 2 * 1000, 4)


def test_an_unknown_draft_model_is_named_with_its_field_from_python_too():
    """simulate() on a Scenario built in Python (no file): the error names the scenario and the
    draft's field, then the resolver's message."""
    from hwmodels.errors import InputError
    from simulator.serving.engine import simulate
    from simulator.serving.scenario import Scenario

    sc = Scenario.model_validate({
        "model": "llama-3-8b", "hardware": "h100-sxm", "workload": {"num_requests": 2},
        "serving": {"speculative": {"method": "draft_model", "draft_model": "no-such-draft", "k": 3,
                                    "acceptance": 0.7}}})
    with pytest.raises(InputError) as e:
        simulate(sc)
    assert str(e.value).startswith("scenario: serving.speculative.draft_model: unknown model 'no-such-draft'; ")


@pytest.mark.parametrize("method", ["draft_model", "heads"])
def test_a_speculative_runs_flops_are_its_verify_and_draft_passes_by_hand(method):
    # one request alone, nothing accepted (alpha 0): its prefill, then out - 1 steps of one token,
    # step j at context P + j. Counted pass by pass: the target prefills P tokens and verifies
    # q = k + 1 tokens a step (q queries at contexts c .. c + q - 1, q logit rows); the draft
    # prefills the prompt too (one logit row: its first proposal) and runs k one-token passes at
    # contexts c .. c + k - 1. The run's total is the sum (a dense model: nothing approximated).
    # Heads of 1.5 layers: the passes of a 1-layer and a 2-layer cut of the target, half each
    from simulator.moment.ops import Batch, step_ops, total_flops
    from simulator.moment.speculative import head_model

    P, out, k = 300, 12, 3
    q = k + 1
    base = Scenario.model_validate({"model": "llama-3-8b", "hardware": "h100-sxm", "workload": {
        "num_requests": 1, "prompt_len": {"dist": "fixed", "value": P}, "output_len": {"dist": "fixed", "value": out}}})
    target = load_model("llama-3-8b")
    if method == "heads":
        spec = Speculative(method="heads", head_layers=1.5, k=k, acceptance=0.0)
        drafts = [(head_model(target, 1), 0.5), (head_model(target, 2), 0.5)]
    else:
        spec = Speculative(method="draft_model", draft_model="llama-3.2-1b", k=k, acceptance=0.0)
        drafts = [(load_model("llama-3.2-1b"), 1.0)]
    f = lambda m, b: total_flops(step_ops(m, b))  # noqa: E731
    prefill = Batch(0, 0, 1, P, P * (P + 1) / 2, 0)
    plain = f(target, prefill) + sum(f(target, Batch(1, P + j)) for j in range(out - 1))
    assert simulate(base).total_flops == pytest.approx(plain, rel=1e-12)  # the context convention
    r = simulate(base.model_copy(update={"serving": base.serving.model_copy(update={"speculative": spec})}))
    want = f(target, prefill) + sum(w * f(d, prefill) for d, w in drafts)
    for j in range(out - 1):
        c = P + j
        want += f(target, Batch(q, q * c + q * (q - 1) / 2, logits=q))
        want += sum(w * f(d, Batch(1, c + i)) for d, w in drafts for i in range(k))
    assert r.total_flops == pytest.approx(want, rel=1e-9)
    # the bytes: every moment streams the target's weights, every decode step the draft's k times
    # over (and its prefill once), an untied embedding table aside (its rows are gathered): at
    # least that, and the little KV and activations beside
    streamed = lambda m: m.weight_bytes("bf16") - (0 if m.tie_word_embeddings else 2 * m.vocab_size * m.hidden_size)  # noqa: E731
    weights = streamed(target) * out + sum(w * streamed(d) for d, w in drafts) * (1 + k * (out - 1))
    assert weights < r.total_bytes < 1.05 * weights
