"""Prefill batches first, as SGLang runs them: while requests wait or a prompt is mid-prefill, a
step computes prompt chunks only (up to max_batched_tokens new tokens: SGLang's
chunked_prefill_size), and the running decodes wait; otherwise one decode step of every running
request. A prompt longer than the budget runs a chunk per step, its chunks back to back.

This is vLLM V0's continuous batching (continuous.py) with prompts split into chunks, and
chunked prefill (chunked.py) without mixing prefills and decodes in one step.
"""

from __future__ import annotations

from simulator.serving.schedulers.base import PREFILL, Moment, Scheduler


class PrefillFirstScheduler(Scheduler):
    def schedule(self) -> Moment | None:
        d, pre, w, maxb = self.decode, self.prefilling, self.waiting, self.max_batch_size
        self.preempted = False
        while True:
            # not while a prompt mid-prefill holds blocks after a preemption in this step: the one
            # just swapped out would come straight back, fail to grow and go out again without end
            while w and w[0] in self.swapped and d.seqs + len(pre) < maxb and not (self.preempted and pre):
                if not self._swap_in(w[0], d.seqs + len(pre)):  # back into the decodes
                    break
            chunks = self._chunks(self.max_batched_tokens, d.seqs)
            if chunks:
                pt, pairs, pc, completing = self._chunk_sums(chunks)
                return Moment(PREFILL, (0, 0, len(chunks), pt, pairs, pc, completing), d.seqs + len(pre), chunks,
                              self._take_swap_s())
            if d.seqs:
                self._grow_decode()
                if d.seqs:
                    m = self._decode_moment()
                    m.running += len(pre)  # prompts starved of blocks mid-prefill hold KV too
                    return m
                continue  # everything was preempted: admit again
            if pre:  # mid-prefill requests starved of blocks: restart the newest
                self._preempt_one()
                continue
            return None
