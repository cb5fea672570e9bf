"""Configuration as code (heliox.admin.declarative) on SQLite and on PostgreSQL: export, plan,
apply through the admin API's handlers in one transaction, and the round trips."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.admin.declarative import (
    FORMAT,
    ApplyResult,
    ConfigFileError,
    apply_config,
    dump_yaml,
    export_config,
    format_plan,
    load_yaml,
    parse_config,
)
from heliox.admin.deps import Admin
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.db.models import ApiKey, AuditLog, Route, Tenant
from heliox.db.snapshot_loader import read_config_version
from heliox.seed import seed
from heliox.snapshot import hash_key
from tests.admin.admin_support import FakeRuntime, make_settings

ACTOR = "cli:tester"
ACME = "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database: each test runs on both."""
    return str(request.param)


def _new_database(backend: str, request: pytest.FixtureRequest, path: Path) -> str:
    """An empty database (a fresh one on PostgreSQL, dropped after the test)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{path}"
    from tests.conftest import fresh_pg_database

    database = fresh_pg_database(str(request.getfixturevalue("pg_server")))
    url = database.__enter__()
    request.addfinalizer(lambda: database.__exit__(None, None, None))
    return url


@pytest.fixture
def url_a(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _new_database(backend, request, tmp_path / "a.db")


@pytest.fixture
def url_b(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _new_database(backend, request, tmp_path / "b.db")


class Instance:
    """A migrated database with the admin API's context on it, as the CLI builds it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.runtime = FakeRuntime(
            settings=make_settings(), session_factory=make_session_factory(engine)
        )
        self.admin = Admin(runtime=self.runtime, actor=ACTOR)

    async def export(self) -> dict[str, Any]:
        async with self.admin.read() as session:
            return await export_config(session)

    async def apply(
        self, document: Any, *, prune: bool = False, dry_run: bool = False
    ) -> ApplyResult:
        return await apply_config(self.admin, parse_config(document), prune=prune, dry_run=dry_run)

    async def version(self) -> int:
        return await read_config_version(self.runtime.session_factory)

    async def count(self, model: Any) -> int:
        async with self.admin.read() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def instance(url_a: str) -> AsyncIterator[Instance]:
    """The seeded demo configuration plus the cases the file must carry: a key being rotated
    out (expires_at), a disabled key, a revoked key, a policy with its lock settings."""
    await upgrade_database(url_a)
    engine = make_engine(url_a, pool_size=2)
    inst = Instance(engine)
    await seed(inst.runtime.session_factory, make_settings())
    async with inst.runtime.session_factory() as session:
        keys = list(await session.scalars(select(ApiKey).order_by(ApiKey.id)))
        keys[0].expires_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        keys[1].is_active = False
        keys[3].revoked_at = datetime.now(UTC) - timedelta(days=1)
        await session.commit()
    try:
        yield inst
    finally:
        await engine.dispose()


@pytest.fixture
async def fresh(url_b: str) -> AsyncIterator[Instance]:
    """A second, empty database on the same backend."""
    await upgrade_database(url_b)
    engine = make_engine(url_b, pool_size=2)
    try:
        yield Instance(engine)
    finally:
        await engine.dispose()


def _route(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in document["routes"] if r["name"] == name)
    return found


def _tenant(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in document["tenants"] if t["name"] == name)
    return found


# --- round trips -------------------------------------------------------------------------------
async def test_export_is_by_name_sorted_and_never_holds_a_plaintext(instance: Instance) -> None:
    document = await instance.export()
    assert document["format"] == FORMAT
    for section in ("policies", "routes", "tenants"):
        names = [entry["name"] for entry in document[section]]
        assert names == sorted(names) and names
    text = dump_yaml(document)
    assert ACME not in text and "hx_prod_acme" in text
    assert "sha256:" + hash_key(ACME) in text
    assert " id:" not in text and "tenant_id" not in text and "cache_policy_id" not in text
    keys = [k for t in document["tenants"] for k in t["keys"]]
    async with instance.admin.read() as session:
        live = await session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        )
    assert len(keys) == live  # revoked keys are history, not configuration
    assert [k["expires_at"] for k in keys if "expires_at" in k] == ["2030-01-02T03:04:05+00:00"]
    assert any(k["is_active"] is False for k in keys)
    assert load_yaml(text, "export") == document
    assert dump_yaml(await instance.export()) == text  # deterministic


