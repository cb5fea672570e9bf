"""Admin writes as config deltas, on SQLite and on PostgreSQL: after every kind of write, the
snapshot an instance gets by applying the recorded change is the one a full load gives, and an
instance that cannot know what changed loads it whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select

from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.db.models import ConfigChange
from heliox.db.snapshot_loader import (
    KEEP_CHANGES,
    bump_config_version,
    load_delta,
    load_snapshot,
    record_config_change,
)
from heliox.runtime import Runtime
from heliox.snapshot import Snapshot, apply_delta
from tests.admin.admin_support import FakeRuntime, build_app, client_for, make_settings

UPSTREAM = "http://127.0.0.1:8001"


@dataclass
class DeltaRuntime(FakeRuntime):
    """A fake runtime that keeps a snapshot up to date the way the real one does."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    full_loads: int = 0
    deltas: int = 0

    async def config_changed(self) -> None:
        await super().config_changed()
        delta = await load_delta(self.session_factory, self.snapshot)
        if delta is None:
            self.snapshot = await load_snapshot(self.session_factory)
            self.full_loads += 1
        else:
            self.snapshot = apply_delta(self.snapshot, delta)
            self.deltas += 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, DeltaRuntime]]:
    await upgrade_database(backend_url)
    engine = make_engine(backend_url, pool_size=2)
    runtime = DeltaRuntime(settings=make_settings(), session_factory=make_session_factory(engine))
    try:
        async with client_for(build_app(runtime)) as client:
            yield client, runtime
    finally:
        await engine.dispose()


async def same_as_a_full_load(runtime: DeltaRuntime) -> None:
    full = await load_snapshot(runtime.session_factory)
    snap = runtime.snapshot
    assert snap.version == full.version
    assert snap.keys == full.keys
    assert snap.keys_by_id == full.keys_by_id
    assert snap.routes == full.routes
    assert snap.tenants == full.tenants


async def test_every_kind_of_write_is_applied_as_a_delta(
    backend: tuple[httpx.AsyncClient, DeltaRuntime],
) -> None:
    client, runtime = backend

    async def ok(response: httpx.Response) -> dict[str, object]:
        assert response.status_code < 300, response.text
        await same_as_a_full_load(runtime)
        return response.json() if response.content else {}

    async def created(response: httpx.Response) -> int:
        body = await ok(response)
        assert isinstance(body["id"], int)
        return body["id"]

    # The first write finds an empty snapshot (version 0): that one is a full load.
    acme = await created(await client.post("/admin/tenants", json={"name": "acme"}))
    assert (runtime.full_loads, runtime.deltas) == (1, 0)
    other = await created(await client.post("/admin/tenants", json={"name": "other"}))
    key = await created(await client.post("/admin/keys", json={"tenant_id": acme, "name": "k"}))
    assert runtime.snapshot.keys_by_id[key].key_hash in runtime.snapshot.keys
    spare = await created(await client.post("/admin/keys", json={"tenant_id": acme, "name": "s"}))
    await ok(await client.patch(f"/admin/keys/{key}", json={"rate_limit_rps": 2.5}))
    assert runtime.snapshot.keys_by_id[key].rate_limit_rps == 2.5
    # A key's abuse settings follow its tenant's: a tenant change re-reads the tenant's keys.
    await ok(
        await client.patch(
            f"/admin/tenants/{acme}",
            json={"abuse_mode": "custom", "abuse_zscore_threshold": 9.0},
        )
    )
    assert runtime.snapshot.keys_by_id[key].abuse_threshold == 9.0
    await ok(await client.patch(f"/admin/tenants/{acme}", json={"is_active": False}))
    assert key not in runtime.snapshot.keys_by_id
    await ok(await client.patch(f"/admin/tenants/{acme}", json={"is_active": True}))
    assert key in runtime.snapshot.keys_by_id
    rotated = await ok(await client.post(f"/admin/keys/{key}/rotate", json={"grace_seconds": 60}))
    assert runtime.snapshot.keys_by_id[key].expires_at is not None  # valid for the grace period
    assert rotated["id"] in runtime.snapshot.keys_by_id
    await ok(await client.delete(f"/admin/keys/{rotated['id']}"))
    assert rotated["id"] not in runtime.snapshot.keys_by_id
    await ok(await client.patch(f"/admin/keys/{spare}", json={"is_active": False}))
    await ok(await client.patch(f"/admin/keys/{spare}", json={"is_active": True}))
    moved = await created(await client.post("/admin/keys", json={"tenant_id": other, "name": "m"}))
    await ok(await client.delete(f"/admin/tenants/{other}"))
    assert moved not in runtime.snapshot.keys_by_id

    policy = await created(await client.post("/admin/policies", json={"name": "p"}))
    route_body = {"name": "r", "upstream_url": UPSTREAM, "cache_policy_id": policy}
    route = await created(await client.post("/admin/routes", json=route_body))
    await ok(await client.patch(f"/admin/policies/{policy}", json={"ttl_seconds": 300}))
    cached = runtime.snapshot.routes["r"].cache_policy
    assert cached is not None and cached.ttl_seconds == 300
    await ok(await client.patch(f"/admin/routes/{route}", json={"name": "renamed"}))
    assert set(runtime.snapshot.routes) == {"renamed"}
    await ok(await client.delete(f"/admin/policies/{policy}"))
    assert runtime.snapshot.routes["renamed"].cache_policy is None
    await ok(await client.patch(f"/admin/routes/{route}", json={"is_active": False}))
    assert runtime.snapshot.routes == {}
    await ok(await client.patch(f"/admin/routes/{route}", json={"is_active": True}))
    await ok(await client.delete(f"/admin/routes/{route}"))
    assert runtime.snapshot.routes == {}

    assert runtime.full_loads == 1
    assert runtime.deltas == runtime.changes - 1


