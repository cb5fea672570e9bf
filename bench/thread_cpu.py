"""CPU per request of each thread of the gateway's worker under wrk, and against other code by
turns; or, with `--instructions`, the instructions each thread executes per request (under
valgrind's callgrind), which do not move with the machine's speed.

    .venv/bin/python bench/thread_cpu.py --mode redis                   # HIT, c=50, this code
    .venv/bin/python bench/thread_cpu.py --mode redis --against /tmp/base/src --rounds 3
    .venv/bin/python bench/thread_cpu.py --mode embedded --connections 1
    .venv/bin/python bench/thread_cpu.py --instructions --floor --connections 10

The gateway runs as `bench/run.py` runs it (one granian worker and the example upstream pinned to
CPU 0, wrk on CPU 1, the benchmark's key and cached route); a warm-up run, then a measured one,
with each thread's CPU time read from /proc before and after. `--against SRC` puts another
checkout's `src` first on the gateway's PYTHONPATH (`git worktree add /tmp/base <rev>`, then
`--against /tmp/base/src`) and measures it and this code alternately, `--rounds` times each: on a
machine whose speed moves from minute to minute (a virtual machine's neighbours), two versions
measured by turns can be compared where two separate runs cannot. The event loop's thread is the
first one listed (the worker's main thread); granian's own threads are named `tokio-rt-worker`.

`--instructions` runs the server under callgrind, counting only during the measured wrk run
(`callgrind_control`), at a fiftieth of its speed; `--floor` measures the bare server (granian
answering a constant, as `bench/run.py`'s floor) the same way first, so that what the gateway
adds to each of the server's threads can be read off. In process, `bench/pipeline_cost.py
--instructions` counts the pipeline alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, services, wrk
from benchkit.procs import Processes, children, exit_on_signals
from benchkit.report import EMBEDDED, REDIS
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS

TICKS = os.sysconf("SC_CLK_TCK")
THIS = "this code"
FLOOR = "floor"


def say(message: str) -> None:
    print(f"thread_cpu: {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    label: str
    rps: float
    p50: float
    p99: float
    # (thread name, µs of CPU or, counted, thousands of instructions per request), main first
    threads: list[tuple[str, float]]
    unit: str = "µs"

    @property
    def total(self) -> float:
        return sum(us for _, us in self.threads)

    @property
    def loop(self) -> float:
        return self.threads[0][1] if self.threads else 0.0


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """utime + stime of each thread of `pid`, in clock ticks, with its name."""
    out: dict[int, tuple[str, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, int(fields[11]) + int(fields[12]))
    return out


def callgrind(workdir: Path) -> list[str]:
    """The command a server runs under for `--instructions`: counting off until switched on."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={workdir}/callgrind.%p",
    ]


def counted(
    workdir: Path, pid: int, run: Callable[[], wrk.WrkResult]
) -> tuple[wrk.WrkResult, list[tuple[str, float]]]:
    """`run` with callgrind counting in `pid`; thousands of instructions per request of each of
    its threads. Names are matched by order of creation (callgrind's numbers, the threads' ids):
    a thread that ended before the count would shift them, so they are a guide, not a key."""
    control = "callgrind_control"
    subprocess.run([control, "--instr=on", str(pid)], check=True, capture_output=True)
    result = run()
    # Under valgrind a thread that names no one of its own carries the tool's name.
    names = [
        "python" if name.startswith("callgrind") else name
        for _, (name, _) in sorted(thread_ticks(pid).items())
    ]
    subprocess.run([control, "--dump=measured", str(pid)], check=True, capture_output=True)
    subprocess.run([control, "--instr=off", str(pid)], check=True, capture_output=True)
    served = max(1, result.requests)
    threads = []
    for path in sorted(workdir.glob(f"callgrind.{pid}.1-*")):
        n = int(path.name.rsplit("-", 1)[1])
        m = re.search(r"^summary: (\d+)", path.read_text(errors="replace"), re.M)
        if m and int(m.group(1)):
            name = names[n - 1] if n <= len(names) else f"thread {n}"
            threads.append((name, int(m.group(1)) / served / 1000))
    return result, threads


