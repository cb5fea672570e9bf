"""The `heliox` command in-process: help, version, config show, db upgrade, keys, shutdown."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from heliox import __version__
from heliox.cli import create_served_app, main
from heliox.config import Settings
from heliox.graceful_shutdown import GracefulShutdown
from heliox.snapshot import hash_key

ACME = "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("DATABASE_URL_SYNC", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --- help and version -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        ((), ("DATABASE_URL", "REDIS_URL", "ADMIN_API_KEY", "config show")),
        (("serve",), ("SIGTERM", "SHUTDOWN_TIMEOUT", "BACKGROUND_JOBS", "REDIS_POOL_SIZE")),
        (("worker",), ("once per period", "REDIS_URL", "LOG_RETENTION_DAYS", "--once")),
        (("db", "upgrade"), ("migrations", "DATABASE_URL")),
        (("config", "show"), ("masked", "DATABASE_URL")),
        (("keys", "create"), ("never again", "DATABASE_URL", "REDIS_URL", "--daily-quota")),
        (("keys", "list"), ("never the key", "DATABASE_URL")),
        (("keys", "revoke"), ("audit", "REDIS_URL")),
    ],
)
def test_help_says_what_each_command_does_and_which_variables_matter(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], mentions: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse re-wraps lines
    for word in mentions:
        assert word in text, word


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "version") == (0, f"heliox {__version__}\n", "")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"heliox {__version__}\n"


# --- config show -------------------------------------------------------------------------------
def test_config_show_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_API_KEY", "the-admin-key-0123456789")
    monkeypatch.setenv("SECRET_KEY", "the-session-secret-0123456789")
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://app:db-password@db:5432/heliox?sslmode=require"
    )
    monkeypatch.setenv("REDIS_URL", "rediss://default:redis-token@cache:6379/0")
    status, out, err = run(capsys, "config", "show")
    assert status == 0, err
    for secret in ("the-admin-key", "the-session-secret", "db-password", "redis-token"):
        assert secret not in out
    assert "postgresql+asyncpg://app:****@db:5432/heliox?ssl=require   [env]" in out
    assert "SHUTDOWN_TIMEOUT" in out
    status, out, _ = run(capsys, "config", "show", "--json")
    data = json.loads(out)
    assert data["REDIS_URL"] == "rediss://default:****@cache:6379/0"
    assert data["ADMIN_API_KEY"] == "**** (24 characters)"
    assert set(data) == {name.upper() for name in Settings.model_fields}


def test_config_show_reports_a_bad_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/cache")
    status, out, err = run(capsys, "config", "show")
    assert status == 2
    assert out == ""
    assert "REDIS_URL: " in err
    assert "database index" in err


# --- db upgrade --------------------------------------------------------------------------------
def test_db_upgrade_shows_progress(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    status, _, err = run(capsys, "db", "upgrade")
    assert status == 0, err
    assert "applying migration -> 0001" in err
    assert "applying migration 0001 -> 0002" in err
    from heliox.db.migrate import head_revision

    assert f"database at revision {head_revision()}" in err
    assert "done in" in err
    status, _, err = run(capsys, "db", "upgrade")  # already at head: nothing to apply
    assert status == 0
    assert "applying migration" not in err


def test_db_upgrade_needs_no_admin_credentials(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)  # production mode, yet no ADMIN_API_KEY set
    status, _, err = run(capsys, "db", "upgrade")
    assert status == 0, err
    assert "postgres@" in err and "applying migration" in err


def test_db_upgrade_reports_an_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:pw@127.0.0.1:1/nothing")
    monkeypatch.setenv("DATABASE_TIMEOUT", "2")
    status, _, err = run(capsys, "db", "upgrade")
    assert status == 1
    assert "migration failed: DATABASE_URL: cannot use the database at 127.0.0.1:1" in err
    assert "pw@" not in err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://u:pw@db.example.com/heliox", "db.example.com:5432"),
        ("redis://:pw@[::1]:6380/0", "[::1]:6380"),
        ("rediss://cache", "cache:6379"),
        ("unix://:pw@/run/redis.sock?db=1", "/run/redis.sock"),
        ("sqlite+aiosqlite:///./heliox.db", "./heliox.db"),
    ],
)
def test_start_up_errors_name_the_endpoint_never_the_password(url: str, shown: str) -> None:
    from heliox.cli import _endpoint

    assert _endpoint(url) == shown


# --- keys --------------------------------------------------------------------------------------
@pytest.fixture
def seeded_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A migrated and seeded SQLite database named by DATABASE_URL."""
    from heliox.config import load_settings
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database
    from heliox.seed import seed

    path = tmp_path / "heliox.db"
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)

    async def prepare() -> None:
        await upgrade_database(url)
        engine = make_engine(url)
        settings = load_settings(deployment_mode="demo", database_url=url)
        await seed(make_session_factory(engine), settings)
        await engine.dispose()

    asyncio.run(prepare())
    return path


