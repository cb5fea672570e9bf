"""Live configuration across two instances on PostgreSQL + Redis: what one admin write changes
is in force on the other instance within 2 s, without a restart."""

from __future__ import annotations

import time

import httpx

from tests.e2e.harness import Gateway, wait_until

PROPAGATION = 2.0  # the stated bound


def _status(gw: Gateway, route: str, key: str | None) -> int:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(f"{gw.url}/g/{route}/items", headers=headers, timeout=10).status_code


def _within_bound(predicate: object) -> float:
    start = time.monotonic()
    wait_until(predicate, timeout=PROPAGATION, interval=0.02)
    return time.monotonic() - start


def test_tenant_key_rotation_and_revocation_across_instances(
    pg_gateway: Gateway, pg_gateway_b: Gateway
) -> None:
    with pg_gateway.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "live-config"}).json()
        created = admin.post("/admin/keys", json={"tenant_id": tenant["id"], "name": "k"})
        assert created.status_code == 201
        key_id, key = created.json()["id"], created.json()["key"]
        _within_bound(lambda: _status(pg_gateway_b, "demo", key) == 200)
        assert _status(pg_gateway, "demo", key) == 200

        rotated = admin.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": 60})
        assert rotated.status_code == 201, rotated.text
        new_id, new_key = rotated.json()["id"], rotated.json()["key"]
        assert new_key != key
        _within_bound(lambda: _status(pg_gateway_b, "demo", new_key) == 200)
        assert _status(pg_gateway_b, "demo", key) == 200  # old key inside its grace period

        assert admin.delete(f"/admin/keys/{new_id}").status_code == 204
        _within_bound(lambda: _status(pg_gateway_b, "demo", new_key) == 401)

        audit = admin.get("/admin/audit", params={"entity_type": "key"}).json()
        rotations = [row for row in audit["items"] if row["action"] == "key.rotate"]
        assert any(str(row["entity_id"]) == str(key_id) for row in rotations)


def test_route_created_on_one_instance_serves_on_the_other(
    pg_gateway: Gateway, pg_gateway_b: Gateway
) -> None:
    with pg_gateway.admin() as admin:
        r = admin.post(
            "/admin/routes",
            json={"name": "fresh", "path_pattern": "/*", "is_public": True,
                  "upstream_url": pg_gateway.env["EXAMPLE_UPSTREAM_URL"]},
        )  # fmt: skip
        assert r.status_code == 201, r.text
    _within_bound(lambda: _status(pg_gateway_b, "fresh", None) == 200)


def _events(gw: Gateway) -> dict[str, int]:
    with gw.admin() as admin:
        events: dict[str, int] = admin.get("/metrics").json()["events"]
    return events


def test_key_changes_reach_the_other_instance_as_deltas(
    pg_gateway: Gateway, pg_gateway_b: Gateway
) -> None:
    """A key created, limited and revoked on A is in force on B within the bound, and B applied
    each change as a delta: it never loaded its whole snapshot again."""
    before = _events(pg_gateway_b)
    with pg_gateway.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "delta-config"}).json()
        created = admin.post("/admin/keys", json={"tenant_id": tenant["id"], "name": "d"})
        assert created.status_code == 201, created.text
        key_id, key = created.json()["id"], created.json()["key"]
        _within_bound(lambda: _status(pg_gateway_b, "demo", key) == 200)

        limited = admin.patch(
            f"/admin/keys/{key_id}", json={"rate_limit_rps": 0.001, "rate_limit_burst": 1}
        )
        assert limited.status_code == 200, limited.text
        _within_bound(lambda: _status(pg_gateway_b, "demo", key) == 429)

        assert admin.delete(f"/admin/keys/{key_id}").status_code == 204
        _within_bound(lambda: _status(pg_gateway_b, "demo", key) == 401)
    after = _events(pg_gateway_b)
    assert after.get("config_full_reloads", 0) == before.get("config_full_reloads", 0)
    applied = after.get("config_deltas_applied", 0) - before.get("config_deltas_applied", 0)
    assert applied >= 3  # the limit, the revocation, and the tenant and key (perhaps as one)


def test_unsafe_upstream_urls_are_refused(pg_gateway: Gateway) -> None:
    with pg_gateway.admin() as admin:
        for url in ("file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "gopher://x"):
            r = admin.post(
                "/admin/routes", json={"name": "bad", "path_pattern": "/*", "upstream_url": url}
            )
            assert r.status_code == 422, (url, r.text)
            assert r.headers["content-type"] == "application/problem+json"


def test_metrics_are_right_with_two_workers(
    workdir: object, production_env: dict[str, str]
) -> None:
    """`--workers 2`: whichever worker answers the scrape, it counts every worker's requests."""
    from pathlib import Path

    from tests.e2e.harness import ACME, start_gateway

    d = Path(str(workdir)) / "two-workers"
    d.mkdir()
    gw = start_gateway(d, production_env, ["--workers", "2"])
    try:
        with gw.admin() as c:  # production: the metrics need the admin key
            before = c.get("/metrics").json()["routes"].get("inventory", {}).get("requests", 0)
            for _ in range(40):  # new connections: spread over both workers
                assert (
                    httpx.get(
                        gw.url + "/g/inventory/items", headers={"X-API-Key": ACME}
                    ).status_code
                    == 200
                )

            # Each worker publishes its counters every 0.5 s: the merged view catches up at once.
            def counted() -> int:
                return int(c.get("/metrics").json()["routes"]["inventory"]["requests"])

            wait_until(lambda: counted() - before == 40, timeout=5)
            assert all(counted() - before == 40 for _ in range(5))
            prom = c.get("/metrics/prometheus").text
            assert 'heliox_requests_total{route="inventory",status="200"} 40.0' in prom
    finally:
        gw.proc.stop()
