"""Fresh entries of the shared (Redis) cache, kept in process: a HIT without a cache round trip.

With Redis, a HIT used to cost two round trips: the admission script, then a GET of the entry,
which also had to be decoded. Hot entries are read far more often than they change, so each
instance keeps the entries it read or stored, for as long as they are fresh, bounded by bytes
(least recently used out first).

Serving a kept copy must never resurrect something removed. Every delete and purge on Redis raises
a counter (the removal generation, `cache_common.lua`) after it has removed its entries, and the
admission script reads that counter in the round trip every request makes anyway, before the
request reads the cache. A copy is tagged with the generation its request read; it is served only
to a request that reads the same generation. So once a purge or an invalidating write has
answered, no instance serves a copy taken before it; a request that began before it finished may,
as with any concurrent read. Without a generation (embedded mode, or Redis failing) nothing here
is used.

Only freshness is served from here. A stale entry is looked up in Redis again, where another
instance may already have refreshed it; serving it stale, refreshing and revalidating stay with
the shared store. Different instances can hold different fresh versions of an entry (after a
refresh): both are fresh by the cache's own rules, as with two nginx caches.

Pure: the caller passes `now`; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from heliox.state.cache import CacheEntry
from heliox.state.cache_memory import entry_size  # the same estimate as the embedded store

__all__ = ["FreshEntries"]

# No single entry may take more than this share of the budget (a few big bodies would evict
# every small hot one).
_MAX_SHARE = 8


class FreshEntries:
    """At most `max_bytes` of fresh entries, each tagged with the generation it was read under."""

    __slots__ = ("_bytes", "_entries", "evictions", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive (leave the layer out to disable it)")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[CacheEntry, bytes, int]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def get(self, key: str, generation: bytes, now: float) -> CacheEntry | None:
        """The kept entry, if it is still fresh at `now` and was read under `generation`."""
        item = self._entries.get(key)
        if item is None:
            return None
        entry, kept_under, size = item
        if kept_under != generation or now >= entry.fresh_until:
            del self._entries[key]
            self._bytes -= size
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CacheEntry, generation: bytes, now: float) -> None:
        """Keep `entry` (read from or written to the shared store under `generation`) while it is
        fresh; an entry that is not fresh at `now`, or too big, is not kept."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
        if now >= entry.fresh_until:
            return
        size = entry_size(key, entry)
        if size * _MAX_SHARE > self.max_bytes:
            return
        self._entries[key] = (entry, generation, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
            self.evictions += 1

    def discard(self, key: str) -> None:
        """Forget the copy of `key`, if any (a variant its URL's index no longer holds)."""
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
