"""Prefill batches first, as SGLang runs them: while requests wait or a prompt is mid-prefill, a
step computes prompt chunks only (up to max_batched_tokens new tokens: SGLang's
chunked_prefill_size), and the running decodes wait; otherwise one decode step of every running
request. A prompt longer than the budget runs a chunk per step, its chunks back to back.

This is vLLM V0's continuous batching (continuous.py) with prompts split into chunks, and
chunked prefill (chunked.py) without mixing prefills and decodes in one step.
"""

from __future__ import annotations

from simulator.serving.schedulers.base import PREFILL, Moment, Prefill, Scheduler


class PrefillFirstScheduler(Scheduler):
    def schedule(self) -> Moment | None:
        kv, d, pre, w = self.kv, self.decode, self.prefilling, self.waiting
        bs, maxb = self.block_size, self.max_batch_size
        while True:
            rest = self.max_batched_tokens
            chunks: list[tuple[Prefill, int]] = []
            for st in pre.values():  # a prompt mid-prefill continues first
                if rest <= 0:
                    break
                done = st.done
                if self.reserve:
                    ln = min(st.target - done, rest)
                else:
                    ln = min(st.target - done, rest, (kv.blocks(done) + kv.available) * bs - done)
                    if ln <= 0:
                        continue
                    kv.alloc(kv.blocks(done + ln) - kv.blocks(done))
                chunks.append((st, ln))
                rest -= ln
            n_seq = d.seqs + len(pre)
            while rest > 0 and w and n_seq < maxb and not self.block_left:
                i = w[0]
                if i in self.swapped:  # back into the decodes, if nothing else is being prefilled
                    if chunks or not self._swap_in(i, n_seq):
                        break
                    n_seq += 1
                    continue
                got = self._admit(i, n_seq, rest)
                if got is None:
                    break
                st, ln = got
                self.admissions = st.token = self.admissions + 1
                pre[i] = st
                self.newest.append((st.token, i))
                chunks.append(got)
                rest -= ln
                n_seq += 1
            if chunks:
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
                return Moment(PREFILL, (0, 0, len(chunks), pt, pairs, pc, completing), d.seqs + len(pre), chunks,
                              self._take_swap_s())
            if d.seqs:
                self._grow_decode()
                if d.seqs:
                    return self._decode_moment()
                continue  # everything was preempted: admit again
            if pre:  # mid-prefill requests starved of blocks: restart the newest
                self._preempt_one()
                continue
            return None
