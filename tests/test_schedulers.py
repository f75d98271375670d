"""Each policy, router and the decode set on hand-built states: what one schedule() call plans
(batch aggregates worked out by hand from the prompts, outputs and block size) and what
on_step_done hands out, without the engine or a cost model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.moment.ops import Batch
from simulator.serving.decodeset import DecodeSet
from simulator.serving.kvcache import KVCache
from simulator.serving.result import RequestLog
from simulator.serving.routers import ROUTERS
from simulator.serving.scenario import Serving
from simulator.serving.schedulers import DECODE, MIXED, PREFILL, SCHEDULERS
from simulator.serving.workload import Requests


def make(kind: str, prompts: list[int], outputs: list[int], blocks: int, prefix: tuple[int, int] | None = None,
         add: bool = True, **serving):
    """A scheduler of `kind` with `blocks` KV blocks and the requests queued in order."""
    n = len(prompts)
    pid = np.full(n, -1 if prefix is None else prefix[0])
    plen = np.full(n, 0 if prefix is None else prefix[1])
    log = RequestLog(Requests(np.zeros(n), np.array(prompts), np.array(outputs), pid, plen))
    s = SCHEDULERS[kind](Serving(scheduler=kind, **serving), log, blocks, 1e-3)
    if add:
        for i in range(n):
            s.add(i)
    return s, log


def B(m) -> Batch:
    """A moment's batch aggregates by name."""
    return m.as_batch()


def pairs(chunk: int, cached: int = 0) -> float:
    """Causal query-key pairs of `chunk` new tokens after `cached` ones."""
    return chunk * cached + chunk * (chunk + 1) / 2


def test_kv_blocks_is_the_ceiling():
    kv = KVCache(10, 16)
    assert [kv.blocks(t) for t in (0, 1, 15, 16, 17, 32, 33)] == [0, 1, 1, 1, 2, 2, 3]


def test_static_reserves_whole_requests_and_waits_for_the_batch():
    # blocks of 4 tokens: prompt + output need 4, 6 and 8 blocks; 12 hold the first two only
    s, log = make("static", [10, 20, 30], [3, 2, 1], blocks=12, block_size=4)
    m = s.schedule()
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens, B(m).prefill_pairs) == (PREFILL, 2, 30, pairs(10) + pairs(20))
    assert (B(m).decode_seqs, B(m).logits, m.running, s.kv.used) == (0, 2, 2, 10)
    s.on_step_done(m, 1.0)
    assert log.first_token_s[:2].tolist() == [1.0, 1.0] and s.decode.seqs == 2
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx, B(m).logits) == (DECODE, 2, 10 + 20, 2)
    s.on_step_done(m, 2.0)  # request 1 has its 2 tokens: its 6 blocks come back
    assert log.finish_s[1] == 2.0 and s.kv.used == 4
    m = s.schedule()  # request 2 would fit now (8 free), but the batch is not over
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 1, 11)
    s.on_step_done(m, 3.0)
    assert log.finish_s[0] == 3.0 and s.kv.used == 0
    m = s.schedule()
    assert (m.kind, B(m).prefill_tokens, B(m).prefill_pairs) == (PREFILL, 30, pairs(30))
    s.on_step_done(m, 4.0)  # one output token: the first is the last
    assert log.first_token_s[2] == log.finish_s[2] == 4.0
    assert s.schedule() is None and s.drained and s.outstanding == 0


def test_continuous_token_budget_and_prefills_first():
    s, log = make("continuous", [100, 100, 100], [3, 3, 3], blocks=100, max_batched_tokens=250)
    assert s.max_prompt_tokens == 250
    m = s.schedule()  # the third prompt would exceed 250 tokens
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens, B(m).logits, m.running) == (PREFILL, 2, 200, 2, 2)
    s.on_step_done(m, 1.0)
    m = s.schedule()  # vLLM v0: a waiting prompt runs before the next decode step
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens, m.running) == (PREFILL, 1, 100, 3)
    s.on_step_done(m, 2.0)
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 3, 300)
    s.on_step_done(m, 3.0)
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 3, 303)
    s.on_step_done(m, 4.0)
    assert log.first_token_s.tolist() == [1.0, 1.0, 2.0] and log.finish_s.tolist() == [4.0, 4.0, 4.0]
    assert s.schedule() is None and s.drained


