"""Waiting queues: first come first served, or ordered by a key (priority, job length).

A scheduler uses five operations on its queue: `q[0]` (the head), `popleft()`, `append(i)` (an
arrival), `appendleft(i)` (a preempted request going back) and `len(q)`. First come first served
is collections.deque itself. A keyed queue is a heap on (key[i], i): the smallest key first, ties
in arrival order; as in vLLM's priority scheduling, a preempted request goes back by its key, not
to the front. `serving.queue` picks one (as SimPy's PriorityResource differs from Resource only by
its queue class).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.serving.result import RequestLog


class KeyedQueue:
    """Request indices ordered by (key[i], i)."""

    __slots__ = ("key", "heap")

    def __init__(self, key: Sequence[int]):
        self.key = key
        self.heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.heap)

    def __getitem__(self, k: int) -> int:
        if k != 0:
            raise IndexError("a keyed queue shows its head only")
        return self.heap[0][1]

    def append(self, i: int) -> None:
        heapq.heappush(self.heap, (self.key[i], i))

    appendleft = append  # a preempted request goes back by its key

    def popleft(self) -> int:
        return heapq.heappop(self.heap)[1]


def waiting_queue(order: str, requests: RequestLog) -> deque[int] | KeyedQueue:
    """The queue of serving.queue: fcfs, priority (0 first) or shortest_first (prompt + output
    tokens: the job's length, which a real server does not know in advance; an oracle bound)."""
    if order == "fcfs":
        return deque()
    if order == "priority":
        return KeyedQueue(requests.priority)
    if order == "shortest_first":
        return KeyedQueue([p + o for p, o in zip(requests.prompt_len, requests.output_len, strict=True)])
    raise ValueError(f"queue {order!r}; allowed: fcfs, priority, shortest_first")


__all__ = ["KeyedQueue", "waiting_queue"]
