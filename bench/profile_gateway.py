"""Profile the gateway's worker with py-spy while wrk drives one case, and say where the time goes.

    .venv/bin/pip install py-spy                            # once; a profiler, not a dependency
    .venv/bin/python bench/profile_gateway.py               # HIT case, embedded then Redis mode
    .venv/bin/python bench/profile_gateway.py --case miss --modes embedded --duration 20

Same set-up as bench/run.py (upstream and gateway pinned to CPU 0, wrk and py-spy on CPU 1, the
benchmark's key with limits far above the load). Writes py-spy's collapsed stacks (`*.raw.txt`,
feed them to flamegraph.pl or speedscope) and a summary (`*.summary.txt`) per mode into --out-dir,
and prints the summaries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, machine, services, stacks, wrk
from benchkit.procs import Processes, exit_on_signals, pinned, set_niceness, wait_until
from benchkit.report import EMBEDDED, REDIS
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS


def say(message: str) -> None:
    print(f"profile: {message}", file=sys.stderr, flush=True)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_mode(
    args: argparse.Namespace, mode: str, spy: str, out_dir: Path, workdir: Path
) -> str:
    procs = Processes(workdir)
    backends: services.ProductionBackends | None = None
    ncpu = os.cpu_count() or 1
    server_cpu, client_cpu = (0, 1) if ncpu >= 2 else (None, None)
    try:
        up = gateway.start_upstream(procs, server_cpu)
        env: dict[str, str] = {}
        if mode == REDIS:
            backends = services.create(args.pg_admin_dsn, args.redis_url)
            env = backends.env()
        gw = gateway.start_gateway(procs, mode, up, env, server_cpu)
        gateway.prepare(gw, up)
        route = gateway.CACHED_ROUTE if args.case == "hit" else gateway.PASS_ROUTE
        url = f"{gw.url}/g/{route}{gateway.ITEMS}"
        headers = {"X-API-Key": gw.api_key}
        wrk.run(url, connections=args.connections, duration=2, headers=headers, cpu=client_cpu)
        workers = gw.worker_pids()
        if len(workers) != 1:
            raise RuntimeError(f"expected one granian worker under {gw.proc.pid}, found {workers}")
        load = procs.start(
            f"wrk-{mode}",
            wrk.command(
                url,
                connections=args.connections,
                duration=args.duration + 4,
                headers=headers,
                cpu=client_cpu,
            ),
        )
        time.sleep(1.0)  # let wrk reach its steady state before sampling starts
        raw = out_dir / f"{mode}-{args.case}.raw.txt"
        cmd = [spy, "record", "-p", str(workers[0]), "-d", str(round(args.duration))]
        cmd += ["-r", str(args.rate), "--threads", "-f", "raw", "-o", str(raw)]
        cmd += ["--native"] if args.native else ["--nonblocking"]
        done = subprocess.run(
            pinned(cmd, client_cpu), capture_output=True, text=True, timeout=args.duration + 60
        )
        if done.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr or done.stdout}")
        wait_until(lambda: not load.alive(), "wrk", timeout=args.duration + 30, interval=0.2)
        result = wrk.parse(load.log_path.read_text())
        summary = stacks.summarise(stacks.parse(raw.read_text().splitlines()))
        text = (
            f"== {mode} mode, {args.case.upper()} case, c={args.connections}, "
            f"{args.duration:.0f} s at {args.rate} Hz ==\n"
            f"wrk while profiled: {result.rps:,.0f} req/s, p50 {result.p50 * 1e3:.2f} ms, "
            f"p99 {result.p99 * 1e3:.2f} ms, errors {result.errors}"
            f"{'  FLAGGED' if result.flagged else ''}\n"
            f"py-spy: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else ''}\n"
            + stacks.as_text(summary, top=args.top)
        )
        (out_dir / f"{mode}-{args.case}.summary.txt").write_text(text + "\n")
        return text
    finally:
        procs.stop_all()
        services.drop(backends, say)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Profile the gateway under wrk load with py-spy.")
    p.add_argument("--modes", default="embedded,redis")
    p.add_argument("--case", choices=("hit", "miss"), default="hit")
    p.add_argument("--duration", type=float, default=15.0, help="seconds sampled (15)")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rate", type=int, default=250, help="samples per second (250)")
    p.add_argument(
        "--native", action="store_true", help="include C/Rust frames (pauses the worker)"
    )
    p.add_argument("--top", type=int, default=25, help="rows per section (25)")
    p.add_argument("--out-dir", default=os.path.join(tempfile.gettempdir(), "heliox-profile"))
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--nice", type=int, default=0, help="niceness of the measured processes")
    args = p.parse_args(argv)
    exit_on_signals()
    set_niceness(args.nice)
    spy = py_spy()
    tools = machine.find_tools()
    missing = list(tools.missing)
    if spy is None:
        missing.append("py-spy (.venv/bin/pip install py-spy)")
    if missing:
        hint = f"; {machine.install_hint(tools.missing)}" if tools.missing else ""
        say(f"missing: {', '.join(missing)}{hint}")
        return 2
    assert spy is not None
    modes = [m for m in args.modes.split(",") if m]
    if REDIS in modes:
        why = services.unavailable(args.pg_admin_dsn, args.redis_url)
        if why:
            say(f"Redis mode skipped: {why}")
            modes.remove(REDIS)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="heliox-profile-"))
    try:
        for mode in modes:
            if mode not in (EMBEDDED, REDIS):
                p.error(f"unknown mode {mode!r}")
            say(f"profiling {mode} mode ({args.case})")
            mode_dir = workdir / mode
            mode_dir.mkdir()
            print(profile_mode(args, mode, spy, out_dir, mode_dir))
            print()
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"collapsed stacks and summaries in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
