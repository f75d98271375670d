"""What every scheduler shares, and the Moment record a scheduler hands the engine.

A scheduler owns one engine's requests: the waiting queue, the paged KV cache, the decode set,
requests mid-prefill, and those preempted (by recompute or by swap). The engine calls two
methods in a loop, as vLLM V1's EngineCore does:

    moment = scheduler.schedule()          # None: nothing can run, wait for an arrival
    ... the moment lasts the cost model's step_s(moment) + moment.extra_s ...
    scheduler.on_step_done(moment, now)    # tokens produced, prefills finished, KV released

A policy (static.py, continuous.py, chunked.py) writes only `schedule()`: which requests run in
the next moment. Its differences from the others are class attributes (`preemptible`,
`shares_prefixes`) or one overridden hook (`_release`). The mechanics are here, shared: admission
by free KV blocks (`_admit`), growing the decode set by a step's new blocks and preempting the
newest request when they do not fit (`_grow_decode`, `_preempt_one`), swapping back in
(`_swap_in`), and what happens when a prefill or a decode ends (`on_step_done`, `_prefilled`).
Requests are indices; their lengths come from the RequestLog, which also records each event.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.moment.ops import Batch
from simulator.serving.decodeset import DecodeSet
from simulator.serving.kvcache import FAIL, KVCache
from simulator.serving.queues import KeyedQueue, waiting_queue

if TYPE_CHECKING:
    from simulator.serving.result import RequestLog
    from simulator.serving.scenario import Serving

PREFILL, DECODE, MIXED = 0, 1, 2  # Moment.kind, moments["kind"]
NO_PREFIX = (0, -1)  # (prefix blocks, prefix id) of a request that shares none
ADMIT_WATERMARK = 0.01  # vLLM: keep 1% of blocks free when admitting, unless nothing runs


class Prefill:
    """A request whose prompt (after a recompute preemption: prompt + generated tokens) is being
    computed: `done` of its `target` tokens have KV."""

    __slots__ = ("request", "done", "target", "generated", "prefix_blocks", "prefix_id", "token")

    def __init__(self, request: int, done: int, target: int, generated: int, prefix_blocks: int,
                 prefix_id: int, token: int = 0):
        self.request = request
        self.done = done                    # tokens with KV (a cached prefix counts)
        self.target = target                # tokens to have KV before the next token comes out
        self.generated = generated          # output tokens before this prefill (0: a new request)
        self.prefix_blocks = prefix_blocks  # blocks of a shared prefix it holds (0: none)
        self.prefix_id = prefix_id          # that prefix (-1: none)
        self.token = token                  # admission token when it can be preempted mid-prefill


@dataclass(slots=True)
class Moment:
    """One forward pass as a scheduler planned it: the batch aggregates the cost model needs and
    the work `on_step_done` applies when it ends."""

    kind: int
    """PREFILL (prefill chunks, no decodes), DECODE (decode tokens only) or MIXED (both)."""
    batch: tuple[int, int, int, int, float, int, int]
    """ops.Batch's fields in its order, the arguments of StepModel.step_agg: decode_seqs (sequences
    producing one token each), decode_ctx (the sum of their cached tokens), prefill_seqs (chunks),
    prefill_tokens (new tokens in them), prefill_pairs (their causal query-key pairs),
    prefill_ctx (the sum of tokens cached before each chunk), logits (rows through the LM head:
    decodes and chunks that end a prefill). speed: a plain tuple, built in C and passed on with
    one unpacking; `as_batch()` names the fields."""
    running: int
    """Requests holding KV on this engine during the moment."""
    prefills: list[tuple[Prefill, int]] | tuple = ()
    """(prefill, its tokens in this moment) for each chunk."""
    extra_s: float = 0.0
    """Host<->device swap transfers charged to this moment."""
    held: bool = False
    """Its tokens are held back until a later moment streams them (a multi-step block's earlier steps)."""

    def as_batch(self) -> Batch:
        return Batch(*self.batch)


class Scheduler:
    """The shared state and mechanics of one engine's scheduler; a policy adds `schedule()`."""

    preemptible = True      # running requests may be evicted when the KV cache runs out
    shares_prefixes = True  # prefix caching applies (a policy reserving whole requests cannot share)
    in_flight = 0           # requests whose blocks wait on something outside (a KV transfer): nothing
    #                         may be runnable until it ends (schedulers/disaggregated.py)

    def __init__(self, serving: Serving, requests: RequestLog, blocks: int, swap_s_per_block: float,
                 kv: KVCache | None = None, seed: int = 0):
        self.requests = requests
        self.seed = seed                          # for a policy's own draws (speculative acceptance)
        self.prompt_len, self.output_len = requests.prompt_len, requests.output_len
        self.max_batch_size = serving.max_batch_size
        self.max_batched_tokens = serving.max_batched_tokens
        self.max_prompt_tokens: int | None = None  # longer prompts are rejected on arrival
        self.block_size = serving.block_size
        self.kv = kv if kv is not None else KVCache(blocks, serving.block_size)
        self.watermark = int(ADMIT_WATERMARK * blocks)
        self.swap = serving.preemption == "swap"
        # guaranteed_no_evict (TensorRT-LLM): admission reserves the prompt and the whole output, so
        # a request never grows, never shares a prefix and is never preempted
        self.reserve = serving.guaranteed_no_evict
        self.prefix_caching = serving.prefix_caching and self.shares_prefixes and not self.reserve
        self.swap_s_per_block = swap_s_per_block
        self.waiting: deque[int] | KeyedQueue = waiting_queue(serving.queue, requests)
        self.outstanding = 0                      # routed here and not finished
        self.decode = DecodeSet(serving.block_size)
        self.prefilling: dict[int, Prefill] = {}  # admitted, prompt not yet computed (chunked)
        self.recompute: dict[int, int] = {}       # preempted by recompute: tokens generated so far
        self.computed: dict[int, int] = {}        # preempted, KV dropped: tokens it had (computed again on return)
        self.preempted = False                    # a preemption in the step being planned
        self.swapped: dict[int, tuple[int, int]] = {}  # preempted by swap: (tokens cached, generated)
        self.admissions = 0                       # the last admission token handed out
        self.newest: list[tuple[int, int]] = []   # (token, request) in admission order: preemption victims
        self.swap_s = 0.0                         # transfers not yet charged to a moment
        self.steps = serving.num_scheduler_steps  # vLLM V0 multi-step: decode steps per scheduling
        self.block_left = 0                       # steps left in the current multi-step block
        self.held: list[int] = []                 # finished in a block whose tokens are not yet streamed
        self.lookup_tokens = 0                    # prompt tokens admitted (prefix cache lookups)...
        self.hit_tokens = 0                       # ...and those found cached

    # -- the interface -------------------------------------------------------------------------------
    def add(self, i: int) -> None:
        """A request was routed here."""
        self.waiting.append(i)
        self.outstanding += 1

    def schedule(self) -> Moment | None:
        """The next moment, with its KV blocks allocated; None when nothing can run."""
        raise NotImplementedError

    def on_step_done(self, m: Moment, now: float) -> None:
        """Moment m ended at `now`: each decode got a token, chunks were computed."""
        if m.kind != PREFILL:  # decodes got a token
            d = self.decode
            for i in d.advance():
                cached, _generated, pb, pid = d.leave(i)
                self._release(i, cached, pb, pid)
                if m.held:
                    self.held.append(i)
                    self.outstanding -= 1
                else:
                    self._finish(i, now)
            if self.steps > 1:
                if not d.seqs:  # the block ends with its last sequence
                    self.block_left = 0
                if self.held and not self.block_left:  # the block's tokens reach the client
                    for i in self.held:
                        self.requests.finish(i, now)
                    self.held.clear()
        for st, tokens in m.prefills:
            st.done += tokens
            if st.done < st.target:
                continue
            self.prefilling.pop(st.request, None)
            self._prefilled(st, now)

    @property
    def drained(self) -> bool:
        """Nothing runs, nothing is swapped out, every block is back (cached prefixes may stay)."""
        kv = self.kv
        return not (self.decode.seqs or self.prefilling or self.swapped) and kv.free + kv.evictable == kv.capacity

    # -- the end of a prefill and of a request ---------------------------------------------------------
    def _prefilled(self, st: Prefill, now: float) -> None:
        """A prefill ended: the request has its first (or next) token; decode or finish."""
        i = st.request
        if st.generated == 0:
            self.requests.first_token(i, now)
        g = st.generated + 1
        if g >= self.output_len[i]:
            self._release(i, st.target, st.prefix_blocks, st.prefix_id)
            self._finish(i, now)
        else:
            self._enter_decode(i, st.target, g, st.prefix_blocks, st.prefix_id)

    def _enter_decode(self, i: int, cached: int, generated: int, pb: int, pid: int) -> None:
        self.admissions = token = self.admissions + 1
        self.decode.enter(i, cached, generated, self.output_len[i] - generated, token, pb, pid)
        if self.preemptible:
            self._candidate(token, i)

    def _release(self, i: int, cached: int, pb: int, pid: int) -> None:
        """Give back a request's blocks: its own, and its use of a shared prefix."""
        if self.reserve:  # what admission reserved, whatever the request used
            self.kv.release(self.kv.blocks(self.prompt_len[i] + self.output_len[i]))
            return
        self.kv.release(self.kv.blocks(cached) - pb)
        if pid >= 0:
            self.kv.release_prefix(pid)

    def _finish(self, i: int, now: float) -> None:
        self.requests.finish(i, now)
        self.outstanding -= 1

    # -- admission -----------------------------------------------------------------------------------
    def _prefix(self, i: int) -> tuple[int, int]:
        """(blocks, id) of the shared prefix request i can use; (0, -1) if none or if prefix
        caching is off."""
        if not self.prefix_caching:
            return NO_PREFIX
        pid = self.requests.prefix_id[i]
        plen = self.requests.prefix_len[i]
        if pid >= 0 and plen >= self.block_size:
            return plen // self.block_size, pid
        return NO_PREFIX

    def _admit(self, i: int, n_seq: int, chunk_room: int, whole_limit: int = 0) -> tuple[Prefill, int] | None:
        """Take request i (the head of the queue) with blocks for its (first) prefill chunk of at
        most chunk_room tokens, or (chunk_room -1) for its whole prefill if at most whole_limit
        tokens are left to compute. Returns its Prefill (done: tokens cached before) and the
        chunk's tokens; None, and nothing changed, if it does not fit."""
        kv, bs = self.kv, self.block_size
        g_prev = self.recompute.get(i, 0)
        target = self.prompt_len[i] + g_prev
        pb, pid = self._prefix(i) if self.prefix_caching else NO_PREFIX  # speed: no call when off
        cached = pb * bs if pid >= 0 and kv.resident(pid) else 0
        room = kv.available - pb - (self.watermark if n_seq else 0)  # blocks for its own tokens
        if self.reserve:  # the prompt and the whole output, at once
            ln = target if chunk_room < 0 else min(target, chunk_room)
            own = kv.blocks(self.prompt_len[i] + self.output_len[i])
            if (chunk_room < 0 and ln > whole_limit) or own > room:
                return None
        elif chunk_room < 0:
            ln = target - cached
            own = kv.blocks(target) - pb
            if ln > whole_limit or own > room:
                return None
        else:  # vLLM v1: the chunk the token budget allows, if its blocks are free; never a sliver
            ln = min(target - cached, chunk_room)
            if kv.blocks(cached + ln) - pb > room:
                return None
            own = kv.blocks(cached + ln) - pb
        if pid >= 0 and kv.acquire_prefix(pid, pb) == FAIL:  # cannot fail: room counted pb
            return None
        kv.alloc(own)
        self.waiting.popleft()
        self.recompute.pop(i, None)
        self.lookup_tokens += target
        self.hit_tokens += cached
        return Prefill(i, cached, target, g_prev, pb, pid), ln

    def _swap_in(self, i: int, n_seq: int) -> bool:
        """Bring a swapped-out request (the head of the queue) back into the decode set if its
        blocks fit."""
        cached, generated = self.swapped[i]
        kv = self.kv
        pb, pid = self._prefix(i)
        own = kv.blocks(cached) - pb
        # guaranteed_no_evict: the prompt and the whole output, as at admission (a decode pool's
        # request arrives with its KV; _release gives back what admission reserved)
        take = kv.blocks(self.prompt_len[i] + self.output_len[i]) if self.reserve else own
        if kv.available < take + pb + (self.watermark if n_seq else 0):
            return False
        if pid >= 0:
            kv.acquire_prefix(pid, pb)
        kv.alloc(take)
        del self.swapped[i]
        self.waiting.popleft()
        self.swap_s += (own + pb) * self.swap_s_per_block
        self._enter_decode(i, cached, generated, pb, pid)
        return True

    def _chunks(self, rest: int, decodes: int, split: bool = True) -> list[tuple[Prefill, int]]:
        """This step's prompt chunks within `rest` tokens, with their blocks: prompts mid-prefill
        continue first (oldest first; vLLM v1: the chunk the budget allows or none this step,
        never a sliver of whatever blocks are free), then requests at the head of the queue start
        while the step holds fewer than max_batch_size sequences (`decodes` of them decode). A
        swapped-out request at the head, a multi-step block, or a step that had to preempt one
        (vLLM v1: a new request would take the freed blocks and be the next victim) admits
        nobody; without `split` a prompt starts only if it fits whole."""
        kv, pre, w = self.kv, self.prefilling, self.waiting
        chunks: list[tuple[Prefill, int]] = []
        if not pre and not w:  # speed: nothing to prefill (most decode steps)
            return chunks
        for st in pre.values():
            if rest <= 0:
                break
            done = st.done
            ln = min(st.target - done, rest)
            if not self.reserve and not kv.alloc(kv.blocks(done + ln) - kv.blocks(done)):
                continue  # reserved at admission, or its blocks are not free
            chunks.append((st, ln))
            rest -= ln
        n_seq = decodes + len(pre)
        blocked = self.preempted and (decodes or chunks) or self.block_left
        while rest > 0 and w and n_seq < self.max_batch_size and not blocked:
            i = w[0]
            if i in self.swapped:  # swapped requests rejoin first, as decodes
                break
            # whole prompts: within the budget, but a lone re-prefill of prompt + generated after a
            # recompute preemption may exceed it (as in continuous.py), or it could never rejoin
            got = (self._admit(i, n_seq, rest) if split
                   else self._admit(i, n_seq, -1, rest if decodes or chunks else 1 << 62))
            if got is None:
                break
            st, ln = got
            self.admissions = st.token = self.admissions + 1
            pre[i] = st
            self._candidate(st.token, i)
            chunks.append(got)
            rest -= ln
            n_seq += 1
        return chunks

    def _chunk_sums(self, chunks: list[tuple[Prefill, int]]) -> tuple[int, float, int, int]:
        """A step's prompt chunks as batch aggregates: new tokens, causal query-key pairs, tokens
        cached before them, and how many end their prefill (each a logit row); tokens computed
        again after a preemption are counted (_recomputed)."""
        pt = 0
        pairs = 0.0
        pc = 0
        completing = 0
        for st, ln in chunks:
            c = st.done
            pt += ln
            pairs += ln * c + ln * (ln + 1) / 2
            pc += c
            completing += c + ln == st.target
            if self.computed:
                self._recomputed(st, ln)
        return pt, pairs, pc, completing

    # -- KV pressure ---------------------------------------------------------------------------------
    def _grow_decode(self) -> None:
        """Blocks for this decode step's new tokens; preempt until they fit."""
        if self.reserve:  # reserved at admission
            return
        kv, d = self.kv, self.decode
        while not kv.alloc(d.due[d.step % self.block_size]):  # speed: d.new_blocks() inlined
            if not self._preempt_one():
                raise RuntimeError("KV cache cannot hold the running requests")

    def _candidate(self, token: int, i: int) -> None:
        """Request i, admitted under `token`, is the newest preemption candidate. Candidates that
        finished or were preempted since stay listed until they outnumber the running requests
        (checked here, where the list grows, not on every decode step)."""
        self.newest.append((token, i))
        if len(self.newest) > 2 * (self.decode.seqs + len(self.prefilling)) + 64:
            self._drop_stale()

    def _drop_stale(self) -> None:
        """Forget preemption candidates that finished or were preempted since (their token moved on)."""
        entries, pre = self.decode.entries, self.prefilling  # speed: DecodeSet.holds inline (~600 entries a pass)
        self.newest = [(t, i) for t, i in self.newest
                       if ((e := entries.get(i)) is not None and e.token == t) or (i in pre and pre[i].token == t)]

    def _preempt_one(self) -> bool:
        """Preempt the most recently admitted running request (decoding or mid-prefill): free its
        blocks and put it back at the head of the queue."""
        kv, d, newest, pre = self.kv, self.decode, self.newest, self.prefilling
        while newest:
            token, i = newest.pop()
            if d.holds(i, token):
                cached, generated, pb, pid = d.leave(i)
                own = kv.blocks(cached) - pb
                kv.release(own)
                if pid >= 0:
                    kv.release_prefix(pid)
                if self.swap and self._swap_out(i, own + pb):
                    self.swapped[i] = (cached, generated)
                    self.swap_s += (own + pb) * self.swap_s_per_block  # copy out (prefix too, conservatively)
                else:
                    self.recompute[i] = generated
                    self.computed[i] = max(cached, self.computed.get(i, 0))
            else:
                st = pre.get(i)
                if st is None or st.token != token:
                    continue  # finished or preempted since
                del pre[i]
                kv.release(kv.blocks(st.done) - st.prefix_blocks)
                if st.prefix_id >= 0:
                    kv.release_prefix(st.prefix_id)
                if st.generated:
                    self.recompute[i] = st.generated
                self.computed[i] = max(st.done, self.computed.get(i, 0))
            self.waiting.appendleft(i)
            self.requests.preempted(i)
            self.preempted = True
            if not d.seqs:
                self.block_left = 0
            return True
        return False

    def _swap_out(self, i: int, blocks: int) -> bool:
        """Room in host memory for a preempted sequence's blocks (unbounded here; a CPU tier,
        schedulers/offload.py, may refuse, and the request is recomputed instead)."""
        return True

    def _recomputed(self, st: Prefill, tokens: int) -> None:
        """Count the part of a prefill chunk (`tokens` after st.done) that the request had computed
        before a preemption dropped its KV: work done twice."""
        i = st.request
        had = self.computed.get(i)
        if had is None:
            return
        again = min(st.done + tokens, had) - st.done
        if again > 0:
            self.requests.recompute(st.done, again)
        if st.done + tokens >= had:
            del self.computed[i]

    def _take_swap_s(self) -> float:
        """Swap transfers since the last moment, charged to the one being planned."""
        s, self.swap_s = self.swap_s, 0.0
        return s

    def _decode_moment(self) -> Moment:
        """A moment of the decode set alone (with multi-step, one step of a block: nobody is admitted
        until the block ends, and its tokens stream at its end)."""
        d = self.decode
        n = d.seqs
        extra, self.swap_s = self.swap_s, 0.0  # speed: _take_swap_s inlined (one moment per decode step)
        if self.steps > 1:
            return Moment(DECODE, (n, d.base + n * d.step, 0, 0, 0.0, 0, n), n, (), extra, self._held_step())
        return Moment(DECODE, (n, d.base + n * d.step, 0, 0, 0.0, 0, n), n, (), extra)

    def _held_step(self) -> bool:
        """A decode step of a multi-step block: whether its tokens wait for a later step of the block."""
        if self.steps == 1:
            return False
        self.block_left = (self.block_left or self.steps) - 1
        return self.block_left > 0
