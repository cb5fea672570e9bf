"""A flood of requests without a valid API key, through the running gateway (both modes): past a
per-address allowance bad keys get 429 instead of 401, valid keys from the same address and other
addresses are untouched, and the log table receives a bounded sample while /metrics counts the
rest."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from tests.e2e.hardening_support import PROBLEM, fresh_address, tag
from tests.e2e.harness import ACME, Gateway, gateway_in_both_modes, wait_until

RATE = 1
BURST = 20
REFUSING = {
    "TRUSTED_PROXIES": "127.0.0.1/32",
    "AUTH_FAILURE_RATE": str(RATE),
    "AUTH_FAILURE_BURST": str(BURST),
}
FLOOD = 300

refusing = gateway_in_both_modes("refusing", REFUSING)


def _rows(gw: Gateway, path_prefix: str) -> list[dict[str, Any]]:
    with gw.admin() as admin:
        r = admin.get("/admin/analytics/logs", params={"path_prefix": path_prefix, "limit": 1000})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _events(gw: Gateway) -> dict[str, int]:
    with gw.admin() as admin:
        events: dict[str, int] = admin.get("/metrics").json()["events"]
    return events


def _flush_marker(gw: Gateway, client: httpx.Client, t: str) -> None:
    """A request with a valid key, then wait for its row: rows are written in order, so every
    row of the requests before it that will ever be written is in the table."""
    r = client.get(f"/g/demo/{t}/marker", headers={"X-API-Key": ACME})
    assert r.status_code not in (401, 429), r.text
    wait_until(lambda: any(row["path"].endswith("/marker") for row in _rows(gw, f"/{t}/")), 15)


def test_a_bad_key_flood_gets_429s_and_a_bounded_sample_of_log_rows(refusing: Gateway) -> None:
    gw = refusing
    address, t = fresh_address(), tag()
    dropped_before = _events(gw).get("refused_log_rows_dropped", 0)
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    with httpx.Client(base_url=gw.url, headers={"X-Forwarded-For": address}, timeout=10) as c:
        for i in range(FLOOD):
            r = c.get(f"/g/demo/{t}/{i}", headers={"X-API-Key": f"hx_prod_guess_{i:020d}"})
            statuses[r.status_code] += 1
            if r.status_code == 429 and statuses[429] == 1:
                assert r.headers["content-type"] == PROBLEM
                assert int(r.headers["retry-after"]) >= 1
                assert "without a valid API key" in r.json()["detail"]
        elapsed = time.monotonic() - started
        # The same address with a valid key is served as usual.
        assert c.get("/g/demo/items", headers={"X-API-Key": ACME}).status_code == 200
        _flush_marker(gw, c, t)
    allowance = BURST + RATE * elapsed + 1
    assert set(statuses) == {401, 429}
    assert statuses[401] <= allowance
    # Another address still gets the plain 401.
    other = httpx.get(
        gw.url + f"/g/demo/{t}/other",
        headers={"X-API-Key": "hx_prod_guess", "X-Forwarded-For": fresh_address()},
        timeout=10,
    )
    assert other.status_code == 401
    rows = [
        row
        for row in _rows(gw, f"/{t}/")
        if row["status"] in (401, 429) and row["client_ip"] == address
    ]
    assert 1 <= len(rows) <= allowance
    dropped = _events(gw)["refused_log_rows_dropped"] - dropped_before
    assert dropped >= FLOOD - len(rows)


def test_refusals_before_routing_are_sampled_too(refusing: Gateway) -> None:
    """Unknown routes need no key at all: every one is answered (404), few are logged."""
    gw = refusing
    address, t = fresh_address(), tag()
    started = time.monotonic()
    with httpx.Client(base_url=gw.url, headers={"X-Forwarded-For": address}, timeout=10) as c:
        codes = {c.get(f"/g/no-such-route/{t}/{i}").status_code for i in range(FLOOD)}
        elapsed = time.monotonic() - started
        _flush_marker(gw, c, t)
    assert codes == {404}
    rows = [row for row in _rows(gw, f"/{t}/") if row["status"] == 404]
    assert 1 <= len(rows) <= BURST + RATE * elapsed + 1
