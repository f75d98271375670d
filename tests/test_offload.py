"""KV offload to a CPU tier (simulator/serving/offload.py): its block counts by hand, a prefix
evicted from the device coming back by copy (charged blocks x block size x KV bytes / PCIe
bandwidth), a swap-out without room recomputing instead, a tier too small to hold anything
changing nothing (bit for bit), and the hit rate and transfer seconds of a run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulator.moment.model import load_model
from simulator.reports.metrics import summarize
from simulator.serving.engine import simulate
from simulator.serving.offload import HostKV, TieredKVCache
from simulator.serving.result import RequestLog
from simulator.serving.scenario import Scenario, Serving
from simulator.serving.schedulers import PREFILL, scheduler_class
from simulator.serving.workload import Requests


def test_host_tier_counts_by_hand():
    h = HostKV(10)
    h.store(1, 4)
    h.store(2, 4)               # 8 used by two cached prefixes
    assert h.take(5)            # a swapped sequence: the oldest prefix (1) makes room
    assert not h.has(1) and h.has(2) and h.free == 1
    assert not h.take(6)        # prefix 2 goes too, but 5 swapped blocks stay: no room for 6
    assert h.fallbacks == 1 and not h.has(2) and h.free == 5
    h.store(3, 11)              # larger than the tier: not kept
    assert not h.has(3)
    h.release(5)
    assert h.free == 10 and h.swapped_out == 5
    h.check()


def test_an_evicted_prefix_is_copied_back_instead_of_computed():
    # device: 6 blocks of 4 tokens; prefix 7 is 2 blocks. Evicting it (to make room for 6 blocks)
    # stores it in the CPU tier; acquiring it again allocates 2 blocks and charges their copy
    kv = TieredKVCache(6, 4, HostKV(100), s_per_block=0.5)
    assert kv.acquire_prefix(7, 2) == 0  # MISS: computed by its first request
    kv.release_prefix(7)                  # nobody uses it: cached, evictable
    assert kv.alloc(6) and kv.host.has(7) and not kv.resident(99)
    assert kv.resident(7)                 # reusable: from the CPU tier
    kv.release(6)
    assert kv.acquire_prefix(7, 2) == 1 and kv.used == 2  # HIT: copied in
    assert (kv.host_hits, kv.copied_in, kv.take_copy_s(), kv.copy_s) == (1, 2, 1.0, 0.0)
    assert (kv.lookups, kv.hits) == (2, 1)


def sched(blocks: int, host_blocks: int, prompts: list[int], outputs: list[int], prefix: tuple[int, int] | None,
          **serving: Any):
    n = len(prompts)
    log = RequestLog(Requests(np.zeros(n), np.array(prompts), np.array(outputs),
                              np.full(n, -1 if prefix is None else prefix[0]),
                              np.full(n, 0 if prefix is None else prefix[1])))
    sv = Serving(block_size=4, kv_offload={"cpu_gb": 1.0}, **serving)
    kv = TieredKVCache(blocks, 4, HostKV(host_blocks), s_per_block=1e-3)
    return scheduler_class(sv)(sv, log, blocks, 1e-3, kv=kv), log


def test_a_request_whose_prefix_is_in_cpu_memory_prefills_only_its_suffix():
    # request 0 computes an 8-token prefix (2 blocks) and finishes; request 1 (20 tokens) fills
    # the device so the unused prefix is evicted to the CPU tier; request 2 brings it back:
    # its prefill starts after 8 cached tokens and its moment carries 2 blocks of copy time
    s, log = sched(6, 100, [12, 20, 12], [1, 1, 1], (5, 8), prefix_caching=True)
    s.add(0)
    s.on_step_done(s.schedule(), 1.0)
    assert s.kv.evictable == 2
    log.prefix_id[1] = -1  # request 1 carries no prefix
    s.add(1)
    m = s.schedule()
    assert m.batch[3] == 20 and s.kv.host.has(5)  # 5 blocks needed, 4 free: the prefix went down
    s.on_step_done(m, 2.0)
    s.add(2)
    m = s.schedule()
    assert (m.kind, m.batch[3], m.batch[5]) == (PREFILL, 4, 8)  # 4 new tokens after 8 cached
    assert m.extra_s == pytest.approx(2 * 1e-3)
    assert s.kv.host_hits == 1


def test_a_swap_out_without_room_in_cpu_memory_recomputes():
    # the continuous scheduler's swap case (tests/test_schedulers.py) with a CPU tier of 1 block:
    # the preempted request's 2 blocks do not fit, so it is recomputed, not swapped
    s, log = sched(5, 1, [8, 8], [10, 10], None, preemption="swap")
    s.add(0)
    s.add(1)
    s.on_step_done(s.schedule(), 1.0)
    m = s.schedule()
    assert s.swapped == {} and s.recompute == {1: 1} and m.extra_s == 0.0
    assert s.kv.host.fallbacks == 1
    # with room it swaps, and the swap-in gives the room back
    s, log = sched(5, 2, [8, 8], [10, 10], None, preemption="swap")
    s.add(0)
    s.add(1)
    s.on_step_done(s.schedule(), 1.0)
    m = s.schedule()
    assert s.swapped == {1: (8, 1)} and s.kv.host.free == 0
    t = 2.0
    while s.swapped:  # request 0 decodes to its end, then request 1 swaps back in
        s.on_step_done(m, t)
        m, t = s.schedule(), t + 1
    # (it swaps back in and out while request 0's growth keeps the device full: 2 blocks each time)
    assert s.kv.host.free == 2 and s.kv.host.swapped_out == 2 * log.preemptions[1]


def rag(**serving: Any) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 2,
        "serving": {"scheduler": "chunked", "max_batch_size": 16, "max_batched_tokens": 1024, "prefix_caching": True,
                    "gpu_memory_utilization": 0.045, **serving},
        "workload": {"num_requests": 300, "arrival": {"process": "poisson", "rate": 30.0},
                     "prefix": {"groups": 40, "length": 600, "fraction": 1.0},
                     "prompt_len": {"dist": "uniform", "low": 650, "high": 900},
                     "output_len": {"dist": "uniform", "low": 1, "high": 60}}})


def test_a_tier_too_small_for_a_prefix_changes_nothing():
    # 600-token prefixes are 38 blocks; a CPU tier of 10 blocks holds none of them, and with
    # preemption by recompute it is never used: every array is the same as without it
    kvb = load_model("llama-3.2-1b").kv_bytes_per_token("bf16")
    plain = simulate(rag())
    tiny = simulate(rag(kv_offload={"cpu_gb": 10 * 16 * kvb / 1e9}))
    for part in ("requests", "moments"):
        for k, v in getattr(plain, part).items():
            np.testing.assert_array_equal(getattr(tiny, part)[k], v, err_msg=k)
    assert tiny.cache_stats["host_capacity_blocks"] == 10 and tiny.cache_stats["stored_blocks"] == 0


def test_cpu_memory_raises_the_prefix_hit_rate_and_reports_its_transfers():
    kvb = load_model("llama-3.2-1b").kv_bytes_per_token("bf16")
    plain, off = summarize(simulate(rag())), simulate(rag(kv_offload={"cpu_gb": 8.0, "pcie_gbps": 20.0}))
    s = summarize(off)
    st = off.cache_stats
    assert s["prefix_cache"]["hit_rate"] > plain["prefix_cache"]["hit_rate"]
    k = s["kv_offload"]
    assert k["prefix_host_hits"] > 0 and k["copied_in_blocks"] == st["copied_in_blocks"]
    assert k["prefix_hit_rate"] == pytest.approx(st["prefix_hits"] / st["prefix_lookups"])  # requests
    assert k["host_hit_rate"] == pytest.approx(st["prefix_host_hits"] / st["prefix_lookups"])
    per_block = 16 * kvb / 20e9  # 16 tokens of every layer's K and V over 20 GB/s
    assert k["transfer_s"] == pytest.approx((st["copied_in_blocks"] + 2 * st["swapped_out_blocks"]) * per_block)
    assert k["host_capacity_blocks"] == int(8e9 // (16 * kvb))
    assert (off.requests["status"] == 0).all()


def test_a_swapped_out_sequence_takes_its_own_blocks_and_its_prefix_to_the_cpu_tier():
    # blocks of 4, 4 of them: two 8-token prompts sharing a 4-token prefix hold 3 (the prefix once,
    # one of its own each); their first decode needs a block each, one is free, so the newest is
    # swapped out: its own block and a copy of the prefix block go down (2), and request 0 decodes
    s, log = sched(4, 100, [8, 8], [10, 10], (5, 4), scheduler="continuous", prefix_caching=True, preemption="swap")
    s.add(0)
    s.add(1)
    m = s.schedule()
    assert m.batch[2:4] == (2, 12) and s.kv.used == 3  # 8 + 4 new tokens: the second found the prefix
    s.on_step_done(m, 1.0)
    m = s.schedule()
    assert m.batch[:2] == (1, 8) and log.preemptions.tolist() == [0, 1]
    assert s.hosted == {1: 2} and s.kv.host.swapped_out == 2
