"""Loading the hot path's snapshot from SQL, and the config version."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from heliox.config import Settings
from heliox.db.models import ApiKey, CachePolicy, Route, Tenant
from heliox.db.snapshot_loader import (
    UpstreamURLError,
    bump_config_version,
    load_snapshot,
    parse_upstream_url,
    read_config_version,
)
from heliox.seed import seed
from heliox.snapshot import hash_key

Factory = async_sessionmaker[AsyncSession]
ACME_PROD = "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"
ACME_STAGE = "hx_stage_acme_3f5g7h9j2k4l6m8n0p"
TECHFLOW = "hx_prod_techflow_9a1b3c5d7e2f4g6h8i"
CLOUDBRIDGE = "hx_prod_cloudbridge_5m7n9p1q3r5s7t9u2v"


@pytest.fixture
async def seeded(session_factory: Factory, settings: Settings) -> Factory:
    await seed(session_factory, settings)
    return session_factory


async def test_snapshot_of_seeded_data(seeded: Factory) -> None:
    snap = await load_snapshot(seeded)

    assert snap.version == await read_config_version(seeded) >= 1
    assert set(snap.routes) == {
        "products",
        "inventory",
        "analytics",
        "reports",
        "services",
        "webhooks",
        "demo",
    }
    demo = snap.routes["demo"]
    assert (demo.upstream_scheme, demo.upstream_host, demo.upstream_port) == (
        "http",
        "127.0.0.1",
        8001,
    )
    assert demo.upstream_base_path == ""
    assert demo.upstream_url == "http://127.0.0.1:8001"
    assert demo.path_pattern == "/*"
    assert demo.cache_policy is not None
    assert demo.cache_policy.name == "demo-swr"
    assert demo.cache_policy.ttl_seconds == 30
    assert demo.cache_policy.stale_while_revalidate_seconds == 120
    assert demo.cache_policy.stale_if_error_seconds == 300
    # Seeded policies carry the cache engine defaults; a null lock pair leaves the gateway's
    # CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE in force.
    assert (
        demo.cache_policy.keep_seconds,
        demo.cache_policy.lock_timeout_seconds,
        demo.cache_policy.lock_age_seconds,
        demo.cache_policy.max_variants,
    ) == (600, None, None, 8)
    assert demo.cache_policy.cacheable_methods == frozenset({"GET", "HEAD"})
    assert 200 in demo.cache_policy.cacheable_statuses
    assert snap.routes["webhooks"].cache_policy is None
    assert snap.routes["reports"].cache_policy is not None
    assert snap.routes["reports"].cache_policy.name == "reporting"
    assert "GET" in demo.methods and "DELETE" in demo.methods

    assert set(snap.keys) == {hash_key(k) for k in (ACME_PROD, ACME_STAGE, TECHFLOW, CLOUDBRIDGE)}
    acme = snap.keys[hash_key(ACME_PROD)]
    assert (acme.name, acme.key_prefix, acme.rate_limit_rps, acme.rate_limit_burst) == (
        "Acme Production",
        "hx_prod_acme",
        500,
        1000,
    )
    assert (acme.daily_quota, acme.monthly_quota) == (100_000, 3_000_000)
    assert snap.keys_by_id == {k.id: k for k in snap.keys.values()}
    assert {t.name for t in snap.tenants.values()} == {
        "Acme Corporation",
        "TechFlow Solutions",
        "CloudBridge Inc",
    }
    assert snap.tenants[acme.tenant_id].name == "Acme Corporation"


async def test_unusable_keys_and_inactive_routes_are_left_out(seeded: Factory) -> None:
    now = datetime.now(UTC)
    async with seeded() as session, session.begin():
        await session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(ACME_STAGE)).values(revoked_at=now)
        )
        await session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(ACME_PROD)).values(is_active=False)
        )
        await session.execute(
            update(Tenant).where(Tenant.name == "TechFlow Solutions").values(is_active=False)
        )
        await session.execute(update(Route).where(Route.name == "reports").values(is_active=False))
        await bump_config_version(session)

    snap = await load_snapshot(seeded)

    assert set(snap.keys) == {hash_key(CLOUDBRIDGE)}
    assert set(snap.keys_by_id) == {snap.keys[hash_key(CLOUDBRIDGE)].id}
    assert "reports" not in snap.routes
    assert len(snap.routes) == 6
    # Tenants are all listed, with their state, for the admin views and log attribution.
    inactive = [t for t in snap.tenants.values() if not t.is_active]
    assert [t.name for t in inactive] == ["TechFlow Solutions"]


async def test_abuse_overrides_are_resolved_key_over_tenant(seeded: Factory) -> None:
    """A key on "default" follows its tenant; its own "exempt" or "custom" wins over the
    tenant's; a tenant on "default" leaves the ABUSE_* settings (no override)."""
    async with seeded() as session, session.begin():
        acme = await session.scalar(
            select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(ACME_PROD))
        )
        await session.execute(
            update(Tenant)
            .where(Tenant.id == acme)
            .values(abuse_mode="custom", abuse_zscore_threshold=7.5)
        )
        await session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(ACME_STAGE))
            .values(abuse_mode="exempt")
        )
        await session.execute(
            update(Tenant).where(Tenant.name == "TechFlow Solutions").values(abuse_mode="exempt")
        )
        await session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(TECHFLOW))
            .values(abuse_mode="custom", abuse_zscore_threshold=9.0)
        )
        await bump_config_version(session)

    keys = (await load_snapshot(seeded)).keys
    resolved = {
        name: (keys[hash_key(raw)].abuse_exempt, keys[hash_key(raw)].abuse_threshold)
        for name, raw in [("acme-prod", ACME_PROD), ("acme-stage", ACME_STAGE),
                          ("techflow", TECHFLOW), ("cloudbridge", CLOUDBRIDGE)]
    }  # fmt: skip
    assert resolved == {
        "acme-prod": (False, 7.5),  # the tenant's threshold
        "acme-stage": (True, None),  # its own exemption over the tenant's threshold
        "techflow": (False, 9.0),  # its own threshold over the tenant's exemption
        "cloudbridge": (False, None),  # nothing set: the settings
    }


