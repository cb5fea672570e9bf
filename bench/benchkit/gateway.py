"""Run the example upstream and the gateway; give the gateway the benchmark's key and route."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchkit import http
from benchkit.procs import Proc, Processes, free_port, pinned, wait_until

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
SECRET = "bench-secret-key-0123456789abcdef"
CACHED_ROUTE = "demo"  # seeded: policy cache, TTL 30 s + SWR 120 s
PASS_ROUTE = "bench-pass"  # created here: no cache policy
ITEMS = "/items"  # JSON, Cache-Control: public, max-age=60

# Settings the benchmark decides; a value inherited from the caller's shell would skew the run.
_OWNED = (
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "DEPLOYMENT_MODE",
    "AUTO_SEED",
    "EXAMPLE_UPSTREAM_URL",
    "ADMIN_API_KEY",
    "SECRET_KEY",
    "ABUSE_ACTION",
    "LOG_LEVEL",
)


# Seconds a server started under valgrind is given to answer (it runs some fifty times slower).
_SLOW_START = 600


@dataclass
class Upstream:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Gateway:
    proc: Proc
    port: int
    mode: str
    api_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        from benchkit.procs import children

        return children(self.proc.pid)


def start_upstream(procs: Processes, cpu: int | None) -> Upstream:
    port = free_port()
    cmd = pinned([sys.executable, "-m", "heliox", "upstream", "--port", str(port)], cpu)
    proc = procs.start("upstream", cmd)
    up = Upstream(proc, port)

    def ready() -> bool:
        proc.check_alive()
        return http.get(up.url + "/health", timeout=1).status == 200

    wait_until(ready, "example upstream", timeout=30)
    return up


@dataclass
class Floor:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


# What `heliox serve` gives granian for the data plane (cli.py), so the floor is that server's.
# The floor keeps granian's one I/O thread, where `heliox serve` runs two (RUNTIME_THREADS): the
# bare server is fastest with one (26 against 30 µs per request here), so the floor stays the
# most that server can do, and the two threads' gain shows in Heliox's ratio, not in a lower floor.
FLOOR_INTERFACE = "asgi"
# And the loop `heliox serve` names (cli.py): granian would take uvloop wherever it is installed,
# as it is in the dev environment.
FLOOR_LOOP = "asyncio"


def start_floor(procs: Processes, cpu: int | None, wrap: Sequence[str] = ()) -> Floor:
    """granian alone, one worker, answering a HIT-shaped constant (benchkit/floor_apps.py).
    `wrap`: a command the server runs under (valgrind)."""
    port = free_port()
    cmd = [*wrap, sys.executable, "-m", "granian", "--interface", FLOOR_INTERFACE]
    cmd += ["--workers", "1"]
    cmd += ["--loop", FLOOR_LOOP]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    cmd.append(f"benchkit.floor_apps:{FLOOR_INTERFACE}_app")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = procs.start("floor", pinned(cmd, cpu), env)
    fl = Floor(proc, port)

    def ready() -> bool:
        proc.check_alive()
        return http.get(fl.url, timeout=1).status == 200

    wait_until(ready, "floor (bare granian)", timeout=_SLOW_START if wrap else 30)
    return fl


def gateway_env(upstream: Upstream, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OWNED}
    env.update(
        ADMIN_API_KEY=ADMIN_KEY,
        SECRET_KEY=SECRET,
        AUTO_SEED="true",
        LOG_LEVEL="WARNING",
        EXAMPLE_UPSTREAM_URL=upstream.url,
        # The load pattern (idle, then tens of thousands of requests a second from one key) is
        # what the abuse detector exists to flag. Shadow mode still samples every request (the
        # cost we measure) but never blocks, so the run measures serving, not 403s.
        ABUSE_ACTION="shadow",
    )
    env.update(extra)
    return env


def start_gateway(
    procs: Processes,
    mode: str,
    upstream: Upstream,
    env_extra: Mapping[str, str],
    cpu: int | None,
    wrap: Sequence[str] = (),
) -> Gateway:
    """`wrap`: a command the gateway runs under (valgrind)."""
    port = free_port()
    cmd = pinned([*wrap, sys.executable, "-m", "heliox", "serve", "--port", str(port)], cpu)
    proc = procs.start(f"gateway-{mode}", cmd, gateway_env(upstream, env_extra))
    gw = Gateway(proc, port, mode)

    def ready() -> bool:
        proc.check_alive()
        return http.get(gw.url + "/health", timeout=1).status == 200

    wait_until(ready, f"gateway ({mode})", timeout=_SLOW_START if wrap else 90)
    return gw


def admin(gw: Gateway, method: str, path: str, payload: object) -> dict[str, object]:
    reply = http.request(method, gw.url + path, headers={"X-Admin-Key": ADMIN_KEY}, payload=payload)
    if reply.status >= 300:
        raise RuntimeError(f"{method} {path} -> {reply.status}: {reply.body[:500]!r}")
    result: dict[str, object] = reply.json()
    return result


def prepare(gw: Gateway, upstream: Upstream) -> None:
    """A key whose limits are far above any load here, and a route with no cache policy."""
    tenant = admin(gw, "POST", "/admin/tenants", {"name": "Benchmark"})
    key = admin(
        gw,
        "POST",
        "/admin/keys",
        {
            "tenant_id": tenant["id"],
            "name": "wrk",
            "rate_limit_rps": 1_000_000,
            "rate_limit_burst": 2_000_000,
            "daily_quota": None,
            "monthly_quota": None,
        },
    )
    gw.api_key = str(key["key"])
    admin(
        gw,
        "POST",
        "/admin/routes",
        {"name": PASS_ROUTE, "path_pattern": "/*", "upstream_url": upstream.url},
    )

    # Admin writes reach the hot path's snapshot asynchronously: wait until both are live.
    def live() -> bool:
        gw.proc.check_alive()
        return all(
            http.get(gw.url + f"/g/{route}{ITEMS}", headers={"X-API-Key": gw.api_key}).status == 200
            for route in (CACHED_ROUTE, PASS_ROUTE)
        )

    wait_until(live, f"gateway ({gw.mode}) key and route", timeout=30, interval=0.2)
