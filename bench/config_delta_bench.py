"""Incremental configuration at scale: what one admin change costs each instance with 10^6 keys.

Production mode: a throwaway PostgreSQL database, a Redis key prefix of its own, the example
upstream and two gateways (`heliox serve`, one worker each), A and B. --keys API keys are written
straight into the database (one INSERT ... SELECT) and a bare version bump makes A load them;
then B starts, as a new instance does, and loads the whole snapshot.

Three measurements, every change made through A's admin API:

  propagation   for each change (a key created, its limit lowered, the key revoked), the time
                from sending the write to A until B enforces it (B answers 200, 429, 401 to the
                key), probing B every 5 ms. The stated bound is 2 s.
  CPU / change  B's CPU time (every thread of every process of it, from /proc/*/schedstat) in a
                window around one change, less its CPU in an idle window just as long before it:
                what applying one change costs an instance that did not make it. Median of
                --cpu-changes changes, alternating the three kinds, no probes meanwhile.
  full reload   the same window around a version bump that records no change (what every write
                cost before deltas, and what an instance that missed versions still does).

B's `config_full_reloads` must not move during the first two, and `config_deltas_applied` must
count every change; the script exits 1 otherwise, or when a propagation exceeds the bound.

  .venv/bin/python bench/config_delta_bench.py [--keys 1000000] [--changes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, http, services
from benchkit.procs import Processes, children, exit_on_signals, wait_until
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS
from benchkit.soakkeys import bump_postgres, load_postgres, new_keyset

BOUND = 2.0  # seconds: the stated propagation bound
PROBE_INTERVAL = 0.005
ROUTE = "demo"  # a seeded route that needs a key


def say(text: str) -> None:
    print(text, flush=True)


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of `pid` and its descendants (/proc/*/schedstat)."""
    total = 0
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat", encoding="ascii") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        stack.extend(children(p))
    return total


def events(gw: gateway.Gateway) -> dict[str, int]:
    reply = http.get(gw.url + "/metrics", headers={"X-Admin-Key": gateway.ADMIN_KEY})
    result: dict[str, int] = reply.json()["events"]
    return result


def status(gw: gateway.Gateway, key: str) -> int:
    return http.get(f"{gw.url}/g/{ROUTE}/items", headers={"X-API-Key": key}, timeout=5).status


def _is_now(gw: gateway.Gateway, key: str, want: int) -> bool:
    return status(gw, key) == want


def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until `predicate` held (polled every PROBE_INTERVAL), or raise after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout:g} s")
        time.sleep(PROBE_INTERVAL)
    return time.monotonic() - start


class Changes:
    """Admin writes on A: a key created, limited, revoked, in turn."""

    def __init__(self, a: gateway.Gateway, tenant_id: int) -> None:
        self.a, self.tenant_id = a, tenant_id
        self.key_id = 0
        self.key = ""
        self.step = 0

    def next(self) -> tuple[str, int]:
        """Make the next change; (what it was, the status B then answers the key with)."""
        kind = ("create", "limit", "revoke")[self.step % 3]
        self.step += 1
        if kind == "create":
            made = gateway.admin(
                self.a, "POST", "/admin/keys", {"tenant_id": self.tenant_id, "name": "delta"}
            )
            self.key_id, self.key = int(str(made["id"])), str(made["key"])
            return kind, 200
        if kind == "limit":
            limit = {"rate_limit_rps": 0.001, "rate_limit_burst": 1}
            gateway.admin(self.a, "PATCH", f"/admin/keys/{self.key_id}", limit)
            return kind, 429
        reply = http.request(
            "DELETE", f"{self.a.url}/admin/keys/{self.key_id}",
            headers={"X-Admin-Key": gateway.ADMIN_KEY},
        )  # fmt: skip
        if reply.status != 204:
            raise RuntimeError(f"revoke -> {reply.status}")
        return kind, 401


