"""Build the hot path's in-memory Snapshot from SQL, move the config version, and read deltas.

The version is read first, in the same transaction as the rows: a write committed in between can
only make the snapshot newer than its version says, so the next poll reloads it again rather than
missing it.

Every admin write records, with its version bump and in its transaction, the ids it touched
(`record_config_change`, a `config_changes` row). `load_delta` reads the rows after an instance's
version and re-reads just the keys, tenants and routes they name; when one version has no row
(written by the seed or an older release, or pruned) it answers None: load the whole snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.db.models import ApiKey, CachePolicy, ConfigChange, ConfigVersion, Route, Tenant
from heliox.snapshot import (
    CachePolicyConfig,
    ConfigDelta,
    KeyConfig,
    RouteConfig,
    Snapshot,
    TenantConfig,
)

log = logging.getLogger(__name__)

CONFIG_VERSION_ID = 1
KEY_BATCH = 5000  # keys per streamed batch; the event loop runs between batches
# What the hot path needs of a key, and nothing else.
_KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.tenant_id,
    ApiKey.name,
    ApiKey.key_prefix,
    ApiKey.key_hash,
    ApiKey.rate_limit_rps,
    ApiKey.rate_limit_burst,
    ApiKey.rate_limit_algorithm,
    ApiKey.rate_limit_window_seconds,
    ApiKey.daily_quota,
    ApiKey.monthly_quota,
    ApiKey.expires_at,
    ApiKey.abuse_mode,
    ApiKey.abuse_zscore_threshold,
)
# What an admin write's audit rows name (entity_type) and the change list each id goes to.
CHANGE_KINDS = {"key": "keys", "tenant": "tenants", "route": "routes", "policy": "policies"}
# config_changes rows kept: an instance further behind than this loads the whole snapshot, which
# re-reading that many changes' rows would not beat anyway.
KEEP_CHANGES = 1000
ID_BATCH = 1000  # ids per IN (...) list when re-reading the rows a delta names
DEFAULT_PORTS = {"http": 80, "https": 443}
# The snapshot's configs take every field from the row's column of the same name, except these,
# which the loader computes (normalised, parsed or resolved) below.
ROUTE_DERIVED = frozenset(
    {
        "upstream_url",
        "methods",
        "cache_policy",
        "upstream_scheme",
        "upstream_host",
        "upstream_port",
        "upstream_base_path",
    }
)
POLICY_DERIVED = frozenset({"vary_headers", "cacheable_methods", "cacheable_statuses"})
_ROUTE_COPIED = tuple(f.name for f in fields(RouteConfig) if f.name not in ROUTE_DERIVED)
_POLICY_COPIED = tuple(f.name for f in fields(CachePolicyConfig) if f.name not in POLICY_DERIVED)


class UpstreamURLError(ValueError):
    """A route's upstream URL cannot be proxied to."""


