"""The `heliox` command: demo, serve, worker, upstream, db, config, keys, tenants, routes,
abuse, version.

Exit status: 0 done, 1 the operation failed (database unreachable, no such key, ...), 2 bad usage
or configuration (the message names the variable or option to fix); `config apply --dry-run`
exits 3 when the file would change the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from heliox import __version__
from heliox.graceful_shutdown import GracefulShutdown

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from heliox.config import Settings

log = logging.getLogger("heliox.cli")

# After SHUTDOWN_TIMEOUT, how long a gateway process gets to flush its log queue and close its
# connections before granian kills it.
STOP_GRACE_SECONDS = 15
# granian's I/O threads per worker (its default is 1). With one, that thread waits for the GIL
# whenever the event loop holds it, and no socket is read or written meanwhile: a cache hit cost
# 82-93 µs of CPU at 50 connections, and 69-78 µs with two, on Redis 102 against 91 µs; three
# were no better, four worse (docs/performance.md, "One server thread stalled every socket").
RUNTIME_THREADS = 2

ENV_HELP = """\
environment (the main ones; `heliox config show` lists every setting and its value):
  DATABASE_URL        postgresql+asyncpg://user:pass@host/db[?sslmode=require]
                      (empty: SQLite file ./heliox.db)
  REDIS_URL           redis://[user:pass@]host:6379/0 or rediss:// for TLS
                      (empty: in-process state, one process only)
  ADMIN_API_KEY       admin credential for X-Admin-Key (production: 16+ chars, not the demo default)
  SECRET_KEY          signs admin UI sessions (production: 16+ chars)
  AUTO_SEED           seed the sample tenants, keys and routes (default: on in demo mode)
  DEPLOYMENT_MODE     demo | production (default: demo unless DATABASE_URL or REDIS_URL is set)
  LOG_LEVEL           DEBUG | INFO | WARNING | ERROR
  LOG_FORMAT          text | json: the process's own log lines on stderr (default text)
  EXAMPLE_UPSTREAM_URL  where the seeded routes point (default http://127.0.0.1:8001)
  see docs/deployment.md for connection options, pool sizes, timeouts and shutdown
"""
SERVE_ENV_HELP = """\
environment:
  DATABASE_URL, REDIS_URL, ADMIN_API_KEY, SECRET_KEY   as for every command (see heliox --help)
  SHUTDOWN_TIMEOUT    seconds in-flight requests get to finish on SIGTERM/SIGINT (default 30)
  BACKGROUND_JOBS     true: this process also runs the periodic jobs (default);
                      false: leave them to `heliox worker`
  DATABASE_POOL_SIZE, DATABASE_TIMEOUT, REDIS_POOL_SIZE, REDIS_TIMEOUT   per-process pools
  REDIS_KEY_PREFIX    separates deployments that share one Redis (default heliox:)
  HTTP_HEADER_READ_TIMEOUT, CLIENT_IDLE_TIMEOUT   a request head within 30 s of accept; idle
                      connections closed 75 s after their last request (defaults)
  CLIENT_MAX_CONNECTIONS   per worker; idle ones above it are closed (0: from `ulimit -n`)
  METRICS_PUBLIC      /metrics without X-Admin-Key (default: demo yes, production no)
  METRICS_PORT, METRICS_HOST   Prometheus text at /metrics on its own port, no key (0 = off)
  LOG_FORMAT          text | json: own log lines on stderr, json = one object a line with
                      ts, level, logger, message (default text)
  ACCESS_LOG          true: one JSON line per /g/ request on stdout, after the response
                      (request id, route, key/tenant ids, status, cache, latencies, bytes,
                      client address; never a key); default false
  ACCESS_LOG_BUFFER   access lines held while stdout is slow, then dropped and counted
                      (default 10000; requests never wait for stdout)
"""
WORKER_ENV_HELP = """\
environment:
  DATABASE_URL        the gateway's database (migrated first if needed)
  REDIS_URL           coordinates the jobs: each runs once per period across all processes
  REDIS_KEY_PREFIX    must match the gateways' (default heliox:)
  LOG_RETENTION_DAYS  request logs older than this are deleted (default 30)
  LOG_RETENTION_INTERVAL_SECONDS   how often retention runs (default 3600)
  LOG_LEVEL           INFO shows one line per job run
  LOG_FORMAT          text | json (one JSON object per log line)
"""
CONFIG_FILE_ENV_HELP = """\
environment:
  DATABASE_URL        the database to read or write (empty: SQLite file ./heliox.db); migrate
                      it first
  REDIS_URL           when set, running gateways are told to reload at once; otherwise they
                      notice within CONFIG_POLL_INTERVAL (default 1 s)
  REDIS_KEY_PREFIX    must match the gateways' (default heliox:)
"""
KEYS_ENV_HELP = """\
environment:
  DATABASE_URL        the database to write (empty: SQLite file ./heliox.db); migrate it first
  REDIS_URL           when set, running gateways are told to reload at once; otherwise they
                      notice within CONFIG_POLL_INTERVAL (default 1 s)
  REDIS_KEY_PREFIX    must match the gateways' (default heliox:)
"""


# --- helpers --------------------------------------------------------------------------------
class CommandError(Exception):
    """The command failed; the message says why (exit status 1, or 2 for bad usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _fail(message: str, status: int = 2) -> int:
    print(_cli_line("error", message), file=sys.stderr)
    return status


def _progress(message: str) -> None:
    print(_cli_line("info", message), file=sys.stderr, flush=True)


def _cli_line(level: str, message: str) -> str:
    """`heliox: message`, or its JSON line once LOG_FORMAT=json is in effect."""
    from heliox import structured_log

    if structured_log.json_output():
        return structured_log.json_line(level, "heliox.cli", message)
    return f"heliox: {message}"


def _check_settings() -> int | None:
    from heliox.config import ConfigError, load_settings

    try:
        load_settings()
    except ConfigError as exc:
        return _fail(str(exc))
    return None


def _tool_settings() -> Settings:
    """Settings for commands that only touch the database and Redis (no admin credentials).

    Raises ConfigError like load_settings; the serving secrets are not required here.
    """
    from heliox.config import load_settings

    return load_settings(deployment_mode="demo")


def _run(coro: Awaitable[int]) -> int:
    async def main() -> int:
        return await coro

    return asyncio.run(main())


def _first_line(exc: BaseException) -> str:
    """The first line of the exception's message, or its class name when it has none."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _explain(exc: BaseException) -> str:
    """One line on what went wrong, with the fix when it is a known one."""
    text = _first_line(exc)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return "the database has no Heliox tables yet: run `heliox db upgrade` first"
    return text


def _endpoint(url: str) -> str:
    """host:port of a PostgreSQL or Redis URL (never its credentials); a SQLite URL's file, a
    unix:// Redis URL's socket."""
    from urllib.parse import urlsplit

    if url.startswith("sqlite"):
        return url.split(":///", 1)[-1] or url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    try:
        port = parts.port
    except ValueError:
        port = None
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port or (6379 if parts.scheme.startswith('redis') else 5432)}"


def _database_problem(url: str, exc: BaseException, timeout: float) -> str:
    """A start-up database failure in one line: the variable, the target and the cause.

    The driver's message without SQLAlchemy's decoration (class name, documentation link).
    """
    import socket

    explained = _explain(exc)
    if "heliox db upgrade" in explained:
        return explained
    cause: BaseException = exc
    while True:  # the driver's own exception, under SQLAlchemy's and the migration's wrappers
        inner = getattr(cause, "orig", None) or cause.__cause__
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    text = _first_line(cause)
    if text.startswith("(") and ") " in text:
        text = text.split(") ", 1)[1]  # "(sqlalchemy....Error) role ... does not exist"
    if isinstance(cause, socket.gaierror):
        why = f"the host name does not resolve ({cause.strerror or text})"
    elif isinstance(cause, ConnectionRefusedError) or "Connect call failed" in text:
        why = "connection refused: is the server running and listening there?"
    elif isinstance(cause, TimeoutError):
        why = f"no answer within DATABASE_TIMEOUT ({timeout:g} s)"
    else:
        why = text
    if url.startswith("sqlite"):
        return f"DATABASE_URL: cannot use the SQLite database {_endpoint(url)}: {why}"
    return f"DATABASE_URL: cannot use the database at {_endpoint(url)}: {why}"


def _traceback_if_debug(settings: Settings | None) -> None:
    """The full traceback of the failure being reported, only with DEBUG=true (or
    LOG_LEVEL=DEBUG)."""
    if settings is not None and (settings.debug or settings.log_level == "DEBUG"):
        import traceback

        traceback.print_exc(file=sys.stderr)


def _port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be served, or None when it is free.

    The server binds with SO_REUSEPORT, which would let it share a port another process
    already listens on, silently splitting the traffic. A plain bind (SO_REUSEADDR only, so a
    port left in TIME_WAIT by a stopped server is still free) fails if anyone listens there.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"--host {host}: cannot use this address ({exc.strerror or exc})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                import errno

                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"--port {port}: {host}:{port} is already in use by another process; "
                        "stop it or choose another port (--reuse-port shares the port on "
                        "purpose, as nginx's `listen ... reuseport`)"
                    )
                return f"--port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _warn_if_redis_unreachable(settings: Settings) -> None:
    """One line at start-up when Redis does not answer; the gateway starts anyway (limits fail
    open, fail-closed routes answer 503, the cache misses) and recovers when it does."""
    if not settings.redis_url:
        return

    async def ping() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_connect_timeout,
            socket_timeout=settings.redis_timeout,
        )
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:
        _progress(
            f"warning: REDIS_URL: Redis at {_endpoint(settings.redis_url)} does not answer "
            f"({_first_line(exc)}); starting without it: rate limits fail open (fail-closed "
            "routes answer 503) until it is back"
        )
        _traceback_if_debug(settings)