def cpu_window(pid: int, seconds: float, action: Callable[[], object] | None = None) -> float:
    """B's CPU milliseconds over `seconds`, with `action` run at the start of the window."""
    before = cpu_ns(pid)
    start = time.monotonic()
    if action is not None:
        action()
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    return (cpu_ns(pid) - before) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="API keys loaded (default 10^6)")
    ap.add_argument("--changes", type=int, default=10, help="changes of each kind timed")
    ap.add_argument("--cpu-changes", type=int, default=9, help="changes whose CPU is measured")
    ap.add_argument("--window", type=float, default=3.0, help="seconds per CPU window")
    ap.add_argument("--pg-admin-dsn", default=DEFAULT_PG)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = ap.parse_args(argv)
    if args.keys < 1 or args.changes < 1 or args.cpu_changes < 1 or args.window <= BOUND:
        ap.error("--keys, --changes, --cpu-changes must be >= 1 and --window > 2")
    problem = services.unavailable(args.pg_admin_dsn, args.redis_url)
    if problem:
        say(problem)
        return 2
    exit_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="heliox-config-delta-"))
    procs = Processes(workdir)
    backends = None
    failures: list[str] = []
    try:
        backends = services.create(args.pg_admin_dsn, args.redis_url)
        env = backends.env() | {"CONFIG_POLL_INTERVAL": "1"}
        upstream = gateway.start_upstream(procs, None)
        a = gateway.start_gateway(procs, "a", upstream, env, None)
        say(f"loading {args.keys:,} keys into {backends.db_name}")
        keyset = new_keyset(args.keys)
        dsn = backends.database_url.replace("+asyncpg", "")
        t0 = time.monotonic()
        asyncio.run(load_postgres(dsn, keyset))
        say(f"  inserted in {time.monotonic() - t0:.1f} s; A loads them (a bare version bump)")
        t0 = time.monotonic()
        asyncio.run(bump_postgres(dsn))
        last = keyset.plaintext(args.keys - 1)
        wait_until(lambda: status(a, last) == 200, "A's full reload", timeout=900, interval=0.2)
        say(f"  A serves key {args.keys:,} after {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        b = gateway.start_gateway(procs, "b", upstream, env, None)
        say(
            f"  B (a new instance) started and loaded the snapshot in {time.monotonic() - t0:.1f} s"
        )
        if status(b, last) != 200:
            raise RuntimeError(f"B refuses key {args.keys:,} after loading the snapshot")

        tenant = gateway.admin(a, "POST", "/admin/tenants", {"name": "delta-bench"})
        changes = Changes(a, int(str(tenant["id"])))
        wait_until(lambda: events(b).get("config_deltas_applied", 0) >= 1, "B sees the tenant")
        start_events = events(b)

        say(f"propagation A -> B, {args.changes} changes of each kind:")
        seen: dict[str, list[tuple[float, float]]] = {"create": [], "limit": [], "revoke": []}
        for _ in range(3 * args.changes):
            t0 = time.monotonic()
            kind, expected = changes.next()
            written = time.monotonic() - t0
            until(partial(_is_now, b, changes.key, expected), timeout=30)
            total = time.monotonic() - t0
            seen[kind].append((total, written))
            if total > BOUND / 2:  # say which one, and where its time went
                say(f"  slow {kind}: {total * 1000:.0f} ms, A answered the write in"
                    f" {written * 1000:.0f} ms")  # fmt: skip
        for kind, times in seen.items():
            ms = sorted(total * 1000 for total, _ in times)
            write_ms = statistics.median(written * 1000 for _, written in times)
            say(
                f"  {kind:6}  median {statistics.median(ms):6.1f} ms   max {ms[-1]:6.1f} ms"
                f"   (of which A's write answer: median {write_ms:.1f} ms; {len(ms)} changes)"
            )
            if ms[-1] > BOUND * 1000:
                failures.append(f"{kind}: {ms[-1]:.0f} ms exceeds the {BOUND:g} s bound")

        say(f"B's CPU per change ({args.cpu_changes} changes, {args.window:g} s windows):")
        costs: list[float] = []
        pid = b.proc.pid
        for _ in range(args.cpu_changes):
            idle = cpu_window(pid, args.window)
            busy = cpu_window(pid, args.window, changes.next)
            costs.append(busy - idle)
            say(f"  idle {idle:7.1f} ms   with one change {busy:7.1f} ms   -> {busy - idle:6.1f}")
        say(f"  median CPU per change: {statistics.median(costs):.1f} ms")
        end_events = events(b)
        full = end_events.get("config_full_reloads", 0) - start_events.get("config_full_reloads", 0)
        deltas = end_events.get("config_deltas_applied", 0) - start_events.get(
            "config_deltas_applied", 0
        )
        made = 3 * args.changes + args.cpu_changes
        say(f"  B: {deltas} deltas applied for {made} changes, {full} full reloads")
        if full:
            failures.append(f"B did {full} full reloads during the delta runs")
        if deltas < made * 0.9:  # a delta may carry two changes that arrived together
            failures.append(f"B applied {deltas} deltas for {made} changes")

        say("for comparison, a version bump that records no change (a full reload on B):")
        idle = cpu_window(pid, args.window)
        before_reloads = events(b).get("config_full_reloads", 0)
        before_cpu, t0 = cpu_ns(pid), time.monotonic()
        asyncio.run(bump_postgres(dsn))
        wait_until(
            lambda: events(b).get("config_full_reloads", 0) > before_reloads,
            "B's full reload",
            timeout=900,
            interval=0.1,
        )
        elapsed = time.monotonic() - t0
        spent = (cpu_ns(pid) - before_cpu) / 1e6 - idle * elapsed / args.window
        say(f"  {spent:.0f} ms of CPU; done {elapsed:.1f} s after the bump")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        say(f"gateway and upstream logs: {workdir}")
    finally:
        procs.stop_all()
        services.drop(backends, say)
    for failure in failures:
        say(f"FAILED: {failure}")
    if failures:
        say(f"logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
