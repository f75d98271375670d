"""A CPU-memory tier for KV blocks (`serving.kv_offload`), under an engine's device KV cache.

It holds two things, counted in blocks like the device cache (O(1) per operation):

- sequences swapped out by preemption (`preemption: swap`): a swap-out needs room here, else the
  request falls back to recompute (without a tier, host memory is unbounded);
- shared prefixes the device cache evicts, kept in an LRU as LMCache's CPU backend keeps them:
  a later request with that prefix copies it back over PCIe instead of computing its prefill.
  A prefix evicted here is gone; swapped sequences are never evicted (they are the only copy).

Copies cost `s_per_block` (a block of every device's shard, each device over its own PCIe link)
and are charged to the moment that needs them, as swaps are. Copying an evicted prefix out is
not charged: a store to CPU runs beside the forward passes (LMCache stores asynchronously).
"""

from __future__ import annotations

from collections import OrderedDict

from simulator.serving.kvcache import HIT, KVCache


class HostKV:
    """Block counts of the CPU tier: free, swapped sequences, and an LRU of cached prefixes."""

    __slots__ = ("capacity", "free", "_lru", "swapped_out", "fallbacks", "stored")

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.free = int(capacity)
        self._lru: OrderedDict[int, int] = OrderedDict()  # prefix id -> blocks, oldest first
        self.swapped_out = 0   # blocks of sequences swapped out, over the run
        self.fallbacks = 0     # swap-outs that found no room and recomputed instead
        self.stored = 0        # blocks of evicted prefixes stored

    def _room(self, n: int) -> bool:
        """Free n blocks by dropping the oldest cached prefixes; False if swapped sequences fill it."""
        while self.free < n and self._lru:
            self.free += self._lru.popitem(last=False)[1]
        return self.free >= n

    def take(self, n: int) -> bool:
        """Room for a swapped-out sequence of n blocks."""
        if not self._room(n):
            self.fallbacks += 1
            return False
        self.free -= n
        self.swapped_out += n
        return True

    def release(self, n: int) -> None:
        self.free += n

    def store(self, pid: int, blocks: int) -> None:
        """Keep an evicted prefix, if it fits."""
        if pid in self._lru:
            self._lru.move_to_end(pid)
        elif blocks <= self.capacity and self._room(blocks):
            self.free -= blocks
            self._lru[pid] = blocks
            self.stored += blocks

    def has(self, pid: int) -> bool:
        return pid in self._lru

    def touch(self, pid: int) -> None:
        """A cached prefix was used: the newest in the LRU."""
        self._lru.move_to_end(pid)

    def check(self) -> None:
        """Invariants, for tests."""
        assert 0 <= self.free <= self.capacity
        assert sum(self._lru.values()) <= self.capacity - self.free


class TieredKVCache(KVCache):
    """A device KV cache whose evicted prefixes fall to a HostKV and come back by copy."""

    __slots__ = ("host", "s_per_block", "copy_s", "host_hits", "copied_in")

    def __init__(self, capacity: int, block_size: int, host: HostKV, s_per_block: float):
        super().__init__(capacity, block_size)
        self.host = host
        self.s_per_block = s_per_block
        self.copy_s = 0.0      # copies in not yet charged to a moment
        self.host_hits = 0     # prefix acquisitions served from the CPU tier
        self.copied_in = 0     # blocks copied in for them

    def evicted(self, pid: int, blocks: int) -> None:
        self.host.store(pid, blocks)

    def resident(self, pid: int) -> bool:
        """Computed and reusable here or in the CPU tier."""
        return pid in self._prefix or self.host.has(pid)

    def acquire_prefix(self, pid: int, blocks: int) -> int:
        if pid in self._prefix or not self.host.has(pid):
            return super().acquire_prefix(pid, blocks)
        self.host.touch(pid)  # newest, so making room on the device does not push it out first
        got = super().acquire_prefix(pid, blocks)  # not on the device: blocks allocated for it (or FAIL)
        if got < 0:
            return got
        self.hits += 1  # its KV is reused: copied in, not computed
        self.host_hits += 1
        self.copied_in += blocks
        self.copy_s += blocks * self.s_per_block
        return HIT

    def take_copy_s(self) -> float:
        s, self.copy_s = self.copy_s, 0.0
        return s


__all__ = ["HostKV", "TieredKVCache"]
