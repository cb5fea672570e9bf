"""Stampede and stale-while-revalidate under load, in one run, on this machine.

Checks two performance targets (bench/README.md, docs/performance.md):

  A. stampede: 1000 concurrent requests for one cold cache key, split over two gateway
     instances that share Redis and PostgreSQL, make 1 upstream call (while a steady load runs
     on other, cached keys);
  B. SWR at expiry: under a steady load on a hot key, the p99 of each second in which the entry
     expires is at most 2x the p99 of the steady seconds.

Starts the example upstream, then Heliox in embedded mode (one instance) and in production mode
(two instances on a throwaway PostgreSQL database and Redis key prefix); servers are pinned to
one CPU, this process (the load) to another.

    .venv/bin/python bench/stampede.py                  # about 3 minutes
    .venv/bin/python bench/stampede.py --quick          # 10 s of SWR load per mode
    .venv/bin/python bench/stampede.py --modes redis --json /tmp/stampede.json

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import burst, gateway, machine, services
from benchkit import http as bhttp
from benchkit.cpu import CpuMeter
from benchkit.loadgen import LoadResult, RateLoad
from benchkit.procs import Processes, exit_on_signals, set_niceness, wait_until
from benchkit.report import fmt_time, text_table
from benchkit.swr import Analysis, analyse, percentile

EMBEDDED, REDIS = "embedded", "redis"
INSTANCES = {EMBEDDED: 1, REDIS: 2}
MODE_LABEL = {EMBEDDED: "embedded", REDIS: "production"}
COLD_ROUTE = "bench-cold"  # created here: long TTL, for the stampede keys
SWR_ROUTE = "bench-swr"  # created here: short TTL + a stale-while-revalidate window
BACKGROUND_PATH = f"/g/{gateway.CACHED_ROUTE}{gateway.ITEMS}"  # seeded, cached: the other traffic
MAX_UPSTREAM_CALLS = 1
MAX_EXPIRY_P99_RATIO = 2.0
MAX_ERROR_SHARE = 0.01
DEFAULT_PG = os.environ.get(
    "HELIOX_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS = os.environ.get("HELIOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 every target met; 1 a target missed or the run failed; "
        "2 a prerequisite is missing; 130 on Ctrl-C.",
    )
    p.add_argument(
        "--modes",
        default="embedded,redis",
        help="embedded (one instance), redis (two instances on PostgreSQL + Redis) or both (both)",
    )
    p.add_argument(
        "--requests", type=int, default=1000, help="concurrent requests per cold key (1000)"
    )
    p.add_argument("--keys", type=int, default=3, help="cold keys stampeded per mode, in turn (3)")
    p.add_argument(
        "--delay",
        type=float,
        default=1.0,
        help="seconds the upstream takes to answer a cold key: the stampede window (1.0; keep "
        "it under the gateway's 5 s lock timeout, past which waiters go upstream by design)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=400.0,
        help="steady load in requests/s over all instances: part A's background traffic and "
        "part B's load on the hot key (400)",
    )
    p.add_argument(
        "--duration", type=float, default=30.0, help="seconds of measured SWR load per mode (30)"
    )
    p.add_argument("--ttl", type=int, default=3, help="the hot entry's TTL in seconds (3)")
    p.add_argument(
        "--swr",
        type=int,
        default=60,
        help="its stale-while-revalidate window in seconds (60; 0 shows what an expiry costs "
        "without it)",
    )
    p.add_argument(
        "--refresh-delay",
        type=float,
        default=0.25,
        help="seconds the upstream takes to answer a refresh of the hot key (0.25)",
    )
    p.add_argument("--quick", action="store_true", help="10 s of SWR load per mode")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG, help="where the throwaway database goes")
    p.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        help="Redis for production mode (the run uses its own key prefix and removes it)",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the gateways and upstream")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU for this process (the load)")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the servers and of this process (the load), e.g. -10 on a shared "
        "machine (root)",
    )
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    p.add_argument(
        "--records",
        metavar="DIR",
        help="write every request of part B (times, latency, instance, X-Cache) as CSV here",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 10.0)
    args.modes = [m for m in str(args.modes).split(",") if m]
    bad = set(args.modes) - {EMBEDDED, REDIS}
    if bad or not args.modes:
        p.error(f"unknown mode(s) {sorted(bad)}; use embedded, redis")
    if min(args.requests, args.keys, args.ttl) < 1 or min(args.rate, args.duration) <= 0:
        p.error("--requests, --keys, --ttl, --rate and --duration must be positive")
    if args.delay <= 0 or args.refresh_delay < 0 or args.swr < 0:
        p.error("--delay must be positive, --swr and --refresh-delay at least 0")
    if args.duration < 2 * (args.ttl + args.refresh_delay) + 1:
        p.error(
            f"--duration {args.duration:g} s cannot span two expiries of a {args.ttl} s TTL: "
            f"give at least {2 * (args.ttl + args.refresh_delay) + 1:g}"
        )
    return args


def say(message: str) -> None:
    print(f"stampede: {message}", file=sys.stderr, flush=True)


# --- results ------------------------------------------------------------------------------------


@dataclass
class StampedeRow:
    mode: str
    instances: int
    key: int
    path: str
    requests: int
    ok: int
    upstream_calls: int
    answers: dict[str, int]  # MISS / collapsed / HIT (after the fill) / other
    send_spread: float  # first write to last write
    p50: float
    slowest: float
    errors: list[str]
    background: LoadResult | None = None

    @property
    def verdict(self) -> str:
        if self.ok != self.requests:
            return "invalid (errors)"
        return "met" if self.upstream_calls <= MAX_UPSTREAM_CALLS else "missed"

    def as_dict(self) -> dict[str, Any]:
        bg = self.background
        return {
            "mode": self.mode,
            "instances": self.instances,
            "key": self.key,
            "path": self.path,
            "requests": self.requests,
            "answered_200": self.ok,
            "upstream_calls": self.upstream_calls,
            "answers": self.answers,
            "send_spread_s": round(self.send_spread, 6),
            "p50_s": round(self.p50, 6),
            "slowest_s": round(self.slowest, 6),
            "errors": self.errors[:20],
            "background": None if bg is None else load_summary(bg),
            "target": f"upstream calls <= {MAX_UPSTREAM_CALLS}",
            "verdict": self.verdict,
        }


@dataclass
class SwrRow:
    mode: str
    instances: int
    rate: float
    duration: float
    ttl: int
    analysis: Analysis
    load: LoadResult
    refresh_calls: int
    foreign: float | None  # share of the server CPU other processes used meanwhile

    @property
    def verdict(self) -> str:
        a = self.analysis
        if not a.requests or a.errors > a.requests * MAX_ERROR_SHARE:
            return "invalid (errors)"
        if a.worst_ratio is None:
            return "invalid (no expiry seen)"
        return "met" if a.worst_ratio <= MAX_EXPIRY_P99_RATIO else "missed"

    def as_dict(self) -> dict[str, Any]:
        a = self.analysis
        return {
            "mode": self.mode,
            "instances": self.instances,
            "rate": self.rate,
            "achieved_rate": round(self.load.achieved_rate, 1),
            "duration_s": self.duration,
            "ttl_s": self.ttl,
            "requests": a.requests,
            "errors": a.errors,
            "client_max_lag_s": round(self.load.max_lag, 6),
            "steady_p50_s": round(a.steady_p50, 6),
            "steady_p99_s": round(a.steady_p99, 6),
            "refreshing_p99_s": round(a.refreshing_p99, 6),
            "expiries": len(a.episodes),
            "expiry_p99_ratios": [round(r, 3) for r in a.ratios],
            "worst_ratio": None if a.worst_ratio is None else round(a.worst_ratio, 3),
            "steady_seconds_over_limit": a.quiet_over_limit,
            "steady_second_ratios": [round(r, 3) for r in a.quiet_ratios],
            "refresh_upstream_calls": self.refresh_calls,
            "server_cpu_used_by_others": None if self.foreign is None else round(self.foreign, 3),
            "episodes": [e.as_dict() for e in a.episodes],
            "seconds": [s.as_dict() for s in a.seconds],
            "target": f"expiry-second p99 <= {MAX_EXPIRY_P99_RATIO:g}x steady p99",
            "verdict": self.verdict,
        }


@dataclass
class Results:
    machine: dict[str, object]
    settings: dict[str, object]
    stampede: list[StampedeRow] = field(default_factory=list)
    swr: list[SwrRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> list[str]:
        return [r.verdict for r in self.stampede] + [r.verdict for r in self.swr]

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "notes": self.notes,
            "stampede": [r.as_dict() for r in self.stampede],
            "swr": [r.as_dict() for r in self.swr],
        }


def load_summary(load: LoadResult) -> dict[str, Any]:
    ok = [r.latency for r in load.records if r.ok]
    return {
        "rate": load.rate,
        "achieved_rate": round(load.achieved_rate, 1),
        "requests": len(load.records),
        "errors": load.errors,
        "p50_s": round(percentile(ok, 50), 6),
        "p99_s": round(percentile(ok, 99), 6),
    }


# --- set-up -------------------------------------------------------------------------------------


@dataclass
class Deployment:
    mode: str
    gateways: list[gateway.Gateway]
    upstream: gateway.Upstream
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def urls(self, path: str) -> list[str]:
        return [gw.url + path for gw in self.gateways]

    def upstream_calls(self, path: str) -> int:
        """Requests the upstream has seen for `path` (raw path, no query)."""
        by_path = bhttp.get(self.upstream.url + "/stats").json()["by_path"]
        return int(by_path.get(path, 0))


def configure(gws: list[gateway.Gateway], up: gateway.Upstream, ttl: int, swr: int) -> str:
    """Key and routes through the first instance's admin API; waits until every instance
    serves them with their cache policies. Returns the API key."""
    first = gws[0]
    gateway.prepare(first, up)  # a key with limits far above the load
    policies = (
        (COLD_ROUTE, {"ttl_seconds": 600, "stale_while_revalidate_seconds": 0}),
        (SWR_ROUTE, {"ttl_seconds": ttl, "stale_while_revalidate_seconds": swr}),
    )
    for name, fields in policies:
        gateway.admin(first, "POST", "/admin/policies", {"name": name, **fields})
        gateway.admin(
            first,
            "POST",
            "/admin/routes",
            {"name": name, "path_pattern": "/*", "upstream_url": up.url, "cache_policy": name},
        )
    key = first.api_key
    probe = f"/respond/probe-{uuid.uuid4().hex[:8]}"

    # Admin writes reach each instance's snapshot asynchronously (through Redis between
    # instances): a cached route answers with X-Cache, so its policy is live too.
    def live(gw: gateway.Gateway) -> bool:
        gw.proc.check_alive()
        for name, _ in policies:
            reply = bhttp.get(f"{gw.url}/g/{name}{probe}", {"X-API-Key": key})
            if reply.status != 200 or reply.headers.get("x-cache") not in ("MISS", "HIT"):
                return False
        return True

    for gw in gws:
        wait_until(partial(live, gw), f"routes on {gw.proc.name}", timeout=30, interval=0.2)
    return key


# --- part A: the stampede -----------------------------------------------------------------------


def classify(headers: dict[str, str]) -> str:
    x_cache = headers.get("x-cache", "")
    if x_cache == "HIT" and "collapsed" in headers.get("cache-status", ""):
        return "collapsed"
    if x_cache == "HIT":
        return "HIT after fill"
    return x_cache or "(none)"


async def stampede(dep: Deployment, args: argparse.Namespace, tag: str) -> list[StampedeRow]:
    targets = [burst.Target("127.0.0.1", gw.port) for gw in dep.gateways]
    rows: list[StampedeRow] = []
    async with RateLoad(dep.urls(BACKGROUND_PATH), dep.headers, args.rate) as load:
        await load.run(1.0)  # connections open, entry cached
        for k in range(1, args.keys + 1):
            upstream_path = f"/respond/cold-{tag}-{dep.mode}-{k}"
            path = f"/g/{COLD_ROUTE}{upstream_path}?delay={args.delay:g}"
            stop = asyncio.Event()
            background = asyncio.create_task(load.run(None, stop))
            try:
                before = await asyncio.to_thread(dep.upstream_calls, upstream_path)
                conns = await burst.open_connections(
                    targets, args.requests, BACKGROUND_PATH, dep.headers
                )
                answers = await burst.fire(
                    conns, targets, path, dep.headers, within=args.delay + 60
                )
                after = await asyncio.to_thread(dep.upstream_calls, upstream_path)
            finally:
                stop.set()
                bg = await background
            ok = [a for a in answers if a.status == 200]
            sent = [a.sent for a in answers]
            row = StampedeRow(
                mode=dep.mode,
                instances=len(targets),
                key=k,
                path=path,
                requests=len(answers),
                ok=len(ok),
                upstream_calls=after - before,
                answers=dict(Counter(classify(a.headers) for a in ok)),
                send_spread=max(sent) - min(sent),
                p50=percentile((a.latency for a in ok), 50),
                slowest=max((a.latency for a in answers), default=0.0),
                errors=[f"{a.status} {a.error}".strip() for a in answers if a.status != 200],
                background=bg,
            )
            rows.append(row)
            say(
                f"A {MODE_LABEL[dep.mode]} key {k}: {row.ok}/{row.requests} answered 200, "
                f"upstream calls {row.upstream_calls}, answers {row.answers}, send spread "
                f"{fmt_time(row.send_spread)}, slowest {fmt_time(row.slowest)}: {row.verdict}"
            )
    return rows


# --- part B: SWR at expiry ----------------------------------------------------------------------


async def swr_run(
    dep: Deployment, args: argparse.Namespace, tag: str, meter: CpuMeter, procs: Processes
) -> SwrRow:
    upstream_path = f"/respond/hot-{tag}-{dep.mode}"
    path = f"/g/{SWR_ROUTE}{upstream_path}?delay={args.refresh_delay:g}"
    prime = await asyncio.to_thread(bhttp.get, dep.gateways[0].url + path, dep.headers)
    if prime.status != 200:
        raise RuntimeError(f"priming {path}: {prime.status} {prime.body[:300]!r}")
    serving = [p for gw in dep.gateways for p in [gw.proc.pid, *gw.worker_pids()]]
    async with RateLoad(dep.urls(path), dep.headers, args.rate) as load:
        await load.run(1.0)  # connections open
        before = await asyncio.to_thread(dep.upstream_calls, upstream_path)
        meter.start(procs.pids(), serving)
        result = await load.run(args.duration)
        usage = meter.stop(procs.pids(), serving)
        after = await asyncio.to_thread(dep.upstream_calls, upstream_path)
    if args.records:
        write_records(Path(args.records) / f"swr-{dep.mode}.csv", result)
    gap = max(0.5, args.ttl / 2)
    analysis = analyse(result.records, args.duration, gap=gap, limit=MAX_EXPIRY_P99_RATIO)
    row = SwrRow(
        dep.mode,
        len(dep.gateways),
        args.rate,
        args.duration,
        args.ttl,
        analysis,
        result,
        after - before,
        usage.foreign,
    )
    worst = analysis.worst_ratio
    say(
        f"B {MODE_LABEL[dep.mode]}: {analysis.requests} requests, {analysis.errors} errors, "
        f"{len(analysis.episodes)} expiries, steady p99 {fmt_time(analysis.steady_p99)}, worst "
        f"expiry-second ratio {'-' if worst is None else f'{worst:.2f}x'}, refresh calls "
        f"{row.refresh_calls}: {row.verdict}"
    )
    return row


def swr_notes(row: SwrRow) -> list[str]:
    notes = []
    label = f"B {MODE_LABEL[row.mode]}"
    a = row.analysis
    if a.quiet_over_limit:
        notes.append(
            f"{label}: {a.quiet_over_limit} of {len(a.quiet_ratios)} steady seconds also had a p99 "
            f"above {MAX_EXPIRY_P99_RATIO:g}x the steady p99: noise alone reaches the limit here, "
            "so run again before reading a miss as the gateway's"
        )
    if row.load.max_lag > 0.05:
        notes.append(
            f"{label}: the load generator fell up to {fmt_time(row.load.max_lag)} behind its "
            "schedule (its CPU was busy); the offered load was uneven for that moment"
        )
    return notes


def write_records(path: Path, load: LoadResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["instance", "due_s", "sent_s", "done_s", "latency_s", "status", "x_cache"])
        for r in sorted(load.records, key=lambda r: r.sent):
            out.writerow(
                [r.target, f"{r.due:.6f}", f"{r.sent:.6f}", f"{r.done:.6f}",
                 f"{r.latency:.6f}", r.status, r.x_cache or r.error]
            )  # fmt: skip
    say(f"part B requests written to {path}")


# --- the run ------------------------------------------------------------------------------------


def start_mode(
    mode: str, procs: Processes, up: gateway.Upstream, env: dict[str, str], cpu: int | None
) -> list[gateway.Gateway]:
    gws = []
    for i in range(INSTANCES[mode]):
        # One after the other: each migrates and seeds the shared database on start.
        name = mode if INSTANCES[mode] == 1 else f"{mode}-{i + 1}"
        gws.append(gateway.start_gateway(procs, name, up, env, cpu))
    return gws


def run(args: argparse.Namespace, results: Results, workdir: Path) -> None:
    procs = Processes(workdir)
    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2 and max(args.server_cpu, args.client_cpu) < ncpu
    server_cpu: int | None = args.server_cpu if pin else None
    if pin:
        # This process is the load generator; the servers go to their CPU through taskset.
        os.sched_setaffinity(0, {args.client_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the servers get theirs through `nice`
    meter = CpuMeter(server_cpu)
    tag = uuid.uuid4().hex[:8]
    backends: services.ProductionBackends | None = None
    try:
        up = gateway.start_upstream(procs, server_cpu)
        say(f"upstream :{up.port}")
        for mode in args.modes:
            env: dict[str, str] = {}
            if mode == REDIS:
                backends = services.create(args.pg_admin_dsn, args.redis_url)
                env = backends.env()
                say(f"production: database {backends.db_name}, key prefix {backends.redis_prefix}")
            gws = start_mode(mode, procs, up, env, server_cpu)
            say(f"{MODE_LABEL[mode]}: gateway(s) on " + ", ".join(f":{g.port}" for g in gws))
            key = configure(gws, up, args.ttl, args.swr)
            dep = Deployment(mode, gws, up, key)
            results.stampede += asyncio.run(stampede(dep, args, tag))
            row = asyncio.run(swr_run(dep, args, tag, meter, procs))
            results.swr.append(row)
            results.notes += swr_notes(row)
            for gw in gws:
                gw.proc.check_alive()
                procs.stop(gw.proc)
            services.drop(backends, say)
            backends = None
    finally:
        procs.stop_all()
        services.drop(backends, say)


# --- the report ---------------------------------------------------------------------------------


def stampede_table(rows: list[StampedeRow]) -> tuple[list[str], list[list[str]]]:
    head = ["mode", "instances", "key", "requests", "200s", "upstream calls", "answers",
            "send spread", "p50", "slowest", "background req/s", "background p99",
            "target"]  # fmt: skip
    body = []
    for r in rows:
        bg = load_summary(r.background) if r.background else None
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r.answers.items()))
        body.append(
            [
                MODE_LABEL[r.mode],
                str(r.instances),
                str(r.key),
                str(r.requests),
                str(r.ok),
                str(r.upstream_calls),
                answers,
                fmt_time(r.send_spread),
                fmt_time(r.p50),
                fmt_time(r.slowest),
                "" if bg is None else f"{bg['achieved_rate']:,.0f} ({bg['errors']} errors)",
                "" if bg is None else fmt_time(bg["p99_s"]),
                f"<= {MAX_UPSTREAM_CALLS} call: {r.verdict}",
            ]
        )
    return head, body


def swr_table(rows: list[SwrRow]) -> tuple[list[str], list[list[str]]]:
    head = ["mode", "instances", "req/s", "requests", "errors", "expiries", "refresh calls",
            "steady p50", "steady p99", "expiry-second p99 / steady p99", "steady seconds > 2x",
            "p99 while refreshing", "others on CPU", "target"]  # fmt: skip
    body = []
    for r in rows:
        a = r.analysis
        ratios = " ".join(f"{x:.2f}" for x in a.ratios)
        worst = "" if a.worst_ratio is None else f"max {a.worst_ratio:.2f}x ({ratios})"
        body.append(
            [
                MODE_LABEL[r.mode],
                str(r.instances),
                f"{r.load.achieved_rate:,.0f}",
                str(a.requests),
                str(a.errors),
                str(len(a.episodes)),
                str(r.refresh_calls),
                fmt_time(a.steady_p50),
                fmt_time(a.steady_p99),
                worst,
                f"{a.quiet_over_limit} of {len(a.quiet_ratios)}",
                fmt_time(a.refreshing_p99),
                "" if r.foreign is None else f"{r.foreign:.0%}",
                f"<= {MAX_EXPIRY_P99_RATIO:g}x: {r.verdict}",
            ]
        )
    return head, body


def expiry_detail(row: SwrRow) -> list[str]:
    a = row.analysis
    lines = []
    for e in a.episodes:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(e.answers.items()))
        seconds = ", ".join(
            f"s{s} p99 {fmt_time(a.seconds[s].p99)} (n={a.seconds[s].requests})" for s in e.seconds
        )
        lines.append(
            f"  {MODE_LABEL[row.mode]}: expired at {e.start:6.2f} s, refreshed by "
            f"{e.end:6.2f} s; {answers}; {seconds or 'outside the measured seconds'}"
        )
    return lines


LEGEND = (
    "A: 'answers' counts X-Cache/Cache-Status of the 200s: MISS is the request that went "
    "upstream; 'collapsed' waited for a fill (in process or on another instance); 'HIT after "
    "fill' arrived after the entry was stored. 'send spread' is the time between the first and "
    "the last request written. The background load ran on a cached key meanwhile. "
    "B: an expiry is a run of answers other than HIT (STALE, UPDATING; MISS if the entry was "
    "gone); its seconds are those from the first such request's start to the last one's end. "
    "'steady p99' pools every other full second; 'steady seconds > 2x' counts steady seconds "
    "whose own p99 crossed the limit, i.e. how often noise alone would miss it. 'p99 while "
    "refreshing' pools only the requests started between an expiry's first non-HIT answer and "
    "its end: a cost of the refresh itself shows there, a stall elsewhere in the second does "
    "not. 'refresh calls' are upstream calls for the hot key during the run (one per expiry is "
    "right)."
)


def as_text(results: Results) -> str:
    m = results.machine
    parts = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Heliox "
        f"{m.get('revision', '?')}, Linux {m['kernel']}; Python {m['python']}, granian "
        f"{m['granian']}",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in results.settings.items()),
    ]
    if results.stampede:
        parts += ["", "A. Stampede: concurrent requests for one cold key, under a steady load"]
        parts.append(text_table(*stampede_table(results.stampede)))
    if results.swr:
        parts += ["", "B. SWR: latency per second while a hot key expires, under a steady load"]
        parts.append(text_table(*swr_table(results.swr)))
        parts += ["", "Expiries:"] + [line for r in results.swr for line in expiry_detail(r)]
    parts += ["", LEGEND, "", "Targets:"]
    for r in results.stampede:
        parts.append(
            f"  A {MODE_LABEL[r.mode]} ({r.instances} instance(s)) key {r.key}: "
            f"{r.requests} concurrent cold requests -> {r.upstream_calls} upstream call(s) "
            f"(target <= {MAX_UPSTREAM_CALLS}): {r.verdict}"
        )
    for s in results.swr:
        worst = s.analysis.worst_ratio
        parts.append(
            f"  B {MODE_LABEL[s.mode]} ({s.instances} instance(s)): worst expiry-second p99 "
            f"{'n/a' if worst is None else f'{worst:.2f}x'} steady p99 "
            f"(target <= {MAX_EXPIRY_P99_RATIO:g}x): {s.verdict}"
        )
    if results.notes:
        parts += ["", "Notes:"] + ["  " + n for n in results.notes]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    set_niceness(args.nice)
    if shutil.which("taskset") is None:
        say("missing: taskset; install with: apt-get install -y util-linux")
        return 2
    problem = machine.heliox_importable()
    if problem:
        say(problem)
        return 2
    if REDIS in args.modes:
        why = services.unavailable(args.pg_admin_dsn, args.redis_url)
        if why:
            say(
                f"production mode needs PostgreSQL and Redis: {why}. Start them, pass "
                "--pg-admin-dsn/--redis-url, or run --modes embedded"
            )
            return 2
    ncpu = os.cpu_count() or 1
    described = machine.describe(machine.Tools("", "", []))
    for tool in ("nginx", "wrk"):
        described.pop(tool, None)
    results = Results(
        machine=described,
        settings={
            "modes": ",".join(args.modes),
            "requests": args.requests,
            "keys": args.keys,
            "cold_delay_s": args.delay,
            "rate": args.rate,
            "swr_duration_s": args.duration,
            "ttl_s": args.ttl,
            "swr_s": args.swr,
            "refresh_delay_s": args.refresh_delay,
            "server_cpu": args.server_cpu if ncpu >= 2 else "any",
            "client_cpu": args.client_cpu if ncpu >= 2 else "any",
            "nice": args.nice,
        },
    )
    if ncpu < 2:
        results.notes.append(
            f"only {ncpu} CPU: the load shares the core with the servers; latencies are noisier"
        )
    load_before = machine.load_average()
    workdir = Path(tempfile.mkdtemp(prefix="heliox-stampede-"))
    started = time.monotonic()
    failed: BaseException | None = None
    try:
        run(args, results, workdir)
    except KeyboardInterrupt as exc:
        failed = exc
        say("interrupted; everything started was stopped")
        results.notes.append("interrupted: the tables are incomplete")
    except Exception as exc:
        failed = exc
        say(f"failed: {type(exc).__name__}: {exc}")
        results.notes.append(f"failed part-way: {type(exc).__name__}: {exc}")
        for log in sorted(workdir.glob("*.log")):
            say(
                f"--- {log.name} (last lines)\n"
                + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            )
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.settings["load_average_before"] = " ".join(f"{v:.2f}" for v in load_before)
    results.settings["load_average_after"] = " ".join(f"{v:.2f}" for v in machine.load_average())
    results.settings["wall_seconds"] = round(time.monotonic() - started)
    if load_before[0] > 0.5:
        results.notes.append(
            f"the machine was not idle (1-minute load {load_before[0]:.2f} at the start): other "
            "work competes with the measured processes and can raise any second's p99"
        )
    print(as_text(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results.as_dict(), indent=2) + "\n")
        say(f"JSON written to {args.json}")
    if failed is not None:
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    missed = [v for v in results.verdicts if v != "met"]
    if missed:
        say(f"{len(missed)} of {len(results.verdicts)} checks not met")
        return 1
    say(f"all {len(results.verdicts)} checks met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
