"""Operating the gateway: SIGTERM under traffic, the shutdown deadline, bring-your-own ASGI
server, `heliox keys` against running instances, Redis over TLS.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    ACME,
    Gateway,
    Proc,
    Upstream,
    free_port,
    gateway_env,
    start_gateway,
    wait_until,
)

PROPAGATION = 2.0  # the stated bound for config changes (and revoked keys) on every instance


def slow_calls(upstream: Upstream) -> int:
    by_path = upstream.stats()["by_path"]
    assert isinstance(by_path, dict)
    return int(by_path.get("/slow", 0))


@dataclass
class Traffic:
    """Client threads sending data-plane requests until the gateway stops answering."""

    url: str
    answered: int = 0
    failures_before_stop: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, clients: int) -> None:
        for n in range(clients):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _loop(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": ACME}) as client:
            i = 0
            while True:
                i += 1
                try:
                    # Half cache hits, half misses that reach the upstream.
                    path = "/g/demo/items" if i % 2 else f"/g/demo/items/{n * 100_000 + i}"
                    client.get(path)
                except httpx.HTTPError as exc:
                    if not self.stopping.is_set():
                        self.failures_before_stop.append(repr(exc))
                    return
                with self.lock:
                    self.answered += 1

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


def count_logs(url: str) -> int:
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM request_logs"))
        finally:
            await conn.close()

    return asyncio.run(run())


# --- graceful shutdown --------------------------------------------------------------------------
def test_sigterm_under_traffic_loses_no_log_row_and_finishes_in_flight_requests(
    tmp_path: Path, upstream: Upstream, pg_url: str, redis_server: str, redis_prefix: str
) -> None:
    env = gateway_env(
        upstream, database_url=pg_url, redis_url=redis_server,
        extra={"REDIS_KEY_PREFIX": redis_prefix, "SHUTDOWN_TIMEOUT": "20"},
    )  # fmt: skip
    gw = start_gateway(tmp_path, env)
    traffic = Traffic(gw.url)
    slow: dict[str, object] = {}

    def slow_request() -> None:
        # A unique query: never answered from the cache, so it is in flight upstream.
        url = f"{gw.url}/g/demo/slow?delay=1&u={uuid.uuid4().hex}"
        try:
            r = httpx.get(url, headers={"X-API-Key": ACME}, timeout=30)
            slow["status"], slow["body"] = r.status_code, r.json()
        except httpx.HTTPError as exc:
            slow["error"] = repr(exc)

    try:
        traffic.start(clients=4)
        wait_until(lambda: traffic.answered >= 200, 30)
        before = slow_calls(upstream)
        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        wait_until(lambda: slow_calls(upstream) > before, 10)  # the slow request is in flight
        traffic.stopping.set()
        gw.proc.popen.send_signal(signal.SIGTERM)
        assert gw.proc.popen.wait(timeout=30) == 0, gw.proc.output()
        traffic.join()
        slow_thread.join(timeout=30)
    finally:
        gw.proc.stop()
    assert traffic.failures_before_stop == []
    assert slow.get("status") == 200, slow
    assert slow["body"]["delay"] == 1.0  # type: ignore[index]
    # Every answered request, the slow one included, has its row: the queue was flushed.
    assert count_logs(pg_url) == traffic.answered + 1


def test_requests_past_the_shutdown_deadline_get_503_and_the_gateway_still_exits_0(
    tmp_path: Path, upstream: Upstream
) -> None:
    import sqlite3

    env = gateway_env(upstream, extra={"SHUTDOWN_TIMEOUT": "1"})
    gw = start_gateway(tmp_path, env)
    result: dict[str, object] = {}

    def hung_request() -> None:
        url = f"{gw.url}/g/demo/slow?delay=25&u={uuid.uuid4().hex}"
        r = httpx.get(url, headers={"X-API-Key": ACME}, timeout=60)
        result["status"], result["type"] = r.status_code, r.headers.get("content-type")

    try:
        before = slow_calls(upstream)
        thread = threading.Thread(target=hung_request)
        thread.start()
        wait_until(lambda: slow_calls(upstream) > before, 10)
        gw.proc.popen.send_signal(signal.SIGTERM)
        # Well before the upstream's 25 s: the deadline, not the request, ends the shutdown.
        assert gw.proc.popen.wait(timeout=15) == 0, gw.proc.output()
        thread.join(timeout=30)
    finally:
        gw.proc.stop()
    assert result == {"status": 503, "type": "application/problem+json"}
    with sqlite3.connect(tmp_path / "heliox.db") as conn:
        rows = conn.execute("SELECT path FROM request_logs WHERE path = '/slow'").fetchall()
    assert rows == [("/slow",)]


# --- bring your own ASGI server -----------------------------------------------------------------
def start_asgi_server(
    name: str, args: list[str], port: int, env: dict[str, str], cwd: Path
) -> Proc:
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as fh:  # the child has its own copy of the descriptor
        popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(name, popen, log_path)

    def ready() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200

    try:
        wait_until(ready, 60)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"{name} did not start:\n{proc.output()}") from None
    return proc


@pytest.mark.parametrize(
    ("server", "target", "exit_status"),
    [
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        ("uvicorn", ["uvicorn", "heliox.main:app"], -signal.SIGTERM),
        ("granian", ["granian", "--interface", "asgi", "--factory", "heliox.main:create_app"], 0),
    ],
)
def test_the_documented_asgi_entry_points_serve(
    tmp_path: Path, upstream: Upstream, server: str, target: list[str], exit_status: int
) -> None:
    """Both servers run the app on uvloop here (the dev extra installs it, and each picks it by
    itself): a cache fill reaches the upstream through it (it answered 502 on uvloop before).
    An answer the upstream breaks off mid-body is cut off for the client, and the server does
    not log that abort as a crash of the application (it did, with a traceback, each time)."""
    import sqlite3

    port = free_port()
    env = gateway_env(upstream)
    proc = start_asgi_server(
        server, [*target, "--host", "127.0.0.1", "--port", str(port)], port, env, tmp_path
    )
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.json()["status"] == "ok"
        items = httpx.get(
            f"http://127.0.0.1:{port}/g/demo/items", headers={"X-API-Key": ACME}, timeout=10
        )
        assert items.status_code == 200
        assert items.headers["x-cache"] in ("MISS", "HIT")
        with (
            pytest.raises(httpx.HTTPError),  # the connection cut under the body
            httpx.stream(
                "GET",
                f"http://127.0.0.1:{port}/g/demo/abort?after=1000&length=400000",
                headers={"X-API-Key": ACME},
                timeout=10,
            ) as broken,
        ):
            assert broken.status_code == 200
            broken.read()
    finally:
        assert proc.stop() == exit_status, proc.output()
    output = proc.output()
    assert "Exception in ASGI application" not in output  # uvicorn's report of an exception
    assert "Application callable raised an exception" not in output  # granian's
    # The lifespan shutdown ran: the requests' log rows were flushed to the database.
    with sqlite3.connect(tmp_path / "heliox.db") as conn:
        rows = conn.execute("SELECT path, status, error FROM request_logs ORDER BY ts").fetchall()
    assert [row[:2] for row in rows] == [("/items", 200), ("/abort", 200)]
    assert "its connection was cut" in rows[1][2]


# --- heliox keys against running gateways ------------------------------------------------------
def test_keys_from_the_cli_reach_every_running_instance(
    pg_gateway: Gateway,
    pg_gateway_b: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from heliox.cli import main

    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"):
        monkeypatch.setenv(name, pg_gateway.env[name])
    for name in ("ADMIN_API_KEY", "SECRET_KEY"):  # not needed to manage keys
        monkeypatch.delenv(name, raising=False)

    def heliox(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    status, out, err = heliox("keys", "create", "--tenant", "CloudBridge", "--name", "cli")
    assert status == 0, err
    key = out.strip()
    key_id = int(err.split("created key ")[1].split()[0])

    def answer(gw: Gateway) -> int:
        r = httpx.get(f"{gw.url}/g/demo/items", headers={"X-API-Key": key}, timeout=10)
        return r.status_code

    for gw in (pg_gateway, pg_gateway_b):
        wait_until(lambda gw=gw: answer(gw) == 200, PROPAGATION, 0.02)
    status, out, _ = heliox("keys", "list", "--tenant", "CloudBridge")
    assert status == 0 and " cli " in out and key not in out
    status, _, err = heliox("keys", "revoke", str(key_id))
    assert status == 0, err
    for gw in (pg_gateway, pg_gateway_b):
        wait_until(lambda gw=gw: answer(gw) == 401, PROPAGATION, 0.02)
    with pg_gateway.admin() as admin:
        audit = admin.get("/admin/audit", params={"entity_type": "key", "entity_id": key_id})
    actions = [(e["action"], e["actor"].split(":")[0]) for e in audit.json()["items"]]
    assert actions == [("key.revoke", "cli"), ("key.create", "cli")]


# --- Redis over TLS ----------------------------------------------------------------------------
@dataclass
class TlsRedis:
    port: int
    ca: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A redis-server speaking only TLS, with a self-signed certificate for 127.0.0.1."""
    exe, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if exe is None or openssl is None:
        pytest.skip("needs redis-server and openssl")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    def up() -> bool:
        if proc.poll() is not None:
            pytest.skip("this redis-server was built without TLS")
        client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    try:
        wait_until(up, 15)
        yield TlsRedis(port, cert, proc)
    finally:
        proc.kill()
        proc.wait(5)


