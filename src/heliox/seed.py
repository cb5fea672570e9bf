"""The sample tenants, keys, cache policies and routes of demo mode (README, "Seeded data").

Idempotent: rows are matched by name (tenants, policies, routes) or key hash (keys) and only the
missing ones are created; existing rows are never changed, so an operator's edits survive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.config import Settings
from heliox.db.models import ApiKey, CachePolicy, ConfigVersion, Route, Tenant
from heliox.db.snapshot_loader import bump_config_version
from heliox.snapshot import hash_key

KEY_PREFIX_LENGTH = 12
# Serializes seeding across gateway processes starting together on one PostgreSQL database.
PG_SEED_LOCK_KEY = 0x68656C696F7873


@dataclass(frozen=True)
class SeedTenant:
    name: str
    description: str


@dataclass(frozen=True)
class SeedKey:
    key: str
    tenant: str
    name: str
    rps: int
    daily_quota: int


@dataclass(frozen=True)
class SeedPolicy:
    name: str
    ttl_seconds: int
    stale_while_revalidate_seconds: int
    stale_if_error_seconds: int = 0
    negative_cache: bool = True


TENANTS = (
    SeedTenant("Acme Corporation", "E-commerce platform"),
    SeedTenant("TechFlow Solutions", "SaaS analytics"),
    SeedTenant("CloudBridge Inc", "API aggregation"),
)

KEYS = (
    SeedKey(
        "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v", "Acme Corporation", "Acme Production", 500, 100_000
    ),
    SeedKey("hx_stage_acme_3f5g7h9j2k4l6m8n0p", "Acme Corporation", "Acme Staging", 100, 10_000),
    SeedKey(
        "hx_prod_techflow_9a1b3c5d7e2f4g6h8i",
        "TechFlow Solutions",
        "TechFlow Production",
        250,
        50_000,
    ),
    SeedKey(
        "hx_prod_cloudbridge_5m7n9p1q3r5s7t9u2v",
        "CloudBridge Inc",
        "CloudBridge Production",
        1000,
        200_000,
    ),
)

POLICIES = (
    SeedPolicy("demo-swr", 30, 120, stale_if_error_seconds=300, negative_cache=True),
    SeedPolicy("standard", 60, 30),
    SeedPolicy("reporting", 300, 300),
)

# route name -> cache policy name (None: not cached)
ROUTES: dict[str, str | None] = {
    "products": "standard",
    "inventory": "standard",
    "analytics": "reporting",
    "reports": "reporting",
    "services": "standard",
    "webhooks": None,
    "demo": "demo-swr",
}


async def seed(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Create whatever sample data is missing; True if anything was created."""
    report = progress or (lambda _m: None)
    async with session_factory() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SEED_LOCK_KEY}
            )
        created: list[str] = []
        tenants = await _ensure_tenants(session, created)
        policies = await _ensure_policies(session, created)
        await _ensure_routes(session, settings.example_upstream_url, policies, created)
        await _ensure_keys(session, tenants, created)
        has_version = await session.get(ConfigVersion, 1) is not None
        if created or not has_version:
            # Running instances reload their snapshot when the version moves.
            await bump_config_version(session)
    if created:
        report("seeded " + ", ".join(created))
    return bool(created)


async def _ensure_tenants(session: AsyncSession, created: list[str]) -> dict[str, int]:
    names = [t.name for t in TENANTS]
    rows = await session.scalars(select(Tenant).where(Tenant.name.in_(names)))
    by_name = {t.name: t for t in rows}
    new = [Tenant(name=t.name, description=t.description) for t in TENANTS if t.name not in by_name]
    if new:
        session.add_all(new)
        await session.flush()
        by_name.update({t.name: t for t in new})
        created.append(f"{len(new)} tenants")
    return {name: tenant.id for name, tenant in by_name.items()}


async def _ensure_policies(session: AsyncSession, created: list[str]) -> dict[str, int]:
    names = [p.name for p in POLICIES]
    rows = await session.scalars(select(CachePolicy).where(CachePolicy.name.in_(names)))
    by_name = {p.name: p for p in rows}
    new = [
        CachePolicy(
            name=p.name,
            mode="policy",
            ttl_seconds=p.ttl_seconds,
            stale_while_revalidate_seconds=p.stale_while_revalidate_seconds,
            stale_if_error_seconds=p.stale_if_error_seconds,
            negative_cache=p.negative_cache,
        )
        for p in POLICIES
        if p.name not in by_name
    ]
    if new:
        session.add_all(new)
        await session.flush()
        by_name.update({p.name: p for p in new})
        created.append(f"{len(new)} cache policies")
    return {name: policy.id for name, policy in by_name.items()}


async def _ensure_routes(
    session: AsyncSession,
    upstream_url: str,
    policies: dict[str, int],
    created: list[str],
) -> None:
    existing = set(await session.scalars(select(Route.name).where(Route.name.in_(list(ROUTES)))))
    new = [
        Route(
            name=name,
            path_pattern="/*",
            upstream_url=upstream_url,
            cache_policy_id=policies[policy] if policy is not None else None,
        )
        for name, policy in ROUTES.items()
        if name not in existing
    ]
    if new:
        session.add_all(new)
        await session.flush()
        created.append(f"{len(new)} routes")


async def _ensure_keys(session: AsyncSession, tenants: dict[str, int], created: list[str]) -> None:
    hashes = {hash_key(k.key): k for k in KEYS}
    existing = set(
        await session.scalars(select(ApiKey.key_hash).where(ApiKey.key_hash.in_(list(hashes))))
    )
    new = [
        ApiKey(
            tenant_id=tenants[k.tenant],
            name=k.name,
            key_hash=digest,
            key_prefix=k.key[:KEY_PREFIX_LENGTH],
            rate_limit_rps=float(k.rps),
            rate_limit_burst=2 * k.rps,
            daily_quota=k.daily_quota,
            monthly_quota=30 * k.daily_quota,
        )
        for digest, k in hashes.items()
        if digest not in existing
    ]
    if new:
        session.add_all(new)
        await session.flush()
        created.append(f"{len(new)} API keys")