async def test_several_missed_versions_apply_as_one_delta(
    backend: tuple[httpx.AsyncClient, DeltaRuntime],
) -> None:
    """Behind by several recorded versions (pub/sub messages lost): still a delta."""
    client, runtime = backend
    tenant = (await client.post("/admin/tenants", json={"name": "t"})).json()["id"]
    behind = runtime.snapshot
    for name in ("a", "b", "c"):
        assert (
            await client.post("/admin/keys", json={"tenant_id": tenant, "name": name})
        ).is_success
    delta = await load_delta(runtime.session_factory, behind)
    assert delta is not None
    assert delta.version == behind.version + 3
    assert len([k for k in delta.keys.values() if k is not None]) == 3
    assert (await load_delta(runtime.session_factory, runtime.snapshot)) == type(delta)(
        version=runtime.snapshot.version
    )


async def test_an_unrecorded_version_means_a_full_load(
    backend: tuple[httpx.AsyncClient, DeltaRuntime],
) -> None:
    """A bump with no change row (the seed, an instance of an earlier release): no delta can
    say what changed, so the instance loads the whole snapshot."""
    client, runtime = backend
    tenant = (await client.post("/admin/tenants", json={"name": "t"})).json()["id"]
    behind = runtime.snapshot
    async with runtime.session_factory() as session, session.begin():
        await bump_config_version(session)
    assert await load_delta(runtime.session_factory, behind) is None
    # The next write is recorded, but the gap before it still forces the full load.
    assert (await client.post("/admin/keys", json={"tenant_id": tenant, "name": "k"})).is_success
    assert await load_delta(runtime.session_factory, behind) is None
    assert runtime.full_loads == 2
    await same_as_a_full_load(runtime)


async def test_pruned_or_unknown_changes_mean_a_full_load(
    backend: tuple[httpx.AsyncClient, DeltaRuntime],
) -> None:
    client, runtime = backend
    await client.post("/admin/tenants", json={"name": "t"})
    behind = runtime.snapshot
    await client.post("/admin/tenants", json={"name": "u"})
    factory = runtime.session_factory
    assert await load_delta(factory, behind) is not None
    async with factory() as session, session.begin():
        await session.execute(delete(ConfigChange).where(ConfigChange.version > behind.version))
    assert await load_delta(factory, behind) is None  # pruned: missed and no longer recorded

    async with factory() as session, session.begin():
        version = await bump_config_version(session)
        await record_config_change(session, version, [("webhook", 3)])
    current = await load_snapshot(factory)
    async with factory() as session, session.begin():
        version = await bump_config_version(session)
        await record_config_change(session, version, [("key", 1)])
    assert await load_delta(factory, current) is not None
    previous = Snapshot(version=current.version - 1)
    assert await load_delta(factory, previous) is None  # a change no delta describes
    async with factory() as session:
        full = await session.scalar(
            select(ConfigChange.full).where(ConfigChange.version == current.version)
        )
    assert full is True


async def test_old_change_rows_are_pruned(backend: tuple[httpx.AsyncClient, DeltaRuntime]) -> None:
    _, runtime = backend
    factory = runtime.session_factory
    async with factory() as session, session.begin():
        version = await bump_config_version(session)
        await record_config_change(session, version + KEEP_CHANGES, [("key", 1)])
    async with factory() as session:
        kept = list(await session.scalars(select(ConfigChange.version)))
    assert kept == [version + KEEP_CHANGES]


async def test_the_runtime_applies_deltas_and_counts_full_loads(tmp_path: Path) -> None:
    """The gateway's own runtime: writes reach its snapshot as deltas (`config_deltas_applied`);
    a version it cannot account for makes it load everything (`config_full_reloads`)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"
    await upgrade_database(url)
    runtime = Runtime(make_settings().model_copy(update={"database_url": url}))
    events = runtime.metrics.events
    try:
        await runtime.reload_config()  # start-up
        async with client_for(build_app(runtime)) as client:
            tenant = (await client.post("/admin/tenants", json={"name": "t"})).json()["id"]
            made = await client.post("/admin/keys", json={"tenant_id": tenant, "name": "k"})
            assert made.status_code == 201, made.text
        assert runtime.snapshot.keys_by_id[made.json()["id"]].tenant_id == tenant
        # Start-up and the first write (a snapshot of version 0 may never have been loaded, so
        # no delta is applied to one) load everything; the key is a delta.
        assert (events["config_full_reloads"], events["config_deltas_applied"]) == (2, 1)
        assert events["config_reloads"] == 3  # every new snapshot, as before

        await runtime.sync_config()  # nothing new: nothing done
        assert (events["config_full_reloads"], events["config_deltas_applied"]) == (2, 1)

        async with runtime.session_factory() as session, session.begin():
            await bump_config_version(session)  # a write that recorded no change
        await runtime.sync_config()
        assert (events["config_full_reloads"], events["config_deltas_applied"]) == (3, 1)
        assert runtime.metrics.gauges["config_version"] == runtime.snapshot.version == 3
    finally:
        await runtime.engine.dispose()
