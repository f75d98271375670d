"""Routers: which engine of a pool an arriving request goes to.

A router is built on the pool's schedulers (one per engine, engine-major: engine 0 of each
replica, then engine 1, ...) and answers `route(request) -> index`. It may read any scheduler
state (queue, outstanding requests, KV use); it must not change it. `serving.router` names one.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulator.serving.schedulers import Scheduler


class RoundRobin:
    """Each engine in turn: consecutive requests go to different replicas first (engine-major)."""

    def __init__(self, schedulers: Sequence[Scheduler]):
        self.n = len(schedulers)
        self.next = 0

    def route(self, i: int) -> int:
        k = self.next
        self.next = k + 1 if k + 1 < self.n else 0
        return k


class LeastOutstanding:
    """The engine with the fewest requests routed to it and not finished; ties go to the first."""

    def __init__(self, schedulers: Sequence[Scheduler]):
        self.schedulers = list(schedulers)
        self.indices = range(len(self.schedulers))

    def route(self, i: int) -> int:
        s = self.schedulers
        return min(self.indices, key=lambda k: s[k].outstanding) if len(s) > 1 else 0


ROUTERS: dict[str, type[RoundRobin] | type[LeastOutstanding]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
}