# --- serve, demo, upstream -------------------------------------------------------------------
def create_served_app() -> GracefulShutdown:
    """The ASGI app `heliox serve` runs: heliox.main's stack with a shutdown deadline."""
    from heliox.config import load_settings
    from heliox.main import build_app

    return build_app(load_settings(), served=True)


def _migrate_and_seed(settings: Settings) -> None:
    """Run migrations (and the seed) once in this process, before any worker starts."""
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database
    from heliox.seed import seed

    async def run() -> None:
        await upgrade_database(settings.effective_database_url, progress=_progress)
        if settings.auto_seed:
            engine = make_engine(
                settings.effective_database_url, connect_timeout=settings.database_timeout
            )
            try:
                await seed(make_session_factory(engine), settings, progress=_progress)
            finally:
                await engine.dispose()

    asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    from heliox.config import load_settings

    settings = load_settings()  # a ConfigError is reported by main()
    from heliox import structured_log

    structured_log.configure(settings.log_format, settings.log_level)
    if args.workers > 1 and not settings.redis_url:
        return _fail(
            "--workers > 1 needs REDIS_URL: without Redis each worker would keep its own rate "
            "limits, quotas and cache"
        )
    if not settings.database_url and args.workers > 1:
        return _fail("--workers > 1 needs DATABASE_URL (PostgreSQL); SQLite serves one process")
    if settings.metrics_port and settings.metrics_port == args.port:
        return _fail(f"METRICS_PORT: {args.port} is the gateway's own port; pick another")
    if not args.reuse_port:
        busy = _port_taken(args.host, args.port)
        if busy is not None:
            return _fail(busy, 1)
    try:
        _migrate_and_seed(settings)
    except Exception as exc:
        _traceback_if_debug(settings)
        problem = _database_problem(settings.effective_database_url, exc, settings.database_timeout)
        return _fail(f"could not prepare the database: {problem}", 1)
    _warn_if_redis_unreachable(settings)
    if settings.metrics_port:
        failed = _start_metrics_port(settings.metrics_host or args.host, settings.metrics_port)
        if failed is not None:
            return failed
    if args.reload:
        import uvicorn

        uvicorn.run(
            "heliox.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            reload=True,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        )
        return 0
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    if args.workers > 1:
        _metrics_dir()  # workers merge their metrics there, so any of them answers a scrape right

    from heliox import connection_guard

    limits = connection_guard.limits_for(settings)
    if settings.client_max_connections > limits.cap:
        _progress(
            f"CLIENT_MAX_CONNECTIONS={settings.client_max_connections} needs more descriptors "
            f"than the open-file limit ({connection_guard.open_file_limit()}) leaves after the "
            f"pools: using {limits.cap} per worker (raise `ulimit -n`)"
        )
    header_timeout = settings.http_header_read_timeout
    if connection_guard.supported():
        # granian times the idle gap before a request head with the head's own timer; the
        # connection guard applies both timeouts, granian's is the backstop.
        header_timeout = max(header_timeout, settings.client_idle_timeout)
    _progress(
        f"gateway listening on http://{args.host}:{args.port} ({settings.deployment_mode} mode)"
    )
    Server(
        "heliox.cli:create_served_app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        factory=True,
        runtime_threads=RUNTIME_THREADS,
        # asyncio's own loop, whatever else is installed: granian would pick uvloop by itself
        # when it is there, and the gateway on uvloop measured no faster (docs/performance.md,
        # "uvloop"); one loop is the one the suite and the benchmarks run.
        loop=Loops.asyncio,
        log_level=settings.log_level.lower(),  # type: ignore[arg-type]
        # Applied in every worker: LOG_FORMAT for heliox's and granian's lines alike.
        log_dictconfig=structured_log.logging_config(settings.log_format, settings.log_level),
        log_access=False,
        backlog=2048,
        # Above this many connections a worker stops accepting; below it, the connection guard
        # closes idle ones over CLIENT_MAX_CONNECTIONS. It leaves the pools their descriptors.
        backpressure=limits.ceiling,
        http1_settings=HTTP1Settings(
            header_read_timeout=math.ceil(header_timeout * 1000),
            max_buffer_size=settings.max_header_bytes,
        ),
        # Last resort for a worker that neither drains nor flushes in time (it is killed).
        workers_kill_timeout=math.ceil(settings.shutdown_timeout) + STOP_GRACE_SECONDS,
    ).serve()
    return 0


def _start_metrics_port(host: str, port: int) -> int | None:
    """Serve the Prometheus text on its own port from this (the main) process, for every
    worker; the workers share their counters through HELIOX_METRICS_DIR."""
    from heliox.metrics_port import MetricsPort

    try:
        listener = MetricsPort(host, port, _metrics_dir())
    except OSError as exc:
        return _fail(f"METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}")
    listener.start()
    _progress(f"metrics (Prometheus, no key) on http://{host}:{port}/metrics")
    return None


def _metrics_dir() -> str:
    """HELIOX_METRICS_DIR, a new temporary folder unless already set: the worker processes the
    server starts inherit it and each writes its counters there (see `SharedMetrics`)."""
    import tempfile

    if "HELIOX_METRICS_DIR" not in os.environ:
        os.environ["HELIOX_METRICS_DIR"] = tempfile.mkdtemp(prefix="heliox-metrics-")
    return os.environ["HELIOX_METRICS_DIR"]


def cmd_upstream(args: argparse.Namespace) -> int:
    from heliox.upstream.app import run

    run(host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ["DEPLOYMENT_MODE"] = "demo"
    os.environ.setdefault("EXAMPLE_UPSTREAM_URL", f"http://127.0.0.1:{args.upstream_port}")
    bad = _check_settings()
    if bad is not None:
        return bad
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heliox",
            "upstream",
            "--host",
            args.host,
            "--port",
            str(args.upstream_port),
        ]
    )
    try:
        time.sleep(0.2)
        if upstream.poll() is not None:
            return _fail(f"the example upstream could not start on port {args.upstream_port}", 1)
        print(
            f"\n  Heliox demo\n  gateway   http://localhost:{args.port}\n"
            f"  upstream  http://localhost:{args.upstream_port}\n"
            f"  admin UI  http://localhost:{args.port}/ui  (admin key: "
            f"{os.environ.get('ADMIN_API_KEY') or 'admin-secret-key'})\n"
            f"  try:      curl http://localhost:{args.port}/g/demo/items "
            '-H "X-API-Key: hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"\n',
            flush=True,
        )
        serve_args = argparse.Namespace(
            host=args.host, port=args.port, workers=1, reload=False, reuse_port=False
        )
        return cmd_serve(serve_args)
    finally:
        upstream.send_signal(signal.SIGTERM)
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()


