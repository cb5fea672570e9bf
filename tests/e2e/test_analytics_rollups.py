"""Analytics after real traffic through a running gateway, both modes: a window over an hour is
answered from the roll-ups the log writer keeps, and gives the same counts as the raw rows of a
window under an hour (all the traffic is from the last minutes)."""

from __future__ import annotations

from typing import Any

from tests.e2e.hardening_support import tag
from tests.e2e.harness import ACME, Gateway, gateway_in_both_modes, wait_until

REQUESTS = 30

analytics_gateway = gateway_in_both_modes("analytics_gateway", {})


def _get(gw: Gateway, path: str, **params: Any) -> dict[str, Any]:
    with gw.admin() as admin:
        r = admin.get(f"/admin/analytics/{path}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _counts(gw: Gateway, window: str) -> dict[str, Any]:
    """What must not depend on where the answer comes from (percentiles may, a little)."""
    summary = _get(gw, "summary", window=window)
    routes = _get(gw, "top-routes", window=window)["items"]
    keys = _get(gw, "top-keys", window=window)["items"]
    cache = _get(gw, "cache-hit-rate", window=window, series="false")["by_route"]
    return {
        "summary": {
            k: summary[k]
            for k in ("requests", "errors", "client_errors", "rate_limited", "upstream_calls")
        }
        | {"cache": summary["cache"], "bytes_out": summary["bytes_out"]},
        "avg": round(summary["latency_ms"]["avg"], 2),
        "routes": [(r["route_name"], r["requests"], r["errors"], r["hit_rate"]) for r in routes],
        "keys": [(k["key_id"], k["requests"], k["name"]) for k in keys],
        "cache": cache,
    }


def test_long_windows_from_rollups_agree_with_raw_rows(analytics_gateway: Gateway) -> None:
    gw, t = analytics_gateway, tag()
    with gw.client() as client:
        for i in range(REQUESTS):
            # The same few paths: the cacheable ones are hits after their first request.
            r = client.get(f"/g/demo/{t}/{i % 3}", headers={"X-API-Key": ACME})
            assert r.status_code < 500, r.text
        assert client.get(f"/g/demo/{t}/nokey").status_code == 401

    def written() -> bool:
        rows = _get(gw, "logs", path_prefix=f"/{t}/", limit=100)["items"]
        return sum(not row["path"].endswith("/nokey") for row in rows) == REQUESTS

    wait_until(written, 30)
    # The raw answer, stable (no rows still arriving), then the roll-ups' one.
    raw: dict[str, Any] = {}

    def stable() -> bool:
        nonlocal raw
        before, raw = raw, _counts(gw, "59m")
        return before == raw

    wait_until(stable, 30)
    rolled = _counts(gw, "2h")
    assert rolled == raw
    assert raw["summary"]["requests"] >= REQUESTS
    assert any(key == 1 and n >= REQUESTS for key, n, _ in raw["keys"]), raw["keys"]
    # Percentiles from the histogram: within one bucket (26%) of the exact ones.
    exact = _get(gw, "summary", window="59m")["latency_ms"]
    estimate = _get(gw, "summary", window="2h")["latency_ms"]
    for p in ("p50", "p95", "p99"):
        assert abs(estimate[p] - exact[p]) <= 0.3 * exact[p] + 0.07, (p, exact, estimate)
