"""In-process response cache: an LRU bounded by total bytes, for the embedded mode.

The size of an entry is an estimate of what it costs in this process (key, body, headers, the
index strings and a fixed per-object overhead), measured against tracemalloc in the tests, so
`max_bytes` bounds real memory rather than just body bytes. Expired entries go lazily (on `get`,
and when purges meet them) and otherwise age out through the LRU.

Secondary indexes (uri key, route, tenant, tag) make purges touch only matching entries; a purge
by prefix alone walks every entry (with a route, only that route's).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from heliox.state.cache import CacheEntry, CacheStats, PurgeFilter

__all__ = ["DEFAULT_MAX_BYTES", "MemoryCacheStore", "entry_size"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Estimated CPython cost beyond the raw bytes: the entry object, its floats and strings, the LRU
# and index slots (ENTRY); a header's tuple and two bytes objects (HEADER); a tag's string and
# index slot (TAG). Checked against tracemalloc in tests/state/test_cache_memory.py.
ENTRY_OVERHEAD = 700
HEADER_OVERHEAD = 120
TAG_OVERHEAD = 100


def entry_size(key: str, entry: CacheEntry) -> int:
    """Estimated bytes `entry` holds in this process, stored under `key`."""
    size = ENTRY_OVERHEAD + len(key) + len(entry.body)
    size += len(entry.uri_key) + len(entry.route) + len(entry.path)
    for name, value in entry.headers:
        size += HEADER_OVERHEAD + len(name) + len(value)
    for tag in entry.tags:
        size += TAG_OVERHEAD + len(tag)
    return size


def _index_add(index: dict[str, set[str]], name: str, key: str) -> None:
    members = index.get(name)
    if members is None:
        index[name] = {key}
    else:
        members.add(key)


def _index_remove(index: dict[str, set[str]], name: str, key: str) -> None:
    members = index.get(name)
    if members is not None:
        members.discard(key)
        if not members:
            del index[name]


class MemoryCacheStore:
    """CacheStore in this process; `clock` is the time source for expiry (tests pass a fake)."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._clock = clock
        self._lru: OrderedDict[str, tuple[CacheEntry, int]] = OrderedDict()
        self._bytes = 0
        self._by_uri: dict[str, set[str]] = {}
        self._by_route: dict[str, set[str]] = {}
        self._by_tenant: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._generation = 0  # raised by every delete, purge and invalidation

    async def get(self, key: str) -> CacheEntry | None:
        return self.get_now(key)

    def get_now(self, key: str) -> CacheEntry | None:
        """`get` without the await: the cache layer reads an in-process store directly (two
        coroutines fewer on every cache hit)."""
        slot = self._lru.get(key)
        if slot is None:
            return None
        if self._clock() >= slot[0].expires_at:
            self._remove(key)
            return None
        self._lru.move_to_end(key)
        return slot[0]

    async def generation(self) -> bytes:
        return b"%d" % self._generation

    async def set(
        self,
        key: str,
        entry: CacheEntry,
        now: float,
        *,
        generation: bytes | None = None,
        drop: tuple[str, ...] = (),
    ) -> bool:
        if generation is not None and generation != b"%d" % self._generation:
            return False
        for gone in drop:
            if gone != key and gone in self._lru:
                self._remove(gone)
        if key in self._lru:
            self._remove(key)
        size = entry_size(key, entry)
        if entry.expires_at <= now or size > self.max_bytes:
            return True
        while self._bytes + size > self.max_bytes:
            self._remove(next(iter(self._lru)))
        self._lru[key] = (entry, size)
        self._bytes += size
        _index_add(self._by_uri, entry.uri_key, key)
        _index_add(self._by_route, entry.route, key)
        if entry.tenant_id is not None:
            _index_add(self._by_tenant, str(entry.tenant_id), key)
        for tag in entry.tags:
            _index_add(self._by_tag, tag, key)
        return True

    async def delete(self, key: str) -> bool:
        self._generation += 1
        if key not in self._lru:
            return False
        self._remove(key)
        return True

    async def purge(
        self,
        *,
        uri_key: str | None = None,
        route: str | None = None,
        tenant_id: int | None = None,
        prefix: str | None = None,
        tag: str | None = None,
        all: bool = False,
    ) -> int:
        selector = PurgeFilter.of(
            uri_key=uri_key, route=route, tenant_id=tenant_id, prefix=prefix, tag=tag, all=all
        )
        return self._purge(selector)

    async def invalidate(self, uri_key: str, tenant_id: int | None) -> int:
        return self._purge(PurgeFilter.seen_by(uri_key, tenant_id))

    def _purge(self, selector: PurgeFilter) -> int:
        self._generation += 1
        if selector.everything:
            count = len(self._lru)
            self._clear()
            return count
        now = self._clock()
        removed = 0
        for key in list(self._candidates(selector)):
            slot = self._lru.get(key)
            if slot is None:
                continue
            if slot[0].expires_at <= now:
                self._remove(key)  # already gone as far as readers can tell: not counted
            elif selector.matches(slot[0]):
                self._remove(key)
                removed += 1
        return removed

    async def stats(self) -> CacheStats:
        return CacheStats(entries=len(self._lru), bytes=self._bytes)

    def _candidates(self, selector: PurgeFilter) -> Iterable[str]:
        empty: set[str] = set()
        if selector.uri_key is not None:
            return self._by_uri.get(selector.uri_key, empty)
        if selector.tag is not None:
            return self._by_tag.get(selector.tag, empty)
        if selector.tenant_id is not None and not selector.with_shared:
            return self._by_tenant.get(str(selector.tenant_id), empty)
        if selector.route is not None:
            return self._by_route.get(selector.route, empty)
        return self._lru.keys()

    def _remove(self, key: str) -> None:
        entry, size = self._lru.pop(key)
        self._bytes -= size
        _index_remove(self._by_uri, entry.uri_key, key)
        _index_remove(self._by_route, entry.route, key)
        if entry.tenant_id is not None:
            _index_remove(self._by_tenant, str(entry.tenant_id), key)
        for tag in entry.tags:
            _index_remove(self._by_tag, tag, key)

    def _clear(self) -> None:
        self._lru.clear()
        self._bytes = 0
        for index in (self._by_uri, self._by_route, self._by_tenant, self._by_tag):
            index.clear()