# --- worker -----------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from heliox.worker import UnknownJob, run_worker

    settings = _tool_settings()  # a ConfigError is reported by main()
    from heliox import structured_log

    # LOG_FORMAT as for `heliox serve` (alembic at WARNING: the progress lines say enough).
    structured_log.configure(settings.log_format, settings.log_level)
    try:
        return _run(run_worker(settings, once=args.once, only=args.job or (), progress=_progress))
    except UnknownJob as exc:
        return _fail(str(exc))
    except Exception as exc:
        log.debug("worker failed", exc_info=True)
        return _fail(f"worker failed: {_explain(exc)}", 1)


# --- db ---------------------------------------------------------------------------------------
class _MigrationProgress(logging.Handler):
    """Turns Alembic's "Running upgrade a -> b, message" log lines into progress lines."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Running upgrade"):
            step = message.removeprefix("Running upgrade").strip()
            _progress(f"applying migration {step}")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from heliox.config import redact_url
    from heliox.db.migrate import head_revision, upgrade_database_sync

    settings = _tool_settings()  # a ConfigError is reported by main()
    url = settings.effective_database_url
    _progress(f"database {redact_url(url)}; latest revision {head_revision()}")
    alembic_log = logging.getLogger("alembic.runtime.migration")
    handler = _MigrationProgress(logging.INFO)
    level = alembic_log.level
    alembic_log.addHandler(handler)
    alembic_log.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        upgrade_database_sync(url, progress=_progress)
    except Exception as exc:
        _traceback_if_debug(settings)
        problem = _database_problem(url, exc, settings.database_timeout)
        return _fail(f"migration failed: {problem}", 1)
    finally:
        alembic_log.removeHandler(handler)
        alembic_log.setLevel(level)
    _progress(f"done in {time.perf_counter() - started:.1f} s")
    return 0


# --- config -----------------------------------------------------------------------------------
def cmd_config_show(args: argparse.Namespace) -> int:
    from heliox.config import effective_settings, load_settings

    settings = load_settings()  # a ConfigError is reported by main()
    rows = effective_settings(settings)
    if args.json:
        print(json.dumps({name: value for name, value, _ in rows}, indent=2))
        return 0
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        shown = value if value != "" else "(empty)"
        print(f"{name:<{width}}  {shown}" + ("" if source == "default" else f"   [{source}]"))
    return 0


# --- keys -------------------------------------------------------------------------------------
def _actor() -> str:
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # no passwd entry (containers with an arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


async def _with_admin(settings: Settings, action: Callable[[Any], Awaitable[int]]) -> int:
    """Run `action(admin)` with the admin API's context: same validation, audit and reload."""
    from heliox.admin.deps import Admin
    from heliox.admin.errors import AdminError
    from heliox.cli_runtime import CliRuntime
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.state.redis_client import redis_client

    engine = make_engine(
        settings.effective_database_url, pool_size=1, connect_timeout=settings.database_timeout
    )
    redis = redis_client(settings) if settings.redis_url else None
    runtime = CliRuntime(settings, make_session_factory(engine), redis)
    try:
        return await action(Admin(runtime=runtime, actor=_actor()))
    except AdminError as exc:
        errors = exc.extensions.get("errors") or []
        detail = "; ".join(str(e.get("msg", e)) for e in errors) or exc.detail
        return _fail(detail, 1)
    except CommandError as exc:
        return _fail(str(exc), exc.status)
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, OSError | TimeoutError | DBAPIError):
            problem = _database_problem(
                settings.effective_database_url, exc, settings.database_timeout
            )
            return _fail(problem, 1)
        raise
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