async def test_applying_the_export_to_the_same_instance_changes_nothing(
    instance: Instance,
) -> None:
    document = load_yaml(dump_yaml(await instance.export()), "export")
    version, audits = await instance.version(), await instance.count(AuditLog)
    for prune in (False, True):
        result = await instance.apply(document, prune=prune)
        assert result.plan.changes == [] and result.plan.kept == []
        assert not result.applied
        assert format_plan(result.plan, prune=prune) == ["no changes"]
    assert await instance.version() == version
    assert await instance.count(AuditLog) == audits
    assert instance.runtime.changes == 0


async def test_export_apply_to_a_fresh_database_export_again_is_identical(
    instance: Instance, fresh: Instance
) -> None:
    text = dump_yaml(await instance.export())
    result = await fresh.apply(load_yaml(text, "export"))
    assert result.applied and fresh.runtime.changes == 1
    assert dump_yaml(await fresh.export()) == text
    # The key made from its digest is the same key: its holder's plaintext works there.
    async with fresh.admin.read() as session:
        key = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(ACME)))
        assert key is not None and key.key_prefix == ACME[:12]
        actions = list(await session.execute(select(AuditLog.actor, AuditLog.action)))
    assert {actor for actor, _ in actions} == {ACTOR}
    assert {a for _, a in actions} == {
        "policy.create",
        "route.create",
        "tenant.create",
        "key.create",
    }
    again = await fresh.apply(load_yaml(text, "export"))
    assert again.plan.changes == []


# --- changes -----------------------------------------------------------------------------------
async def test_changes_are_planned_per_field_applied_once_and_audited(instance: Instance) -> None:
    document = await instance.export()
    version, audits = await instance.version(), await instance.count(AuditLog)
    _route(document, "demo")["timeout_seconds"] = 12.5
    _route(document, "demo")["cache_policy"] = "cheap"
    document["policies"].append({"name": "cheap", "ttl_seconds": 5})
    acme = _tenant(document, "Acme Corporation")
    acme["description"] = "changed"
    acme["keys"][0]["rate_limit_rps"] = 42
    digest = "sha256:" + hash_key("hx_live_fromelsewhere0000000000000")
    document["tenants"].append(
        {"name": "NewCo", "keys": [{"name": "moved", "prefix": "hx_live_from", "digest": digest}]}
    )
    result = await instance.apply(copy.deepcopy(document))
    lines = format_plan(result.plan, prune=False)
    assert "+ create policy 'cheap'" in lines and "    ttl_seconds: 5" in lines
    assert "~ update route 'demo'" in lines
    assert "    timeout_seconds: null -> 12.5" in lines
    assert "    description: 'E-commerce platform' -> 'changed'" in lines
    assert "    rate_limit_rps: 500.0 -> 42.0" in lines
    assert "+ create key 'moved' (hx_live_from…) of tenant 'NewCo'" in lines
    assert lines[-1] == "3 to create, 3 to update, 0 to delete"
    assert result.applied
    assert await instance.version() == version + 1 and instance.runtime.changes == 1
    assert await instance.count(AuditLog) == audits + 6
    exported = await instance.export()
    assert _route(exported, "demo")["cache_policy"] == "cheap"
    assert _tenant(exported, "NewCo")["keys"][0]["digest"] == digest
    assert (await instance.apply(document)).plan.changes == []  # idempotent


