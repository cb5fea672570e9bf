"""What the gateway tells about itself, on the running gateway: metrics whose labels only ever
name configured routes, who may read them, request ids from client to upstream to log row, and
error answers that keep the upstream's address and the cause to the operator."""

from __future__ import annotations

import re
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.hardening_support import PROBLEM, create_key, create_route, tag
from tests.e2e.harness import (
    ACME,
    Gateway,
    Upstream,
    free_port,
    gateway_env,
    gateway_in,
    start_process,
    wait_until,
)

UNKNOWN = "(unknown)"
# The exposition of a handful of routes, far below what one series per URL name would take
# (before labels came from configuration, 2,000 names made it about 3 MB).
PROMETHEUS_BOUND = 256 * 1024


def admin_headers(gw: Gateway) -> dict[str, str]:
    return {"X-Admin-Key": gw.env["ADMIN_API_KEY"]}


def prometheus(gw: Gateway) -> str:
    r = httpx.get(gw.url + "/metrics/prometheus", headers=admin_headers(gw), timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def route_labels(text: str) -> set[str]:
    return set(re.findall(r'route="([^"]*)"', text))


def configured_routes(gw: Gateway) -> set[str]:
    with gw.admin() as admin:
        page = admin.get("/admin/routes", params={"limit": 1000}).json()
    items = page["items"] if isinstance(page, dict) else page
    return {str(r["name"]) for r in items}


def log_row(gw: Gateway, route: str, request_id: str) -> dict[str, Any]:
    """The request log row with `request_id`, once the writer has flushed it."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        with gw.admin() as admin:
            page = admin.get("/admin/analytics/logs", params={"route": route, "limit": 200})
        found[:] = [row for row in page.json()["items"] if row["request_id"] == request_id]
        return bool(found)

    wait_until(written, timeout=15)
    assert len(found) == 1, found
    return found[0]


# --- item: metric labels come from configuration ---------------------------------------------
def test_route_names_from_urls_never_become_labels(gateway: Gateway) -> None:
    names = [f"nx{secrets.token_hex(6)}" for _ in range(2000)]
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        for name in names:
            assert c.get(f"/g/{name}/x").status_code == 404
        # With a key as well: authentication comes after routing, so no difference.
        assert c.get(f"/g/{names[0]}/x", headers={"X-API-Key": ACME}).status_code == 404

    text = prometheus(gateway)
    labels = route_labels(text)
    assert not labels & set(names)
    assert labels <= configured_routes(gateway) | {UNKNOWN}
    assert f'heliox_requests_total{{route="{UNKNOWN}",status="404"}}' in text
    assert len(text) < PROMETHEUS_BOUND, len(text)
    routes = httpx.get(gateway.url + "/metrics", headers=admin_headers(gateway), timeout=10)
    assert set(routes.json()["routes"]) <= configured_routes(gateway) | {UNKNOWN}


def test_a_removed_route_takes_its_series_along(gateway: Gateway, upstream: Upstream) -> None:
    name = create_route(gateway, upstream_url=upstream.url, is_public=True)
    assert httpx.get(f"{gateway.url}/g/{name}/items", timeout=10).status_code == 200
    assert name in route_labels(prometheus(gateway))
    with gateway.admin() as admin:
        route_id = next(
            r["id"]
            for r in admin.get("/admin/routes", params={"limit": 1000}).json()["items"]
            if r["name"] == name
        )
        assert admin.delete(f"/admin/routes/{route_id}").status_code == 204
    wait_until(lambda: name not in route_labels(prometheus(gateway)), timeout=10)


# --- item: who may read the metrics and the API's description ----------------------------------
PROTECTED = ("/metrics", "/metrics/prometheus", "/admin/openapi.json", "/admin/docs")


def sign_in(client: httpx.Client, admin_key: str) -> None:
    page = client.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post("/ui/login", data={"admin_key": admin_key, "login_token": token.group(1)})
    assert r.status_code == 303, r.text


def test_production_keeps_metrics_and_api_description_behind_the_admin_key(
    pg_gateway: Gateway,
) -> None:
    gw = pg_gateway
    for path in PROTECTED:
        r = httpx.get(gw.url + path, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert "X-Admin-Key" in r.json()["detail"]
        wrong = httpx.get(gw.url + path, headers={"X-Admin-Key": "x" * 32}, timeout=10)
        assert wrong.status_code == 401, path
        assert httpx.get(gw.url + path, headers=admin_headers(gw), timeout=10).status_code == 200
    with gw.admin() as admin:
        assert "/admin/routes" in admin.get("/admin/openapi.json").json()["paths"]
    # The admin UI's session is enough, in the browser (docs page) and for the dashboard's
    # live figures, which the UI reads from /metrics/prometheus on the session's behalf.
    with httpx.Client(base_url=gw.url, timeout=10) as browser:
        sign_in(browser, gw.env["ADMIN_API_KEY"])
        assert browser.get("/admin/openapi.json").status_code == 200
        assert browser.get("/admin/docs").status_code == 200
        events: list[str] = []
        with browser.stream("GET", "/ui/stream/dashboard") as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
                if "points" in events:
                    break
        assert "problem" not in events, events


def test_demo_mode_keeps_metrics_open_for_the_quick_start(embedded_gateway: Gateway) -> None:
    """The README's own checks read them with a plain curl."""
    for path in ("/metrics", "/metrics/prometheus"):
        r = httpx.get(embedded_gateway.url + path, timeout=10)
        assert r.status_code == 200, (path, r.text)


@pytest.fixture(scope="module")
def metrics_port_gateway(
    workdir: Path, production_env: dict[str, str]
) -> Iterator[tuple[Gateway, int]]:
    """Production, two workers, the metrics on their own port and public on the main one."""
    port = free_port()
    env = {**production_env, "METRICS_PORT": str(port), "METRICS_PUBLIC": "true"}
    with gateway_in(workdir, "metrics-port", env, ["--workers", "2"]) as gw:
        yield gw, port


def test_metrics_port_serves_every_worker_without_a_key(
    metrics_port_gateway: tuple[Gateway, int],
) -> None:
    gw, port = metrics_port_gateway
    scrape = f"http://127.0.0.1:{port}/metrics"

    def inventory_requests() -> int:
        r = httpx.get(scrape, timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = re.search(r'heliox_requests_total\{route="inventory",status="200"\} (\S+)', r.text)
        return int(float(found.group(1))) if found else 0

    before = inventory_requests()
    for _ in range(40):  # new connections: spread over both workers
        r = httpx.get(gw.url + "/g/inventory/items", headers={"X-API-Key": ACME}, timeout=10)
        assert r.status_code == 200
    wait_until(lambda: inventory_requests() - before == 40, timeout=10)
    assert httpx.get(f"http://127.0.0.1:{port}/metrics/prometheus", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/admin/routes", timeout=10).status_code == 404
    # METRICS_PUBLIC=true: the main port's metrics need no key either; the admin API still does.
    assert httpx.get(gw.url + "/metrics/prometheus", timeout=10).status_code == 200
    assert httpx.get(gw.url + "/admin/routes", timeout=10).status_code == 401


def exit_status(name: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `heliox ARGS` expecting it to give up by itself; a process that serves is stopped."""
    proc = start_process(name, args, env, cwd)
    try:
        return proc.popen.wait(timeout=60), proc.output()
    finally:
        proc.stop()


def test_a_metrics_port_that_cannot_be_bound_stops_the_start(
    tmp_path: Path, upstream: Upstream
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        env = gateway_env(upstream, extra={"METRICS_PORT": str(busy)})
        args = ["serve", "--port", str(free_port())]
        status, output = exit_status("metrics-port-taken", args, env, tmp_path)
        assert status == 2
        assert f"METRICS_PORT: cannot listen on 127.0.0.1:{busy}" in output

    same = free_port()
    env = gateway_env(upstream, extra={"METRICS_PORT": str(same)})
    status, output = exit_status("metrics-port-same", ["serve", "--port", str(same)], env, tmp_path)
    assert status == 2
    assert "METRICS_PORT" in output and "gateway's own port" in output


# --- item: request ids ---------------------------------------------------------------------------
def upstream_ids(response: httpx.Response) -> list[str]:
    return [v for k, v in response.json()["headers"] if k.lower() == "x-request-id"]


def test_one_request_id_from_client_to_upstream_to_log_row(gateway: Gateway) -> None:
    acme = {"X-API-Key": ACME}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        ours = c.get(f"/g/webhooks/echo/{tag()}", headers=acme)
        assert ours.status_code == 200
        assert ours.headers.get_list("x-request-id") == upstream_ids(ours)
        assert len(upstream_ids(ours)) == 1

        given = f"trace-{tag()}.1:a_b"
        theirs = c.get(f"/g/webhooks/echo/{tag()}", headers={**acme, "X-Request-Id": given})
        assert theirs.headers.get_list("x-request-id") == [given]
        assert upstream_ids(theirs) == [given]

        for bad in ("has space", "x" * 129, "semi;colon", ""):
            r = c.get(f"/g/webhooks/echo/{tag()}", headers={**acme, "X-Request-Id": bad})
            (sent,) = upstream_ids(r)
            assert sent != bad and r.headers.get_list("x-request-id") == [sent]
        two = c.get(
            f"/g/webhooks/echo/{tag()}",
            headers=[("X-API-Key", ACME), ("X-Request-Id", "one"), ("X-Request-Id", "two")],
        )
        (sent,) = upstream_ids(two)
        assert sent not in ("one", "two") and two.headers.get_list("x-request-id") == [sent]

    row = log_row(gateway, "webhooks", given)
    assert row["status"] == 200 and row["error"] is None
    assert log_row(gateway, "webhooks", ours.headers["x-request-id"])["status"] == 200


def log_detail(gw: Gateway, request_id: str) -> dict[str, Any]:
    """GET /admin/analytics/logs/{request_id}, once the writer has flushed the row."""
    found: dict[str, Any] = {}

    def written() -> bool:
        with gw.admin() as admin:
            r = admin.get(f"/admin/analytics/logs/{request_id}")
        assert r.status_code in (200, 404), r.text
        found.update(r.json() if r.status_code == 200 else {})
        return r.status_code == 200

    wait_until(written, timeout=15)
    return found


def test_the_detail_names_the_refusing_limit_the_cache_key_and_the_upstream_status(
    gateway: Gateway,
) -> None:
    _, quota_key = create_key(gateway, daily_quota=1)
    path = f"/g/demo/items?run={tag()}"
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        miss = c.get(path, headers={"X-API-Key": ACME})
        hit = c.get(path, headers={"X-API-Key": ACME})
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
        admitted = c.get(f"/g/webhooks/echo/{tag()}", headers={"X-API-Key": quota_key})
        refused = c.get(f"/g/webhooks/echo/{tag()}", headers={"X-API-Key": quota_key})
    assert (admitted.status_code, refused.status_code) == (200, 429)
    problem = refused.json()
    (cache_key,) = re.findall(r'key="([^"]+)"', hit.headers["cache-status"])

    row = log_detail(gateway, miss.headers["x-request-id"])
    assert (row["cache_key"], row["upstream_status"], row["refused_by"]) == (cache_key, 200, None)
    row = log_detail(gateway, hit.headers["x-request-id"])
    assert (row["cache_key"], row["upstream_status"], row["refusal"]) == (cache_key, None, None)
    row = log_detail(gateway, refused.headers["x-request-id"])
    assert (row["status"], row["refused_by"], row["upstream_status"]) == (429, "daily_quota", None)
    # The numbers the client was given, under the same names.
    refusal = row["refusal"]
    for name in ("quota", "window_seconds", "remaining", "retry_after", "reset_after", "reset_at"):
        assert refusal[name] == problem[name], name
    assert refusal["quota"] == 1
    assert log_detail(gateway, admitted.headers["x-request-id"])["refused_by"] is None


def test_every_answer_carries_its_own_request_id(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        refusals = [
            c.get("/g/webhooks/items"),  # 401
            c.get(f"/g/nx{tag()}/items", headers={"X-API-Key": ACME}),  # 404
            c.get("/g/", headers={"X-API-Key": ACME}),  # 404
            c.get("/g/webhooks/%2e%2e/%2e%2e/etc", headers={"X-API-Key": ACME}),  # 400
        ]
        for r in refusals:
            assert r.status_code >= 400 and len(r.headers.get_list("x-request-id")) == 1, r
        assert len({r.headers["x-request-id"] for r in refusals}) == len(refusals)

        # A cached answer carries the id of the request it answers, not the filler's, and an
        # upstream cannot replace it.
        path = f"/g/demo/respond/{tag()}?header=X-Request-Id:%20from-upstream"
        first = c.get(path, headers={"X-API-Key": ACME, "X-Request-Id": "first-1"})
        second = c.get(path, headers={"X-API-Key": ACME, "X-Request-Id": "second-2"})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.headers.get_list("x-request-id") == ["first-1"]
        assert second.headers.get_list("x-request-id") == ["second-2"]


# --- item: upstream failures in error answers ----------------------------------------------------
class BadStatusLine:
    """An 'upstream' that answers every connection with a line that is not HTTP."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HELLO THERE\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def assert_hides_the_upstream(r: httpx.Response, status: int, port: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    request_id = r.headers["x-request-id"]
    assert body["request_id"] == request_id
    assert request_id in body["detail"]
    shown = r.text.replace(request_id, "")
    for leak in ("127.0.0.1", str(port), "Errno", "refused", "message=", "Bad status"):
        assert leak not in shown, leak
    return body


def test_upstream_failures_tell_the_client_the_request_id_and_the_log_the_cause(
    gateway: Gateway, upstream: Upstream
) -> None:
    closed = free_port()  # nothing listens here
    refused = create_route(gateway, upstream_url=f"http://127.0.0.1:{closed}", is_public=True)
    garbage = BadStatusLine()
    try:
        babbling = create_route(
            gateway, upstream_url=f"http://127.0.0.1:{garbage.port}", is_public=True
        )
        slow = create_route(gateway, upstream_url=upstream.url, is_public=True, timeout_seconds=0.3)
        cases = [
            (refused, "/x", 502, closed, f"127.0.0.1:{closed}"),
            (babbling, "/x", 502, garbage.port, "not an HTTP/1.x status line"),
            (slow, "/slow?delay=3", 504, upstream.port, f"127.0.0.1:{upstream.port}"),
        ]
        for route, path, status, port, cause in cases:
            r = httpx.get(f"{gateway.url}/g/{route}{path}", timeout=10)
            body = assert_hides_the_upstream(r, status, port)
            row = log_row(gateway, route, body["request_id"])
            assert row["status"] == status
            assert cause in str(row["error"]), row
            wait_until(lambda rid=body["request_id"]: rid in gateway.proc.output(), timeout=10)
    finally:
        garbage.close()