async def _find_tenant(session: AsyncSession, ref: str) -> tuple[int, str]:
    """(id, name) of the tenant named `ref`: exactly, case-insensitively, by a unique start of
    its name, or by id."""
    from sqlalchemy import func, select

    from heliox.db.models import Tenant

    rows = list(await session.execute(select(Tenant.id, Tenant.name).where(Tenant.name == ref)))
    if not rows:
        rows = list(
            await session.execute(
                select(Tenant.id, Tenant.name).where(func.lower(Tenant.name) == ref.lower())
            )
        )
    if not rows:
        # A unique start of a name is enough: "acme" for "Acme Corporation".
        rows = list(
            await session.execute(
                select(Tenant.id, Tenant.name).where(
                    func.lower(Tenant.name).startswith(ref.lower(), autoescape=True)
                )
            )
        )
    if not rows and ref.isdigit() and int(ref) < 2**31:
        rows = list(
            await session.execute(select(Tenant.id, Tenant.name).where(Tenant.id == int(ref)))
        )
    if len(rows) != 1:
        names = [name for (name,) in await session.execute(select(Tenant.name).order_by(Tenant.id))]
        known = ", ".join(repr(n) for n in names) or "none yet"
        what = "several tenants match" if rows else "no tenant matches"
        raise CommandError(f"{what} {ref!r} (by name or id); tenants: {known}")
    return int(rows[0][0]), str(rows[0][1])


def cmd_keys_create(args: argparse.Namespace) -> int:
    from fastapi import Response
    from pydantic import ValidationError

    from heliox.admin.keys import create_key
    from heliox.admin.schemas import KeyCreate

    settings = _tool_settings()  # a ConfigError is reported by main()
    limits = {
        "rate_limit_rps": args.rps,
        "rate_limit_burst": args.burst,
        "daily_quota": args.daily_quota,
        "monthly_quota": args.monthly_quota,
    }
    if args.algorithm is not None:
        limits["rate_limit_algorithm"] = args.algorithm
    if args.window is not None:
        limits["rate_limit_window_seconds"] = args.window

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            tenant_id, tenant_name = await _find_tenant(session, args.tenant)
        try:
            body = KeyCreate(tenant_id=tenant_id, name=args.name, **limits)
        except ValidationError as exc:
            problems = "; ".join(
                f"--{str(e['loc'][0]).replace('rate_limit_', '').replace('_', '-')}: {e['msg']}"
                for e in exc.errors()
            )
            raise CommandError(problems, 2) from None
        created = await create_key(admin, body, Response())
        if args.json:
            print(created.model_dump_json(indent=2))
        else:
            print(created.key)
        _progress(
            f"created key {created.id} {created.name!r} for tenant {tenant_name!r} "
            f"(prefix {created.key_prefix}); the key above is shown this once"
        )
        return 0

    return _run(_with_admin(settings, action))


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from heliox.admin.deps import PageParams
    from heliox.admin.keys import list_keys
    from heliox.db.models import Tenant

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            tenant_id = None
            if args.tenant is not None:
                tenant_id, _ = await _find_tenant(session, args.tenant)
            tenants = {
                int(i): str(n) for i, n in await session.execute(select(Tenant.id, Tenant.name))
            }
        items: list[Any] = []
        while True:
            page = await list_keys(
                admin,
                PageParams(limit=1000, offset=len(items)),
                tenant_id=tenant_id,
                include_revoked=args.all,
            )
            items.extend(page.items)
            if not page.items or len(items) >= page.total:
                break
        if args.json:
            print(json.dumps([k.model_dump(mode="json") for k in items], indent=2))
            return 0
        _print_keys(items, tenants)
        return 0

    return _run(_with_admin(settings, action))


def _print_keys(items: Sequence[Any], tenants: dict[int, str]) -> None:
    header = ("ID", "TENANT", "NAME", "PREFIX", "STATUS", "RPS", "BURST", "DAILY", "MONTHLY")
    rows = [header]
    for k in items:
        rows.append(
            (
                str(k.id),
                tenants.get(k.tenant_id, str(k.tenant_id)),
                k.name,
                k.key_prefix + "…",
                k.status,
                _or_dash(k.rate_limit_rps),
                _or_dash(k.rate_limit_burst),
                _or_dash(k.daily_quota),
                _or_dash(k.monthly_quota),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) == 1:
        _progress("no keys")


def _or_dash(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from fastapi import Response
    from sqlalchemy import select

    from heliox.admin.keys import revoke_key
    from heliox.db.models import ApiKey

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            already = (
                await session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == args.id))
                if 1 <= args.id < 2**31
                else None
            )
        response: Response = await revoke_key(admin, args.id)
        assert response.status_code == 204
        if already is not None:
            _progress(f"key {args.id} was already revoked")
        else:
            _progress(f"revoked key {args.id}; gateways refuse it within seconds")
        return 0

    return _run(_with_admin(settings, action))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from fastapi import Response

    from heliox.admin.keys import rotate_key
    from heliox.admin.schemas import KeyRotate

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        body = _body(KeyRotate, {"grace_seconds": args.grace}, {"grace_seconds": "--grace"})
        rotated = await rotate_key(admin, args.id, Response(), body)
        if args.json:
            print(rotated.model_dump_json(indent=2))
        else:
            print(rotated.key)
        old = rotated.previous_key
        until = old.expires_at.isoformat(timespec="seconds") if old.expires_at else "?"
        _progress(
            f"rotated key {old.id} into key {rotated.id} (prefix {rotated.key_prefix}); the key "
            f"above is shown this once; the old key works until {until}"
        )
        return 0

    return _run(_with_admin(settings, action))