def query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def config_version(path: Path) -> int:
    return int(query(path, "SELECT version FROM config_version")[0][0])


def test_keys_create_prints_the_key_once_and_stores_only_its_digest(
    capsys: pytest.CaptureFixture[str], seeded_db: Path
) -> None:
    before = config_version(seeded_db)
    status, out, err = run(
        capsys,
        "keys", "create", "--tenant", "techflow", "--name", "CI", "--rps", "5", "--burst", "10",
        "--daily-quota", "1000", "--monthly-quota", "20000",
    )  # fmt: skip
    assert status == 0, err
    plaintext = out.strip()
    assert out == plaintext + "\n" and plaintext.startswith("hx_live_")
    assert plaintext not in err
    assert "TechFlow Solutions" in err and "shown this once" in err
    rows = query(
        seeded_db,
        "SELECT k.key_hash, t.name, k.rate_limit_rps, k.rate_limit_burst, k.daily_quota, "
        "k.monthly_quota FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.name = 'CI'",
    )
    assert rows == [(hash_key(plaintext), "TechFlow Solutions", 5.0, 10, 1000, 20000)]
    assert config_version(seeded_db) == before + 1
    actor, action = query(seeded_db, "SELECT actor, action FROM audit_log")[-1]
    assert actor.startswith("cli:") and action == "key.create"

    status, out, _ = run(capsys, "keys", "list")
    assert status == 0
    assert plaintext not in out and ACME not in out
    assert "CI" in out and plaintext[:12] in out


def test_keys_create_json(capsys: pytest.CaptureFixture[str], seeded_db: Path) -> None:
    status, out, _ = run(capsys, "keys", "create", "--tenant", "1", "--name", "J", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["key"].startswith("hx_live_") and data["tenant_id"] == 1
    assert data["status"] == "active"


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (("--tenant", "nobody", "--name", "x"), 1, "Acme Corporation"),
        (("--tenant", "acme", "--name", "x", "--rps", "0"), 2, "--rps"),
        (("--tenant", "acme", "--name", "x", "--burst", "0"), 2, "--burst"),
        (("--tenant", "acme", "--name", "  "), 2, "--name"),
        (("--tenant", "acme", "--name", "x", "--daily-quota", "-5"), 2, "--daily-quota"),
    ],
)
def test_keys_create_refuses_what_the_admin_api_refuses(
    capsys: pytest.CaptureFixture[str],
    seeded_db: Path,
    args: tuple[str, ...],
    status: int,
    says: str,
) -> None:
    keys_before = query(seeded_db, "SELECT count(*) FROM api_keys")
    got, out, err = run(capsys, "keys", "create", *args)
    assert (got, out) == (status, "")
    assert says in err
    assert query(seeded_db, "SELECT count(*) FROM api_keys") == keys_before


def test_keys_list_filters_by_tenant_and_prints_json(
    capsys: pytest.CaptureFixture[str], seeded_db: Path
) -> None:
    status, out, _ = run(capsys, "keys", "list", "--tenant", "Acme Corporation", "--json")
    assert status == 0
    keys = json.loads(out)
    assert {k["name"] for k in keys} == {"Acme Production", "Acme Staging"}
    assert all("key" not in k and "key_hash" not in k for k in keys)


def test_keys_revoke(capsys: pytest.CaptureFixture[str], seeded_db: Path) -> None:
    (key_id,) = query(seeded_db, "SELECT id FROM api_keys WHERE key_hash = ?", hash_key(ACME))[0]
    before = config_version(seeded_db)
    status, _, err = run(capsys, "keys", "revoke", str(key_id))
    assert status == 0, err
    assert query(seeded_db, "SELECT is_active, revoked_at IS NOT NULL FROM api_keys WHERE id = ?",
                 key_id) == [(0, 1)]  # fmt: skip
    assert config_version(seeded_db) == before + 1
    assert query(seeded_db, "SELECT action, entity_id FROM audit_log")[-1] == (
        "key.revoke",
        str(key_id),
    )
    status, out, _ = run(capsys, "keys", "list")
    assert "Acme Production" not in out
    status, out, _ = run(capsys, "keys", "list", "--all")
    assert "revoked" in out
    # Twice is harmless and changes nothing more.
    status, _, err = run(capsys, "keys", "revoke", str(key_id))
    assert status == 0 and "already revoked" in err
    assert config_version(seeded_db) == before + 1
    status, _, err = run(capsys, "keys", "revoke", "99999")
    assert status == 1 and "no key with id 99999" in err


