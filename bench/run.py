"""Benchmark Heliox against the bare server and nginx, in one run, on this machine.

Starts the example upstream, nginx (one worker: proxy_cache on one port, plain proxy_pass on
another), the floor (granian alone, one worker, through the interface the data plane uses,
answering a HIT-shaped constant) and Heliox (one worker) in embedded mode and then on Redis +
PostgreSQL; drives each with wrk pinned to another core, by turns; prints requests/s, p50, p99 and
CPU per request with every Heliox figure as a ratio to the floor's and to nginx's, and the
performance targets (bench/README.md) marked met or missed.

    .venv/bin/python bench/run.py                  # 10 s per measured run (about 5 minutes)
    .venv/bin/python bench/run.py --quick          # 3 s per run
    .venv/bin/python bench/run.py --skip-redis --json /tmp/bench.json

Needs nginx and wrk (Debian: apt-get install -y nginx-light wrk); the Redis mode needs PostgreSQL
and Redis and is skipped, saying so, when they do not answer. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, machine, nginx, services, wrk
from benchkit import http as bhttp
from benchkit.cpu import CpuMeter, Usage
from benchkit.procs import Processes, exit_on_signals, set_niceness
from benchkit.report import (
    EMBEDDED,
    HIT,
    LATENCY,
    MISS,
    REDIS,
    Report,
    Row,
    fmt_time,
    scatter_note,
)
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS

MODE_LABEL = {EMBEDDED: "Heliox embedded", REDIS: "Heliox Redis+PG"}
FLOOR_LABEL = f"floor (granian {gateway.FLOOR_INTERFACE})"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    p.add_argument("--quick", action="store_true", help="3 s runs, shorter warm-ups")
    p.add_argument(
        "--concurrency", default="50,200", help="connections for the HIT and MISS cases (50,200)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measured runs per case, nginx and Heliox by turns; the median is reported (1)",
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1; 2 is also fair)")
    p.add_argument("--modes", default="embedded,redis", help="Heliox modes to run")
    p.add_argument("--skip-redis", action="store_true", help="embedded mode only")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG, help="where the throwaway database goes")
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for nginx, Heliox, upstream")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU for wrk")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the measured processes and wrk, e.g. -10 on a shared machine (root)",
    )
    p.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "heliox-bench.md"),
        help="write the tables as markdown here",
    )
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, nginx conf)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.modes = [m for m in str(args.modes).split(",") if m]
    if args.skip_redis:
        args.modes = [m for m in args.modes if m != REDIS]
    if args.repeat < 1 or args.duration <= 0:
        p.error("--repeat and --duration must be positive")
    bad = set(args.modes) - {EMBEDDED, REDIS}
    if bad:
        p.error(f"unknown mode(s) {sorted(bad)}; use embedded, redis")
    return args


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Timed:
    result: wrk.WrkResult
    usage: Usage
    upstream_calls: int


@dataclass
class Endpoint:
    label: str
    url: str
    pids: list[int]  # the processes serving it (their CPU time is the cost of its requests)


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes, report: Report) -> None:
        self.args = args
        self.procs = procs
        self.report = report
        self.warmup = 1.0 if args.quick else 2.0
        self.latency_duration = min(args.duration, 5.0)
        ncpu = os.cpu_count() or 1
        pin = ncpu >= 2 and max(args.server_cpu, args.client_cpu) < ncpu
        self.server_cpu: int | None = args.server_cpu if pin else None
        self.client_cpu: int | None = args.client_cpu if pin else None
        self.upstream_calls: Callable[[], int] = lambda: 0
        self.meter = CpuMeter(self.server_cpu)

    def measure(
        self,
        case: str,
        ep: Endpoint,
        connections: int,
        headers: dict[str, str],
        *,
        duration: float | None = None,
        mode: str | None = None,
        direct: Row | None = None,
        answer: str | None = None,
    ) -> Row:
        self._wrk(ep.url, connections, self.warmup, headers)  # pools filled, caches primed
        runs = [
            self._timed(ep, connections, duration or self.args.duration, headers)
            for _ in range(self.args.repeat)
        ]
        return self._record(
            case, ep.label, connections, runs, mode=mode, direct=direct, answer=answer
        )

    def measure_turns(
        self,
        case: str,
        connections: int,
        ng: Endpoint,
        floor: Endpoint | None,
        gw: Endpoint,
        headers: dict[str, str],
        mode: str,
    ) -> None:
        """nginx, the floor and Heliox run by turns, so all see the same machine (and its
        neighbours)."""
        eps = [ng, gw] if floor is None else [ng, floor, gw]
        for ep in eps:
            self._wrk(ep.url, connections, self.warmup, headers)
        runs: list[list[Timed]] = [[] for _ in eps]
        for _ in range(self.args.repeat):
            for ep, taken in zip(eps, runs, strict=True):
                taken.append(self._timed(ep, connections, self.args.duration, headers))
        base = self._record(case, ng.label, connections, runs[0])
        floor_row = None if floor is None else self._record(case, floor.label, connections, runs[1])
        self._record(
            case, gw.label, connections, runs[-1], mode=mode, baseline=base, floor=floor_row
        )

    def _timed(
        self, ep: Endpoint, connections: int, duration: float, headers: dict[str, str]
    ) -> Timed:
        before = self.upstream_calls()
        self.meter.start(self.procs.pids(), ep.pids)
        result = self._wrk(ep.url, connections, duration, headers)
        usage = self.meter.stop(self.procs.pids(), ep.pids)
        return Timed(result, usage, self.upstream_calls() - before)

    def _record(
        self,
        case: str,
        server: str,
        connections: int,
        runs: list[Timed],
        *,
        mode: str | None = None,
        baseline: Row | None = None,
        floor: Row | None = None,
        direct: Row | None = None,
        answer: str | None = None,
    ) -> Row:
        result = wrk.combine([t.result for t in runs])
        shares = [t.usage.foreign for t in runs if t.usage.foreign is not None]
        cpu = [t.usage.path_seconds for t in runs if t.usage.path_seconds is not None]
        upstream_calls = sum(t.upstream_calls for t in runs)
        row = Row(case, server, connections, result, mode=mode, baseline=baseline, direct=direct)
        row.floor, row.answer = floor, answer
        row.foreign = statistics.mean(shares) if shares else None
        if len(cpu) == len(runs) and result.requests:
            row.cpu_per_request = sum(cpu) / result.requests
        row.upstream_calls = upstream_calls
        self.report.rows.append(row)
        flag = "  FLAGGED: mostly errors" if result.flagged else ""
        spread = ""
        if len(runs) > 1:
            spread = " (" + " / ".join(f"{t.result.rps:,.0f}" for t in runs) + ")"
        say(
            f"{case:7} {server:22} c={connections:<4} {result.rps:>9,.0f} req/s{spread}  "
            f"p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f} ms  "
            f"CPU/req {fmt_time(row.cpu_per_request) or '-'}  "
            f"errors {result.errors}  upstream calls {upstream_calls}  "
            f"others on CPU {'-' if row.foreign is None else f'{row.foreign:.0%}'}{flag}"
        )
        scatter = scatter_note(f"{case} {server} c={connections}", [t.result.rps for t in runs])
        if scatter is not None:
            self.report.notes.append(scatter)
            say(f"warning: {scatter}")
        if case == HIT and upstream_calls > max(10, result.requests // 100):
            self.report.notes.append(
                f"{server} c={connections}: the upstream saw {upstream_calls} requests during a "
                f"HIT run of {result.requests}: not all of them were cache hits"
            )
        return row

    def _wrk(
        self, url: str, connections: int, duration: float, headers: dict[str, str]
    ) -> wrk.WrkResult:
        return wrk.run(
            url,
            connections=connections,
            duration=duration,
            headers=headers,
            threads=self.args.threads,
            cpu=self.client_cpu,
        )


def check_hit(url: str, headers: dict[str, str], header: str, what: str) -> None:
    """Fail loudly when the HIT case would not measure hits."""
    for _ in range(3):
        reply = bhttp.get(url, headers)
        if reply.status == 200 and reply.headers.get(header, "").upper() == "HIT":
            return
    raise RuntimeError(
        f"{what}: {url} answers {reply.status} with {header}={reply.headers.get(header)!r}, "
        "not a cache HIT"
    )


def run(args: argparse.Namespace, tools: machine.Tools, report: Report, workdir: Path) -> None:
    procs = Processes(workdir)
    bench = Bench(args, procs, report)
    backends: services.ProductionBackends | None = None
    try:
        up = gateway.start_upstream(procs, bench.server_cpu)
        bench.upstream_calls = lambda: int(bhttp.get(up.url + "/stats").json()["total"])
        ng = nginx.start(procs, tools.nginx, up.port, bench.server_cpu)
        say(f"upstream :{up.port}, nginx proxy_cache :{ng.cache_port}, proxy_pass :{ng.pass_port}")
        items = gateway.ITEMS
        up_pid = [up.proc.pid]
        ng_pids = [ng.proc.pid, up.proc.pid]  # the upstream idles through a HIT: costs ~0
        ng_cache = Endpoint("nginx proxy_cache", ng.cache_url + items, ng_pids)
        ng_pass = Endpoint("nginx proxy_pass", ng.pass_url + items, ng_pids)
        short = bench.latency_duration

        fl = gateway.start_floor(procs, bench.server_cpu)
        floor = Endpoint(FLOOR_LABEL, fl.url, [fl.proc.pid])
        say(f"floor (bare granian, {gateway.FLOOR_INTERFACE}) :{fl.port}")

        direct = bench.measure(
            LATENCY, Endpoint("upstream direct", up.url + items, up_pid), 1, {}, duration=short
        )
        for ep in (
            ng_pass,
            Endpoint("nginx proxy_cache HIT", ng_cache.url, ng_pids),
            Endpoint(FLOOR_LABEL, floor.url, floor.pids),
        ):
            bench.measure(LATENCY, ep, 1, {}, duration=short, direct=direct)
        check_hit(ng_cache.url, {}, "x-cache-status", "nginx")

        for mode in args.modes:
            env: dict[str, str] = {}
            if mode == REDIS:
                backends = services.create(args.pg_admin_dsn, args.redis_url)
                env = backends.env()
                say(f"Redis mode: database {backends.db_name}, key prefix {backends.redis_prefix}")
            label = MODE_LABEL[mode]
            gw = gateway.start_gateway(procs, mode, up, env, bench.server_cpu)
            gateway.prepare(gw, up)
            key = {"X-API-Key": gw.api_key}
            gw_pids = [gw.proc.pid, up.proc.pid]
            hit = Endpoint(label, f"{gw.url}/g/{gateway.CACHED_ROUTE}{items}", gw_pids)
            miss = Endpoint(label, f"{gw.url}/g/{gateway.PASS_ROUTE}{items}", gw_pids)
            check_hit(hit.url, key, "x-cache", label)
            for case, ng_ep, fl_ep, gw_ep in (
                (HIT, ng_cache, floor, hit),
                (MISS, ng_pass, None, miss),
            ):
                for c in args.concurrency:
                    bench.measure_turns(case, c, ng_ep, fl_ep, gw_ep, key, mode)
            for suffix, ep in (("MISS", miss), ("HIT", hit)):
                bench.measure(
                    LATENCY,
                    Endpoint(f"{label} {suffix}", ep.url, ep.pids),
                    1,
                    key,
                    duration=short,
                    direct=direct,
                    mode=mode,
                    answer=suffix,
                )
            gw.proc.check_alive()
            procs.stop(gw.proc)
            services.drop(backends, say)
            backends = None
    finally:
        procs.stop_all()
        services.drop(backends, say)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    set_niceness(args.nice)
    tools = machine.find_tools()
    if tools.missing:
        say(f"missing: {', '.join(tools.missing)}; {machine.install_hint(tools.missing)}")
        return 2
    problem = machine.heliox_importable()
    if problem:
        say(problem)
        return 2
    notes: list[str] = []
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        notes.append(
            f"only {ncpu} CPU: wrk shares the core with the servers, so every figure is lower "
            "and the ratios are less meaningful"
        )
    if REDIS in args.modes:
        why = services.unavailable(args.pg_admin_dsn, args.redis_url)
        if why:
            notes.append(
                f"Redis mode skipped: {why}. Start PostgreSQL and Redis, or pass --pg-admin-dsn "
                "and --redis-url"
            )
            args.modes = [m for m in args.modes if m != REDIS]
    for n in notes:
        say(n)
    load_before = machine.load_average()
    report = Report(
        machine=machine.describe(tools),
        settings={
            "duration_s": args.duration,
            "latency_duration_s": min(args.duration, 5.0),
            "concurrency": ",".join(map(str, args.concurrency)),
            "wrk_threads": args.threads,
            "repeat": args.repeat,
            "server_cpu": args.server_cpu if ncpu >= 2 else "any",
            "wrk_cpu": args.client_cpu if ncpu >= 2 else "any",
            "modes": ",".join(args.modes),
            "nice": args.nice,
        },
        notes=notes,
    )
    workdir = Path(tempfile.mkdtemp(prefix="heliox-bench-"))
    started = time.monotonic()
    failed: BaseException | None = None
    try:
        run(args, tools, report, workdir)
    except KeyboardInterrupt as exc:
        failed = exc
        say("interrupted; everything started was stopped")
        report.notes.append("interrupted: the tables are incomplete")
    except Exception as exc:
        failed = exc
        say(f"failed: {exc}")
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
    load_after = machine.load_average()
    report.settings["load_average_before"] = " ".join(f"{v:.2f}" for v in load_before)
    report.settings["load_average_after"] = " ".join(f"{v:.2f}" for v in load_after)
    report.settings["wall_seconds"] = round(time.monotonic() - started)
    if load_before[0] > 0.5:
        report.notes.append(
            f"the machine was not idle (1-minute load {load_before[0]:.2f} at the start): other "
            "work competes with the measured processes, which lowers and scatters the figures"
        )
    code = 0 if failed is None else 130 if isinstance(failed, KeyboardInterrupt) else 1
    if not report.rows:
        return code
    from benchkit.report import as_markdown, as_text

    print(as_text(report))
    Path(args.out).write_text(as_markdown(report))
    say(f"markdown written to {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        say(f"JSON written to {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
