"""LOG_FORMAT=json, ACCESS_LOG and the exported metrics on a running gateway: two workers on
PostgreSQL and Redis, standard output a pipe the test reads (or, at first, does not read).

- an unread standard output never holds a request up: access lines are dropped and counted;
- the access lines are JSON, carry the request id, and never the API key or the admin key;
- every metric the shipped dashboard and alert rules read is in the exposition, on the gateway
  port and on METRICS_PORT, with process_* for each of the two workers;
- every line the processes log on standard error is a JSON object.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.hardening_support import create_route
from tests.e2e.harness import ACME, ADMIN_KEY, Gateway, Proc, free_port, wait_until
from tests.test_observability_assets import exposed_names, referenced_metrics

BUFFER = 20  # ACCESS_LOG_BUFFER: small, so that an unread pipe overflows it quickly


@dataclass
class Stdout:
    """The gateway's standard output: a pipe nobody reads until `start_reading`."""

    fd: int
    data: bytearray = field(default_factory=bytearray)
    reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            while chunk := os.read(self.fd, 65536):
                self.data.extend(chunk)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def lines(self) -> list[dict[str, Any]]:
        text = bytes(self.data).decode()
        return [json.loads(line) for line in text.splitlines()[: text.count("\n")]]


@dataclass
class JsonGateway:
    gw: Gateway
    stdout: Stdout
    metrics_port: int
    stderr_path: Path


@pytest.fixture(scope="module")
def json_gateway(workdir: Path, production_env: dict[str, str]) -> Iterator[JsonGateway]:
    metrics_port = free_port()
    env = {
        **production_env,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "ACCESS_LOG": "true",
        "ACCESS_LOG_BUFFER": str(BUFFER),
        "METRICS_PORT": str(metrics_port),
    }
    folder = workdir / "structured-logs"
    folder.mkdir()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: fills in a few lines
    port = free_port()
    stderr_path = folder / "stderr.log"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-m", "heliox", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=folder,
            stdout=write_end,
            stderr=stderr,
            start_new_session=True,
        )
    os.close(write_end)
    gw = Gateway(Proc("json-gateway", popen, stderr_path), port, env)
    stdout = Stdout(read_end)
    try:

        def ready() -> bool:
            if popen.poll() is not None:
                raise RuntimeError("gateway exited:\n" + gw.proc.output())
            return httpx.get(gw.url + "/health", timeout=1).status_code == 200

        wait_until(ready, 60)
        yield JsonGateway(gw, stdout, metrics_port, stderr_path)
    finally:
        if stdout.reader is None:
            stdout.start_reading()  # a failed test must not leave the gateway stuck on stdout
        gw.proc.stop()
        os.close(read_end)


def scrape(jg: JsonGateway) -> str:
    r = httpx.get(f"http://127.0.0.1:{jg.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def sample(text: str, name: str) -> float:
    values = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]
    assert len(values) == 1, (name, values)
    return values[0]


def test_an_unread_stdout_never_holds_requests_up(json_gateway: JsonGateway) -> None:
    jg = json_gateway
    with jg.gw.client(headers={"X-API-Key": ACME}) as c:
        # About 400 bytes a line: far more than the pipe (4 KiB) and both buffers hold.
        for _ in range(300):
            assert c.get("/g/demo/items").status_code == 200

    def dropped() -> float:
        return sample(scrape(jg), "heliox_access_log_lines_dropped_total")

    wait_until(lambda: dropped() > 0, timeout=15)
    assert dropped() <= 300 - BUFFER  # each worker kept its buffer's worth at least

    # The reader is back: the kept lines arrive, and new ones flow again.
    jg.stdout.start_reading()
    request_id = f"after-{secrets.token_hex(6)}"
    with jg.gw.client(headers={"X-API-Key": ACME, "X-Request-Id": request_id}) as c:
        assert c.get("/g/demo/items").status_code == 200
    wait_until(lambda: any(x["request_id"] == request_id for x in jg.stdout.lines()), timeout=15)


