"""CPU per request of Heliox's data plane alone, driven in process (no HTTP server, no sockets).

    .venv/bin/python bench/pipeline_cost.py                  # HIT and MISS, embedded
    .venv/bin/python bench/pipeline_cost.py --mode redis     # on Redis + PostgreSQL
    .venv/bin/python bench/pipeline_cost.py --profile hit    # cProfile of the HIT loop
    .venv/bin/python bench/pipeline_cost.py --instructions   # instructions per request (valgrind)

The gateway is built as `heliox serve` builds it and called as its ASGI server would call it, one
request at a time, so the figure is the pipeline's own cost: key, admission, cache, response,
metrics and the request log (its SQLite writer thread included: process CPU counts every thread).
`bench/run.py` measures the same pipeline behind granian and nginx; this script is for finding
what a change saves without a quiet machine: process CPU per request moves little when other jobs
run, where wrk's req/s moves a lot.

On a virtual machine even process CPU scatters by 20 % or more between runs. `--instructions`
counts instructions instead (valgrind's callgrind, switched on only around the measured requests,
the log writer's threads included): the same code gives the same count whatever else the machine
does, so a change worth a few percent shows. It is slow (valgrind runs the process ~50x slower):
use a few thousand requests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway as gw_kit
from benchkit import services
from benchkit.procs import Processes, ProcessExited, exit_on_signals, wait_until
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS


def say(message: str) -> None:
    print(f"pipeline: {message}", file=sys.stderr, flush=True)


class Driver:
    """Calls an ASGI app the way a server does, with one reusable receive and a counting send."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status = 0
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.body = b""
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def scope(self, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        raw, _, query = path.partition("?")
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": raw,
            "raw_path": raw.encode(),
            "query_string": query.encode(),
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "root_path": "",
        }

    async def call(self, path: str, headers: list[tuple[bytes, bytes]]) -> int:
        await self.app(self.scope(path, headers), self.receive, self.send)
        return self.status

    async def calls(self, path: str, headers: list[tuple[bytes, bytes]], n: int) -> None:
        """`n` requests one after another, the loop's other work (timers, the log writer's
        loop side) let run between them every 64."""
        for i in range(n):
            await self.call(path, headers)
            if i % 64 == 0:
                await asyncio.sleep(0)


async def lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise SystemExit(f"start-up failed: {message.get('message')}")

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(started.wait(), 60)
    return inbox, task


