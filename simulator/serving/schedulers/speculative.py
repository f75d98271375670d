"""Speculative decoding (`serving.speculative`): a mixin over any policy. The engine's decode set
advances a drawn number of tokens per step (decodeset.SpecDecodeSet) and the cost model prices a
verify of k + 1 tokens per sequence plus the draft's passes (moment/speculative.py); the one
thing a policy does differently is allocate a step's KV blocks for all the tokens it may add."""

from __future__ import annotations

from simulator.moment.speculative import acceptance_probs
from simulator.serving.decodeset import SpecDecodeSet


class Speculative:
    """Mixin (before the policy in the bases): the spec decode set and its block growth."""

    def __init__(self, serving, requests, blocks, swap_s_per_block, **kw):
        super().__init__(serving, requests, blocks, swap_s_per_block, **kw)
        sp = serving.speculative
        self.decode = SpecDecodeSet(serving.block_size, acceptance_probs(sp.acceptance, sp.k), self.seed)

    def _grow_decode(self) -> None:
        """Blocks for the step's a tokens per sequence (a window of residues); preempt until they fit."""
        if self.reserve:  # reserved at admission
            return
        kv, d = self.kv, self.decode
        while not kv.alloc(d.new_blocks()):
            if not self._preempt_one():
                raise RuntimeError("KV cache cannot hold the running requests")
