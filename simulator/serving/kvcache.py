"""Paged KV-cache accounting of one replica, in blocks of `block_size` tokens (vLLM's pages).

Only counts are kept, never per-token state, so every operation is O(1) (eviction is O(1)
amortised per evicted prefix). A request's private blocks are counted by its scheduler from its
token count (`blocks(tokens)`); this class holds the free count and the shared prefixes.

Prefix caching: the full blocks of a shared prefix are held once per replica, refcounted by
the running requests that use them. A prefix nobody uses stays resident (a later request with
the same prefix skips its prefill) until free blocks run out, then the least recently released
one is evicted.
"""

from __future__ import annotations

from collections import OrderedDict

HIT, MISS, FAIL = 1, 0, -1


class KVCache:
    """Block counts of one replica: free, and shared prefixes (in use or cached for reuse)."""

    __slots__ = ("capacity", "block_size", "free", "evictable", "_prefix", "_lru", "lookups", "hits")

    def __init__(self, capacity: int, block_size: int):
        self.capacity = int(capacity)
        self.block_size = int(block_size)
        self.free = int(capacity)
        self.evictable = 0                       # blocks of resident prefixes nobody uses
        self._prefix: dict[int, list[int]] = {}  # prefix id -> [blocks, refcount]
        self._lru: OrderedDict[int, int] = OrderedDict()  # refcount-0 prefixes, oldest first
        self.lookups = 0                         # acquire_prefix calls (requests that carry a prefix)
        self.hits = 0                            # ... that found it computed (its KV reused)

    @property
    def used(self) -> int:
        """Blocks resident: private blocks plus shared prefixes (in use or cached)."""
        return self.capacity - self.free

    @property
    def available(self) -> int:
        """Blocks an allocation could get: free ones plus evictable cached prefixes."""
        return self.free + self.evictable

    def blocks(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens (a partly filled last block is a whole one)."""
        return -(-tokens // self.block_size)

    def alloc(self, n: int) -> bool:
        """Take n blocks, evicting unused cached prefixes (LRU) if needed; False if impossible."""
        if n <= self.free:
            self.free -= n
            return True
        if n > self.free + self.evictable:
            return False
        lru, pref = self._lru, self._prefix
        while self.free < n:
            pid, b = lru.popitem(last=False)
            del pref[pid]
            self.free += b
            self.evictable -= b
            self.evicted(pid, b)
        self.free -= n
        return True

    def evicted(self, pid: int, blocks: int) -> None:
        """A cached prefix left the device (a lower tier may keep it: offload.TieredKVCache)."""

    def release(self, n: int) -> None:
        self.free += n

    def resident(self, pid: int) -> bool:
        """Is prefix `pid` held (its KV computed and reusable)?"""
        return pid in self._prefix

    def acquire_prefix(self, pid: int, blocks: int) -> int:
        """Use prefix `pid` (of `blocks` full blocks): HIT if resident (its KV is reused), MISS if
        it was allocated now (the request computes it), FAIL if there is no room."""
        self.lookups += 1
        ent = self._prefix.get(pid)
        if ent is not None:
            if ent[1] == 0:
                del self._lru[pid]
                self.evictable -= ent[0]
            ent[1] += 1
            self.hits += 1
            return HIT
        if not self.alloc(blocks):
            return FAIL
        self._prefix[pid] = [blocks, 1]
        return MISS

    def release_prefix(self, pid: int) -> None:
        """A request stops using the prefix; at refcount 0 it stays cached, evictable."""
        ent = self._prefix[pid]
        ent[1] -= 1
        if ent[1] == 0:
            self._lru[pid] = ent[0]
            self.evictable += ent[0]

    def check(self) -> None:
        """Invariants, for tests: counts within [0, capacity], evictable = refcount-0 prefixes."""
        held = sum(b for b, _ in self._prefix.values())
        assert 0 <= self.free <= self.capacity, (self.free, self.capacity)
        assert self.evictable == sum(self._lru.values())
        assert held <= self.capacity - self.free


__all__ = ["KVCache", "HIT", "MISS", "FAIL"]