async def test_rotated_keys_stay_until_they_expire(seeded: Factory) -> None:
    now = datetime.now(UTC)
    async with seeded() as session, session.begin():
        await session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(ACME_PROD))
            .values(expires_at=now + timedelta(hours=1))
        )
        await session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(ACME_STAGE))
            .values(expires_at=now - timedelta(seconds=1))
        )

    snap = await load_snapshot(seeded)

    grace = snap.keys[hash_key(ACME_PROD)].expires_at
    assert grace is not None and grace.tzinfo is not None
    assert abs(grace - (now + timedelta(hours=1))) < timedelta(seconds=1)
    assert hash_key(ACME_STAGE) not in snap.keys


async def test_route_details_are_resolved(seeded: Factory) -> None:
    async with seeded() as session, session.begin():
        policy = CachePolicy(
            name="varied",
            mode="origin",
            vary_headers=["Accept-Language", " Accept-Encoding"],
            cacheable_methods=["get"],
            cacheable_statuses=[200, 404],
            shared=True,
            keep_seconds=86400,
            lock_timeout_seconds=0.5,
            lock_age_seconds=2.25,
            max_variants=3,
        )
        session.add(policy)
        await session.flush()
        session.add_all(
            [
                Route(
                    name="v1",
                    upstream_url="https://API.example.com/v1/",
                    cache_policy_id=policy.id,
                    methods=["get", "post"],
                    rate_limit_rps=5.0,
                    fail_mode="closed",
                    timeout_seconds=2.5,
                ),
                Route(name="ipv6", upstream_url="http://[::1]:9000/base/path"),
                Route(name="broken", upstream_url="ftp://files.example.com/"),
            ]
        )

    snap = await load_snapshot(seeded)

    v1 = snap.routes["v1"]
    assert (v1.upstream_scheme, v1.upstream_host, v1.upstream_port) == (
        "https",
        "api.example.com",
        443,
    )
    assert v1.upstream_base_path == "/v1"
    assert v1.upstream_url == "https://api.example.com/v1"
    assert v1.methods == frozenset({"GET", "POST"})
    assert (v1.rate_limit_rps, v1.fail_mode, v1.timeout_seconds) == (5.0, "closed", 2.5)
    assert v1.cache_policy is not None
    assert v1.cache_policy.mode == "origin"
    assert v1.cache_policy.vary_headers == ("accept-language", "accept-encoding")
    assert v1.cache_policy.cacheable_methods == frozenset({"GET"})
    assert v1.cache_policy.cacheable_statuses == frozenset({200, 404})
    assert v1.cache_policy.shared is True
    assert (
        v1.cache_policy.keep_seconds,
        v1.cache_policy.lock_timeout_seconds,
        v1.cache_policy.lock_age_seconds,
        v1.cache_policy.max_variants,
    ) == (86400, 0.5, 2.25, 3)
    ipv6 = snap.routes["ipv6"]
    assert (ipv6.upstream_host, ipv6.upstream_port, ipv6.upstream_base_path) == (
        "::1",
        9000,
        "/base/path",
    )
    assert ipv6.upstream_url == "http://[::1]:9000/base/path"
    # A route whose upstream cannot be proxied to is skipped, not fatal to the others.
    assert "broken" not in snap.routes
    assert len(snap.routes) == 9