def test_continuous_preempts_the_newest_when_a_step_needs_blocks():
    # 8-token prompts fill 2 blocks of 4 each; with 5 blocks the first decode step needs 2 new
    # blocks and finds 1: the newest request is preempted (recompute) and its 2 blocks come back
    s, log = make("continuous", [8, 8], [10, 10], blocks=5, block_size=4)
    s.on_step_done(s.schedule(), 1.0)
    assert s.kv.used == 4 and s.decode.new_blocks() == 2
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 1, 8)
    assert log.preemptions.tolist() == [0, 1] and list(s.waiting) == [1] and s.recompute == {1: 1}
    assert s.kv.used == 3
    s.on_step_done(m, 2.0)
    # its re-prefill (8 prompt + 1 generated = 3 blocks) does not fit the 2 free: decode goes on
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 1, 9)


def test_continuous_swap_charges_the_transfer_to_the_next_moment():
    s, log = make("continuous", [8, 8], [10, 10], blocks=5, block_size=4, preemption="swap")
    s.on_step_done(s.schedule(), 1.0)
    m = s.schedule()
    assert s.swapped == {1: (8, 1)} and list(s.waiting) == [1]
    assert m.extra_s == pytest.approx(2 * 1e-3) and s.swap_s == 0.0  # 2 blocks copied out, charged once


def test_chunked_mixes_decodes_and_chunks_within_the_budget():
    s, log = make("chunked", [10, 10, 100], [5, 5, 5], blocks=100, max_batched_tokens=64)
    assert s.max_prompt_tokens is None
    m = s.schedule()  # two whole prompts and a 44-token chunk of the third
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens) == (PREFILL, 3, 64)
    assert (B(m).prefill_pairs, B(m).logits, m.running) == (2 * pairs(10) + pairs(44), 2, 3)
    s.on_step_done(m, 1.0)
    assert log.first_token_s[:2].tolist() == [1.0, 1.0] and np.isnan(log.first_token_s[2])
    m = s.schedule()  # 2 decodes + the remaining 56 tokens after 44 cached
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (MIXED, 2, 20)
    assert (B(m).prefill_seqs, B(m).prefill_tokens, B(m).prefill_ctx, B(m).prefill_pairs) == (1, 56, 44, pairs(56, 44))
    assert (B(m).logits, m.running, B(m).decode_seqs + B(m).prefill_tokens) == (3, 3, 58)
    s.on_step_done(m, 2.0)
    assert log.first_token_s[2] == 2.0 and not s.prefilling and s.decode.seqs == 3


def test_chunked_caps_the_batch_at_the_token_budget():
    s, _ = make("chunked", [1] * 10, [5] * 10, blocks=100, max_batched_tokens=4, max_batch_size=64)
    assert s.max_batch_size == 4
    assert B(s.schedule()).prefill_seqs == 4


def test_prefix_caching_skips_a_resident_prefix_and_static_never_shares():
    # a 32-token shared prefix = 2 blocks of 16; request 1 comes after request 0 finished
    s, log = make("continuous", [40, 40], [1, 1], blocks=100, prefix=(7, 32), add=False, prefix_caching=True)
    s.add(0)
    m = s.schedule()
    assert (B(m).prefill_tokens, B(m).prefill_ctx) == (40, 0)
    s.on_step_done(m, 1.0)
    assert s.kv.used == 2 and s.kv.evictable == 2  # the prefix stays, unused, evictable
    s.add(1)
    m = s.schedule()
    assert (B(m).prefill_tokens, B(m).prefill_ctx, B(m).prefill_pairs) == (8, 32, pairs(8, 32))
    static, _ = make("static", [40], [1], blocks=100, prefix=(7, 32), prefix_caching=True)
    assert not static.prefix_caching and B(static.schedule()).prefill_tokens == 40


