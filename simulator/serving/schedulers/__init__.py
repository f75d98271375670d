"""Scheduling policies, one module each, behind the interface of `base.Scheduler`:
`add(i)`, `schedule() -> Moment | None` and `on_step_done(moment, now)`.

A new policy is a subclass that writes `schedule()` (and, where it differs, a class attribute or
a hook such as `_release`), plus one line in SCHEDULERS; `serving.scheduler` names it.
"""

from simulator.serving.scenario import SCHEDULER_NAMES
from simulator.serving.schedulers.base import DECODE, MIXED, PREFILL, Moment, Prefill, Scheduler
from simulator.serving.schedulers.chunked import ChunkedScheduler, MixedScheduler
from simulator.serving.schedulers.continuous import ContinuousScheduler
from simulator.serving.schedulers.prefill_first import PrefillFirstScheduler
from simulator.serving.schedulers.static import StaticScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "static": StaticScheduler,
    "continuous": ContinuousScheduler,
    "chunked": ChunkedScheduler,
    "prefill_first": PrefillFirstScheduler,
    "mixed": MixedScheduler,
}
assert set(SCHEDULER_NAMES) == set(SCHEDULERS), "scenario.SCHEDULER_NAMES lists the schedulers"

__all__ = ["SCHEDULERS", "Scheduler", "Moment", "Prefill", "PREFILL", "DECODE", "MIXED"]
