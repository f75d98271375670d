"""Continuous batching as vLLM v0 runs it: a step with new admissions runs only their whole
prefills; otherwise one decode step of every running request.

A prompt is never split, so one longer than max_batched_tokens can never run: it is rejected on
arrival (`max_prompt_tokens`). Swapped-out requests at the head of the queue come back first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.serving.schedulers.base import PREFILL, Moment, Prefill, Scheduler

if TYPE_CHECKING:
    from simulator.serving.result import RequestLog
    from simulator.serving.scenario import Serving


class ContinuousScheduler(Scheduler):
    def __init__(self, serving: Serving, requests: RequestLog, blocks: int, swap_s_per_block: float, **kw):
        super().__init__(serving, requests, blocks, swap_s_per_block, **kw)
        self.max_prompt_tokens = self.max_batched_tokens

    def schedule(self) -> Moment | None:
        d, w, maxb = self.decode, self.waiting, self.max_batch_size
        while True:
            if w and d.seqs < maxb and not self.block_left:
                n_seq = d.seqs
                admitted: list[tuple[Prefill, int]] = []
                pt = 0
                pairs = 0.0
                pc = 0
                while w and n_seq < maxb:
                    i = w[0]
                    if i in self.swapped:
                        if admitted or not self._swap_in(i, n_seq):
                            break
                        n_seq += 1
                        continue
                    # the step's prefill tokens stay within the budget (a lone re-prefill of
                    # prompt + generated after a preemption may exceed it: vLLM would drop it)
                    got = self._admit(i, n_seq, -1, self.max_batched_tokens - pt if admitted else 1 << 62)
                    if got is None:
                        break
                    st, ln = got
                    cached = st.done
                    if self.computed:
                        self._recomputed(st, ln)
                    admitted.append(got)
                    pt += ln
                    pairs += ln * cached + ln * (ln + 1) / 2
                    pc += cached
                    n_seq += 1
                if admitted:
                    n = len(admitted)
                    return Moment(PREFILL, (0, 0, n, pt, pairs, pc, n), d.seqs + n, admitted, self._take_swap_s())
            if not d.seqs:
                return None
            self._grow_decode()
            if d.seqs:
                return self._decode_moment()
