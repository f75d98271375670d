"""Chunked prefill as Sarathi-Serve (and vLLM v1) run it: every step carries all running decodes
(one token each), then prefill chunks fill what is left of the token budget.

Requests mid-prefill keep their place (`prefilling`, oldest first) and continue next step; a
prompt of any length runs, a chunk at a time. Every running decode must fit the budget, so the
batch is capped at max_batched_tokens sequences.

`MixedScheduler` is in-flight batching as TensorRT-LLM runs it without chunked context: the
same steps, but a prompt joins a step only whole (`splits_prompts = False`), so one longer than
the budget is rejected on arrival.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.serving.schedulers.base import DECODE, MIXED, PREFILL, Moment, Scheduler

if TYPE_CHECKING:
    from simulator.serving.result import RequestLog
    from simulator.serving.scenario import Serving


class ChunkedScheduler(Scheduler):
    splits_prompts = True  # a prompt may be split over steps (else it joins a step whole)

    def __init__(self, serving: Serving, requests: RequestLog, blocks: int, swap_s_per_block: float, **kw):
        super().__init__(serving, requests, blocks, swap_s_per_block, **kw)
        self.max_batch_size = min(self.max_batch_size, self.max_batched_tokens)
        if not self.splits_prompts:
            self.max_prompt_tokens = self.max_batched_tokens

    def schedule(self) -> Moment | None:
        d, pre, w, maxb = self.decode, self.prefilling, self.waiting, self.max_batch_size
        self.preempted = False
        while True:
            while w and w[0] in self.swapped and d.seqs + len(pre) < maxb:
                if not self._swap_in(w[0], d.seqs + len(pre)):  # back into this step's decodes
                    break
            if d.seqs:
                self._grow_decode()
            B = d.seqs
            chunks = self._chunks(self.max_batched_tokens - B, B, self.splits_prompts)
            if not B and not chunks:
                if pre:  # mid-prefill requests starved of blocks: restart the newest
                    self._preempt_one()
                    continue
                return None
            if not chunks:  # speed: a decode-only moment (most of them) needs no sums
                extra, self.swap_s = self.swap_s, 0.0
                return Moment(DECODE, (B, d.base + B * d.step, 0, 0, 0.0, 0, B), B + len(pre), chunks, extra,
                              self.steps > 1 and self._held_step())
            pt, pairs, pc, completing = self._chunk_sums(chunks)
            return Moment(PREFILL if not B else MIXED, (B, d.base + B * d.step, len(chunks), pt, pairs, pc,
                                                        B + completing), B + len(pre), chunks, self._take_swap_s())


class MixedScheduler(ChunkedScheduler):
    splits_prompts = False
