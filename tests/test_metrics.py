"""Metrics in process: bounded label sets, dumps that share nothing with the live counters, the
exposition text, and the metrics port's listener."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heliox.metrics import UNKNOWN_ROUTE, Metrics
from heliox.metrics_port import MetricsPort


def _busy(m: Metrics, route: str) -> None:
    m.observe_request(route, 200, 0.01, "HIT", 0.005)
    m.upstream_errors[(route, 502)] += 1
    m.admission[(route, "admitted", "")] += 1


def test_keep_routes_drops_every_series_of_removed_routes() -> None:
    m = Metrics()
    for route in ("kept", "removed", UNKNOWN_ROUTE):
        _busy(m, route)
    m.count("config_reloads")

    m.keep_routes({"kept"})

    text = m.prometheus_text().decode()
    assert 'route="removed"' not in text
    assert 'route="kept"' in text and f'route="{UNKNOWN_ROUTE}"' in text
    for series in (m.requests, m.cache, m.upstream_errors, m.admission):
        assert {k[0] for k in series} == {"kept", UNKNOWN_ROUTE}
    assert set(m.latency) == set(m.upstream_latency) == {"kept", UNKNOWN_ROUTE}
    assert m.events["config_reloads"] == 1  # not route-labelled: untouched


def test_a_dump_shares_nothing_with_the_live_counters() -> None:
    m = Metrics()
    _busy(m, "a")
    dump = m.dump()
    frozen = json.dumps(dump, sort_keys=True)
    _busy(m, "a")
    _busy(m, "b")
    assert json.dumps(dump, sort_keys=True) == frozen
    assert Metrics.merged([dump, dump]).requests[("a", 200)] == 2
    older = {**dump, "started_at": dump["started_at"] - 60}
    assert Metrics.merged([dump, older]).started_at == older["started_at"]  # the earliest start


def test_the_exposition_parses_and_escapes_label_values() -> None:
    m = Metrics()
    odd = 'a"b\\c\nd'
    _busy(m, odd)
    m.gauges["cache_bytes"] = 1.5
    families = {f.name: f for f in text_string_to_metric_families(m.prometheus_text().decode())}
    (sample,) = families["heliox_requests"].samples
    assert sample.labels == {"route": odd, "status": "200"} and sample.value == 1
    buckets = [s for s in families["heliox_request_duration_seconds"].samples if "le" in s.labels]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 1
    assert families["heliox_cache_bytes"].samples[0].value == 1.5


def test_metrics_port_serves_the_merged_dumps_of_a_folder(tmp_path: Path) -> None:
    for pid, n in ((101, 2), (102, 3)):
        m = Metrics()
        for _ in range(n):
            m.observe_request("demo", 200, 0.01, "", None)
        (tmp_path / f"{pid}.json").write_text(json.dumps(m.dump()))
    (tmp_path / "103.json").write_text("{half a dump")  # a worker mid-write: skipped
    port = MetricsPort("127.0.0.1", 0, str(tmp_path))
    port.start()
    try:
        base = f"http://127.0.0.1:{port.port}"
        for path in ("/metrics", "/metrics/prometheus"):
            r = httpx.get(base + path, timeout=5)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert 'heliox_requests_total{route="demo",status="200"} 5.0' in r.text
        assert httpx.get(base + "/admin", timeout=5).status_code == 404
        assert httpx.post(base + "/metrics", timeout=5).status_code == 501
    finally:
        port.close()


def test_metrics_port_reports_an_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            MetricsPort("127.0.0.1", taken.getsockname()[1], str(tmp_path))


def test_metrics_are_public_by_default_in_demo_mode_only() -> None:
    from heliox.config import load_settings

    production = {
        "database_url": "postgresql://u@127.0.0.1/db",
        "admin_api_key": "Zq8vN3kT7wX1pL5mR9cB2yH6",
        "secret_key": "Jd4Gs8Kw2Nq6Vt0Yb3Fh7Lm1",
    }
    assert load_settings(deployment_mode="demo").metrics_public is True
    assert load_settings(deployment_mode="production", **production).metrics_public is False
    opened = load_settings(deployment_mode="production", metrics_public="true", **production)
    assert opened.metrics_public is True
    assert load_settings(deployment_mode="demo", metrics_public="").metrics_public is True
