"""The `heliox` command: demo, serve, upstream, db upgrade, version."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from heliox import __version__

ENV_HELP = """\
environment:
  DATABASE_URL        postgresql+asyncpg://user:pass@host/db (empty: SQLite file ./heliox.db)
  REDIS_URL           redis:// or rediss:// (empty: in-process state, one process only)
  ADMIN_API_KEY       admin credential for X-Admin-Key (production: 16+ chars, not the demo default)
  SECRET_KEY          signs admin UI sessions (production: 16+ chars)
  AUTO_SEED           seed the sample tenants, keys and routes (default: on in demo mode)
  DEPLOYMENT_MODE     demo | production (default: demo unless DATABASE_URL or REDIS_URL is set)
  LOG_LEVEL           DEBUG | INFO | WARNING | ERROR
  EXAMPLE_UPSTREAM_URL  where the seeded routes point (default http://127.0.0.1:8001)
  see README.md for the full list (rate limits, abuse detection, Bloom filter, cache size)
"""


def _fail(message: str) -> int:
    print(f"heliox: {message}", file=sys.stderr)
    return 2


def _check_settings() -> int | None:
    from heliox.config import ConfigError, load_settings

    try:
        load_settings()
    except ConfigError as exc:
        return _fail(str(exc))
    return None


def _migrate_and_seed() -> None:
    """Run migrations (and the seed) once in this process, before any worker starts."""
    import asyncio

    from heliox.config import load_settings
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database
    from heliox.seed import seed

    settings = load_settings()

    async def run() -> None:
        await upgrade_database(settings.effective_database_url, progress=_progress)
        if settings.auto_seed:
            engine = make_engine(settings.effective_database_url)
            try:
                await seed(make_session_factory(engine), settings, progress=_progress)
            finally:
                await engine.dispose()

    asyncio.run(run())


def _progress(message: str) -> None:
    print(f"heliox: {message}", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from heliox.config import load_settings

    bad = _check_settings()
    if bad is not None:
        return bad
    settings = load_settings()
    if args.workers > 1 and not settings.redis_url:
        return _fail(
            "--workers > 1 needs REDIS_URL: without Redis each worker would keep its own rate "
            "limits, quotas and cache"
        )
    if not settings.database_url and args.workers > 1:
        return _fail("--workers > 1 needs DATABASE_URL (PostgreSQL); SQLite serves one process")
    try:
        _migrate_and_seed()
    except Exception as exc:
        return _fail(f"could not prepare the database: {exc}")
    if args.reload:
        import uvicorn

        uvicorn.run(
            "heliox.main:create_app", factory=True, host=args.host, port=args.port, reload=True
        )
        return 0
    from granian.constants import Interfaces
    from granian.server import Server

    if args.workers > 1 and "HELIOX_METRICS_DIR" not in os.environ:
        # Workers merge their metrics through this folder, so any of them answers a scrape right.
        import tempfile

        os.environ["HELIOX_METRICS_DIR"] = tempfile.mkdtemp(prefix="heliox-metrics-")

    _progress(
        f"gateway listening on http://{args.host}:{args.port} ({settings.deployment_mode} mode)"
    )
    Server(
        "heliox.main:create_app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        factory=True,
        log_level=settings.log_level.lower(),  # type: ignore[arg-type]
        log_access=False,
        backlog=2048,
    ).serve()
    return 0


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
            return _fail(f"the example upstream could not start on port {args.upstream_port}")
        print(
            f"\n  Heliox demo\n  gateway   http://localhost:{args.port}\n"
            f"  upstream  http://localhost:{args.upstream_port}\n"
            f"  admin UI  http://localhost:{args.port}/ui  (admin key: "
            f"{os.environ.get('ADMIN_API_KEY') or 'admin-secret-key'})\n"
            f"  try:      curl http://localhost:{args.port}/g/demo/items "
            '-H "X-API-Key: hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"\n',
            flush=True,
        )
        serve_args = argparse.Namespace(host=args.host, port=args.port, workers=1, reload=False)
        return cmd_serve(serve_args)
    finally:
        upstream.send_signal(signal.SIGTERM)
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    bad = _check_settings()
    if bad is not None:
        return bad
    from heliox.config import load_settings
    from heliox.db.migrate import upgrade_database_sync

    upgrade_database_sync(load_settings().effective_database_url, progress=_progress)
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"heliox {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="heliox",
        description="Heliox: API gateway and caching proxy.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
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
        description="Run the gateway: data plane /g/{route}/{path}, /health, /metrics, "
        "the admin API "
        "under /admin and the admin UI under /ui. Migrates the database first.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (needs REDIS_URL if > 1)"
    )
    serve.add_argument(
        "--reload", action="store_true", help="development: uvicorn with auto-reload"
    )
    serve.set_defaults(func=cmd_serve)

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
        description="Apply all migrations to DATABASE_URL (empty: the SQLite file ./heliox.db).",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    upg.set_defaults(func=cmd_db_upgrade)

    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
