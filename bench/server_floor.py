"""The floor under the gateway: granian answering a HIT-shaped response with no gateway work.

    .venv/bin/python bench/server_floor.py              # 10 s per run
    .venv/bin/python bench/server_floor.py --quick

Runs nginx proxy_cache (HIT) and bare apps on granian (bench/benchkit/floor_apps.py) under several
interface and runtime settings, pinned and driven as in bench/run.py, and prints each as a ratio
to nginx. Whatever ratio the bare app reaches is the most the full pipeline can reach on the same
settings; the gap between the two is the gateway's own cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, machine, nginx, wrk
from benchkit import http as bhttp
from benchkit.cpu import CpuMeter
from benchkit.procs import (
    Proc,
    Processes,
    exit_on_signals,
    free_port,
    pinned,
    set_niceness,
    wait_until,
)
from benchkit.report import fmt_share, fmt_time, text_table

BENCH = Path(__file__).resolve().parent

# (label, granian options, app)
VARIANTS: list[tuple[str, list[str], str]] = [
    ("ASGI (as heliox serve runs it)", ["--interface", "asgi"], "asgi_app"),
    ("ASGI --task-impl rust", ["--interface", "asgi", "--task-impl", "rust"], "asgi_app"),
    ("ASGI --runtime-mode st", ["--interface", "asgi", "--runtime-mode", "st"], "asgi_app"),
    ("RSGI", ["--interface", "rsgi"], "rsgi_app"),
    ("RSGI --runtime-mode st", ["--interface", "rsgi", "--runtime-mode", "st"], "rsgi_app"),
]


def say(message: str) -> None:
    print(f"floor: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="granian's floor vs nginx proxy_cache")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="3 s runs")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--nice", type=int, default=0, help="niceness of the measured processes")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
    exit_on_signals()
    set_niceness(args.nice)
    tools = machine.find_tools()
    if tools.missing:
        say(f"missing: {', '.join(tools.missing)}; {machine.install_hint(tools.missing)}")
        return 2
    pin = (os.cpu_count() or 1) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="heliox-floor-"))
    procs = Processes(workdir)
    meter = CpuMeter(server_cpu)
    rows: list[list[str]] = []
    try:
        up = gateway.start_upstream(procs, server_cpu)
        ng = nginx.start(procs, tools.nginx, up.port, server_cpu)

        def drive(url: str, duration: float) -> wrk.WrkResult:
            return wrk.run(
                url, connections=args.connections, duration=duration, headers={}, cpu=client_cpu
            )

        def measure(label: str, url: str, pids: list[int]) -> tuple[float, float | None]:
            drive(url, 2)
            meter.start(procs.pids(), pids)
            result = drive(url, args.duration)
            usage = meter.stop(procs.pids(), pids)
            cpu = usage.path_seconds / result.requests if usage.path_seconds else None
            say(f"{label:32} {result.rps:>9,.0f} req/s  CPU/req {fmt_time(cpu)}")
            rows.append(
                [label, f"{result.rps:,.0f}", fmt_time(result.p50), fmt_time(result.p99),
                 str(result.errors), fmt_share(usage.foreign), fmt_time(cpu)]
            )  # fmt: skip
            return result.rps, cpu

        base_rps, base_cpu = measure(
            "nginx proxy_cache HIT", ng.cache_url + gateway.ITEMS, [ng.proc.pid]
        )
        rows[0] += ["1.00", "1.00"]
        for label, options, app in VARIANTS:
            port = free_port()
            cmd = [sys.executable, "-m", "granian", *options, "--loop", gateway.FLOOR_LOOP]
            cmd += ["--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--workers", "1", "--log-level", "warning"]
            cmd.append(f"benchkit.floor_apps:{app}")
            env = {**os.environ, "PYTHONPATH": str(BENCH)}
            proc = procs.start(f"granian-{port}", pinned(cmd, server_cpu), env)

            def ready(port: int = port, proc: Proc = proc) -> bool:
                proc.check_alive()
                return bhttp.get(f"http://127.0.0.1:{port}/", timeout=1).status == 200

            wait_until(ready, f"granian {label}", timeout=30)
            rps, cpu = measure(f"granian {label}", f"http://127.0.0.1:{port}/", [proc.pid])
            rows[-1].append(f"{rps / base_rps:.2f}")
            rows[-1].append(f"{base_cpu / cpu:.2f}" if base_cpu and cpu else "")
            procs.stop(proc)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    head = [f"server (c={args.connections})", "req/s", "p50", "p99", "errors", "others on CPU",
            "CPU/req", "req/s vs nginx", "req/CPU-s vs nginx"]  # fmt: skip
    print(text_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
