"""apply_delta: the snapshot an instance serves after one config change, without a full load."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from heliox.snapshot import (
    CachePolicyConfig,
    ConfigDelta,
    KeyConfig,
    RouteConfig,
    Snapshot,
    TenantConfig,
    apply_delta,
    hash_key,
)


def key(key_id: int, tenant_id: int = 1, **kw: object) -> KeyConfig:
    digest = hash_key(f"plaintext-{key_id}")
    return KeyConfig(
        id=key_id,
        tenant_id=tenant_id,
        name=f"k{key_id}",
        key_prefix="hx_",
        key_hash=digest,
        **kw,  # type: ignore[arg-type]
    )


CACHED = CachePolicyConfig(id=7, name="cached", ttl_seconds=60)


def base() -> Snapshot:
    keys = [key(1), key(2), key(3, tenant_id=2), key(4, tenant_id=2)]
    routes = [
        RouteConfig(id=10, name="a", upstream_url="http://a", cache_policy=CACHED),
        RouteConfig(id=11, name="b", upstream_url="http://b"),
    ]
    return Snapshot(
        version=5,
        routes={r.name: r for r in routes},
        keys={k.key_hash: k for k in keys},
        keys_by_id={k.id: k for k in keys},
        tenants={1: TenantConfig(1, "one"), 2: TenantConfig(2, "two")},
    )


def consistent(snap: Snapshot) -> None:
    """The two key tables name the same keys, each under its own digest."""
    assert {k.key_hash: k for k in snap.keys_by_id.values()} == snap.keys
    assert all(snap.keys_by_id[k.id] is k for k in snap.keys.values())


def test_a_new_key_is_served_and_the_version_moves() -> None:
    new = key(5, rate_limit_rps=3.0)
    snap = apply_delta(base(), ConfigDelta(version=6, keys={5: new}))
    assert snap.version == 6
    assert snap.keys[new.key_hash] is new
    assert snap.keys_by_id[5] is new
    assert len(snap.keys) == 5
    consistent(snap)


def test_a_revoked_key_is_gone_from_both_tables() -> None:
    old = base()
    revoked = old.keys_by_id[2]
    snap = apply_delta(old, ConfigDelta(version=6, keys={2: None}))
    assert revoked.key_hash not in snap.keys
    assert 2 not in snap.keys_by_id
    assert len(snap.keys) == 3
    consistent(snap)


def test_a_changed_limit_replaces_the_key() -> None:
    old = base()
    limited = replace(old.keys_by_id[1], rate_limit_rps=1.0, daily_quota=10)
    snap = apply_delta(old, ConfigDelta(version=6, keys={1: limited}))
    assert snap.keys[limited.key_hash].rate_limit_rps == 1.0
    assert snap.keys_by_id[1].daily_quota == 10
    consistent(snap)


def test_a_key_moving_tenant_is_listed_under_the_new_one() -> None:
    old = base()
    moved = replace(old.keys_by_id[1], tenant_id=2)
    snap = apply_delta(old, ConfigDelta(version=6, keys={1: moved}))
    assert snap.keys_by_id[1].tenant_id == 2
    consistent(snap)


def test_a_rotation_adds_the_new_key_and_keeps_the_old_one_until_it_expires() -> None:
    old = base()
    until = datetime(2026, 12, 7, tzinfo=UTC) + timedelta(minutes=15)
    expiring = replace(old.keys_by_id[1], expires_at=until)
    successor = key(6)
    snap = apply_delta(old, ConfigDelta(version=6, keys={1: expiring, 6: successor}))
    assert snap.keys_by_id[1].expires_at == until
    assert snap.keys[successor.key_hash] is successor
    consistent(snap)


def test_a_deactivated_tenant_takes_its_keys_with_it() -> None:
    old = base()
    delta = ConfigDelta(
        version=6, tenants={2: TenantConfig(2, "two", is_active=False)}, keys={3: None, 4: None}
    )
    snap = apply_delta(old, delta)
    assert snap.tenants[2].is_active is False
    assert {k.tenant_id for k in snap.keys.values()} == {1}
    consistent(snap)


def test_a_deleted_tenant_sweeps_the_keys_the_database_no_longer_names() -> None:
    old = base()
    delta = ConfigDelta(version=6, tenants={2: None}, sweep_tenants=frozenset({2}))
    snap = apply_delta(old, delta)
    assert 2 not in snap.tenants
    assert sorted(snap.keys_by_id) == [1, 2]
    consistent(snap)


def test_a_sweep_keeps_a_key_the_delta_reread() -> None:
    """A key moved out of a deleted tenant in the same batch of changes stays."""
    old = base()
    moved = replace(old.keys_by_id[3], tenant_id=1)
    delta = ConfigDelta(version=6, tenants={2: None}, keys={3: moved}, sweep_tenants=frozenset({2}))
    snap = apply_delta(old, delta)
    assert sorted(snap.keys_by_id) == [1, 2, 3]
    consistent(snap)


def test_a_key_built_without_its_digest_is_still_dropped() -> None:
    bare = KeyConfig(id=9, tenant_id=1, name="bare", key_prefix="hx_")
    old = Snapshot(version=1, keys={"d" * 64: bare}, keys_by_id={9: bare})
    snap = apply_delta(old, ConfigDelta(version=2, keys={9: None}))
    assert snap.keys == {} and snap.keys_by_id == {}


def test_a_policy_change_reaches_the_routes_that_use_it() -> None:
    old = base()
    longer = replace(CACHED, ttl_seconds=300)
    route_a = replace(old.routes["a"], cache_policy=longer)
    snap = apply_delta(old, ConfigDelta(version=6, routes={10: route_a}))
    policy = snap.routes["a"].cache_policy
    assert policy is not None and policy.ttl_seconds == 300
    assert snap.routes["b"] is old.routes["b"]


def test_a_renamed_route_leaves_its_old_name() -> None:
    old = base()
    renamed = replace(old.routes["b"], name="c")
    snap = apply_delta(old, ConfigDelta(version=6, routes={11: renamed}))
    assert set(snap.routes) == {"a", "c"}


def test_a_deleted_route_is_gone_and_the_old_snapshot_keeps_its_routes() -> None:
    old = base()
    snap = apply_delta(old, ConfigDelta(version=6, routes={10: None}))
    assert set(snap.routes) == {"b"}
    # Routes and tenants are copied: a request holding the old snapshot still finds its route.
    assert set(old.routes) == {"a", "b"}


def test_an_empty_delta_only_moves_the_version() -> None:
    old = base()
    keys, routes = old.keys, old.routes
    snap = apply_delta(old, ConfigDelta(version=7))
    assert ConfigDelta(version=7).empty
    assert snap.version == 7
    assert snap.keys is keys and snap.routes is routes


def test_a_delta_to_an_older_version_is_refused() -> None:
    with pytest.raises(ValueError, match="older"):
        apply_delta(base(), ConfigDelta(version=4))
