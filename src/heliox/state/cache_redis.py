"""Response cache in Redis, shared by every gateway instance.

`get` is exactly one round trip (a GET of the entry). `set`, `delete` and each purge step are
one Lua script each (files in `lua/`, layout described in `cache_common.lua`): the entry, its
index memberships and the size bookkeeping change together. Purges walk one index in bounded
batches, so a route with a million entries never blocks Redis in one long script; under
concurrent writes a purge removes what matched when each batch ran.

Entry format (binary-safe, no pickle): b"HXC1", two big-endian u32 lengths, an index JSON
(route, uri key, path, tenant, tags: what purge scripts read with GETRANGE), a meta JSON (status,
times, headers as latin-1 text, which maps every byte to one code point and back) and the body.

Redis is reached in two methods, `_get` and `_eval`, so the transport can be swapped for an
auto-pipelining one without touching the rest. The client must return bytes
(`decode_responses=False`, the default).
"""

from __future__ import annotations

import json
import math
import struct
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from heliox.state.cache import CacheEntry, CacheStats, PurgeFilter

__all__ = ["RedisCacheStore", "decode_entry", "encode_entry"]

_MAGIC = b"HXC1"
_HEAD = struct.Struct(">4sII")
_DEFAULT_PREFIX = "heliox:cache:"


def _lua(name: str) -> str:
    return resources.files("heliox.state").joinpath("lua", name).read_text("utf-8")


def encode_entry(entry: CacheEntry) -> bytes:
    """The stored form of `entry`."""
    index = json.dumps(
        {
            "r": entry.route,
            "u": entry.uri_key,
            "p": entry.path,
            "t": None if entry.tenant_id is None else str(entry.tenant_id),
            "g": list(entry.tags),
        },
        separators=(",", ":"),
    ).encode("ascii")
    meta = json.dumps(
        [
            entry.status,
            entry.stored_at,
            entry.fresh_until,
            entry.stale_until,
            entry.error_until,
            entry.age_at_store,
            [[name.decode("latin-1"), value.decode("latin-1")] for name, value in entry.headers],
        ],
        separators=(",", ":"),
    ).encode("ascii")
    return b"".join((_HEAD.pack(_MAGIC, len(index), len(meta)), index, meta, entry.body))


def decode_entry(blob: bytes) -> CacheEntry | None:
    """The entry in `blob`, or None when it is not one (foreign or damaged data is a miss)."""
    try:
        magic, index_len, meta_len = _HEAD.unpack_from(blob)
        if magic != _MAGIC:
            return None
        start = _HEAD.size
        index = json.loads(blob[start : start + index_len])
        meta = json.loads(blob[start + index_len : start + index_len + meta_len])
        status, stored_at, fresh_until, stale_until, error_until, age, headers = meta
        tenant = index["t"]
        return CacheEntry(
            status=status,
            headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            body=blob[start + index_len + meta_len :],
            stored_at=float(stored_at),
            fresh_until=float(fresh_until),
            stale_until=float(stale_until),
            error_until=float(error_until),
            uri_key=index["u"],
            route=index["r"],
            tenant_id=None if tenant is None else int(tenant),
            tags=tuple(index["g"]),
            path=index["p"],
            age_at_store=age,
        )
    except (struct.error, ValueError, TypeError, KeyError, UnicodeError):
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
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisCacheStore needs a client with decode_responses=False")
        if purge_batch < 1:
            raise ValueError("purge_batch must be at least 1")
        self._client = client
        self.prefix = prefix
        self.ttl_margin = ttl_margin
        self.purge_batch = purge_batch
        common = _lua("cache_common.lua")
        self._set_script = client.register_script(common + _lua("cache_set.lua"))
        self._delete_script = client.register_script(common + _lua("cache_delete.lua"))
        self._purge_script = client.register_script(common + _lua("cache_purge.lua"))
        self._stats_script = client.register_script(common + _lua("cache_stats.lua"))

    async def _get(self, name: str) -> bytes | None:
        value = await self._client.get(name)
        return value if isinstance(value, bytes) else None

    async def _eval(self, script: AsyncScript, args: list[Any]) -> Any:
        return await script(keys=[], args=args)

    async def get(self, key: str) -> CacheEntry | None:
        blob = await self._get(self.prefix + "e:" + key)
        return None if blob is None else decode_entry(blob)

    async def set(self, key: str, entry: CacheEntry, now: float) -> None:
        remaining = entry.expires_at - now
        if remaining <= 0:
            await self.delete(key)
            return
        blob = encode_entry(entry)
        ttl_ms = max(1, math.ceil((remaining + self.ttl_margin) * 1000))
        tenant = "" if entry.tenant_id is None else str(entry.tenant_id)
        await self._eval(
            self._set_script,
            [
                self.prefix,
                key,
                blob,
                ttl_ms,
                len(blob) + len(key),
                entry.route,
                entry.uri_key,
                tenant,
                *entry.tags,
            ],
        )

    async def delete(self, key: str) -> bool:
        return bool(await self._eval(self._delete_script, [self.prefix, key]))

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
        index_key, dimension = self._index_for(selector)
        tenant = None if selector.tenant_id is None else str(selector.tenant_id)
        filters = [
            "" if value is None else "=" + value
            for value in (selector.uri_key, selector.route, tenant, selector.prefix, selector.tag)
        ]
        deleted = 0
        start = 0
        while True:
            step = await self._eval(
                self._purge_script,
                [self.prefix, index_key, dimension, start, self.purge_batch, *filters],
            )
            removed_now, scanned, left_index = (int(v) for v in step)
            deleted += removed_now
            if scanned < self.purge_batch:
                return deleted
            start += scanned - left_index

    def _index_for(self, selector: PurgeFilter) -> tuple[str, str]:
        # The most selective index given; every other criterion is checked per entry.
        p = self.prefix
        if selector.uri_key is not None:
            return p + "i:u:" + selector.uri_key, "u"
        if selector.tag is not None:
            return p + "i:g:" + selector.tag, "g"
        if selector.tenant_id is not None:
            return p + "i:t:" + str(selector.tenant_id), "t"
        if selector.route is not None:
            return p + "i:r:" + selector.route, "r"
        return p + "i:all", "all"

    async def stats(self) -> CacheStats:
        entries, size = await self._eval(self._stats_script, [self.prefix])
        return CacheStats(entries=int(entries), bytes=max(0, int(size)))