async def test_what_the_file_leaves_out_is_kept_unless_pruned(instance: Instance) -> None:
    document = await instance.export()
    document["routes"] = [r for r in document["routes"] if r["name"] != "webhooks"]
    document["tenants"] = [t for t in document["tenants"] if t["name"] != "TechFlow Solutions"]
    acme = _tenant(document, "Acme Corporation")
    dropped = acme["keys"].pop()
    kept = await instance.apply(document)
    assert kept.plan.changes == [] and not kept.applied
    assert kept.plan.kept == [
        f"key {dropped['name']!r} ({dropped['prefix']}…) of tenant 'Acme Corporation'",
        "route 'webhooks'",
        "tenant 'TechFlow Solutions'",
    ]
    assert "--prune deletes them" in "\n".join(format_plan(kept.plan, prune=False))

    async with instance.admin.read() as session:
        techflow = await session.scalar(
            select(Tenant.id).where(Tenant.name == "TechFlow Solutions")
        )
    pruned = await instance.apply(document, prune=True)
    lines = format_plan(pruned.plan, prune=True)
    assert lines[:3] == [
        "- delete route 'webhooks'",
        f"- delete key {dropped['name']!r} ({dropped['prefix']}…) of tenant 'Acme Corporation' "
        "(revoked)",
        "- delete tenant 'TechFlow Solutions' (with its 1 key)",
    ]
    async with instance.admin.read() as session:
        assert await session.scalar(select(Route.id).where(Route.name == "webhooks")) is None
        assert await session.scalar(select(func.count()).where(ApiKey.tenant_id == techflow)) == 0
        revoked = await session.scalar(
            select(ApiKey.revoked_at).where(ApiKey.key_hash == dropped["digest"][7:])
        )
        assert revoked is not None  # revoked, the row kept for the audit trail
    assert (await instance.apply(document, prune=True)).plan.changes == []


async def test_dry_run_checks_everything_and_changes_nothing(instance: Instance) -> None:
    before = dump_yaml(await instance.export())
    version, audits = await instance.version(), await instance.count(AuditLog)
    document = load_yaml(before, "export")
    _route(document, "demo")["is_active"] = False
    document["routes"].pop()
    result = await instance.apply(document, prune=True, dry_run=True)
    assert [c.action for c in result.plan.changes] == ["update", "delete"]
    assert not result.applied
    assert dump_yaml(await instance.export()) == before
    assert await instance.version() == version and await instance.count(AuditLog) == audits
    assert instance.runtime.changes == 0
    # A change only the admin API's handler refuses is refused by the dry run too.
    _tenant(document, "Acme Corporation")["abuse_mode"] = "custom"
    with pytest.raises(ConfigFileError) as refused:
        await instance.apply(document, dry_run=True)
    assert refused.value.problems == [
        "tenant 'Acme Corporation': abuse_zscore_threshold: abuse_mode 'custom' needs "
        "abuse_zscore_threshold (1 to 1000)"
    ]


async def test_a_refused_change_rolls_back_every_other(instance: Instance) -> None:
    before = dump_yaml(await instance.export())
    version, audits = await instance.version(), await instance.count(AuditLog)
    document = load_yaml(before, "export")
    document["policies"].append({"name": "new-one"})
    _route(document, "demo")["rate_limit_rps"] = 9
    # Applied last (keys come after routes and policies), and refused by update_key's rule.
    key = _tenant(document, "Acme Corporation")["keys"][0]
    key["abuse_mode"] = "custom"
    with pytest.raises(ConfigFileError) as refused:
        await instance.apply(document)
    assert refused.value.problems == [
        f"key {key['name']!r} ({key['prefix']}…) of tenant 'Acme Corporation': "
        "abuse_zscore_threshold: abuse_mode 'custom' needs abuse_zscore_threshold (1 to 1000)"
    ]
    assert dump_yaml(await instance.export()) == before
    assert await instance.version() == version and await instance.count(AuditLog) == audits
    assert instance.runtime.changes == 0


