"""Scheduling policies, one module each, behind the interface of `base.Scheduler`:
`add(i)`, `schedule() -> Moment | None` and `on_step_done(moment, now)`.

A new policy is a subclass that writes `schedule()` (and, where it differs, a class attribute or
a hook such as `_release`), plus one line in SCHEDULERS; `serving.scheduler` names it.

A serving feature that works with any policy is a mixin that overrides one or two of its hooks
(priority.py: `schedule` runs a preemption pass first; offload.py: admissions and swaps
use a CPU tier; speculative.py: a step's blocks for several tokens per sequence); `scheduler_class` puts the mixins a
scenario asks for in front of its policy, so no policy's loop tests for a feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.serving.scenario import SCHEDULER_NAMES
from simulator.serving.schedulers.base import DECODE, MIXED, PREFILL, Moment, Prefill, Scheduler
from simulator.serving.schedulers.chunked import ChunkedScheduler, MixedScheduler
from simulator.serving.schedulers.continuous import ContinuousScheduler
from simulator.serving.schedulers.offload import KVOffloading
from simulator.serving.schedulers.prefill_first import PrefillFirstScheduler
from simulator.serving.schedulers.priority import PriorityPreemption
from simulator.serving.schedulers.speculative import Speculative
from simulator.serving.schedulers.static import StaticScheduler

if TYPE_CHECKING:
    from simulator.serving.scenario import Serving

SCHEDULERS: dict[str, type[Scheduler]] = {
    "static": StaticScheduler,
    "continuous": ContinuousScheduler,
    "chunked": ChunkedScheduler,
    "prefill_first": PrefillFirstScheduler,
    "mixed": MixedScheduler,
}
assert set(SCHEDULER_NAMES) == set(SCHEDULERS), "scenario.SCHEDULER_NAMES lists the schedulers"

_COMPOSED: dict[tuple[type, ...], type[Scheduler]] = {}


def scheduler_class(serving: Serving, *mixins: type) -> type[Scheduler]:
    """serving.scheduler's policy behind the given mixins and those its options ask for."""
    policy = SCHEDULERS[serving.scheduler]
    bases = (*mixins, *((PriorityPreemption,) if serving.priority_preemption else ()),
             *((KVOffloading,) if serving.kv_offload is not None else ()),
             *((Speculative,) if serving.speculative is not None else ()), policy)
    if len(bases) == 1:
        return policy
    cls = _COMPOSED.get(bases)
    if cls is None:
        cls = _COMPOSED[bases] = type("".join(b.__name__.removesuffix("Scheduler") for b in bases) + "Scheduler",
                                      bases, {})
    return cls


__all__ = ["SCHEDULERS", "scheduler_class", "Scheduler", "Moment", "Prefill", "PREFILL", "DECODE", "MIXED"]