# --- tenants and routes -----------------------------------------------------------------------
def _body(model: Any, values: dict[str, Any], options: dict[str, str]) -> Any:
    """The admin API's body `model` from the options given (None: not given), or a usage
    error naming the option."""
    from pydantic import ValidationError

    given = {k: v for k, v in values.items() if v is not None}
    given.update({k: None for k, v in values.items() if v is _CLEAR})
    try:
        return model(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{options.get(str(e['loc'][0]), str(e['loc'][0])) if e['loc'] else 'options'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise CommandError(problems, 2) from None


class _Clear:
    """`none` given to an option whose setting may be empty: clear it (PATCH null)."""

    def __repr__(self) -> str:
        return "none"


_CLEAR: Any = _Clear()


def _or_clear(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return _CLEAR if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        _progress(empty)


async def _all_pages(fetch: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    from heliox.admin.deps import PageParams

    items: list[Any] = []
    while True:
        page = await fetch(PageParams(limit=1000, offset=len(items)))
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            return items


_TENANT_OPTIONS = {
    "name": "--name",
    "description": "--description",
    "is_active": "--active/--no-active",
    "abuse_mode": "--abuse-mode",
    "abuse_zscore_threshold": "--abuse-threshold",
}


def _tenant_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "description": args.description,
        "is_active": args.active,
        "abuse_mode": args.abuse_mode,
        "abuse_zscore_threshold": args.abuse_threshold,
    }


def cmd_tenants_list(args: argparse.Namespace) -> int:
    from heliox.admin.tenants import list_tenants

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        items = await _all_pages(lambda page: list_tenants(admin, page))
        if args.json:
            print(json.dumps([t.model_dump(mode="json") for t in items], indent=2))
            return 0
        rows = [
            (str(t.id), t.name, "yes" if t.is_active else "no", str(t.key_count),
             str(t.active_key_count), t.abuse_mode)
            for t in items
        ]  # fmt: skip
        _print_table(("ID", "NAME", "ACTIVE", "KEYS", "LIVE KEYS", "ABUSE"), rows, "no tenants")
        return 0

    return _run(_with_admin(settings, action))


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from fastapi import Response

    from heliox.admin.schemas import TenantCreate
    from heliox.admin.tenants import create_tenant

    settings = _tool_settings()  # a ConfigError is reported by main()
    values = {"name": args.name, **_tenant_values(args)}
    body = _body(TenantCreate, values, _TENANT_OPTIONS | {"name": "NAME"})

    async def action(admin: Any) -> int:
        created = await create_tenant(admin, body, Response())
        if args.json:
            print(created.model_dump_json(indent=2))
        _progress(f"created tenant {created.id} {created.name!r}")
        return 0

    return _run(_with_admin(settings, action))


def cmd_tenants_update(args: argparse.Namespace) -> int:
    from heliox.admin.schemas import TenantUpdate
    from heliox.admin.tenants import update_tenant

    settings = _tool_settings()  # a ConfigError is reported by main()
    values = {"name": args.new_name, **_tenant_values(args)}
    body = _body(TenantUpdate, values, _TENANT_OPTIONS)
    if not body.changes():
        return _fail("nothing to change: give at least one option (see --help)")

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            tenant_id, name = await _find_tenant(session, args.tenant)
        updated = await update_tenant(admin, tenant_id, body)
        if args.json:
            print(updated.model_dump_json(indent=2))
        _progress(f"updated tenant {updated.id} {name!r}")
        return 0

    return _run(_with_admin(settings, action))


def cmd_tenants_delete(args: argparse.Namespace) -> int:
    from heliox.admin.tenants import delete_tenant

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            tenant_id, name = await _find_tenant(session, args.tenant)
        if args.tenant not in (name, str(tenant_id)):
            # A unique start of a name is enough to find a tenant, not to delete one.
            raise CommandError(
                f"{args.tenant!r} matches tenant {name!r}: give its exact name or id to delete it"
            )
        await delete_tenant(admin, tenant_id)
        _progress(f"deleted tenant {tenant_id} {name!r} and its keys")
        return 0

    return _run(_with_admin(settings, action))


_ROUTE_OPTIONS = {
    "name": "--name",
    "upstream_url": "--upstream",
    "path_pattern": "--path",
    "methods": "--methods",
    "cache_policy": "--cache-policy",
    "is_public": "--public/--no-public",
    "rate_limit_rps": "--rps",
    "rate_limit_burst": "--burst",
    "rate_limit_algorithm": "--algorithm",
    "fail_mode": "--fail-mode",
    "max_request_body_bytes": "--max-body-bytes",
    "timeout_seconds": "--timeout",
    "hide_ratelimit_headers": "--hide-ratelimit-headers",
    "allow_private_upstream": "--allow-private-upstream",
    "is_active": "--active/--no-active",
}


def _route_values(args: argparse.Namespace) -> dict[str, Any]:
    methods = args.methods
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    return {
        "upstream_url": args.upstream,
        "path_pattern": args.path,
        "methods": methods,
        "cache_policy": args.cache_policy,
        "is_public": args.public,
        "rate_limit_rps": args.rps,
        "rate_limit_burst": args.burst,
        "rate_limit_algorithm": args.algorithm,
        "fail_mode": args.fail_mode,
        "max_request_body_bytes": args.max_body_bytes,
        "timeout_seconds": args.timeout,
        "hide_ratelimit_headers": args.hide_ratelimit_headers,
        "allow_private_upstream": args.allow_private_upstream,
        "is_active": args.active,
    }


async def _find_route(session: AsyncSession, ref: str) -> tuple[int, str]:
    """(id, name) of the route named `ref` exactly, or with that id."""
    from sqlalchemy import select

    from heliox.db.models import Route

    row = (await session.execute(select(Route.id, Route.name).where(Route.name == ref))).first()
    if row is None and ref.isdigit() and int(ref) < 2**31:
        row = (
            await session.execute(select(Route.id, Route.name).where(Route.id == int(ref)))
        ).first()
    if row is None:
        names = [n for (n,) in await session.execute(select(Route.name).order_by(Route.name))]
        known = ", ".join(repr(n) for n in names) or "none yet"
        raise CommandError(f"no route named {ref!r} (or with that id); routes: {known}")
    return int(row[0]), str(row[1])


def cmd_routes_list(args: argparse.Namespace) -> int:
    from heliox.admin.routes import list_routes

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        items = await _all_pages(lambda page: list_routes(admin, page))
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in items], indent=2))
            return 0
        rows = [
            (str(r.id), r.name, r.upstream_url, r.path_pattern, r.cache_policy or "-",
             "yes" if r.is_public else "no", "yes" if r.is_active else "no",
             _or_dash(r.rate_limit_rps))
            for r in items
        ]  # fmt: skip
        header = ("ID", "NAME", "UPSTREAM", "PATH", "POLICY", "PUBLIC", "ACTIVE", "RPS")
        _print_table(header, rows, "no routes")
        return 0

    return _run(_with_admin(settings, action))


def cmd_routes_create(args: argparse.Namespace) -> int:
    from fastapi import Response

    from heliox.admin.routes import create_route
    from heliox.admin.schemas import RouteCreate

    settings = _tool_settings()  # a ConfigError is reported by main()
    body = _body(
        RouteCreate, {"name": args.name, **_route_values(args)}, _ROUTE_OPTIONS | {"name": "NAME"}
    )

    async def action(admin: Any) -> int:
        created = await create_route(admin, body, Response())
        if args.json:
            print(created.model_dump_json(indent=2))
        _progress(
            f"created route {created.id} {created.name!r}: /g/{created.name}/... -> "
            f"{created.upstream_url}"
        )
        return 0

    return _run(_with_admin(settings, action))


def cmd_routes_update(args: argparse.Namespace) -> int:
    from heliox.admin.routes import update_route
    from heliox.admin.schemas import RouteUpdate

    settings = _tool_settings()  # a ConfigError is reported by main()
    body = _body(RouteUpdate, {"name": args.new_name, **_route_values(args)}, _ROUTE_OPTIONS)
    if not body.changes():
        return _fail("nothing to change: give at least one option (see --help)")

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            route_id, _ = await _find_route(session, args.route)
        updated = await update_route(admin, route_id, body)
        if args.json:
            print(updated.model_dump_json(indent=2))
        _progress(f"updated route {updated.id} {updated.name!r}")
        return 0

    return _run(_with_admin(settings, action))