def test_routers():
    class Fake:
        def __init__(self, outstanding):
            self.outstanding = outstanding
    rr = ROUTERS["round_robin"]([Fake(0)] * 3)
    assert [rr.route(i) for i in range(5)] == [0, 1, 2, 0, 1]
    scheds = [Fake(2), Fake(0), Fake(0)]
    lo = ROUTERS["least_outstanding"](scheds)
    assert lo.route(0) == 1  # the fewest, the first of a tie
    scheds[1].outstanding = 5
    assert lo.route(1) == 2
    assert ROUTERS["least_outstanding"]([Fake(9)]).route(0) == 0


@settings(max_examples=60, deadline=None)
@given(bs=st.integers(1, 8), ops=st.lists(st.tuples(st.sampled_from("eal"), st.integers(1, 40), st.integers(1, 9)),
                                          max_size=60))
def test_decode_set_matches_requests_advanced_one_by_one(bs, ops):
    """The O(1) sums, new-block counts and finishers equal those of requests kept one by one."""
    d = DecodeSet(bs)
    plain: dict[int, list[int]] = {}  # request -> [cached, generated, remaining]
    nxt = 0
    for op, cached, remaining in ops:
        if op == "e":
            d.enter(nxt, cached, 1, remaining, token=nxt + 1, prefix_blocks=0, prefix_id=-1)
            plain[nxt] = [cached, 1, remaining]
            nxt += 1
        elif op == "l" and plain:
            i = sorted(plain)[cached % len(plain)]
            c, g, _ = plain.pop(i)
            assert d.leave(i)[:2] == (c, g)
        else:
            assert d.context == sum(v[0] for v in plain.values())
            assert d.new_blocks() == sum(1 for v in plain.values() if v[0] % bs == 0)
            for v in plain.values():
                v[0] += 1
                v[1] += 1
                v[2] -= 1
            done = [i for i, v in plain.items() if v[2] == 0]
            assert sorted(d.advance()) == done
            for i in done:
                d.leave(i)
                del plain[i]
        assert d.seqs == len(plain)


@pytest.mark.parametrize("kind", ["continuous", "chunked"])
def test_a_swapped_request_that_fills_the_cache_comes_back_when_nothing_runs(kind):
    """The 1 % watermark keeps room only while something runs: a request swapped out holding all
    300 blocks (4,799 tokens in blocks of 16: its next token fits the last one) returns to an
    empty engine, and its blocks' copy back in is charged to that moment (300 x 1 ms here)."""
    s, log = make(kind, [4784], [20], blocks=300, add=False)
    assert s.watermark == 3
    s.swapped[0] = (4799, 15)  # tokens with KV, tokens generated
    s.add(0)
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx, s.kv.used) == (DECODE, 1, 4799, 300)
    assert m.extra_s == pytest.approx(0.3)


@pytest.mark.parametrize("kind", ["continuous", "chunked"])
def test_a_prompt_that_fills_the_cache_is_admitted_when_nothing_runs(kind):
    """No watermark when nothing runs: a 4,799-token prompt (300 blocks of 16, all of them)."""
    s, _ = make(kind, [4799], [2], blocks=300, max_batched_tokens=8192)
    m = s.schedule()
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens, s.kv.used) == (PREFILL, 1, 4799, 300)


def test_continuous_admits_prompts_that_fill_the_token_budget_exactly():
    # budget 300: 100 + 200 tokens fill it, the third prompt (1 token) waits for the next step
    s, _ = make("continuous", [100, 200, 1], [5, 5, 5], blocks=1000, max_batched_tokens=300, block_size=16)
    m = s.schedule()
    assert (B(m).prefill_seqs, B(m).prefill_tokens, list(s.waiting)) == (2, 300, [2])