def test_keys_on_a_database_never_migrated(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    status, _, err = run(capsys, "keys", "list")
    assert status == 1
    assert "heliox db upgrade" in err


def test_keys_on_an_unreachable_database_name_it_as_serve_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:pw@127.0.0.1:1/nothing")
    monkeypatch.setenv("DATABASE_TIMEOUT", "2")
    status, _, err = run(capsys, "keys", "list")
    assert status == 1
    assert "DATABASE_URL: cannot use the database at 127.0.0.1:1: connection refused" in err
    assert "pw@" not in err and "Traceback" not in err


def test_keys_revoke_tells_running_gateways_on_redis(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    seeded_db: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    import redis

    monkeypatch.setenv("REDIS_URL", redis_server)
    monkeypatch.setenv("REDIS_KEY_PREFIX", redis_prefix)
    client = redis.Redis.from_url(redis_server)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(redis_prefix + "config")
    try:
        status, _, err = run(capsys, "keys", "revoke", "2")
        assert status == 0, err
        message = None
        for _ in range(50):
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                break
        assert message is not None
        assert int(message["data"]) == config_version(seeded_db)
    finally:
        pubsub.close()
        client.close()


# --- the served app's shutdown deadline -------------------------------------------------------
Message = MutableMapping[str, Any]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.sent.append(message)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def slow_app(gate: asyncio.Event, started: asyncio.Event | None = None) -> Any:
    """An app that answers once `gate` is set; `started` is set when a request reaches it."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if started is not None:
            started.set()
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_requests_finishing_within_the_deadline_are_untouched() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    guard = GracefulShutdown(slow_app(gate, started), timeout=3600)
    send = Recorder()
    request = asyncio.create_task(guard({"type": "http"}, _no_body, send))
    await asyncio.wait_for(started.wait(), 10)
    assert len(guard.inflight) == 1
    guard.begin_shutdown()
    gate.set()
    await request
    assert [m.get("status") for m in send.sent][:1] == [200]
    assert guard.inflight == set()
    assert not guard.deadline_passed


async def test_past_the_deadline_requests_are_cancelled_with_503() -> None:
    gate = asyncio.Event()  # never set: the upstream hangs
    started = asyncio.Event()
    guard = GracefulShutdown(slow_app(gate, started), timeout=0)
    send = Recorder()
    request = asyncio.create_task(guard({"type": "http"}, _no_body, send))
    await asyncio.wait_for(started.wait(), 10)  # in progress when the shutdown begins
    guard.begin_shutdown()
    await asyncio.wait_for(request, 10)
    assert guard.deadline_passed
    assert send.sent[0]["status"] == 503
    assert (b"retry-after", b"1") in send.sent[0]["headers"]
    assert b"shut down" in send.sent[1]["body"]
    assert guard.inflight == set()


async def test_the_connection_guard_learns_which_connections_have_a_request_in_progress() -> None:
    import time

    from heliox.connection_guard import ConnectionGuard, ConnectionTracker
    from heliox.core.connections import ConnectionPolicy

    policy = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=100)
    connection_guard = ConnectionGuard(policy, ConnectionTracker())
    gate, started = asyncio.Event(), asyncio.Event()
    guard = GracefulShutdown(slow_app(gate, started), timeout=3600, guard=connection_guard)
    scope = {"type": "http", "client": ("127.0.0.1", 40123)}
    request = asyncio.create_task(guard(scope, _no_body, Recorder()))
    await asyncio.wait_for(started.wait(), 10)
    assert connection_guard.tracker.peers["40123"] == [1, 0.0]  # busy, no request ended yet
    before_end = time.monotonic()
    gate.set()
    await request
    busy, ended_at = connection_guard.tracker.peers["40123"]
    assert busy == 0 and ended_at >= before_end  # idle since the request ended


async def test_a_cancellation_before_the_deadline_still_propagates() -> None:
    started = asyncio.Event()
    guard = GracefulShutdown(slow_app(asyncio.Event(), started), timeout=3600)
    request = asyncio.create_task(guard({"type": "http"}, _no_body, Recorder()))
    await asyncio.wait_for(started.wait(), 10)  # the cancellation finds it inside the app
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert guard.inflight == set()


def test_serve_gives_granian_two_io_threads_per_worker_on_asyncios_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One I/O thread stalls every socket while the event loop holds the GIL; two made a cache
    hit 11-20 % cheaper (cli.RUNTIME_THREADS). The loop is asyncio's even where uvloop is
    installed (it is, in the test environment), which granian would otherwise pick."""
    import socket

    import granian.server
    from granian.constants import Loops

    given: dict[str, Any] = {}

    class Server:
        def __init__(self, target: str, **options: Any) -> None:
            given.update(options, target=target)

        def serve(self) -> None:
            given["served"] = True

    monkeypatch.setattr(granian.server, "Server", Server)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/heliox.db")
    monkeypatch.setenv("ADMIN_API_KEY", "a-test-admin-key-0123456789")
    monkeypatch.setenv("SECRET_KEY", "a-test-secret-key-0123456789")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, _, err = run(capsys, "serve", "--host", "127.0.0.1", "--port", str(port))
    assert status == 0, err
    assert given["served"] and given["target"] == "heliox.cli:create_served_app"
    assert given["runtime_threads"] == 2
    assert given["loop"] == Loops.asyncio
    assert given["workers"] == 1


def test_create_served_app_uses_shutdown_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from heliox.gateway.app import Gateway

    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "7")
    app = create_served_app()
    assert isinstance(app, GracefulShutdown)
    assert isinstance(app.app, Gateway)
    assert app.timeout == 7.0
    assert app.runtime is app.app.runtime  # told of the shutdown, for the UI's streams


async def test_the_start_of_a_shutdown_reaches_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI's live streams end when `runtime.draining` turns true: SIGTERM must set it."""
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "3600")
    app = create_served_app()
    runtime = app.runtime
    assert runtime is not None
    assert not runtime.draining
    try:
        app.begin_shutdown()
        assert runtime.draining
    finally:
        await runtime.engine.dispose()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


