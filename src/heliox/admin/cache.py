"""/admin/cache/purge: drop cached responses by URL, route, tenant, path prefix, tag, exact cache
key (the `key` of an answer's Cache-Status), or all.

With Redis the store is shared, so a purge is effective on every instance at once. A purge also
forgets the remembered 404s (negative cache) of the routes it touches: a purge usually follows
a content change, and a resource that has just appeared must not stay hidden behind its old 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from heliox.admin.audit import record_audit
from heliox.admin.deps import MAX_INT32, AdminDep, AdminRoute
from heliox.admin.errors import AdminError, invalid_field
from heliox.core.cachekey import uri_key
from heliox.core.paths import BadPath, parse_gateway_path
from heliox.gateway.cache_fill import variant_index
from heliox.state.cache import CacheUnavailable

router = APIRouter(route_class=AdminRoute, tags=["cache"])

GATEWAY_PREFIX = "/g/"


class PurgeBody(BaseModel):
    """One of `url`, `key`, `all`, or any of `route`, `tenant_id`, `prefix` (with `route`),
    `tag` (entries must match all of those given)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        min_length=1,
        max_length=8000,
        description="a gateway URL such as /g/demo/items?x=1: every variant and tenant of it",
    )
    key: str | None = Field(
        None,
        pattern=r"^[a-z]{1,4}:[0-9a-f]{32}$",
        max_length=37,
        description="one entry's cache key, as the `key` of its answers' Cache-Status shows it",
    )
    route: str | None = Field(None, min_length=1, max_length=100)
    tenant_id: int | None = Field(None, ge=1, le=MAX_INT32)
    prefix: str | None = Field(
        None, min_length=1, max_length=2000, description="path prefix under `route`, e.g. /items/"
    )
    tag: str | None = Field(
        None, min_length=1, max_length=128, description="from Surrogate-Key or Cache-Tag"
    )
    all: bool = Field(False, description="empty the whole cache")

    @model_validator(mode="after")
    def _one_selection(self) -> PurgeBody:
        criteria = [self.route, self.tenant_id, self.prefix, self.tag]
        given = [value for value in criteria if value is not None]
        if self.all and (given or self.url is not None or self.key is not None):
            raise ValueError("all=true takes no other criteria")
        if self.url is not None and (given or self.key is not None):
            raise ValueError("url takes no other criteria")
        if self.key is not None and given:
            raise ValueError("key takes no other criteria")
        if not self.all and self.url is None and self.key is None and not given:
            raise ValueError(
                "name what to purge: url, key, route, tenant_id, prefix, tag, or all=true"
            )
        if self.prefix is not None:
            if self.route is None:
                raise ValueError("prefix needs route: paths are relative to a route")
            if not self.prefix.startswith("/"):
                raise ValueError("prefix must start with '/'")
        return self


def _url_key(url: str) -> tuple[str, str]:
    """(route, uri key) of a gateway URL, canonicalised as the gateway does for requests."""
    parts = urlsplit(url)
    if not parts.path.startswith(GATEWAY_PREFIX):
        raise invalid_field(("body", "url"), "must be a gateway URL: /g/{route}/{path}[?query]")
    try:
        gp = parse_gateway_path(parts.path.encode("utf-8"))
    except BadPath as exc:
        raise invalid_field(("body", "url"), exc.detail) from exc
    if gp is None:
        raise invalid_field(("body", "url"), "must name a route: /g/{route}/{path}[?query]")
    return gp.route, uri_key(gp.route, gp.path, parts.query.encode("utf-8"))


async def _purge_key(rt: Any, key: str) -> int:
    """Delete one entry, or a URL's variant index and the variants it lists (the key answers
    carry for a URL whose responses vary); its route's remembered 404s go too, as with every
    purge."""
    try:
        entry = await rt.cache.get(key)
        index = variant_index(entry)
        purged = 0
        for member in (key, *(index.keys if index is not None else ())):
            purged += bool(await rt.cache.delete(member))
        if entry is not None:
            await rt.negative.clear(entry.route)
    except CacheUnavailable as exc:
        raise AdminError("the cache store (Redis) is unavailable; retry", status=503) from exc
    return purged


@router.post("/cache/purge")
async def purge_cache(admin: AdminDep, body: PurgeBody, request: Request) -> dict[str, int]:
    """Remove matching entries from the response cache; returns how many went."""
    rt: Any = request.app.state.runtime
    criteria: dict[str, Any]
    if body.key is not None:
        purged = await _purge_key(rt, body.key)
    elif body.url is not None:
        route, key = _url_key(body.url)
        criteria = {"uri_key": key}
        routes = [route]
    elif body.all:
        criteria = {"all": True}
        routes = list(rt.snapshot.routes)
    else:
        criteria = {
            name: value
            for name, value in (
                ("route", body.route),
                ("tenant_id", body.tenant_id),
                ("prefix", body.prefix),
                ("tag", body.tag),
            )
            if value is not None
        }
        routes = [body.route] if body.route is not None else list(rt.snapshot.routes)
    if body.key is None:
        try:
            purged = int(await rt.cache.purge(**criteria))
            for route in routes:
                await rt.negative.clear(route)
        except CacheUnavailable as exc:
            raise AdminError("the cache store (Redis) is unavailable; retry", status=503) from exc
    rt.metrics.count("cache_purges")
    async with rt.session_factory() as session:
        await record_audit(
            session,
            admin.actor,
            "cache.purge",
            "cache",
            body.route or "*",
            after={**body.model_dump(exclude_defaults=True), "purged": purged},
        )
        await session.commit()
    return {"purged": purged}