def cmd_routes_delete(args: argparse.Namespace) -> int:
    from heliox.admin.routes import delete_route

    settings = _tool_settings()  # a ConfigError is reported by main()

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            route_id, name = await _find_route(session, args.route)
        await delete_route(admin, route_id)
        _progress(f"deleted route {route_id} {name!r}; gateways answer 404 for it within seconds")
        return 0

    return _run(_with_admin(settings, action))


# --- configuration as code --------------------------------------------------------------------
def cmd_config_export(args: argparse.Namespace) -> int:
    from heliox.admin.declarative import dump_yaml, export_config

    settings = _tool_settings()  # a ConfigError is reported by main()
    exported: list[dict[str, Any]] = []

    async def action(admin: Any) -> int:
        async with admin.read() as session:
            exported.append(await export_config(session))
        return 0

    status = _run(_with_admin(settings, action))
    if status != 0:
        return status
    document = exported[0]
    text = dump_yaml(document)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, args.output)
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror or exc}", 1)
    keys = sum(len(t["keys"]) for t in document["tenants"])
    _progress(
        f"wrote {args.output}: {len(document['policies'])} policies, "
        f"{len(document['routes'])} routes, {len(document['tenants'])} tenants, {keys} keys"
    )
    return 0


# `heliox config apply --dry-run`: the file would change the configuration.
EXIT_CHANGES_PENDING = 3


def cmd_config_apply(args: argparse.Namespace) -> int:
    from heliox.admin.declarative import (
        ConfigFileError,
        Plan,
        apply_config,
        format_plan,
        load_yaml,
        parse_config,
    )

    settings = _tool_settings()  # a ConfigError is reported by main()
    source = "standard input" if args.file == "-" else args.file
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}", 1)
    try:
        desired = parse_config(load_yaml(text, source))
    except ConfigFileError as exc:
        return _refused(source, exc.problems)

    def show(plan: Plan) -> None:
        for line in format_plan(plan, prune=args.prune):
            print(line)
        sys.stdout.flush()

    async def action(admin: Any) -> int:
        try:
            result = await apply_config(
                admin, desired, prune=args.prune, dry_run=args.dry_run, show=show
            )
        except ConfigFileError as exc:
            return _refused(source, exc.problems)
        if not result.plan.changes:
            return 0
        if args.dry_run:
            _progress("dry run: nothing was changed (every change above passed the checks)")
            return EXIT_CHANGES_PENDING
        _progress("applied in one transaction; gateways reload within seconds")
        return 0

    return _run(_with_admin(settings, action))


def _refused(source: str, problems: Sequence[str]) -> int:
    for problem in problems:
        _fail(problem, 1)
    return _fail(f"{source}: refused, nothing was changed", 1)


# --- abuse replay -----------------------------------------------------------------------------
def cmd_abuse_replay(args: argparse.Namespace) -> int:
    """Replay a traffic corpus through the abuse detector (the ABUSE_* settings) on a fake
    clock; exit 1 when an ordinary shape is flagged or an attack is missed."""
    import json
    from pathlib import Path

    from heliox.core.abuse_replay import CorpusError, load_corpus, replay, table
    from heliox.runtime import detector_config

    config = detector_config(_tool_settings())
    try:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
        shapes = load_corpus(data)
        if args.shape:
            shapes = [s for s in shapes if s.name in args.shape]
            if not shapes:
                return _fail(f"{args.file} has no shape named {', '.join(args.shape)}")
        results = [replay(s, config) for s in shapes]
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        return _fail(f"{args.file} is not JSON: {exc}")
    except (CorpusError, AttributeError, TypeError, ValueError) as exc:
        return _fail(f"{args.file}: {exc}")
    if args.json:
        rows = [
            {"name": r.name, "kind": r.kind, "duration_seconds": r.duration,
             "requests": r.requests, "admitted": r.admitted,
             "false_positives": r.false_positives, "attack_start": r.attack_start,
             "detected_after": r.detected_after, "max_delay_seconds": r.max_delay_seconds,
             "passed": r.passed}
            for r in results
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
    else:
        print(table(results))
    return 0 if all(r.passed for r in results) else 1


# --- version ----------------------------------------------------------------------------------
def cmd_version(args: argparse.Namespace) -> int:
    print(f"heliox {__version__}")
    return 0


def _tenant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description", help="free text")
    parser.add_argument(
        "--active",
        action=argparse.BooleanOptionalAction,
        help="--no-active disables the tenant: its keys are refused",
    )
    parser.add_argument(
        "--abuse-mode",
        choices=("default", "exempt", "custom"),
        help="abuse detection: default (ABUSE_* settings), exempt, or custom (--abuse-threshold)",
    )
    parser.add_argument(
        "--abuse-threshold",
        type=_or_clear(float),
        metavar="Z",
        help="z-score threshold of --abuse-mode custom, 1 to 1000 (none: clear)",
    )
    parser.add_argument("--json", action="store_true", help="print the tenant as JSON")


def _route_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--upstream", required=required, metavar="URL", help="http(s)://host[:port][/base]"
    )
    parser.add_argument("--path", metavar="GLOB", help="paths admitted after /g/NAME (/*)")
    parser.add_argument("--methods", metavar="LIST", help="comma-separated, e.g. GET,HEAD")
    parser.add_argument(
        "--cache-policy", type=_or_clear(str), metavar="NAME", help="cache policy (none: no cache)"
    )
    parser.add_argument(
        "--public",
        action=argparse.BooleanOptionalAction,
        help="serve without an API key (--no-public: require one)",
    )
    parser.add_argument(
        "--rps", type=_or_clear(float), help="route rate limit, requests per second (none: off)"
    )
    parser.add_argument("--burst", type=_or_clear(int), help="token-bucket burst (none: default)")
    parser.add_argument(
        "--algorithm",
        type=_or_clear(str),
        metavar="{token_bucket,sliding_window}",
        help="rate-limit algorithm",
    )
    parser.add_argument(
        "--fail-mode",
        choices=("open", "closed"),
        help="when the rate limiter's store is down: serve (open) or answer 503 (closed)",
    )
    parser.add_argument(
        "--max-body-bytes", type=_or_clear(int), metavar="N", help="request body limit"
    )
    parser.add_argument(
        "--timeout", type=_or_clear(float), metavar="SECONDS", help="upstream timeout"
    )
    parser.add_argument(
        "--hide-ratelimit-headers",
        action=argparse.BooleanOptionalAction,
        help="leave the RateLimit-* headers out of responses",
    )
    parser.add_argument(
        "--allow-private-upstream",
        action=argparse.BooleanOptionalAction,
        help="permit link-local and cloud metadata upstream addresses",
    )
    parser.add_argument(
        "--active",
        action=argparse.BooleanOptionalAction,
        help="--no-active switches the route off without deleting it",
    )
    parser.add_argument("--json", action="store_true", help="print the route as JSON")