async def test_sigterm_starts_the_deadline_and_keeps_the_previous_handler(
    restore_signals: None,
) -> None:
    import os
    import signal

    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    guard = GracefulShutdown(slow_app(asyncio.Event()), timeout=3600)

    async def lifespan_app(scope: Message, receive: Any, send: Any) -> None:
        return None

    guard.app = lifespan_app
    await guard({"type": "lifespan"}, _no_body, Recorder())
    os.kill(os.getpid(), signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not guard.draining:  # the handler runs at the interpreter's next signal check
        assert loop.time() < deadline, "SIGTERM did not start the shutdown"
        await asyncio.sleep(0.01)
    assert seen == [signal.SIGTERM]


# --- worker -------------------------------------------------------------------------------------
def test_worker_once_runs_retention_and_exits(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, seeded_db: Path
) -> None:
    import logging

    old = "2000-01-01 00:00:00.000000"
    with sqlite3.connect(seeded_db) as conn:
        for ts in (old, "2999-01-01 00:00:00.000000"):
            conn.execute(
                "INSERT INTO request_logs (ts, request_id, route_name, method, path, status, "
                "cache_status, latency_ms, bytes_in, bytes_out, client_ip, user_agent) "
                "VALUES (?, '', 'demo', 'GET', '/', 200, '', 1.0, 0, 0, '', '')",
                (ts,),
            )
    caplog.set_level(logging.INFO, logger="heliox.jobs")
    status, _, err = run(capsys, "worker", "--once")
    assert status == 0, err
    assert "job log-retention ran for period" in caplog.text
    assert query(seeded_db, "SELECT count(*) FROM request_logs") == [(1,)]


def test_worker_refuses_an_unknown_job(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    status, _, err = run(capsys, "worker", "--once", "--job", "nope")
    assert status == 2
    assert "unknown job(s) nope; jobs: log-retention" in err
    assert not (tmp_path / "h.db").exists()  # refused before touching the database


async def test_lifespan_shutdown_waits_for_request_tasks_still_running(
    restore_signals: None,
) -> None:
    """A request task left hanging must record its request before the runtime flushes logs."""
    recorded: list[str] = []
    seen_at_shutdown: list[list[str]] = []
    started = asyncio.Event()

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    seen_at_shutdown.append(list(recorded))  # what the log flush would see
                    return
            return
        started.set()
        try:
            await asyncio.Event().wait()  # its last `send` is never acknowledged
        finally:
            recorded.append(scope["path"])

    guard = GracefulShutdown(app, timeout=3600)
    request = asyncio.create_task(guard({"type": "http", "path": "/g/x/y"}, _no_body, Recorder()))
    await asyncio.wait_for(started.wait(), 10)
    messages = iter([{"type": "lifespan.shutdown"}])

    async def lifespan_receive() -> Message:
        return next(messages)

    await asyncio.wait_for(guard({"type": "lifespan"}, lifespan_receive, Recorder()), 10)
    assert seen_at_shutdown == [["/g/x/y"]]
    assert request.done()