async def load_snapshot(session_factory: async_sessionmaker[AsyncSession]) -> Snapshot:
    """Every active route, usable key and tenant, read in one transaction."""
    now = datetime.now(UTC)
    async with session_factory() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            # One consistent view across the SELECTs below.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        version = await _read_version(session)
        policies = {p.id: _policy_config(p) for p in await session.scalars(select(CachePolicy))}
        routes: dict[str, RouteConfig] = {}
        for route in await session.scalars(select(Route).where(Route.is_active.is_(True))):
            try:
                routes[route.name] = _route_config(route, policies)
            except UpstreamURLError as exc:
                # One bad row must not stop every other route from loading.
                log.warning("route %r skipped: %s", route.name, exc)
        tenant_rows = list(await session.scalars(select(Tenant)))
        tenants = {
            t.id: TenantConfig(id=t.id, name=t.name, is_active=t.is_active) for t in tenant_rows
        }
        # Abuse overrides, resolved once here so the request path reads two plain fields.
        tenant_abuse = {
            t.id: (t.abuse_mode, t.abuse_zscore_threshold)
            for t in tenant_rows
            if t.abuse_mode != "default"
        }
        keys: dict[str, KeyConfig] = {}
        keys_by_id: dict[int, KeyConfig] = {}
        usable_keys = (
            select(*_KEY_COLUMNS)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(
                ApiKey.is_active.is_(True),
                ApiKey.revoked_at.is_(None),
                Tenant.is_active.is_(True),
                # Rotated keys in their grace period stay; the hot path checks expires_at.
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
            .execution_options(yield_per=KEY_BATCH)
        )
        # Plain rows, streamed in batches: a million keys as ORM objects took gigabytes and
        # blocked the event loop for the whole load. Between batches requests are served.
        algorithms: dict[str, str] = {}  # one string object per algorithm, not one per key
        collecting = gc.isenabled()
        gc.disable()  # a million new objects would set off full collections over and over
        try:
            result = await session.stream(usable_keys)
            async for batch in result.partitions(KEY_BATCH):
                for row in batch:
                    mode, threshold = row.abuse_mode, row.abuse_zscore_threshold
                    if mode == "default":  # the tenant's, if it has its own
                        mode, threshold = tenant_abuse.get(row.tenant_id, (mode, None))
                    config = _key_config(row, mode, threshold, algorithms)
                    keys[row.key_hash] = config
                    keys_by_id[row.id] = config
                await asyncio.sleep(0)
        finally:
            if collecting:
                gc.enable()
    return Snapshot(
        version=version, routes=routes, keys=keys, tenants=tenants, keys_by_id=keys_by_id
    )


def _key_config(
    row: Any, mode: str, threshold: float | None, algorithms: dict[str, str]
) -> KeyConfig:
    """A key's config from its row and its resolved abuse override (`mode` is never "default"
    unless neither the key nor its tenant has one)."""
    return KeyConfig(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        key_prefix=row.key_prefix,
        rate_limit_rps=row.rate_limit_rps,
        rate_limit_burst=row.rate_limit_burst,
        rate_limit_algorithm=algorithms.setdefault(
            row.rate_limit_algorithm, row.rate_limit_algorithm
        ),
        rate_limit_window_seconds=row.rate_limit_window_seconds,
        daily_quota=row.daily_quota,
        monthly_quota=row.monthly_quota,
        expires_at=row.expires_at,
        abuse_exempt=mode == "exempt",
        abuse_threshold=threshold if mode == "custom" else None,
        key_hash=row.key_hash,
    )


async def read_config_version(session_factory: async_sessionmaker[AsyncSession]) -> int:
    """The current config version; 0 before anything was ever written."""
    async with session_factory() as session:
        return await _read_version(session)


async def bump_config_version(session: AsyncSession) -> int:
    """Increment the version in the caller's transaction (creating the row); returns the new one."""
    now = datetime.now(UTC)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # One atomic upsert: concurrent writers each get a distinct, increasing version.
    stmt = (
        insert(ConfigVersion)
        .values(id=CONFIG_VERSION_ID, version=1, updated_at=now)
        .on_conflict_do_update(
            index_elements=[ConfigVersion.id],
            set_={"version": ConfigVersion.version + 1, "updated_at": now},
        )
        .returning(ConfigVersion.version)
    )
    version = (await session.execute(stmt)).scalar_one()
    return int(version)


async def record_config_change(
    session: AsyncSession, version: int, entities: Iterable[tuple[str, object]]
) -> None:
    """Record, in the caller's transaction, what the write that bumped to `version` touched.

    `entities` are (entity type, id) pairs as the audit rows name them; a type no delta knows
    (or an id that is not one) marks the change `full`, so instances load the whole snapshot.
    Rows older than the latest KEEP_CHANGES versions are pruned in the same transaction.
    """
    changes: dict[str, set[int]] = {}
    full = False
    for entity_type, entity_id in entities:
        kind = CHANGE_KINDS.get(entity_type)
        try:
            number = int(str(entity_id))
        except ValueError:
            kind = None
        if kind is None:
            full = True
        else:
            changes.setdefault(kind, set()).add(number)
    session.add(
        ConfigChange(
            version=version,
            changes={kind: sorted(ids) for kind, ids in sorted(changes.items())},
            full=full,
            created_at=datetime.now(UTC),
        )
    )
    await session.execute(
        delete(ConfigChange).where(ConfigChange.version <= version - KEEP_CHANGES)
    )


async def load_delta(
    session_factory: async_sessionmaker[AsyncSession], snapshot: Snapshot
) -> ConfigDelta | None:
    """What to apply to `snapshot` to bring it to the database's current version, read in one
    transaction; an empty delta when it is current. None when the versions in between are not
    all described (missed and no longer recorded, written without a change row, or the database
    is behind the snapshot): the caller loads the whole snapshot."""
    now = datetime.now(UTC)
    async with session_factory() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        version = await _read_version(session)
        if version == snapshot.version:
            return ConfigDelta(version=version)
        if snapshot.version == 0 or version < snapshot.version:
            return None
        if version - snapshot.version > KEEP_CHANGES:
            return None
        rows = list(
            await session.execute(
                select(ConfigChange.version, ConfigChange.changes, ConfigChange.full).where(
                    ConfigChange.version > snapshot.version, ConfigChange.version <= version
                )
            )
        )
        if len(rows) != version - snapshot.version or any(row.full for row in rows):
            return None
        named: dict[str, set[int]] = {kind: set() for kind in CHANGE_KINDS.values()}
        for row in rows:
            for kind, ids in (row.changes or {}).items():
                if kind not in named:
                    return None  # written by a newer release: it knows what we do not
                named[kind].update(int(i) for i in ids)
        tenants = await _reread_tenants(session, named["tenants"])
        keys = await _reread_keys(session, named["keys"], named["tenants"], now)
        routes = await _reread_routes(session, snapshot, named["routes"], named["policies"])
    return ConfigDelta(
        version=version,
        tenants=tenants,
        keys=keys,
        routes=routes,
        sweep_tenants=frozenset(t for t, config in tenants.items() if config is None),
    )


def _batches(ids: Collection[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), ID_BATCH):
        yield ordered[start : start + ID_BATCH]


async def _reread_tenants(
    session: AsyncSession, tenant_ids: Collection[int]
) -> dict[int, TenantConfig | None]:
    out: dict[int, TenantConfig | None] = dict.fromkeys(tenant_ids)
    for batch in _batches(tenant_ids):
        for t in await session.execute(
            select(Tenant.id, Tenant.name, Tenant.is_active).where(Tenant.id.in_(batch))
        ):
            out[t.id] = TenantConfig(id=t.id, name=t.name, is_active=t.is_active)
    return out


async def _reread_keys(
    session: AsyncSession, key_ids: Collection[int], tenant_ids: Collection[int], now: datetime
) -> dict[int, KeyConfig | None]:
    """The named keys and every key of the named tenants (whose state and abuse override their
    keys inherit), each as the full load would build it, or None where it would leave it out."""
    out: dict[int, KeyConfig | None] = dict.fromkeys(key_ids)
    columns = (
        *_KEY_COLUMNS,
        ApiKey.is_active,
        ApiKey.revoked_at,
        Tenant.is_active.label("tenant_active"),
        Tenant.abuse_mode.label("tenant_abuse_mode"),
        Tenant.abuse_zscore_threshold.label("tenant_abuse_threshold"),
    )
    algorithms: dict[str, str] = {}
    for column, ids in ((ApiKey.id, key_ids), (ApiKey.tenant_id, tenant_ids)):
        for batch in _batches(ids):
            query = select(*columns).join(Tenant, Tenant.id == ApiKey.tenant_id)
            for row in await session.execute(query.where(column.in_(batch))):
                usable = (
                    row.is_active
                    and row.revoked_at is None
                    and row.tenant_active
                    and (row.expires_at is None or row.expires_at > now)
                )
                if not usable:
                    out[row.id] = None
                    continue
                mode, threshold = row.abuse_mode, row.abuse_zscore_threshold
                if mode == "default" and row.tenant_abuse_mode != "default":
                    mode, threshold = row.tenant_abuse_mode, row.tenant_abuse_threshold
                out[row.id] = _key_config(row, mode, threshold, algorithms)
    return out


async def _reread_routes(
    session: AsyncSession,
    snapshot: Snapshot,
    route_ids: Collection[int],
    policy_ids: Collection[int],
) -> dict[int, RouteConfig | None]:
    """The named routes, and every route that uses a named policy: the ones the database says
    do now, and the ones the snapshot says did (a deleted policy's routes lost it)."""
    wanted = set(route_ids)
    if policy_ids:
        wanted.update(
            route.id
            for route in snapshot.routes.values()
            if route.cache_policy is not None and route.cache_policy.id in policy_ids
        )
        for batch in _batches(policy_ids):
            wanted.update(
                await session.scalars(select(Route.id).where(Route.cache_policy_id.in_(batch)))
            )
    out: dict[int, RouteConfig | None] = dict.fromkeys(wanted)
    for batch in _batches(wanted):
        rows = list(
            await session.scalars(
                select(Route).where(Route.id.in_(batch), Route.is_active.is_(True))
            )
        )
        used = {r.cache_policy_id for r in rows if r.cache_policy_id is not None}
        policies = {
            p.id: _policy_config(p)
            for p in await session.scalars(select(CachePolicy).where(CachePolicy.id.in_(used)))
        }
        for route in rows:
            try:
                out[route.id] = _route_config(route, policies)
            except UpstreamURLError as exc:
                log.warning("route %r skipped: %s", route.name, exc)
    return out


async def _read_version(session: AsyncSession) -> int:
    version = await session.scalar(
        select(ConfigVersion.version).where(ConfigVersion.id == CONFIG_VERSION_ID)
    )
    return int(version or 0)


def _policy_config(policy: CachePolicy) -> CachePolicyConfig:
    return CachePolicyConfig(
        **{name: getattr(policy, name) for name in _POLICY_COPIED},
        vary_headers=tuple(str(h).strip().lower() for h in policy.vary_headers or ()),
        cacheable_methods=frozenset(str(m).upper() for m in policy.cacheable_methods or ()),
        cacheable_statuses=frozenset(int(s) for s in policy.cacheable_statuses or ()),
    )


def _route_config(route: Route, policies: dict[int, CachePolicyConfig]) -> RouteConfig:
    scheme, host, port, base_path = parse_upstream_url(route.upstream_url)
    authority = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    return RouteConfig(
        **{name: getattr(route, name) for name in _ROUTE_COPIED},
        upstream_url=f"{scheme}://{authority}{base_path}",
        methods=frozenset(str(m).upper() for m in route.methods or ()),
        cache_policy=policies.get(route.cache_policy_id)
        if route.cache_policy_id is not None
        else None,
        upstream_scheme=scheme,
        upstream_host=host,
        upstream_port=port,
        upstream_base_path=base_path,
    )


def parse_upstream_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) of an upstream URL; the base path has no trailing slash.

    The host is lower-cased and, for IPv6, given without brackets.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UpstreamURLError(f"{url!r}: scheme must be http or https")
    host = parts.hostname
    if not host:
        raise UpstreamURLError(f"{url!r}: has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise UpstreamURLError(f"{url!r}: invalid port") from exc
    return scheme, host, port or DEFAULT_PORTS[scheme], parts.path.rstrip("/")