async def test_snapshot_is_a_few_queries_not_one_per_row(
    engine: AsyncEngine, seeded: Factory
) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        snap = await load_snapshot(seeded)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(snap.routes) == 7 and len(snap.keys) == 4
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) <= 5


async def test_bump_config_version_increments(session_factory: Factory) -> None:
    assert await read_config_version(session_factory) == 0
    async with session_factory() as session, session.begin():
        assert await bump_config_version(session) == 1
    async with session_factory() as session, session.begin():
        assert await bump_config_version(session) == 2
        assert await bump_config_version(session) == 3
    assert await read_config_version(session_factory) == 3

    # A rolled-back write leaves the version where it was.
    async with session_factory() as session, session.begin():
        assert await bump_config_version(session) == 4
        await session.rollback()
    assert await read_config_version(session_factory) == 3
    assert (await load_snapshot(session_factory)).version == 3


@pytest.mark.postgres
async def test_concurrent_bumps_get_distinct_versions(pg_url: str) -> None:
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database

    await upgrade_database(pg_url)
    engine = make_engine(pg_url, pool_size=5)
    factory = make_session_factory(engine)

    async def bump() -> int:
        async with factory() as session, session.begin():
            return await bump_config_version(session)

    try:
        versions = await asyncio.gather(*(bump() for _ in range(10)))
        final = await read_config_version(factory)
    finally:
        await engine.dispose()
    assert sorted(versions) == list(range(1, 11))
    assert final == 10


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8001", ("http", "127.0.0.1", 8001, "")),
        ("http://127.0.0.1:8001/", ("http", "127.0.0.1", 8001, "")),
        ("https://Example.COM", ("https", "example.com", 443, "")),
        ("http://example.com/a/b//", ("http", "example.com", 80, "/a/b")),
        ("HTTP://example.com:8080/x", ("http", "example.com", 8080, "/x")),
        ("http://[2001:db8::1]/", ("http", "2001:db8::1", 80, "")),
    ],
)
def test_parse_upstream_url(url: str, expected: tuple[str, str, int, str]) -> None:
    assert parse_upstream_url(url) == expected


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "http://", "http://example.com:99999", "example.com"]
)
def test_parse_upstream_url_rejects(url: str) -> None:
    with pytest.raises(UpstreamURLError):
        parse_upstream_url(url)


async def test_routes_read_from_each_policy_row_once(seeded: Factory) -> None:
    """Routes sharing a policy share one CachePolicyConfig object."""
    snap = await load_snapshot(seeded)
    assert snap.routes["products"].cache_policy is snap.routes["inventory"].cache_policy
    policy = snap.routes["products"].cache_policy
    assert policy is not None
    async with seeded() as session:
        standard = select(CachePolicy.id).where(CachePolicy.name == "standard")
        assert await session.scalar(standard) == policy.id


async def test_keys_across_several_load_batches_all_arrive_sharing_their_strings(
    seeded: Factory,
) -> None:
    from sqlalchemy import insert

    from heliox.db.snapshot_loader import KEY_BATCH

    count = 2 * KEY_BATCH + 7  # three batches, the last one partial
    async with seeded() as session, session.begin():
        tenant_id = (await session.scalars(select(Tenant.id).limit(1))).one()
        await session.execute(
            insert(ApiKey),
            [
                {
                    "tenant_id": tenant_id,
                    "name": f"bulk {i}",
                    "key_hash": hash_key(f"bulk-key-{i}"),
                    "key_prefix": f"hx_bulk_{i}"[:32],
                    "rate_limit_rps": float(i % 50 + 1),
                    "daily_quota": i,
                }
                for i in range(count)
            ],
        )
    snap = await load_snapshot(seeded)
    assert len(snap.keys) == count + 4  # and the seeded four
    key = snap.keys[hash_key("bulk-key-1234")]
    assert (key.name, key.rate_limit_rps, key.daily_quota) == ("bulk 1234", 35.0, 1234)
    assert snap.keys_by_id[key.id] is key
    algorithms = {id(k.rate_limit_algorithm) for k in snap.keys.values()}
    assert len(algorithms) == 1  # one shared string, not one per key
