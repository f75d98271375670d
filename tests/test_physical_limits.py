"""Limits no cost model may cross, checked from outside the CLI against numbers worked out here.

- A decode step reads every weight it uses at least once: a batch-1 decode the active weights
  (the experts its token is routed to), a large-batch MoE decode all experts' weights.
- A step is never faster than its FLOPs at the part's highest peak, nor than the bytes it must
  stream from memory (weights and KV cache, far larger than any cache) at full bandwidth.
- A batch-1 decode reads no more than its active weights, its KV cache and its activations.
- A KV cache that fits exactly is admitted, and one block more is not.

Weight bytes are counted here from the published parameter counts (tests/test_model.py checks
num_params against them): 2 bytes per parameter in bf16, less the input embedding table (a row
gather) where it is not tied to the output head.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.load import load_hardware
from simulator.moment.cost import step_model
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes, step_ops, total_flops
from simulator.serving.engine import simulate
from simulator.serving.kvcache import KVCache
from simulator.serving.scenario import Scenario

DENSE = ["llama-3.2-1b", "llama-3-8b", "qwen2-7b", "mistral-7b", "gemma-2-9b"]
MOE = ["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "qwen1.5-moe-a2.7b"]
PARTS = ["h100-sxm", "h200-sxm", "a100-sxm-80gb", "l40s", "mi300x", "b200", "cpu"]


def weight_bytes(name: str, active: bool) -> float:
    """bf16 bytes of the weights a decode token reads (active) or that exist, less the input
    embedding when it is a separate table."""
    m = load_model(name)
    embed = 0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size
    return 2.0 * (m.num_params(active=active) - embed)


def highest_peak(hw) -> float:
    return max(hw.device.peak_flops(d) for d in hw.device.flops_per_cycle)


def ops_bytes(name: str, b: Batch) -> float:
    return float(sum(np.sum(o.bytes) for o in step_ops(load_model(name), b, Dtypes())))


@pytest.mark.parametrize("name", DENSE + MOE)
@pytest.mark.parametrize("part", PARTS)
def test_batch_1_decode_reads_the_active_weights_at_least_once(name, part):
    hw = load_hardware(part)
    floor = weight_bytes(name, active=True) / hw.device.bandwidth
    for mode in ("graph", "eager"):
        s = step_model(load_model(name), hw, mode=mode)
        b = Batch.of(decode=[(1, 512)])
        assert s.device_s(b) >= floor
        assert s.step_s(b) >= s.device_s(b)


@pytest.mark.parametrize("name", DENSE + MOE)
def test_batch_1_decode_reads_no_more_than_its_weights_kv_and_activations(name):
    """The op list's bytes: active weights + the KV cache read + activations. One token's
    activations are a few vectors of the hidden and intermediate sizes per layer (and the
    logits), about 0.1 % of the weights that produce them: 0.5 % bounds them. An MoE token does
    not stream the experts it is not routed to (Mixtral: 26 GB active of 93 GB)."""
    m = load_model(name)
    ctx = 512
    weights = weight_bytes(name, active=True)
    want = weights + ctx * m.kv_bytes_per_token("bf16")
    got = ops_bytes(name, Batch.of(decode=[(1, ctx)]))
    assert want <= got <= want + 0.005 * weights


@pytest.mark.parametrize("name", MOE)
def test_large_batch_moe_decode_reads_every_experts_weights(name):
    """512 tokens routed k of E each touch all experts (E (1 - (1 - k/E)^512) > E - 1e-6 here):
    the step streams all the weights, so it takes at least their bytes at full bandwidth."""
    m = load_model(name)
    e, k = m.num_local_experts, m.num_experts_per_tok
    assert e * (1 - (1 - k / e) ** 512) > e - 1e-6
    b = Batch.of(decode=[(512, 256)])
    assert ops_bytes(name, b) >= weight_bytes(name, active=False)
    hw = load_hardware("h200-sxm")
    assert step_model(m, hw).device_s(b) >= weight_bytes(name, active=False) / hw.device.bandwidth


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(DENSE + MOE), part=st.sampled_from(PARTS), mode=st.sampled_from(["graph", "eager"]),
       kernels=st.sampled_from(["fused", "pytorch"]), ds=st.integers(0, 512), ctx=st.integers(1, 8192),
       ps=st.integers(0, 4), plen=st.integers(1, 8192))
def test_a_step_is_never_faster_than_its_flops_at_peak_or_its_streamed_bytes(name, part, mode, kernels, ds, ctx,
                                                                             ps, plen):
    if ds + ps == 0:
        ds = 1
    m, hw = load_model(name), load_hardware(part)
    b = Batch.of(decode=[(ds, ctx)], prefill=[(ps, plen)])
    ops = step_ops(m, b, Dtypes())
    s = step_model(m, hw, mode=mode, kernels=kernels)
    t = s.device_s(b)
    assert t >= total_flops(ops) / highest_peak(hw)
    # bytes that must come from memory: each active weight once and the KV cache the decodes
    # read (counted here), and all that the matrix products and attention move (the op list's,
    # weights and KV far beyond any cache; element-wise kernels may run from L2, left out)
    # (a decode reads its whole cache only where no layer has a window: Mistral's 4096-token
    # window, Gemma 2's every other layer read less)
    full = all(kind == "full" for kind, _, _ in m.attention_groups)
    kv = ds * ctx * m.kv_bytes_per_token("bf16") if full else 0.0
    assert t >= (weight_bytes(name, active=True) + kv) / hw.device.bandwidth
    streamed = sum(float(np.sum(o.bytes)) for o in ops if o.kind in ("gemm", "attn_prefill", "attn_decode"))
    assert t >= streamed / hw.device.bandwidth
    assert s.step_s(b) >= t


# -- the KV cache: an exact fit is admitted, one block more is not -------------------------------------

def test_kv_blocks_that_fit_exactly_are_allocated_and_one_more_is_not():
    kv = KVCache(10, 16)
    kv.check()  # empty: every block free
    assert not kv.alloc(11) and kv.free == 10
    assert kv.alloc(10) and kv.free == 0 and kv.used == 10
    assert not kv.alloc(1)
    kv.release(10)
    assert kv.free == 10 and kv.blocks(160) == 10 and kv.blocks(161) == 11 and kv.blocks(1) == 1


def test_an_exact_fit_may_evict_every_cached_prefix_and_no_more():
    kv = KVCache(10, 16)
    assert kv.acquire_prefix(7, 3) == 0 and kv.acquire_prefix(8, 2) == 0  # MISS: allocated
    kv.release_prefix(7)
    kv.release_prefix(8)
    assert kv.free == 5 and kv.evictable == 5 and kv.available == 10
    assert not kv.alloc(11) and kv.resident(7) and kv.resident(8)
    assert kv.alloc(8)  # evicts the oldest released (7) only: 5 + 3 >= 8
    assert not kv.resident(7) and kv.resident(8) and kv.free == 0 and kv.evictable == 2
    assert kv.alloc(2) and not kv.resident(8) and kv.available == 0
    kv.check()
    kv = KVCache(4, 16)
    assert kv.acquire_prefix(1, 4) == 0 and kv.acquire_prefix(1, 4) == 1  # MISS, then HIT: held once
    kv.check()  # every used block is the prefix's
    assert kv.used == 4 and kv.available == 0



class _Spy(KVCache):
    """A cache that records what it evicts (the hook a lower tier uses: offload.TieredKVCache)."""

    __slots__ = ("gone",)

    def __init__(self, capacity: int, block_size: int):
        super().__init__(capacity, block_size)
        self.gone: list[tuple[int, int]] = []

    def evicted(self, pid: int, blocks: int) -> None:
        self.gone.append((pid, blocks))


def test_prefix_lookups_hits_and_evictions_counted_by_hand():
    """The counts behind the request-level prefix hit rate (Pool: prefix_lookups, prefix_hits)."""
    kv = _Spy(10, 16)
    assert (kv.lookups, kv.hits) == (0, 0)
    assert kv.acquire_prefix(1, 4) == 0 and (kv.lookups, kv.hits) == (1, 0)  # MISS: computed now
    assert kv.acquire_prefix(1, 4) == 1 and (kv.lookups, kv.hits) == (2, 1)  # HIT: reused
    assert kv.acquire_prefix(1, 4) == 1 and (kv.lookups, kv.hits) == (3, 2)
    for _ in range(3):
        kv.release_prefix(1)
    assert kv.acquire_prefix(2, 3) == 0 and (kv.lookups, kv.hits) == (4, 2)
    kv.release_prefix(2)
    assert kv.free == 3 and kv.evictable == 7 and kv.gone == []
    assert kv.alloc(5)  # 3 free: the oldest released prefix (1, 4 blocks) goes, and only it
    assert kv.gone == [(1, 4)] and kv.free == 2 and kv.resident(2) and not kv.resident(1)
    # prefix 1 again: computed again (MISS) in 2 free blocks + prefix 2's 3, evicted for it
    assert kv.acquire_prefix(1, 4) == 0 and (kv.lookups, kv.hits) == (5, 2)
    assert kv.gone == [(1, 4), (2, 3)] and kv.free == 1 and kv.evictable == 0
    assert kv.acquire_prefix(3, 2) == -1 and (kv.lookups, kv.hits) == (6, 2)  # FAIL: 1 block of room
    kv.check()


MODEL = "llama-3.2-1b"


def hw_with_kv_tokens(path, tokens: int) -> str:
    """An H100 whose memory at 90 % utilisation leaves room for `tokens` (and a half) of KV after
    the bf16 weights and the 1 GB activation reserve."""
    m = load_model(MODEL)
    gb = (m.weight_bytes("bf16") + 1e9 + (tokens + 0.5) * m.kv_bytes_per_token("bf16")) / 0.9 / 1e9
    path.write_text(f"base: h100-sxm\nname: kv-{tokens}\ndevice:\n  memory_gb: {gb!r}\n")
    return str(path)


@pytest.mark.parametrize("sched", ["static", "continuous", "chunked"])
def test_a_request_that_fills_the_kv_cache_exactly_runs_and_one_block_more_is_rejected(tmp_path, sched):
    blocks, bs = 40, 16
    hw = hw_with_kv_tokens(tmp_path / "hw.yaml", blocks * bs)
    assert footprint(load_model(MODEL), load_hardware(hw)).kv_capacity_tokens == blocks * bs
    for total, admitted in ((blocks * bs, True), (blocks * bs + 1, False), ((blocks + 1) * bs, False)):
        prompt = total - 20
        sc = Scenario.model_validate({
            "model": MODEL, "hardware": hw, "seed": 0,
            "serving": {"scheduler": sched, "max_batched_tokens": 1024, "block_size": bs},
            "workload": {"num_requests": 1, "arrival": {"process": "burst"},
                         "prompt_len": {"dist": "fixed", "value": prompt},
                         "output_len": {"dist": "fixed", "value": 20}}})
        r = simulate(sc)
        assert r.kv_capacity_blocks == blocks
        assert (r.requests["status"][0] == 0) == admitted, total
        if admitted:  # it ran to its end, holding at its peak every block (static: reserved up front)
            peak = blocks if sched == "static" else -(-(total - 1) // bs)
            assert r.moments["kv_blocks_used"].max() == peak
            assert r.moments["tokens"].sum() == prompt + 19
        else:
            assert r.reject_reasons == {"exceeds kv capacity": 1}
