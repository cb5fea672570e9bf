"""Response cache in Redis, shared by every gateway instance.

`get` is exactly one round trip (a GET of the entry). `set`, `delete` and each purge step are
one Lua script each (files in `lua/`, layout described in `cache_common.lua`): the entry, its
index memberships and the size bookkeeping change together. Purges walk one index in bounded
batches, so a route with a million entries never blocks Redis in one long script; under
concurrent writes a purge removes what matched when each batch ran.

Entry format (binary-safe, no pickle, parsed with a handful of struct calls): a fixed
big-endian header (magic, status, age, the four times, the sizes of what follows), the index
part (route, uri key, path, tenant, tags: what purge scripts read with GETRANGE, without
touching the body), the header lengths, the header bytes and the body.

Redis is reached in two methods, `_get` and `_eval`, so the transport can be swapped for an
auto-pipelining one without touching the rest. The client must return bytes
(`decode_responses=False`, the default).

On a Redis Cluster the layout is split into `CLUSTER_SHARDS` shards by the entry's key, each
under its own hash tag (chosen so the shards' slots are spread evenly over the slot space, and so
over the masters): an entry, its index memberships and its shard's bookkeeping stay in one slot,
and each script still changes them together. A purge runs its steps on every shard. The removal
generation is then a key of its own, and a removal is fenced in two steps: the generation is
raised before the shard scripts run, each records that value as its shard's fence (a fill whose
generation is older is refused, atomically with the store, as on one Redis), and it is raised
again after they have run (so copies kept in process before the removal are never served after).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import zlib
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from heliox.state.cache import CacheEntry, CacheStats, CacheUnavailable, PurgeFilter

__all__ = ["RedisCacheStore", "decode_entry", "encode_entry"]

_MAGIC = b"HXC3"  # HXC3 added keep_until: older entries read as misses
# magic, status, age_at_store, stored_at, fresh_until, stale_until, error_until, then the sizes
# of what follows: tenant, tag count, header count, route, uri key, path, the whole index part.
# cache_common.lua reads the same layout: change both together (and the magic).
_FIXED = struct.Struct(">4sHIdddddHHHHHII")
_DEFAULT_PREFIX = "heliox:cache:"
# Shards of the cache on a Redis Cluster: enough to spread over a dozen masters, few enough that
# a purge (one script per shard and batch) stays cheap.
CLUSTER_SHARDS = 16


# What a failing Redis raises (redis-py's errors, PipelinedRedis's RedisUnavailable among them;
# socket errors and TimeoutError are OSErrors): turned into CacheUnavailable by the Redis stores.
REDIS_FAILURES = (RedisError, OSError)


def unavailable(exc: BaseException) -> CacheUnavailable:
    # The client's message, which names what failed (TimeoutError() has none: then its type).
    return CacheUnavailable(f"redis: {str(exc) or type(exc).__name__}")


def _lua(name: str) -> str:
    return resources.files("heliox.state").joinpath("lua", name).read_text("utf-8")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def shard_tags(prefix: str, count: int) -> list[str]:
    """`count` hash tags whose slots lie in `count` equal stretches of the slot space, one each:
    masters own contiguous slot ranges, so the shards spread over them as evenly as they can."""
    width = REDIS_CLUSTER_HASH_SLOTS / count
    tags = []
    for shard in range(count):
        n = 0
        while int(key_slot(_utf8(f"{prefix}{shard}.{n}")) // width) != shard:
            n += 1
        tags.append(f"{prefix}{shard}.{n}")
    return tags


def encode_entry(entry: CacheEntry) -> bytes:
    """The stored form of `entry`."""
    route, uri, path = _utf8(entry.route), _utf8(entry.uri_key), _utf8(entry.path)
    tenant = b"" if entry.tenant_id is None else b"%d" % entry.tenant_id
    tags = [_utf8(tag) for tag in entry.tags]
    index = b"".join(
        (route, uri, path, tenant, struct.pack(f">{len(tags)}H", *map(len, tags)), *tags)
    )
    lengths: list[int] = []
    for name, value in entry.headers:
        lengths.append(len(name))
        lengths.append(len(value))
    fixed = _FIXED.pack(
        _MAGIC,
        entry.status,
        entry.age_at_store,
        entry.stored_at,
        entry.fresh_until,
        entry.stale_until,
        entry.error_until,
        entry.keep_until,
        len(tenant),
        len(tags),
        len(entry.headers),
        len(route),
        len(uri),
        len(path),
        len(index),
    )
    return b"".join(
        (
            fixed,
            index,
            struct.pack(f">{len(lengths)}I", *lengths),
            *(part for header in entry.headers for part in header),
            entry.body,
        )
    )


def decode_entry(blob: bytes) -> CacheEntry | None:
    """The entry in `blob`, or None when it is not one (foreign or damaged data is a miss)."""
    try:
        (
            magic,
            status,
            age,
            stored_at,
            fresh_until,
            stale_until,
            error_until,
            keep_until,
            tenant_len,
            tag_count,
            header_count,
            route_len,
            uri_len,
            path_len,
            _index_len,
        ) = _FIXED.unpack_from(blob)
        if magic != _MAGIC:
            return None
        at = _FIXED.size
        route = blob[at : at + route_len].decode("utf-8", "surrogatepass")
        at += route_len
        uri = blob[at : at + uri_len].decode("utf-8", "surrogatepass")
        at += uri_len
        path = blob[at : at + path_len].decode("utf-8", "surrogatepass")
        at += path_len
        tenant = int(blob[at : at + tenant_len]) if tenant_len else None
        at += tenant_len
        tags: list[str] = []
        if tag_count:
            tag_sizes = struct.unpack_from(f">{tag_count}H", blob, at)
            at += 2 * tag_count
            for size in tag_sizes:
                tags.append(blob[at : at + size].decode("utf-8", "surrogatepass"))
                at += size
        headers: list[tuple[bytes, bytes]] = []
        if header_count:
            sizes = struct.unpack_from(f">{2 * header_count}I", blob, at)
            at += 8 * header_count
            for i in range(0, 2 * header_count, 2):
                name_end = at + sizes[i]
                value_end = name_end + sizes[i + 1]
                headers.append((blob[at:name_end], blob[name_end:value_end]))
                at = value_end
        if at > len(blob):
            return None  # truncated
        return CacheEntry(
            status=status,
            headers=headers,
            body=blob[at:],
            stored_at=stored_at,
            fresh_until=fresh_until,
            stale_until=stale_until,
            error_until=error_until,
            uri_key=uri,
            route=route,
            tenant_id=tenant,
            tags=tuple(tags),
            path=path,
            age_at_store=age,
            keep_until=keep_until,
        )
    except (struct.error, ValueError, UnicodeError):
        return None


class RedisCacheStore:
    """CacheStore in Redis; entries expire with a Redis TTL `ttl_margin` seconds after
    `expires_at`, so a reader whose clock is slightly behind still finds them."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = _DEFAULT_PREFIX,
        ttl_margin: float = 1.0,
        purge_batch: int = 256,
    ) -> None:
        self.cluster = isinstance(client, RedisCluster)
        kwargs = (
            client.get_connection_kwargs()
            if isinstance(client, RedisCluster)
            else client.connection_pool.connection_kwargs
        )
        if kwargs.get("decode_responses"):
            raise ValueError("RedisCacheStore needs a client with decode_responses=False")
        if purge_batch < 1:
            raise ValueError("purge_batch must be at least 1")
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (they would become the hash tag)")
        self._client = client
        self.prefix = prefix
        self.ttl_margin = ttl_margin
        self.purge_batch = purge_batch
        # Raised by every delete and purge step (cache_common.lua); see heliox.state.cache_l1.
        # On a cluster a key of its own, outside every shard.
        self.generation_key = prefix + "gen"
        # Where each key's entry and bookkeeping live: P itself on one Redis, one P per shard
        # (with its hash tag) on a cluster.
        self.shard_prefixes = (
            [f"{prefix}{{{tag}}}:" for tag in shard_tags(prefix, CLUSTER_SHARDS)]
            if self.cluster
            else [prefix]
        )
        common = _lua("cache_common.lua")
        self._set_script = client.register_script(common + _lua("cache_set.lua"))
        self._delete_script = client.register_script(common + _lua("cache_delete.lua"))
        self._purge_script = client.register_script(common + _lua("cache_purge.lua"))
        self._stats_script = client.register_script(common + _lua("cache_stats.lua"))
        self._drop_script = client.register_script(common + _lua("cache_drop.lua"))
        self._fence_script = client.register_script(common + _lua("cache_fence.lua"))
        self._generation_script = client.register_script(_lua("generation.lua"))

    def _shard(self, key: str) -> str:
        """The P of `key`'s shard."""
        shards = self.shard_prefixes
        if len(shards) == 1:
            return shards[0]
        return shards[zlib.crc32(_utf8(key)) % len(shards)]

    async def _get(self, name: str) -> bytes | None:
        try:
            value = await self._client.get(name)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        return value if isinstance(value, bytes) else None

    async def _eval(self, script: AsyncScript, args: list[Any]) -> Any:
        # The scripts name their keys from ARGV[1] (P); on a cluster one of them is declared,
        # so that the script is sent to the master of P's slot.
        keys = [args[0] + "gen"] if self.cluster else []
        try:
            return await script(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc

    async def _global_generation(self, op: str) -> bytes:
        """Cluster: read ("read") or raise ("bump") the removal generation, its own key."""
        try:
            (value,) = await self._generation_script(keys=[self.generation_key], args=[op])
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        return value if isinstance(value, bytes) else _utf8(str(value))

    async def get(self, key: str) -> CacheEntry | None:
        blob = await self._get(self._shard(key) + "e:" + key)
        return None if blob is None else decode_entry(blob)

    async def generation(self) -> bytes:
        if self.cluster:
            return await self._global_generation("read")
        try:
            value = await self._client.get(self.generation_key)
            if value is None:
                # First use: as admit.lua and cache_common.lua start it, from the clock in
                # microseconds, so it never repeats a value an instance may have read before.
                now_us = time.time_ns() // 1000
                await self._client.set(self.generation_key, b"%d" % now_us, nx=True)
                value = await self._client.get(self.generation_key)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        return value if isinstance(value, bytes) else b""

    async def set(
        self,
        key: str,
        entry: CacheEntry,
        now: float,
        *,
        generation: bytes | None = None,
        drop: tuple[str, ...] = (),
    ) -> bool:
        remaining = entry.expires_at - now
        if remaining <= 0:
            await self.delete(key)
            return True
        blob = encode_entry(entry)
        ttl_ms = max(1, math.ceil((remaining + self.ttl_margin) * 1000))
        tenant = b"" if entry.tenant_id is None else b"%d" % entry.tenant_id
        shard = self._shard(key)
        expected = b"" if generation is None else generation
        elsewhere: dict[str, list[str]] = {}
        if self.cluster:
            if generation is not None:
                expected = b">" + generation  # compared with the shard's fence
            # Drops in this shard go with the store; the others right after it, per shard.
            for gone in drop:
                elsewhere.setdefault(self._shard(gone), []).append(gone)
            drop = tuple(elsewhere.pop(shard, ()))
        stored = await self._eval(
            self._set_script,
            [
                shard,
                key,
                blob,
                ttl_ms,
                len(blob) + len(key),
                _utf8(entry.route),  # as encode_entry writes them, so the scripts agree
                _utf8(entry.uri_key),
                tenant,
                expected,
                len(drop),
                *drop,
                *map(_utf8, entry.tags),
            ],
        )
        if stored and elsewhere:
            await asyncio.gather(
                *(self._eval(self._drop_script, [p, *keys]) for p, keys in elsewhere.items())
            )
        if not stored and self.cluster:
            await self._catch_up(shard)
        return bool(stored)

    async def _catch_up(self, shard: str) -> None:
        """Cluster, after a refused fill: the generation at least at the shard's fence. A
        failover can lose the generation's latest raises while shards on other masters kept the
        fences set from them; until it catches up, every fill there would be refused."""
        fence = await self._get(shard + "gen")
        if fence is not None:
            try:
                await self._generation_script(keys=[self.generation_key], args=["atleast", fence])
            except REDIS_FAILURES as exc:
                raise unavailable(exc) from exc

    async def delete(self, key: str) -> bool:
        if not self.cluster:
            return bool(await self._eval(self._delete_script, [self.prefix, key]))
        fence = await self._global_generation("bump")
        # The other shards' fences too: a fill that began before any removal is refused, on a
        # cluster as on one Redis.
        shard = self._shard(key)
        existed, *_ = await asyncio.gather(
            self._eval(self._delete_script, [shard, key, fence]),
            *(
                self._eval(self._fence_script, [p, fence])
                for p in self.shard_prefixes
                if p != shard
            ),
        )
        await self._global_generation("bump")
        return bool(existed)

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
        return await self._purge(selector)

    async def invalidate(self, uri_key: str, tenant_id: int | None) -> int:
        return await self._purge(PurgeFilter.seen_by(uri_key, tenant_id))

    async def _purge(self, selector: PurgeFilter) -> int:
        if not self.cluster:
            return await self._purge_shard(self.prefix, selector, b"")
        fence = await self._global_generation("bump")
        counts = await asyncio.gather(
            *(self._purge_shard(p, selector, fence) for p in self.shard_prefixes)
        )
        await self._global_generation("bump")
        return sum(counts)

    async def _purge_shard(self, shard: str, selector: PurgeFilter, fence: bytes) -> int:
        index_key, dimension = self._index_for(shard, selector)
        uri, route, prefix, tag = (
            b"" if value is None else b"=" + _utf8(value)
            for value in (selector.uri_key, selector.route, selector.prefix, selector.tag)
        )
        tenant = b"" if selector.tenant_id is None else b"%d" % selector.tenant_id
        if selector.with_shared:
            tenant = b"~" + tenant  # that tenant's entries or the shared ones
        elif tenant:
            tenant = b"=" + tenant
        filters = [uri, route, tenant, prefix, tag]
        if fence:
            filters.append(fence)
        deleted = 0
        start = 0
        while True:
            step = await self._eval(
                self._purge_script,
                [shard, index_key, dimension, start, self.purge_batch, *filters],
            )
            removed_now, scanned, left_index = (int(v) for v in step)
            deleted += removed_now
            if scanned < self.purge_batch:
                return deleted
            start += scanned - left_index

    def _index_for(self, shard: str, selector: PurgeFilter) -> tuple[bytes, str]:
        # The most selective index given; every other criterion is checked per entry.
        p = _utf8(shard)
        if selector.uri_key is not None:
            return p + b"i:u:" + _utf8(selector.uri_key), "u"
        if selector.tag is not None:
            return p + b"i:g:" + _utf8(selector.tag), "g"
        if selector.tenant_id is not None and not selector.with_shared:
            return p + b"i:t:%d" % selector.tenant_id, "t"
        if selector.route is not None:
            return p + b"i:r:" + _utf8(selector.route), "r"
        return p + b"i:all", "all"

    async def stats(self) -> CacheStats:
        counts = await asyncio.gather(
            *(self._eval(self._stats_script, [p]) for p in self.shard_prefixes)
        )
        return CacheStats(
            entries=sum(int(entries) for entries, _ in counts),
            bytes=sum(max(0, int(size)) for _, size in counts),
        )