def test_prefill_first_runs_chunks_alone_then_decodes():
    # SGLang: while prompts wait, a step computes up to 64 prompt tokens and no decode
    s, log = make("prefill_first", [10, 100], [3, 3], blocks=100, max_batched_tokens=64)
    assert s.max_prompt_tokens is None  # any prompt runs, a chunk at a time
    m = s.schedule()  # prompt 0 whole, 54 tokens of prompt 1
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens, B(m).logits) == (PREFILL, 2, 64, 1)
    assert (B(m).prefill_pairs, B(m).decode_seqs) == (pairs(10) + pairs(54), 0)
    s.on_step_done(m, 1.0)
    m = s.schedule()  # the rest of prompt 1 before request 0's first decode
    assert (m.kind, B(m).prefill_tokens, B(m).prefill_ctx, B(m).decode_seqs) == (PREFILL, 46, 54, 0)
    s.on_step_done(m, 2.0)
    assert log.first_token_s.tolist() == [1.0, 2.0]
    m = s.schedule()
    assert (m.kind, B(m).decode_seqs, B(m).decode_ctx) == (DECODE, 2, 110)


def test_mixed_takes_whole_prompts_with_the_decodes():
    # TensorRT-LLM without chunked context: decodes plus whole prompts within the budget
    s, log = make("mixed", [30, 30, 50], [4, 4, 4], blocks=100, max_batched_tokens=64)
    assert s.max_prompt_tokens == 64
    m = s.schedule()  # 30 + 30 fit, 50 more would not: it waits whole
    assert (m.kind, B(m).prefill_seqs, B(m).prefill_tokens) == (PREFILL, 2, 60)
    s.on_step_done(m, 1.0)
    m = s.schedule()  # 2 decodes + 50 = 52 tokens
    assert (m.kind, B(m).decode_seqs, B(m).prefill_seqs, B(m).prefill_tokens) == (MIXED, 2, 1, 50)


def test_guaranteed_no_evict_reserves_prompt_and_output_and_never_preempts():
    # blocks of 4: each request reserves ceil((8 + 10) / 4) = 5 blocks at admission; 9 hold one
    s, log = make("chunked", [8, 8], [10, 10], blocks=9, block_size=4, guaranteed_no_evict=True)
    m = s.schedule()
    assert (B(m).prefill_seqs, s.kv.used) == (1, 5)  # the second waits for the first's blocks
    for t in range(1, 11):
        s.on_step_done(m, float(t))
        m = s.schedule()
        if t < 10:
            assert (m.kind, B(m).decode_seqs, s.kv.used) == (DECODE, 1, 5)  # no growth, nobody preempted
    assert log.finish_s[0] == 10.0 and log.preemptions.sum() == 0
    assert (B(m).prefill_seqs, s.kv.used) == (1, 5)  # now the second
    # the plain scheduler with the same blocks admits both and must preempt one as they grow
    p, plog = make("chunked", [8, 8], [10, 10], blocks=9, block_size=4)
    for t in range(1, 12):
        m = p.schedule()
        p.on_step_done(m, float(t))
    assert plog.preemptions.sum() >= 1


def test_multi_step_admits_between_blocks_and_streams_at_their_end():
    # vLLM V0 num_scheduler_steps 3: a block of 3 decode steps admits nobody and streams at its end
    s, log = make("continuous", [4, 4], [5, 4], blocks=100, add=False, num_scheduler_steps=3)
    s.add(0)
    m = s.schedule()
    s.on_step_done(m, 1.0)  # request 0's first token
    kinds = []
    for t in range(2, 5):
        m = s.schedule()
        if t == 2:
            s.add(1)  # arrives during the block
        kinds.append((m.kind, B(m).decode_seqs, m.held))
        s.on_step_done(m, float(t))
    assert kinds == [(DECODE, 1, True), (DECODE, 1, True), (DECODE, 1, False)]
    m = s.schedule()  # the block is over: request 1's prefill
    assert (m.kind, B(m).prefill_seqs) == (PREFILL, 1)
    s.on_step_done(m, 5.0)
    for t in range(6, 9):  # a block of both: 0 gets its last token at its first step, streamed at its end
        m = s.schedule()
        s.on_step_done(m, float(t))
    assert log.finish_s.tolist() == [8.0, 8.0] and s.schedule() is None and s.drained


# -- found by mutation testing of the schedulers (benchmarks/mutation-equivalent.md) -------------