def test_access_lines_carry_the_request_id_and_never_a_key(json_gateway: JsonGateway) -> None:
    jg = json_gateway
    if jg.stdout.reader is None:
        jg.stdout.start_reading()
    ok, refused, unknown = (f"{n}-{secrets.token_hex(6)}" for n in ("ok", "refused", "unknown"))
    with jg.gw.client() as c:
        r = c.get(
            "/g/demo/items?api_key=in-the-query", headers={"X-API-Key": ACME, "X-Request-Id": ok}
        )
        assert r.status_code == 200
        r = c.get(
            "/g/demo/items", headers={"X-API-Key": "hx_wrong_key_000", "X-Request-Id": refused}
        )
        assert r.status_code == 401
        assert c.get("/g/nowhere/x", headers={"X-Request-Id": unknown}).status_code == 404
        assert c.get("/admin/routes", headers={"X-Admin-Key": ADMIN_KEY}).status_code == 200

    def lines() -> dict[str, dict[str, Any]]:
        return {x["request_id"]: x for x in jg.stdout.lines()}

    wait_until(lambda: {ok, refused, unknown} <= set(lines()), timeout=15)
    found = lines()
    line = found[ok]
    assert (line["level"], line["logger"]) == ("info", "heliox.access")
    assert line["method"] == "GET" and line["route"] == "demo" and line["path"] == "/items"
    assert line["status"] == 200 and line["cache_status"] in ("HIT", "MISS", "STALE")
    assert isinstance(line["key_id"], int) and isinstance(line["tenant_id"], int)
    assert line["latency_ms"] >= 0 and line["bytes_out"] > 0
    assert line["client_ip"] == "127.0.0.1"
    assert line["ts"].endswith("Z") and line["message"] == "GET /g/demo/items 200"
    assert found[refused]["status"] == 401 and found[refused]["key_id"] is None
    assert found[unknown]["status"] == 404 and found[unknown]["route_id"] is None
    everything = bytes(jg.stdout.data)
    for secret in (ACME, "hx_wrong_key_000", ADMIN_KEY, "in-the-query"):
        assert secret.encode() not in everything, secret
    assert b"/admin/routes" not in everything  # the data plane only


def test_every_metric_the_dashboard_and_rules_read_is_exported(json_gateway: JsonGateway) -> None:
    jg = json_gateway
    if jg.stdout.reader is None:
        jg.stdout.start_reading()
    with socket.socket() as s:  # a port nobody listens on: the route's upstream is down
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    route = create_route(jg.gw, upstream_url=f"http://127.0.0.1:{dead}", is_public=True)
    with jg.gw.client(headers={"X-API-Key": ACME}) as c:
        assert c.get(f"/g/{route}/x").status_code == 502
        for _ in range(3):
            assert c.get("/g/demo/items").status_code == 200
    wanted = referenced_metrics()
    assert len(wanted) > 30  # the parse found the dashboard's and the rules' names

    def complete(text: str) -> bool:
        return not wanted - exposed_names(text) and sample(text, "heliox_worker_processes") == 2

    texts: list[str] = []

    def both_ports() -> bool:
        r = httpx.get(
            jg.gw.url + "/metrics/prometheus", headers={"X-Admin-Key": ADMIN_KEY}, timeout=10
        )
        texts[:] = [r.text, scrape(jg)]
        return all(complete(t) for t in texts)

    try:
        wait_until(both_ports, timeout=20)
    except TimeoutError:
        missing = [sorted(wanted - exposed_names(t)) for t in texts]
        raise AssertionError(f"missing from the exposition: {missing}") from None
    for text in texts:
        families = {f.name: f for f in text_string_to_metric_families(text)}
        pids = {s.labels["pid"] for s in families["process_resident_memory_bytes"].samples}
        assert len(pids) == 2  # one series per worker
        assert sample(text, "heliox_database_up") == 1 and sample(text, "heliox_redis_up") == 1
        assert sample(text, "heliox_redis_breaker_open") == 0
        errors = families["heliox_upstream_errors"].samples
        assert any(s.labels["route"] == route for s in errors)


def test_the_processes_log_json_lines_on_stderr(json_gateway: JsonGateway) -> None:
    lines = [x for x in json_gateway.stderr_path.read_text().splitlines() if x.strip()]
    parsed = [json.loads(x) for x in lines]  # a line that is not JSON fails here
    for entry in parsed:
        assert {"ts", "level", "logger", "message"} <= set(entry), entry
    loggers = {entry["logger"] for entry in parsed}
    assert {"heliox.cli", "_granian", "heliox"} <= loggers, loggers
    assert any("ready" in entry["message"] for entry in parsed if entry["logger"] == "heliox")
