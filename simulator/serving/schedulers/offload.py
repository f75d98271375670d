"""KV offload to CPU memory (`serving.kv_offload`): a mixin over any policy whose engine's KV
cache is an offload.TieredKVCache. Admissions and swap-ins may copy a shared prefix back from
the CPU tier (charged to the moment, like a swap); a swap-out needs room in the tier, else the
request is recomputed; a swap-in gives its room back."""

from __future__ import annotations

from simulator.serving.schedulers.base import Prefill


class KVOffloading:
    """Mixin (before the policy in the bases): the CPU tier's room and copies."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hosted: dict[int, int] = {}  # swapped-out request -> its blocks in the CPU tier

    def _admit(self, *args) -> tuple[Prefill, int] | None:
        got = super()._admit(*args)
        self.swap_s += self.kv.take_copy_s()
        return got

    def _swap_out(self, i: int, blocks: int) -> bool:
        if not self.kv.host.take(blocks):
            return False
        self.hosted[i] = blocks
        return True

    def _swap_in(self, i: int, n_seq: int) -> bool:
        if not super()._swap_in(i, n_seq):
            return False
        self.kv.host.release(self.hosted.pop(i, 0))
        self.swap_s += self.kv.take_copy_s()
        return True
