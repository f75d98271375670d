"""Preemption by priority (vLLM's priority scheduling): a mixin over any preemptible policy.

With `serving.queue: priority` the waiting queue serves priority 0 first. This mixin adds what
makes a priority class keep its SLO under load: the running requests are kept in a heap on
(priority, admission), lowest priority and newest on top, so KV pressure preempts the least
important request first; and before each step, while the head of the queue cannot start (no
batch seat, or too few KV blocks for its first chunk) and a running request has a lower
priority (a larger number), that request is preempted (by recompute or swap, as configured) to
make room. The policy's own `schedule()` then runs unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from simulator.serving.schedulers.base import Moment


class VictimHeap:
    """Preemption candidates as the base scheduler's `newest` list is used (`append((token, i))`,
    `pop() -> (token, i)`, len), but popped lowest priority first, then newest first."""

    __slots__ = ("priority", "heap")

    def __init__(self, priority: Sequence[int], entries: list[tuple[int, int]] = ()):
        self.priority = priority
        self.heap = [(-priority[i], -t, i) for t, i in entries]
        heapq.heapify(self.heap)

    def __len__(self) -> int:
        return len(self.heap)

    def append(self, entry: tuple[int, int]) -> None:
        t, i = entry
        heapq.heappush(self.heap, (-self.priority[i], -t, i))

    def pop(self) -> tuple[int, int]:
        _p, t, i = heapq.heappop(self.heap)
        return -t, i


class PriorityPreemption:
    """Mixin (before the policy in the bases): preempt lower priorities for the head of the queue."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.newest = VictimHeap(self.requests.priority)

    def _drop_stale(self) -> None:
        d, pre = self.decode, self.prefilling
        live = [(-t, i) for _p, t, i in self.newest.heap if d.holds(i, -t) or (i in pre and pre[i].token == -t)]
        self.newest = VictimHeap(self.requests.priority, live)

    def _lowest_running(self) -> int | None:
        """The running request preemption would take next (stale heap entries dropped on the way)."""
        h, d, pre = self.newest.heap, self.decode, self.prefilling
        while h:
            _p, t, i = h[0]
            if d.holds(i, -t) or (i in pre and pre[i].token == -t):
                return i
            heapq.heappop(h)
        return None

    def _blocked(self, i: int) -> bool:
        """Request i, at the head of the queue, cannot start now: no batch seat, or too few free KV
        blocks for its first chunk (its whole KV when swapped out)."""
        if self.decode.seqs + len(self.prefilling) >= self.max_batch_size:
            return True
        kv = self.kv
        if i in self.swapped:
            need = kv.blocks(self.swapped[i][0])
        else:
            need = kv.blocks(min(self.prompt_len[i] + self.recompute.get(i, 0), self.max_batched_tokens))
        return kv.available - self.watermark < need

    def schedule(self) -> Moment | None:
        w, priority = self.waiting, self.requests.priority
        while w:
            head = w[0]
            if not self._blocked(head):
                break
            victim = self._lowest_running()
            if victim is None or priority[victim] <= priority[head]:
                break
            self._preempt_one()
        return super().schedule()