@pytest.mark.parametrize("kind", ["continuous", "chunked", "prefill_first"])
@pytest.mark.parametrize("steps", [1, 2])
def test_one_requests_moments_in_blocks_of_one_and_two_steps_by_hand(kind, steps):
    """4 prompt tokens, 5 outputs: a prefill (4 x 5 / 2 = 10 causal pairs, one logit row) gives the
    first token, then decodes at contexts 4, 5, 6, 7 with nothing else in their batch. In blocks of
    2 steps the first of each block holds its token until the block's end; a request arriving
    after the last block is admitted at once."""
    s, log = make(kind, [4, 3], [5, 2], blocks=100, add=False, num_scheduler_steps=steps)
    s.add(0)
    m = s.schedule()
    assert (m.kind, m.batch) == (PREFILL, (0, 0, 1, 4, 10.0, 0, 1))
    s.on_step_done(m, 1.0)
    batches, held = [], []
    for t in range(2, 6):
        m = s.schedule()
        batches.append((m.kind, m.batch))
        held.append(m.held)
        s.on_step_done(m, float(t))
    assert batches == [(DECODE, (1, c, 0, 0, 0.0, 0, 1)) for c in (4, 5, 6, 7)]
    assert held == ([True, False, True, False] if steps == 2 else [False] * 4)
    assert log.finish_s[0] == 5.0 and (s.outstanding, s.block_left) == (0, 0)
    s.add(1)
    m = s.schedule()
    assert (m.kind, m.batch[2:4]) == (PREFILL, (1, 3))


def test_a_preemption_that_leaves_others_running_does_not_restart_the_block():
    # blocks of 4 tokens, 4 blocks: two 7-token prompts (2 blocks each) fill the cache; in a block
    # of 3 steps the second decode step needs a third block for each, so the newest is preempted
    # (recompute) and the other finishes the block: held, held, then streamed
    s, log = make("continuous", [7, 7], [10, 10], blocks=4, block_size=4, num_scheduler_steps=3)
    m = s.schedule()
    assert (m.kind, m.batch[2]) == (PREFILL, 2)
    s.on_step_done(m, 1.0)
    held = []
    for t in range(2, 5):
        m = s.schedule()
        held.append((m.batch[0], m.held))
        s.on_step_done(m, float(t))
    assert held == [(2, True), (1, True), (1, False)] and log.preemptions.tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["continuous", "chunked"])
def test_guaranteed_no_evict_admits_exactly_what_the_budget_and_the_cache_hold(kind):
    # a reservation of prompt + output: 4,798 + 2 tokens in blocks of 16 is exactly the 300 blocks
    s, _ = make(kind, [4798], [2], blocks=300, guaranteed_no_evict=True, max_batched_tokens=8192)
    m = s.schedule()
    assert m is not None and m.kind == PREFILL and s.kv.used == 300
    # prompts of 100 and 200 fill a budget of 300 exactly (continuous: whole prompts)
    s, _ = make("continuous", [100, 200, 1], [5, 5, 5], blocks=1000, max_batched_tokens=300, guaranteed_no_evict=True)
    m = s.schedule()
    assert (m.batch[2], m.batch[3]) == (2, 300)
    # chunked: a prompt longer than the budget runs a budget's chunk, its whole reservation held
    s, _ = make("chunked", [100], [2], blocks=100, max_batched_tokens=64, guaranteed_no_evict=True)
    m = s.schedule()
    assert (m.batch[3], s.kv.used) == (64, 7)  # ceil(102 / 16) blocks


def test_a_mid_prefill_prompt_gets_a_one_token_chunk_when_one_token_of_budget_is_left():
    # budget 4: four one-token prompts first (each its first token), then three decodes leave one
    # token of budget, which the fourth prompt (10 tokens) takes as its next chunk
    s, _ = make("chunked", [1, 1, 1, 10], [5, 5, 5, 5], blocks=100, max_batched_tokens=4)
    m = s.schedule()
    assert (m.kind, m.batch[2], m.batch[3]) == (PREFILL, 4, 4)  # the fourth prompt's first chunk is 1 token
    s.on_step_done(m, 1.0)
    m = s.schedule()
    assert (m.kind, m.batch[0], m.batch[2], m.batch[3]) == (MIXED, 3, 1, 1)