# --- refusals (decided before any write, the same on either backend: SQLite only) -------------
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@SQLITE_ONLY
async def test_every_invalid_entry_is_named_with_its_field(instance: Instance) -> None:
    document = await instance.export()
    document["policies"][0]["ttl_seconds"] = -1
    _route(document, "demo")["upstream_url"] = "http://169.254.169.254/"
    _route(document, "analytics")["methods"] = ["get"]
    _route(document, "inventory")["colour"] = "blue"
    _route(document, "products")["cache_policy_id"] = 1
    document["routes"].append(dict(_route(document, "webhooks")))
    acme = _tenant(document, "Acme Corporation")
    acme["keys"][0]["digest"] = "abc"
    acme["keys"][1]["digest"] = _tenant(document, "TechFlow Solutions")["keys"][0]["digest"]
    document["extra"] = 1
    with pytest.raises(ConfigFileError) as refused:
        parse_config(document)
    first_policy = document["policies"][0]["name"]
    acme_first, acme_second = acme["keys"][0]["name"], acme["keys"][1]["name"]
    techflow_first = _tenant(document, "TechFlow Solutions")["keys"][0]["name"]
    assert refused.value.problems == [
        "extra: unknown section (known: format, policies, routes, tenants)",
        f"policy {first_policy!r}: ttl_seconds: Input should be greater than or equal to 0",
        "route 'analytics': methods.0: 'get' is not an upper-case HTTP method token",
        "route 'demo': upstream_url: 169.254.169.254 is a cloud metadata address (set "
        "allow_private_upstream to permit it)",
        "route 'inventory': colour: unknown field",
        "route 'products': cache_policy_id: name the policy instead (cache_policy)",
        "route 'webhooks': name: appears twice in the file",
        f"tenant 'Acme Corporation' key {acme_first!r}: digest: must be 'sha256:' and 64 "
        "lower-case hex digits (the SHA-256 of the key, as `heliox config export` writes it)",
        f"tenant 'TechFlow Solutions' key {techflow_first!r}: digest: also listed under "
        f"tenant 'Acme Corporation' key {acme_second!r}",
    ]
    with pytest.raises(ConfigFileError, match="format: must be 'heliox/v1'"):
        parse_config({"format": "heliox/v0"})
    with pytest.raises(ConfigFileError, match="must be a mapping"):
        parse_config(["format"])
    with pytest.raises(ConfigFileError, match="not valid YAML at line 2, column"):
        load_yaml("format: heliox/v1\n: : :\n", "f.yaml")


@SQLITE_ONLY
async def test_keys_keep_their_tenant_and_revoked_keys_stay_revoked(instance: Instance) -> None:
    document = await instance.export()
    version = await instance.version()
    async with instance.admin.read() as session:
        revoked = await session.scalar(select(ApiKey).where(ApiKey.revoked_at.is_not(None)))
    assert revoked is not None
    acme, techflow = _tenant(document, "Acme Corporation"), _tenant(document, "TechFlow Solutions")
    moving = acme["keys"].pop(0)
    techflow["keys"].append(moving)
    acme["keys"][0]["prefix"] = "hx_wrong_pre"
    acme["keys"].append(
        {"name": "back", "prefix": revoked.key_prefix, "digest": "sha256:" + revoked.key_hash}
    )
    with pytest.raises(ConfigFileError) as refused:
        await instance.apply(document)
    problems = refused.value.problems
    assert len(problems) == 3, problems
    assert any(
        f"key {moving['name']!r}: digest: the key belongs to tenant 'Acme Corporation'" in p
        for p in problems
    )
    assert any("prefix: 'hx_wrong_pre' is not the prefix of the key with this digest" in p
               for p in problems)  # fmt: skip
    assert any("key 'back': digest: that key was revoked" in p for p in problems)
    assert await instance.version() == version


@SQLITE_ONLY
async def test_a_route_cannot_keep_a_policy_that_prune_deletes(instance: Instance) -> None:
    document = await instance.export()
    used = _route(document, "demo")["cache_policy"]
    assert used is not None
    document["policies"] = [p for p in document["policies"] if p["name"] != used]
    kept = await instance.apply(copy.deepcopy(document))  # without --prune the policy stays
    assert kept.plan.kept == [f"policy {used!r}"]
    with pytest.raises(ConfigFileError) as refused:
        await instance.apply(document, prune=True)
    assert f"route 'demo': cache_policy: {used!r} is not in the file, so --prune deletes it" in (
        refused.value.problems
    )
    _route(document, "demo")["cache_policy"] = "nowhere"
    with pytest.raises(ConfigFileError, match="no cache policy named 'nowhere'"):
        await instance.apply(document)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_file_moves_from_sqlite_to_postgresql_unchanged(
    instance: Instance, pg_url: str
) -> None:
    # Names whose order differs between a code-point sort and a locale collation.
    for name in ("b-route", "B-route", "_route", "a_route"):
        document = await instance.export()
        document["routes"].append({"name": name, "upstream_url": "http://127.0.0.1:9"})
        await instance.apply(document)
    text = dump_yaml(await instance.export())
    await upgrade_database(pg_url)
    engine = make_engine(pg_url, pool_size=2)
    try:
        postgres = Instance(engine)
        assert (await postgres.apply(load_yaml(text, "export"))).applied
        assert dump_yaml(await postgres.export()) == text
    finally:
        await engine.dispose()