# --- the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="heliox",
        description="Heliox: API gateway and caching proxy.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"heliox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the gateway (:8000) and the example upstream (:8001), seeded, in demo mode",
        description="Run the gateway and the example upstream, seeded, in demo mode. Uses SQLite "
        "and in-process state unless DATABASE_URL / REDIS_URL are set.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    demo.add_argument(
        "--upstream-port", type=int, default=8001, help="example upstream port (8001)"
    )
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser(
        "serve",
        help="run the gateway (granian)",
        description="Run the gateway: data plane /g/{route}/{path}, /health, /metrics, the admin "
        "API under /admin and the admin UI under /ui. Migrates (and, with AUTO_SEED, seeds) the "
        "database first. On SIGTERM or SIGINT it stops accepting, lets in-flight requests "
        "finish (up to SHUTDOWN_TIMEOUT), flushes the request-log queue and exits 0.",
        epilog=SERVE_ENV_HELP,
        formatter_class=fmt,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (> 1 needs REDIS_URL)"
    )
    serve.add_argument(
        "--reload", action="store_true", help="development: uvicorn with auto-reload"
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with another process already listening on it (SO_REUSEPORT; the "
        "kernel splits new connections between them); without it a busy port is refused",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run the periodic jobs (log retention) in their own process",
        description="Run the periodic jobs until SIGTERM/SIGINT: request-log retention every "
        "LOG_RETENTION_INTERVAL_SECONDS. With REDIS_URL each job runs once per period across "
        "every worker and gateway (a Redis lock), so running two workers is safe. Set "
        "BACKGROUND_JOBS=false on the gateways to leave the jobs to workers.",
        epilog=WORKER_ENV_HELP,
        formatter_class=fmt,
    )
    worker.add_argument(
        "--once",
        action="store_true",
        help="run each job once (unless it already ran this period) and exit; for cron",
    )
    worker.add_argument(
        "--job", action="append", metavar="NAME", help="only this job (repeatable): log-retention"
    )
    worker.set_defaults(func=cmd_worker)

    up = sub.add_parser(
        "upstream",
        help="run the example upstream service (:8001)",
        description="Run the example upstream the demo routes point at: /items, /items/{id}, "
        "/slow?delay=N, /stats, /echo, /respond, ...",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8001)
    up.set_defaults(func=cmd_upstream)

    db = sub.add_parser("db", help="database operations", description="Database operations.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upg = db_sub.add_parser(
        "upgrade",
        help="apply all migrations (alembic upgrade head)",
        description="Apply all migrations to DATABASE_URL (empty: the SQLite file ./heliox.db), "
        "printing each step. Safe to run while gateways start: one process migrates at a time. "
        "Needs no admin credentials.",
        epilog="environment:\n  DATABASE_URL        the database to migrate\n",
        formatter_class=fmt,
    )
    upg.set_defaults(func=cmd_db_upgrade)

    config = sub.add_parser(
        "config",
        help="settings; configuration as code (export, apply)",
        description="Inspect the settings; export the configuration to a YAML file and apply "
        "one (configuration as code, see docs/configuration-as-code.md).",
    )
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="CMD")
    show = config_sub.add_parser(
        "show",
        help="print the effective settings (secrets masked)",
        description="Validate the environment as `heliox serve` would and print every setting "
        "with its effective value; [env] marks values taken from the environment. "
        "ADMIN_API_KEY, SECRET_KEY and the passwords inside DATABASE_URL and REDIS_URL are "
        "masked.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_config_show)
    export = config_sub.add_parser(
        "export",
        help="write the configuration (policies, routes, tenants, keys) as YAML",
        description="Write cache policies, routes and tenants with their API keys as a YAML "
        "file (format heliox/v1): entities by name, never by database id, in a fixed order, so "
        "two exports of the same configuration are identical. Keys appear as their SHA-256 "
        "digest and display prefix, never the plaintext; revoked keys are left out. See "
        "docs/configuration-as-code.md.",
        epilog=CONFIG_FILE_ENV_HELP,
        formatter_class=fmt,
    )
    export.add_argument(
        "-o", "--output", metavar="FILE", help="write FILE (replaced whole) instead of stdout"
    )
    export.set_defaults(func=cmd_config_export)
    apply = config_sub.add_parser(
        "apply",
        help="make the configuration what a YAML file says; prints the changes",
        description="Compare FILE (as `heliox config export` writes it) with the database, "
        "print each change (+ create, ~ update with field: old -> new, - delete) and carry "
        "them out in one transaction through the admin API's rules: its validation, an audit "
        "row per change (actor cli:<user>), one config-version bump. Applying the same file "
        "twice changes nothing the second time. Any refused entry (named with its field) "
        "changes nothing at all. Entities in the database but not in the file are kept and "
        "listed, unless --prune.",
        epilog="exit status:\n"
        "  0  applied, or nothing to change (also --dry-run with nothing to change)\n"
        "  1  the file or a change was refused, or the database failed: nothing was changed\n"
        "  2  bad usage or settings\n"
        f"  {EXIT_CHANGES_PENDING}  --dry-run: the file would change the configuration\n\n"
        + CONFIG_FILE_ENV_HELP,
        formatter_class=fmt,
    )
    apply.add_argument("file", metavar="FILE", help="the YAML file, or - for standard input")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="print the changes and check each one as the real apply would, then roll back",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="also delete the policies, routes and tenants (with their keys) the file leaves "
        "out, and revoke the keys it leaves out",
    )
    apply.set_defaults(func=cmd_config_apply)

    keys = sub.add_parser(
        "keys",
        help="create, list, revoke and rotate API keys without the HTTP API",
        description="Manage API keys directly in the database, with the admin API's rules: "
        "validation, an audit row (actor cli:<user>) and a config-version bump, so running "
        "gateways reload.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="CMD")
    create = keys_sub.add_parser(
        "create",
        help="create a key; prints the plaintext key once",
        description="Create an API key. The plaintext key is printed on stdout, alone (or in "
        "--json), and never again; only its SHA-256 digest is stored. Limits left out use the "
        "defaults (DEFAULT_RATE_LIMIT_RPS / _BURST, no quota).",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    create.add_argument("--tenant", required=True, help="tenant name (or id)")
    create.add_argument("--name", required=True, help="a name for the key")
    create.add_argument("--rps", type=float, help="rate limit, requests per second")
    create.add_argument("--burst", type=int, help="token-bucket burst size")
    create.add_argument(
        "--algorithm", choices=("token_bucket", "sliding_window"), help="rate-limit algorithm"
    )
    create.add_argument("--window", type=int, help="sliding-window length in seconds")
    create.add_argument("--daily-quota", type=int, help="requests per calendar day")
    create.add_argument("--monthly-quota", type=int, help="requests per calendar month")
    create.add_argument("--json", action="store_true", help="print the new key as JSON")
    create.set_defaults(func=cmd_keys_create)
    lst = keys_sub.add_parser(
        "list",
        help="list keys (never the plaintext)",
        description="List API keys with their status and limits (prefix only, never the key).",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    lst.add_argument("--tenant", help="only this tenant's keys (name or id)")
    lst.add_argument("--all", action="store_true", help="include revoked keys")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser(
        "revoke",
        help="revoke a key at once",
        description="Revoke an API key: every gateway refuses it within the config propagation "
        "bound (about 2 s). The row stays for the audit trail; revoking twice is harmless.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    revoke.add_argument("id", type=int, help="the key's id (see `heliox keys list`)")
    revoke.set_defaults(func=cmd_keys_revoke)
    rotate = keys_sub.add_parser(
        "rotate",
        help="replace a key with a new one; the old one works for a grace period",
        description="Rotate an API key: a new key with the same tenant, name and limits is "
        "printed on stdout, once; the old key keeps working for the grace period "
        "(KEY_ROTATION_GRACE_SECONDS unless --grace), then is refused. Rotating again never "
        "extends the old key's life.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    rotate.add_argument("id", type=int, help="the key's id (see `heliox keys list`)")
    rotate.add_argument(
        "--grace",
        type=int,
        metavar="SECONDS",
        help="how long the old key keeps working (0 to 31536000; default "
        "KEY_ROTATION_GRACE_SECONDS)",
    )
    rotate.add_argument("--json", action="store_true", help="print the new key as JSON")
    rotate.set_defaults(func=cmd_keys_rotate)

    tenants = sub.add_parser(
        "tenants",
        help="list, create, update and delete tenants without the HTTP API",
        description="Manage tenants directly in the database, with the admin API's rules: "
        "validation, an audit row (actor cli:<user>) and a config-version bump, so running "
        "gateways reload.",
    )
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="CMD")
    t_list = tenants_sub.add_parser(
        "list",
        help="list tenants with their key counts",
        description="List tenants with their key counts.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    t_list.add_argument("--json", action="store_true", help="print JSON")
    t_list.set_defaults(func=cmd_tenants_list)
    t_create = tenants_sub.add_parser(
        "create",
        help="create a tenant",
        description="Create a tenant; give it keys with `heliox keys create --tenant NAME`.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    t_create.add_argument("name", metavar="NAME", help="the tenant's name (unique)")
    _tenant_options(t_create)
    t_create.set_defaults(func=cmd_tenants_create)
    t_update = tenants_sub.add_parser(
        "update",
        help="change a tenant's name, description, state or abuse settings",
        description="Change the options given; the others stay as they are. An inactive "
        "tenant's keys are refused.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    t_update.add_argument("tenant", metavar="TENANT", help="tenant name (or id)")
    t_update.add_argument("--name", dest="new_name", metavar="NEW", help="rename the tenant")
    _tenant_options(t_update)
    t_update.set_defaults(func=cmd_tenants_update)
    t_delete = tenants_sub.add_parser(
        "delete",
        help="delete a tenant and all its keys",
        description="Delete a tenant and every key it owns (revoked ones included); gateways "
        "refuse its keys within seconds.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    t_delete.add_argument("tenant", metavar="TENANT", help="the tenant's exact name, or its id")
    t_delete.set_defaults(func=cmd_tenants_delete)

    routes = sub.add_parser(
        "routes",
        help="list, create, update and delete routes without the HTTP API",
        description="Manage routes (/g/{name}/... -> upstream) directly in the database, with "
        "the admin API's rules: validation (the upstream address check included), an audit row "
        "(actor cli:<user>) and a config-version bump, so running gateways reload.",
    )
    routes_sub = routes.add_subparsers(dest="routes_command", required=True, metavar="CMD")
    r_list = routes_sub.add_parser(
        "list",
        help="list routes",
        description="List routes with their upstream and cache policy.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    r_list.add_argument("--json", action="store_true", help="print JSON (every field)")
    r_list.set_defaults(func=cmd_routes_list)
    r_create = routes_sub.add_parser(
        "create",
        help="create a route",
        description="Create a route: /g/NAME/... is forwarded to --upstream. Options left out "
        "take the admin API's defaults (every method, path /*, no cache policy, not public).",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    r_create.add_argument("name", metavar="NAME", help="the route's name, the /g/NAME/ segment")
    _route_options(r_create, required=True)
    r_create.set_defaults(func=cmd_routes_create)
    r_update = routes_sub.add_parser(
        "update",
        help="change a route's settings",
        description="Change the options given; the others stay as they are. `none` clears "
        "an optional setting (--cache-policy none, --rps none, ...).",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    r_update.add_argument("route", metavar="ROUTE", help="route name (or id)")
    r_update.add_argument("--name", dest="new_name", metavar="NEW", help="rename the route")
    _route_options(r_update, required=False)
    r_update.set_defaults(func=cmd_routes_update)
    r_delete = routes_sub.add_parser(
        "delete",
        help="delete a route",
        description="Delete a route; gateways answer 404 for it within seconds.",
        epilog=KEYS_ENV_HELP,
        formatter_class=fmt,
    )
    r_delete.add_argument("route", metavar="ROUTE", help="route name (or id)")
    r_delete.set_defaults(func=cmd_routes_delete)

    abuse = sub.add_parser(
        "abuse", help="abuse detection tools", description="Abuse detection tools."
    )
    abuse_sub = abuse.add_subparsers(dest="abuse_command", required=True, metavar="CMD")
    replay = abuse_sub.add_parser(
        "replay",
        help="replay a traffic corpus through the detector; print false positives and delays",
        description="Run the abuse detector, configured by the ABUSE_* variables, over each "
        "traffic shape of a corpus (JSON, see bench/abuse_corpus/corpus.json) on a fake clock, "
        "and print per shape the false positives and how soon an attack was caught. Exit "
        "status 1 when an ordinary shape was flagged or an attack missed or caught late.",
        formatter_class=fmt,
    )
    replay.add_argument("file", help="the corpus file")
    replay.add_argument("--shape", action="append", metavar="NAME", help="only this shape")
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(func=cmd_abuse_replay)

    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from heliox.config import ConfigError

    try:
        result: int = args.func(args)
    except ConfigError as exc:  # a bad setting: name it and stop, no traceback
        return _fail(str(exc))
    except CommandError as exc:
        return _fail(str(exc), exc.status)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