def measure(args: argparse.Namespace, label: str, src: str | None, workdir: Path) -> Measured:
    workdir.mkdir()
    procs = Processes(workdir)
    backends: services.ProductionBackends | None = None
    wrap = callgrind(workdir) if args.instructions else []
    try:
        headers: dict[str, str] = {}
        if label == FLOOR:
            fl = gateway.start_floor(procs, 0, wrap)
            url, server = fl.url, fl.proc.pid
        else:
            up = gateway.start_upstream(procs, 0)
            env: dict[str, str] = {}
            if args.mode == REDIS:
                backends = services.create(args.pg_admin_dsn, args.redis_url)
                env = backends.env()
            if src is not None:
                env["PYTHONPATH"] = src
            gw = gateway.start_gateway(procs, args.mode, up, env, 0, wrap)
            gateway.prepare(gw, up)
            route = gateway.CACHED_ROUTE if args.case == "hit" else gateway.PASS_ROUTE
            url = f"{gw.url}/g/{route}{gateway.ITEMS}"
            headers = {"X-API-Key": gw.api_key}
            server = gw.proc.pid
        wrk.run(url, connections=args.connections, duration=2, headers=headers, cpu=1)
        workers = children(server)
        if len(workers) != 1:
            raise RuntimeError(f"expected one granian worker under {server}, found {workers}")
        pid = workers[0]
        if args.instructions:
            result, counts = counted(
                workdir,
                pid,
                lambda: wrk.run(
                    url,
                    connections=args.connections,
                    duration=args.duration,
                    headers=headers,
                    cpu=1,
                ),
            )
            return Measured(label, result.rps, result.p50, result.p99, counts, "k instr")
        before = thread_ticks(pid)
        result = wrk.run(
            url, connections=args.connections, duration=args.duration, headers=headers, cpu=1
        )
        after = thread_ticks(pid)
        if result.errors:
            say(f"{label}: {result.errors} errors in {result.requests} requests")
        served = max(1, result.requests)
        threads = []
        for tid in sorted(after):  # the main thread (the event loop) has the lowest id
            name, ticks = after[tid]
            spent = ticks - before.get(tid, (name, 0))[1]
            if spent:
                threads.append((name, spent / TICKS / served * 1e6))
        return Measured(label, result.rps, result.p50, result.p99, threads)
    finally:
        procs.stop_all()
        services.drop(backends, say)


def show(m: Measured) -> None:
    what = "CPU" if m.unit == "µs" else "instructions"
    print(
        f"{m.label}: {m.rps:,.0f} req/s, p50 {m.p50 * 1e6:,.0f} µs, p99 {m.p99 * 1e6:,.0f} µs; "
        f"{what} per request {m.total:.1f} {m.unit}, of which the event loop {m.loop:.1f} {m.unit}"
    )
    for name, value in m.threads:
        print(f"    {name:<18} {value:6.1f} {m.unit}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="CPU per request of each thread of the gateway's worker, by turns."
    )
    p.add_argument("--mode", choices=(EMBEDDED, REDIS), default=EMBEDDED)
    p.add_argument("--case", choices=("hit", "miss"), default="hit")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=6.0, help="seconds measured (6)")
    p.add_argument("--against", metavar="SRC", help="another checkout's src directory")
    p.add_argument("--rounds", type=int, default=1, help="measurements of each version (1)")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request of each thread, under valgrind (a fiftieth of the speed)",
    )
    p.add_argument("--floor", action="store_true", help="the bare server too, measured first")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = p.parse_args(argv)
    exit_on_signals()
    if (os.cpu_count() or 1) < 2:
        say("needs two CPUs: the gateway on CPU 0, wrk on CPU 1")
        return 2
    if args.mode == REDIS:
        why = services.unavailable(args.pg_admin_dsn, args.redis_url)
        if why:
            say(f"Redis mode unavailable: {why}")
            return 2
    if args.instructions and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        say("--instructions needs valgrind (apt-get install valgrind)")
        return 2
    if args.against is not None and not (Path(args.against) / "heliox").is_dir():
        say(f"--against {args.against}: no heliox package there (give a checkout's src)")
        return 2
    versions: list[tuple[str, str | None]] = [(THIS, None)]
    if args.against is not None:
        versions.insert(0, (args.against, args.against))
    if args.floor:
        versions.insert(0, (FLOOR, None))
    results: dict[str, list[Measured]] = {label: [] for label, _ in versions}
    workdir = Path(tempfile.mkdtemp(prefix="heliox-thread-cpu-"))
    try:
        for n in range(args.rounds):
            for i, (label, src) in enumerate(versions):
                what = "bare server" if label == FLOOR else f"{args.mode} {args.case}"
                case = f"{what} c={args.connections}"
                say(f"round {n + 1}/{args.rounds}: {label}, {case}")
                m = measure(args, label, src, workdir / f"{n}-{i}")
                show(m)
                results[label].append(m)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.rounds > 1 or len(versions) > 1:
        print("medians:")
        for label, runs in results.items():
            loop = statistics.median(m.loop for m in runs)
            total = statistics.median(m.total for m in runs)
            rps = statistics.median(m.rps for m in runs)
            unit = runs[0].unit
            print(
                f"  {label}: {rps:,.0f} req/s, per request {total:.1f} {unit}, "
                f"event loop {loop:.1f} {unit} ({len(runs)} runs)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
