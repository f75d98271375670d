"""Static batching: a batch runs to its last token before the next one is formed.

Each request reserves blocks for its prompt and its whole output when it is admitted, so a
running batch never runs out of KV and nothing is preempted; nor can requests share a cached
prefix (their blocks are reserved whole).
"""

from __future__ import annotations

from simulator.serving.schedulers.base import PREFILL, Moment, Prefill, Scheduler


class StaticScheduler(Scheduler):
    preemptible = False
    shares_prefixes = False

    def schedule(self) -> Moment | None:
        if self.decode.seqs:
            return self._decode_moment()
        kv, w = self.kv, self.waiting
        prompt_len, output_len = self.prompt_len, self.output_len
        batch: list[tuple[Prefill, int]] = []
        pt = 0
        pairs = 0.0
        while w and len(batch) < self.max_batch_size:
            i = w[0]
            p = prompt_len[i]
            if not kv.alloc(kv.blocks(p + output_len[i])):
                break
            w.popleft()
            batch.append((Prefill(i, 0, p, 0, 0, -1), p))
            pt += p
            pairs += p * (p + 1) / 2
        if not batch:
            return None
        n = len(batch)
        return Moment(PREFILL, (0, 0, n, pt, pairs, 0, n), n, batch, self._take_swap_s())

    def _release(self, i: int, cached: int, pb: int, pid: int) -> None:
        """The blocks reserved at admission, whatever the request used."""
        self.kv.release(self.kv.blocks(self.prompt_len[i] + self.output_len[i]))
