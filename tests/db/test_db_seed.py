"""Seeding the sample data (README, "Seeded data"): exact keys, limits, routes and policies;
idempotent."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.config import Settings
from heliox.db.models import ApiKey, CachePolicy, ConfigVersion, Route, Tenant
from heliox.db.snapshot_loader import read_config_version
from heliox.seed import seed
from heliox.snapshot import hash_key

Factory = async_sessionmaker[AsyncSession]

BRIEF_KEYS = {
    # key: (tenant, name, rps, daily quota)
    "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v": ("Acme Corporation", "Acme Production", 500, 100_000),
    "hx_stage_acme_3f5g7h9j2k4l6m8n0p": ("Acme Corporation", "Acme Staging", 100, 10_000),
    "hx_prod_techflow_9a1b3c5d7e2f4g6h8i": (
        "TechFlow Solutions",
        "TechFlow Production",
        250,
        50_000,
    ),
    "hx_prod_cloudbridge_5m7n9p1q3r5s7t9u2v": (
        "CloudBridge Inc",
        "CloudBridge Production",
        1000,
        200_000,
    ),
}
ROUTE_POLICY = {
    "products": "standard",
    "inventory": "standard",
    "analytics": "reporting",
    "reports": "reporting",
    "services": "standard",
    "webhooks": None,
    "demo": "demo-swr",
}


async def _counts(factory: Factory) -> dict[str, int]:
    async with factory() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (Tenant, ApiKey, CachePolicy, Route, ConfigVersion)
        }


async def test_seed_twice_creates_rows_once(session_factory: Factory, settings: Settings) -> None:
    messages: list[str] = []
    assert await seed(session_factory, settings, progress=messages.append) is True
    first = await _counts(session_factory)
    version = await read_config_version(session_factory)

    assert await seed(session_factory, settings, progress=messages.append) is False
    assert await _counts(session_factory) == first
    assert first == {
        "tenants": 3,
        "api_keys": 4,
        "cache_policies": 3,
        "routes": 7,
        "config_version": 1,
    }
    # Nothing changed, so running instances have nothing to reload.
    assert await read_config_version(session_factory) == version >= 1
    assert len(messages) == 1 and messages[0].startswith("seeded ")


async def test_seeded_keys_match_the_brief(session_factory: Factory, settings: Settings) -> None:
    await seed(session_factory, settings)
    async with session_factory() as session:
        tenants = {t.id: t for t in await session.scalars(select(Tenant))}
        for key, (tenant, name, rps, daily) in BRIEF_KEYS.items():
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
            assert row is not None, key
            assert tenants[row.tenant_id].name == tenant
            assert row.name == name
            assert row.key_prefix == key[:12]
            assert row.rate_limit_rps == rps
            assert row.rate_limit_burst == 2 * rps
            assert row.daily_quota == daily
            assert row.monthly_quota == 30 * daily
            assert row.is_active and row.revoked_at is None
        # The plaintext is nowhere in the table.
        stored = list(await session.scalars(select(ApiKey.key_hash)))
        assert not set(stored) & set(BRIEF_KEYS)
        descriptions = {t.name: t.description for t in tenants.values()}
    assert descriptions == {
        "Acme Corporation": "E-commerce platform",
        "TechFlow Solutions": "SaaS analytics",
        "CloudBridge Inc": "API aggregation",
    }


async def test_seeded_routes_and_policies(session_factory: Factory, settings: Settings) -> None:
    await seed(session_factory, settings)
    async with session_factory() as session:
        policies = {p.id: p for p in await session.scalars(select(CachePolicy))}
        routes = {r.name: r for r in await session.scalars(select(Route))}
    assert set(routes) == set(ROUTE_POLICY)
    for name, policy in ROUTE_POLICY.items():
        route = routes[name]
        assert route.upstream_url == settings.example_upstream_url
        assert route.path_pattern == "/*"
        assert route.is_active
        attached = policies[route.cache_policy_id].name if route.cache_policy_id else None
        assert attached == policy, name
    by_name = {p.name: p for p in policies.values()}
    demo = by_name["demo-swr"]
    assert (demo.mode, demo.ttl_seconds, demo.stale_while_revalidate_seconds) == ("policy", 30, 120)
    assert (demo.stale_if_error_seconds, demo.negative_cache) == (300, True)
    standard = by_name["standard"]
    assert (standard.ttl_seconds, standard.stale_while_revalidate_seconds) == (60, 30)
    reporting = by_name["reporting"]
    assert (reporting.ttl_seconds, reporting.stale_while_revalidate_seconds) == (300, 300)


async def test_existing_routes_keep_their_upstream(
    session_factory: Factory, settings: Settings
) -> None:
    await seed(session_factory, settings)
    other = settings.model_copy(update={"example_upstream_url": "http://10.9.8.7:9000"})

    assert await seed(session_factory, other) is False

    async with session_factory() as session:
        upstreams = set(await session.scalars(select(Route.upstream_url)))
    assert upstreams == {settings.example_upstream_url}


async def test_missing_rows_are_restored_and_version_bumped(
    session_factory: Factory, settings: Settings
) -> None:
    await seed(session_factory, settings)
    before = await read_config_version(session_factory)
    async with session_factory() as session, session.begin():
        await session.execute(
            delete(ApiKey).where(ApiKey.key_hash == hash_key("hx_stage_acme_3f5g7h9j2k4l6m8n0p"))
        )
        await session.execute(delete(Route).where(Route.name == "webhooks"))
    counts = await _counts(session_factory)

    assert await seed(session_factory, settings) is True

    after = await _counts(session_factory)
    assert after["api_keys"] == counts["api_keys"] + 1 == 4
    assert after["routes"] == counts["routes"] + 1 == 7
    assert await read_config_version(session_factory) == before + 1


async def test_seed_creates_the_config_version_row(
    session_factory: Factory, settings: Settings
) -> None:
    await seed(session_factory, settings)
    async with session_factory() as session, session.begin():
        await session.execute(delete(ConfigVersion))
    assert await read_config_version(session_factory) == 0

    await seed(session_factory, settings)

    assert await read_config_version(session_factory) == 1


@pytest.mark.postgres
async def test_concurrent_seeds_on_postgres(pg_url: str, settings: Settings) -> None:
    """Gateway processes starting together with AUTO_SEED: one seeds, the others find it done."""
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database

    await upgrade_database(pg_url)
    engines = [make_engine(pg_url, pool_size=1) for _ in range(3)]
    try:
        factories = [make_session_factory(e) for e in engines]
        results = await asyncio.gather(*(seed(f, settings) for f in factories))
        counts = await _counts(factories[0])
    finally:
        for e in engines:
            await e.dispose()
    assert sorted(results) == [False, False, True]
    assert counts["api_keys"] == 4 and counts["routes"] == 7 and counts["tenants"] == 3
