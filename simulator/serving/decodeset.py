"""The requests decoding on one engine, advanced together in O(1) per step.

A decode step gives every sequence in the set one token, so nothing per request needs touching
per step. The set keeps a step counter `step`. A request that enters at step s0 with c0 tokens
cached has c0 + (step - s0) cached later and finishes at a step known on entry, kept in a heap
(only finishers are popped). The sum of cached tokens is `base + seqs * step` (base = sum of
c0 - s0). A sequence needs a new KV block at a step exactly when (s0 - c0) % block_size ==
step % block_size, so a count per residue gives the step's new blocks in one lookup.
SpecDecodeSet (speculative decoding) counts tokens instead of steps.
"""

from __future__ import annotations

import bisect
import heapq
import random
from typing import NamedTuple

NOBODY: tuple[int, ...] = ()  # speed: advance() when no one finishes (most steps) builds no list
_new_tuple = tuple.__new__


class Decoding(NamedTuple):
    """A request's entry in the set, fixed from its entry until it leaves."""

    cached: int         # tokens with KV when it entered
    step: int           # the set's step counter when it entered
    generated: int      # output tokens it had when it entered
    token: int          # its admission token: heap and preemption entries with another are stale
    prefix_blocks: int  # blocks of a shared prefix it holds (0: none)
    prefix_id: int      # that prefix (-1: none)


class DecodeSet:
    """Decoding requests of one engine: counts and sums for the step cost, finishers by step."""

    __slots__ = ("block_size", "seqs", "base", "step", "entries", "due", "_finish")

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.seqs = 0                            # requests in the set
        self.base = 0                            # sum of cached - entry step; see `context`
        self.step = 0                            # decode steps this engine has run
        self.entries: dict[int, Decoding] = {}   # request -> its entry
        self.due = [0] * block_size              # requests by (entry step - cached) % block_size
        self._finish: list[tuple[int, int, int]] = []  # (finishing step, token, request)

    @property
    def context(self) -> int:
        """Sum of the cached tokens of all requests in the set (the decode attention's KV)."""
        return self.base + self.seqs * self.step

    def new_blocks(self) -> int:
        """KV blocks this step's tokens open: one per request whose last block is full."""
        return self.due[self.step % self.block_size]

    def enter(self, request: int, cached: int, generated: int, remaining: int, token: int,
              prefix_blocks: int, prefix_id: int) -> None:
        """Add a request with `cached` tokens of KV that needs `remaining` more decode steps."""
        s = self.step
        heapq.heappush(self._finish, (s + remaining, token, request))
        # speed: tuple.__new__ skips the NamedTuple's Python-level __new__ (once per admission)
        self.entries[request] = _new_tuple(Decoding, (cached, s, generated, token, prefix_blocks, prefix_id))
        self.seqs += 1
        self.base += cached - s
        self.due[(s - cached) % self.block_size] += 1

    def leave(self, request: int) -> tuple[int, int, int, int]:
        """Remove a request: (tokens cached, tokens generated, prefix blocks, prefix id) now."""
        cached, step, generated, _token, prefix_blocks, prefix_id = self.entries.pop(request)
        self.seqs -= 1
        self.base -= cached - step
        self.due[(step - cached) % self.block_size] -= 1
        d = self.step - step
        return cached + d, generated + d, prefix_blocks, prefix_id

    def holds(self, request: int, token: int) -> bool:
        """Is the request in the set under this admission token (not preempted since)?"""
        e = self.entries.get(request)
        return e is not None and e.token == token

    def advance(self) -> list[int] | tuple[int, ...]:
        """A decode step ran: count it; the requests that got their last token (in heap order)."""
        self.step = s = self.step + 1
        heap = self._finish
        if not heap or heap[0][0] > s:
            return NOBODY
        done = []
        entries = self.entries
        while heap and heap[0][0] <= s:
            _f, token, i = heapq.heappop(heap)
            e = entries.get(i)
            if e is not None and e.token == token:  # else preempted since
                done.append(i)
        return done


class SpecDecodeSet(DecodeSet):
    """Speculative decoding: each step gives every sequence the same drawn number of tokens a
    (1 .. k + 1: the accepted drafts and the target's own token), so the closed-form bookkeeping
    holds with `step` counting tokens instead of steps: a request entering at counter s0 with c0
    cached has c0 + (step - s0) cached later, the finish heap is keyed by the counter at which it
    has its last token (it may overshoot that within its last step: the extra tokens are dropped,
    their KV slots freed with the rest), and a step opens one block for each sequence whose cache
    crosses a block boundary within its a new tokens: the sum of the residue counts over the
    window step .. step + a - 1 (O(a) per step).

    One draw per step for all sequences (`a` is drawn when the previous step ends, so the
    scheduler can allocate the step's blocks first): each request's own sequence of a's has the
    right distribution, so its token rate, TPOT and their spread across requests are right; what
    is lost is the independence between requests of one batch (they advance together), so the
    KV a batch grows by per step varies more than it would. The step's cost does not depend on
    a (every sequence verifies k + 1 tokens).
    """

    __slots__ = ("a", "_cdf", "_random")

    def __init__(self, block_size: int, probs: list[float], seed: int):
        super().__init__(block_size)
        acc, cdf = 0.0, []
        for p in probs[:-1]:
            acc += p
            cdf.append(acc)
        self._cdf = cdf                          # P(A <= a) for a = 1 .. k
        self._random = random.Random(seed).random
        self.a = self._draw()                    # tokens per sequence of the next step

    def _draw(self) -> int:
        return bisect.bisect_right(self._cdf, self._random()) + 1

    def new_blocks(self) -> int:
        due, bs, s = self.due, self.block_size, self.step
        return sum(due[(s + j) % bs] for j in range(self.a))

    def advance(self) -> list[int] | tuple[int, ...]:
        """A step ran: every sequence got `a` tokens; the requests that got their last one."""
        self.step += self.a - 1  # DecodeSet.advance counts the last of them and pops the finishers
        self.a = self._draw()
        return super().advance()