def test_gateway_over_tls_redis_uses_the_db_index_from_the_url(
    tmp_path: Path, upstream: Upstream, pg_url: str, tls_redis: TlsRedis
) -> None:
    import redis

    url = f"rediss://127.0.0.1:{tls_redis.port}/3?ssl_cert_reqs=none"
    env = gateway_env(upstream, database_url=pg_url, redis_url=url)
    gw = start_gateway(tmp_path, env)
    try:
        health = httpx.get(gw.url + "/health", timeout=10).json()
        assert health["checks"]["redis"] == "ok"
        r = httpx.get(f"{gw.url}/g/demo/items", headers={"X-API-Key": ACME}, timeout=10)
        assert r.status_code == 200 and "ratelimit-remaining" in r.headers
    finally:
        assert gw.proc.stop() == 0
    client = redis.Redis(port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca), db=3)
    try:
        assert any(k.startswith(b"heliox:") for k in client.scan_iter(count=1000))
        assert client.dbsize() > 0
        client.select(0)
        assert client.dbsize() == 0
    finally:
        client.close()


async def test_redis_client_verifies_tls_with_the_ca_from_the_url(tls_redis: TlsRedis) -> None:
    from heliox.config import load_settings
    from heliox.state.redis_client import redis_client

    url = f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    client = redis_client(load_settings(redis_url=url, deployment_mode="demo"))
    try:
        assert await client.execute_command("CLIENT", "INFO")  # pool connection
        assert await client.ping()  # pipelined connection
        assert (await client.time())[0] > 0
    finally:
        await client.aclose()


def test_unverified_tls_is_refused_by_default(tls_redis: TlsRedis) -> None:
    from heliox.config import load_settings
    from heliox.state.redis_client import redis_client

    async def ping() -> object:
        url = f"rediss://127.0.0.1:{tls_redis.port}/0"
        client = redis_client(load_settings(redis_url=url, deployment_mode="demo"))
        try:
            return await client.execute_command("CLIENT", "INFO")
        finally:
            await client.aclose()

    import redis

    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(ping())
