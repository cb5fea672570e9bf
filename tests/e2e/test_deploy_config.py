"""A gateway run with the Kubernetes manifests' settings, behind a TLS-terminating "balancer".

`heliox serve` on PostgreSQL and Redis, with the ConfigMap's variables and the Deployment's
arguments; the test client stands for the load balancer (TRUSTED_PROXIES is its address, as the
ConfigMap's pod CIDR would be in a cluster). It checks what those settings promise: the probe path
answers, the metrics port serves Prometheus without a key while the gateway port does not, nothing
is seeded, and the admin UI's session cookie is Secure when the balancer says the client used
https, and only then.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ACME, Gateway, free_port, gateway_env, gateway_in
from tests.test_deploy import TEST_SECRETS, configmap, container

SESSION_COOKIE = "heliox_session"


@pytest.fixture(scope="module")
def deployed(
    workdir: Path, pg_database: str, redis_server: str, redis_module_prefix: str
) -> Iterator[Gateway]:
    settings = configmap()
    settings.update(
        TRUSTED_PROXIES="127.0.0.1/32",  # the "balancer": this test, on loopback
        METRICS_PORT=str(free_port()),
        HELIOX_SPILL_DIR=str(workdir / "spill"),
        REDIS_KEY_PREFIX=redis_module_prefix,
        ADMIN_API_KEY=TEST_SECRETS["ADMIN_API_KEY"],
        SECRET_KEY=TEST_SECRETS["SECRET_KEY"],
    )
    env = gateway_env(None, database_url=pg_database, redis_url=redis_server, extra=settings)
    command = container("heliox-gateway")["command"]
    workers = ["--workers", command[command.index("--workers") + 1]]
    with gateway_in(workdir, "deployed", env, workers) as gw:
        yield gw


def test_the_probe_path_answers_ok_in_production_mode(deployed: Gateway) -> None:
    probe = container("heliox-gateway")["readinessProbe"]["httpGet"]["path"]
    answer = httpx.get(deployed.url + probe, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["mode"], body["status"]) == ("production", "ok")
    assert body["checks"] == {"database": "ok", "redis": "ok"}


def test_metrics_are_on_their_own_port_only(deployed: Gateway) -> None:
    port = deployed.env["METRICS_PORT"]
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert "heliox_" in scraped.text
    assert httpx.get(deployed.url + "/metrics/prometheus", timeout=10).status_code == 401


def test_nothing_is_seeded(deployed: Gateway) -> None:
    answer = httpx.get(deployed.url + "/g/demo/items", headers={"X-API-Key": ACME}, timeout=10)
    assert answer.status_code == 404  # no such route: the demo's routes and keys are not there
    with deployed.admin() as admin:
        routes = admin.get("/admin/routes")
    assert routes.status_code == 200
    assert routes.json()["items"] == []


def _set_cookies(response: httpx.Response) -> dict[str, dict[str, str | bool]]:
    cookies: dict[str, dict[str, str | bool]] = {}
    for header in response.headers.get_list("set-cookie"):
        jar = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            attrs: dict[str, str | bool] = {"value": morsel.value}
            attrs.update({k: v for k, v in morsel.items() if v})
            cookies.setdefault(name, attrs)
    return cookies


def _sign_in(gw: Gateway, headers: dict[str, str]) -> httpx.Response:
    """The UI's sign-in as a browser does it, cookies carried by hand: httpx, rightly, never
    sends a Secure cookie back over plain http, and here the balancer's https is make-believe."""
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as client:
        form = client.get("/ui/login")
        assert form.status_code == 200
        login = _set_cookies(form)["heliox_login"]
        client.cookies.clear()
        token = form.text.split('name="login_token" value="', 1)[1].split('"', 1)[0]
        return client.post(
            "/ui/login",
            data={"admin_key": gw.env["ADMIN_API_KEY"], "login_token": token, "next": ""},
            headers={"Cookie": f"heliox_login={login['value']}"},
        )


def test_the_session_cookie_is_secure_behind_a_tls_balancer(deployed: Gateway) -> None:
    signed_in = _sign_in(deployed, {"X-Forwarded-Proto": "https"})
    assert signed_in.status_code == 303, signed_in.text
    session = _set_cookies(signed_in)[SESSION_COOKIE]
    assert session["secure"] is True and session["httponly"] is True
    # The session works: the balancer sends it back with the next request.
    page = httpx.get(
        deployed.url + "/ui/dashboard",
        headers={"X-Forwarded-Proto": "https", "Cookie": f"{SESSION_COOKIE}={session['value']}"},
        timeout=10,
    )
    assert page.status_code == 200


def test_the_session_cookie_is_not_secure_over_plain_http(deployed: Gateway) -> None:
    """Without the balancer's word the gateway sees http: a Secure cookie would never come back."""
    signed_in = _sign_in(deployed, {})
    assert signed_in.status_code == 303, signed_in.text
    assert "secure" not in _set_cookies(signed_in)[SESSION_COOKIE]


def test_the_gateway_writes_nothing_outside_its_volumes(deployed: Gateway) -> None:
    """The pods mount a read-only root file system with two writable volumes (the spill folder
    and /tmp): with the ConfigMap's settings the working directory gets nothing from the gateway
    (no SQLite file, no spill folder of its own), however many requests it served."""
    for _ in range(5):
        httpx.get(deployed.url + "/g/none/x", headers={"X-API-Key": ACME}, timeout=10)
    written = {p.name for p in deployed.proc.log_path.parent.iterdir()}
    assert written == {deployed.proc.log_path.name}  # the test harness's own log only