async def admin(driver: Driver, method: str, path: str, payload: object) -> dict[str, Any]:
    import httpx

    transport = httpx.ASGITransport(app=driver.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        reply = await client.request(
            method, path, json=payload, headers={"X-Admin-Key": gw_kit.ADMIN_KEY}
        )
    if reply.status_code >= 300:
        raise SystemExit(f"{method} {path} -> {reply.status_code}: {reply.text[:300]}")
    result: dict[str, Any] = reply.json()
    return result


async def measure(
    driver: Driver, path: str, headers: list[tuple[bytes, bytes]], n: int, expect: str
) -> tuple[float, float]:
    """Process CPU seconds per request over n requests, and the event loop thread's share of it
    (the rest is the log writer's and the database driver's threads): the run with the median
    process figure of three."""
    runs = []
    for _ in range(3):
        t0, l0 = time.process_time(), time.thread_time()
        await driver.calls(path, headers, n)
        loop_cpu = time.thread_time() - l0
        # Let the log writer take what these requests queued: its CPU belongs to them.
        await asyncio.sleep(0.3)
        runs.append(((time.process_time() - t0) / n, loop_cpu / n))
    status = driver.status
    if status != 200:
        raise SystemExit(f"{path} answered {status}, expected 200 ({expect})")
    return sorted(runs)[1]


async def stalls(
    driver: Driver, path: str, headers: list[tuple[bytes, bytes]], seconds: float
) -> None:
    """Sequential HITs for `seconds`: the latency distribution and when the slowest ones came,
    to tell a periodic stall (a flush, a collection, a timer) from noise."""
    times: list[tuple[float, float]] = []
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    while (t0 := clock()) < end:
        await driver.call(path, headers)
        times.append((clock() - t0, t0 - start))
        if len(times) % 64 == 0:
            await asyncio.sleep(0)  # let timers and the log writer run, as between requests
    ordered = sorted(d for d, _ in times)
    n = len(ordered)
    print(
        f"{n} requests: p50 {ordered[n // 2] * 1e6:.0f} µs, p99 {ordered[n * 99 // 100] * 1e6:.0f} "
        f"µs, p99.9 {ordered[n * 999 // 1000] * 1e6:.0f} µs, max {ordered[-1] * 1e6:.0f} µs"
    )
    worst = sorted(times, reverse=True)[:20]
    print("slowest (µs at s):", ", ".join(f"{d * 1e6:.0f}@{at:.3f}" for d, at in worst))


def cases(hit: str, miss: str, requests: int) -> list[tuple[str, str, int]]:
    """The measured cases: name, path, requests (a MISS costs ten HITs: a tenth as many)."""
    return [("HIT", hit, requests), ("MISS", miss, max(1, requests // 10))]


async def counted(
    driver: Driver,
    measured: list[tuple[str, str, int]],
    headers: list[tuple[bytes, bytes]],
    marks: Path,
) -> None:
    """The requests `--instructions` counts: each case waits until its parent has switched
    callgrind's counting on (a file in `marks`), runs, waits until the log writer has
    written their rows, and says so, so the count holds those requests and nothing else."""
    for name, path, n in measured:
        _mark(marks / f"{name}.ready", str(n))
        await _until(partial(os.path.exists, marks / f"{name}.go"), "the go-ahead")
        logs = driver.app.runtime.logs
        written = logs.written + n
        await driver.calls(path, headers, n)
        _mark(marks / f"{name}.served")
        await _until(partial(os.path.exists, marks / f"{name}.read"), "the count read")
        await _until(lambda: logs.written >= written, "the log writer's rows")  # noqa: B023
        _mark(marks / f"{name}.done")
        await _until(partial(os.path.exists, marks / f"{name}.counted"), "the count printed")


# Longest any one step of `--instructions` may take under valgrind before the run gives up.
STEP_TIMEOUT = 1800.0
_PARENT = os.getppid()  # in the measured process: the `--instructions` run that started it


async def _until(done: Callable[[], bool], what: str) -> None:
    """Poll `done` (a file the parent writes, or the log writer's count), within STEP_TIMEOUT;
    the process gives up when the parent that started it is gone (it has been re-parented)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while not done():
        if os.getppid() != _PARENT:
            raise SystemExit(f"the parent process is gone; stopped waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} within {STEP_TIMEOUT:.0f} s")
        await asyncio.sleep(0.05)


def instructions(args: argparse.Namespace) -> None:
    """Re-run this script under callgrind, counting only the measured requests of each case."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    marks = Path(tempfile.mkdtemp(prefix="heliox-callgrind-"))
    argv = [a for a in sys.argv[1:] if a != "--instructions"]  # --dumps is only read here
    cmd = [valgrind, "--tool=callgrind", "--separate-threads=yes", "--instr-atstart=no"]
    cmd.append(f"--callgrind-out-file={marks}/cg.%p")
    cmd += [sys.executable, str(Path(__file__).resolve()), *argv, "--marks", str(marks)]
    say("starting the gateway under valgrind (a minute or more)")
    child = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        for name in ("HIT", "MISS"):
            n = int(_wait_for(marks / f"{name}.ready", child))
            subprocess.run([control, "-z", str(child.pid)], check=True, capture_output=True)
            subprocess.run([control, "-i", "on", str(child.pid)], check=True, capture_output=True)
            _mark(marks / f"{name}.go")
            # The loop's count when the requests are answered; the other threads' once the
            # log writer has written their rows (the loop only waits meanwhile).
            _wait_for(marks / f"{name}.served", child)
            _, loop = _events(_counts(control, child.pid))
            _mark(marks / f"{name}.read")
            _wait_for(marks / f"{name}.done", child)
            total, loop_after = _events(_counts(control, child.pid))
            if args.dumps:
                subprocess.run(
                    [control, f"--dump={name}", str(child.pid)], check=True, capture_output=True
                )
            subprocess.run([control, "-i", "off", str(child.pid)], check=True, capture_output=True)
            others = total - loop_after
            print(
                f"{args.mode:9} {name:5} {(loop + others) / n / 1000:7.1f} k instructions/request, "
                f"{loop / n / 1000:7.1f} k of them on the event loop's thread  (n={n})",
                flush=True,
            )
            _mark(marks / f"{name}.counted")
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            # SIGTERM first: the measured process stops its example upstream on the way out
            # (exit_on_signals); killed outright, it left that upstream running.
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        if args.dumps:
            Path(args.dumps).mkdir(parents=True, exist_ok=True)
            for dump in marks.glob("cg.*.[0-9]*"):
                shutil.move(dump, Path(args.dumps) / dump.name)
            say(f"callgrind's files, a thread each (dump 1: HIT, 2: MISS): {args.dumps}")
        shutil.rmtree(marks, ignore_errors=True)


def _mark(path: Path, text: str = "") -> None:
    """A file the other process polls for, whole when it appears."""
    part = path.with_suffix(".part")
    part.write_text(text)
    part.rename(path)


def _counts(control: str, pid: int) -> str:
    return subprocess.run(
        [control, "-e", str(pid)], check=True, capture_output=True, text=True
    ).stdout


def _wait_for(path: Path, child: subprocess.Popen[bytes]) -> str:
    """The text of `path` once the measured process has written it (it may take minutes)."""

    def written() -> bool:
        if child.poll() is not None:
            raise ProcessExited(
                f"the measured process exited ({child.returncode}) before {path.name}"
            )
        return path.exists()

    wait_until(written, f"the measured process's {path.name}", timeout=STEP_TIMEOUT, interval=0.1)
    return path.read_text()


def _events(status: str) -> tuple[int, int]:
    """The instructions counted so far, all threads and the first (the event loop's), from
    `callgrind_control -e`: a "Totals:" line, then one "Th <n>  <count>" line per thread."""
    counts = [
        int(line.split()[2].replace(",", ""))
        for line in status.split("Totals:", 1)[-1].splitlines()
        if line.strip().startswith("Th ")
    ]
    if not counts:
        raise SystemExit(f"callgrind_control gave no totals:\n{status}")
    return sum(counts), counts[0]


async def run(args: argparse.Namespace, backends: services.ProductionBackends | None) -> None:
    from heliox.config import load_settings
    from heliox.main import build_app

    procs = Processes(Path(tempfile.mkdtemp(prefix="heliox-pipeline-")))
    try:
        up = gw_kit.start_upstream(procs, None)
        env = gw_kit.gateway_env(up, {})
        env.pop("DATABASE_URL", None)
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{procs.workdir}/heliox.db"
        if backends is not None:
            env.update(backends.env())
        if args.marks:
            # Under valgrind a batch's write takes seconds: past the default timeout the writer
            # would spill the batch and replay it, and count JSON work a served gateway never does.
            env["LOG_WRITE_TIMEOUT"] = "60"
        os.environ.update(env)
        app = build_app(load_settings(), served=args.served)
        inbox, life = await lifespan(app)
        driver = Driver(app)
        tenant = await admin(driver, "POST", "/admin/tenants", {"name": "Benchmark"})
        key = await admin(
            driver,
            "POST",
            "/admin/keys",
            {
                "tenant_id": tenant["id"],
                "name": "pipeline",
                "rate_limit_rps": 1_000_000,
                "rate_limit_burst": 2_000_000,
                "daily_quota": None,
                "monthly_quota": None,
            },
        )
        await admin(
            driver,
            "POST",
            "/admin/routes",
            {"name": gw_kit.PASS_ROUTE, "path_pattern": "/*", "upstream_url": up.url},
        )
        headers = [
            (b"host", b"gw"),
            (b"user-agent", b"pipeline/1"),
            (b"accept", b"*/*"),
            (b"x-api-key", str(key["key"]).encode()),
        ]
        hit = f"/g/{gw_kit.CACHED_ROUTE}{gw_kit.ITEMS}"
        miss = f"/g/{gw_kit.PASS_ROUTE}{gw_kit.ITEMS}"
        deadline = time.monotonic() + 30
        while (await driver.call(hit, headers), await driver.call(miss, headers)) != (200, 200):
            if time.monotonic() > deadline:
                raise SystemExit(f"key and routes not live: {driver.status} {driver.body[:200]!r}")
            await asyncio.sleep(0.1)
        for _ in range(2000):  # warm: memo tables, the entry in process, code paths
            await driver.call(hit, headers)
        # The request log's statements are compiled once per pooled database connection, and
        # the pool hands its connections out in turn: a batch on each before anything is
        # measured (counted, a first use added 20k-30k instructions to every hit's total; under
        # valgrind the writer may still open a connection inside the count, so the event loop's
        # figure is the one to compare).
        for _ in range(6):
            for _ in range(50):
                await driver.call(hit, headers)
            await driver.app.runtime.logs.flush()
        if args.marks:
            await counted(driver, cases(hit, miss, args.requests), headers, Path(args.marks))
        elif args.stalls:
            await stalls(driver, hit, headers, args.stalls)
        elif args.profile:
            path = hit if args.profile == "hit" else miss
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.requests):
                await driver.call(path, headers)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
        else:
            for name, path, n in cases(hit, miss, args.requests):
                per, loop = await measure(driver, path, headers, n, name)
                print(
                    f"{args.mode:9} {name:5} {per * 1e6:7.1f} µs CPU/request, "
                    f"{loop * 1e6:5.1f} µs of it on the event loop's thread  (n={n})"
                )
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 30)
    finally:
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--requests", type=int, default=20000, help="HIT requests per run")
    parser.add_argument("--profile", choices=("hit", "miss"), help="print a cProfile instead")
    parser.add_argument(
        "--served",
        action="store_true",
        help="wrap the app as `heliox serve` does (graceful shutdown, connection guard)",
    )
    parser.add_argument(
        "--stalls", type=float, metavar="SECONDS", help="sequential HITs: where the slow ones fall"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind instead of CPU time (repeatable)",
    )
    parser.add_argument(
        "--dumps", metavar="DIR", help="with --instructions: keep callgrind's files here"
    )
    parser.add_argument("--marks", help=argparse.SUPPRESS)  # set by --instructions
    parser.add_argument("--top", type=int, default=40, help="profile rows to print")
    parser.add_argument("--pg-admin-dsn", default=DEFAULT_PG)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()
    exit_on_signals()  # SIGTERM, SIGINT: the finally blocks stop the processes this run started
    if args.instructions:
        instructions(args)
        return
    backends = services.create(args.pg_admin_dsn, args.redis_url) if args.mode == "redis" else None
    try:
        asyncio.run(run(args, backends))
    finally:
        if backends is not None:
            backends.drop()


if __name__ == "__main__":
    main()