@pytest.mark.parametrize("kind", ["chunked", "prefill_first"])
def test_a_starved_mid_prefill_request_is_restarted_in_the_same_step(kind):
    # two prompts mid-prefill (64 of 100 tokens each) hold all 8 blocks and neither can grow: the
    # newest gives its blocks back and is recomputed later, the older takes its last 36 tokens now
    from simulator.serving.schedulers.base import Prefill

    s, log = make(kind, [100, 100], [2, 2], blocks=8, max_batched_tokens=64, add=False)
    assert s.kv.alloc(8)
    for i in (0, 1):
        s.prefilling[i] = Prefill(i, 64, 100, 0, 0, -1, token=i + 1)
    s.newest, s.admissions = [(1, 0), (2, 1)], 2
    m = s.schedule()
    assert m is not None and (m.kind, m.batch[2], m.batch[3]) == (PREFILL, 1, 36)
    assert list(s.waiting) == [1] and log.preemptions.tolist() == [0, 1]


def test_stale_candidates_are_dropped_and_recomputed_tokens_counted_once():
    from simulator.serving.schedulers.base import Prefill

    s, log = make("chunked", [100], [5], blocks=100, max_batched_tokens=64)
    s.schedule()  # request 0 mid-prefill: a live candidate
    s._drop_stale()
    assert s.newest == [(1, 0)]
    # it had computed 16 tokens before a preemption; a chunk of 8 from 16 recomputes nothing
    s.computed[0] = 16
    s._recomputed(Prefill(0, 16, 100, 0, 0, -1), 8)
    assert 0 not in s.computed and log.recomputed == [0, 0, 0.0, 0]
    # a chunk of 8 from 12 recomputes the 4 tokens it had up to 16 (after 12 cached)
    s.computed[0] = 16
    s._recomputed(Prefill(0, 12, 100, 0, 0, -1), 8)
    assert 0 not in s.computed and log.recomputed == [1, 4, 4 * 12 + 4 * 5 / 2, 12]


@pytest.mark.parametrize("kind", ["chunked", "prefill_first"])
def test_a_swap_in_counts_the_prompts_mid_prefill_for_seats_and_the_reserve(kind):
    """Request 0 decodes and request 1 is mid-prefill (56 of 100 tokens, 4 blocks; 95 of 100 blocks
    free). A swapped-out request at the head of the queue comes back only if a seat is free
    (2 sequences running fill max_batch_size 2) and its blocks leave the 1 % reserve (1 block)."""
    def setup(**sv):
        s, log = make(kind, [8, 100, 1000], [10, 10, 2000], blocks=100, max_batched_tokens=64, add=False, **sv)
        s.add(0)
        s.add(1)
        s.on_step_done(s.schedule(), 1.0)
        assert (s.decode.seqs, list(s.prefilling), s.kv.available) == (1, [1], 95)
        return s

    s = setup(max_batch_size=2)
    s.swapped[2] = (8, 1)  # 1 block: room, but no seat
    s.add(2)
    s.schedule()
    assert 2 in s.swapped and s.decode.seqs == 1
    s = setup()
    s.swapped[2] = (95 * 16 - 5, 3)  # 95 blocks: all that is free, none left for the reserve
    s.add(2)
    s.schedule()
    assert 2 in s.swapped and s.decode.seqs == 1


def test_a_request_that_ends_on_a_held_step_leaves_when_its_block_ends():
    # 2 outputs in blocks of 2 steps: its prefill gives the first token, its second comes on the
    # block's first (held) step; it leaves the replica there (the block ends early: nobody is
    # left), the router's count drops to 0 and the next request is admitted at once
    s, log = make("continuous", [4, 3], [2, 2], blocks=100, add=False, num_scheduler_steps=2)
    s.add(0)
    s.on_step_done(s.schedule(), 1.0)
    m = s.schedule()
    assert (m.kind, m.batch[:2], m.held, s.outstanding, s.block_left) == (DECODE, (1, 4), True, 1, 1)
    s.on_step_done(m, 2.0)
    assert log.finish_s[0] == 2.0 and (s.outstanding, s.block_left) == (0, 0)
    s.add(1)
    assert s.schedule().kind == PREFILL
