"""The response-cache store interface, shared by the in-process and Redis stores.

Stores keep entries and find them again; every decision (what to store, for how long, whether an
entry may be served) is made by `heliox.core.freshness` before and after. An entry lives in a
store until `expires_at`, the latest of its stale, error and keep windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["CacheEntry", "CacheStats", "CacheStore", "CacheUnavailable", "PurgeFilter"]


class CacheUnavailable(Exception):
    """A shared cache backend failed (Redis down, slow or refusing): raised by the cache store,
    the negative cache and the fill locks instead of their client's own errors, so that callers
    name no backend. The gateway takes it for a miss; the admin API answers 503."""


@dataclass(slots=True)
class CacheEntry:
    """A stored response. Treat an entry returned by `get` as read-only: it may be shared."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    fresh_until: float
    stale_until: float
    error_until: float
    uri_key: str
    route: str
    tenant_id: int | None
    tags: tuple[str, ...] = ()
    path: str = ""  # canonical path under the route: what purge-by-prefix matches
    age_at_store: int = 0  # the upstream's Age when stored
    # Kept past the stale windows until then for revalidation (validators only; 0: not kept).
    keep_until: float = 0.0
    # The fields a client is sent with this entry, worked out by the first request it answers
    # (gateway/cache_responses.py): derived from `headers`, never stored, and not carried over by
    # `dataclasses.replace` (init=False), which is how a changed entry is made.
    replayed: tuple[tuple[bytes, bytes], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def expires_at(self) -> float:
        until = self.stale_until  # conditionals, not max(): read on every cache hit
        if self.error_until > until:
            until = self.error_until
        return self.keep_until if self.keep_until > until else until

    @property
    def etag(self) -> bytes | None:
        return self._header(b"etag")

    @property
    def last_modified(self) -> bytes | None:
        return self._header(b"last-modified")

    def _header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int  # memory store: estimated resident size; Redis store: serialised size


@dataclass(frozen=True, slots=True)
class PurgeFilter:
    """The criteria of one purge; all that are given must match (AND)."""

    uri_key: str | None = None
    route: str | None = None
    tenant_id: int | None = None
    prefix: str | None = None  # canonical path prefix (with `route`, within that route)
    tag: str | None = None
    everything: bool = False
    # With it, `tenant_id` selects that tenant's entries and the shared ones (tenant_id None:
    # the shared ones only): what one tenant reads, and so all that its writes may evict.
    with_shared: bool = False

    @classmethod
    def seen_by(cls, uri_key: str, tenant_id: int | None) -> PurgeFilter:
        """The entries of `uri_key` that tenant `tenant_id` (None: no tenant) is served."""
        return cls(uri_key=uri_key, tenant_id=tenant_id, with_shared=True)

    @classmethod
    def of(
        cls,
        *,
        uri_key: str | None,
        route: str | None,
        tenant_id: int | None,
        prefix: str | None,
        tag: str | None,
        all: bool,
    ) -> PurgeFilter:
        given = [v for v in (uri_key, route, tenant_id, prefix, tag) if v is not None]
        if all and given:
            raise ValueError("purge(all=True) takes no other criteria")
        if not all and not given:
            raise ValueError("purge needs a criterion, or all=True to empty the cache")
        return cls(uri_key, route, tenant_id, prefix, tag, all)

    def matches(self, entry: CacheEntry) -> bool:
        if self.everything:
            return True
        if self.with_shared:
            tenant = entry.tenant_id is None or entry.tenant_id == self.tenant_id
        else:
            tenant = self.tenant_id is None or entry.tenant_id == self.tenant_id
        return (
            tenant
            and (self.uri_key is None or entry.uri_key == self.uri_key)
            and (self.route is None or entry.route == self.route)
            and (self.prefix is None or entry.path.startswith(self.prefix))
            and (self.tag is None or self.tag in entry.tags)
        )


class CacheStore(Protocol):
    """Every method may raise CacheUnavailable when the store's backend fails."""

    async def get(self, key: str) -> CacheEntry | None:
        """The entry stored under `key`, or None. One round trip at most."""
        ...

    async def generation(self) -> bytes:
        """The removal generation: it changes whenever entries are deleted or purged."""
        ...

    async def set(
        self,
        key: str,
        entry: CacheEntry,
        now: float,
        *,
        generation: bytes | None = None,
        drop: tuple[str, ...] = (),
    ) -> bool:
        """Store `entry` until `entry.expires_at`; one already past it at `now` is not stored
        and removes what `key` held (it is the newer answer). With `generation` (as read when
        the fill began), nothing is stored if entries were removed since: a fill that began
        before a write must not store the old answer. False only then.

        The entries under `drop` go in the same step (the variants a variant index no longer
        holds): no longer reachable, not removed for being outdated, so the removal generation
        does not move for them."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove one entry; True when there was one."""
        ...

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
        """Remove every entry matching all the given criteria; returns how many went."""
        ...

    async def invalidate(self, uri_key: str, tenant_id: int | None) -> int:
        """Remove the entries of `uri_key` that tenant `tenant_id` is served: its own and the
        shared ones (None: the shared ones only), never another tenant's (RFC 9111 §4.4 after
        a write). Returns how many went."""
        ...

    async def stats(self) -> CacheStats: ...
