"""Drive a URL with wrk and read its `--latency` report."""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from benchkit.procs import pinned

# A run in which more than this share of answers were errors measured the error path, not the
# server: its figures are reported but flagged, and never count towards a target.
MAX_ERROR_SHARE = 0.01

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50: float  # seconds
    p99: float
    non_2xx: int  # wrk counts 3xx as success too
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def error_share(self) -> float:
        total = self.requests + self.socket_errors
        return self.errors / total if total else 1.0

    @property
    def flagged(self) -> bool:
        return self.requests == 0 or self.error_share > MAX_ERROR_SHARE

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors, "flagged": self.flagged}


def combine(results: list[WrkResult]) -> WrkResult:
    """Several runs of one case as one: the median rate and percentiles, the summed counts."""
    if len(results) == 1:
        return results[0]
    return WrkResult(
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        rps=statistics.median(r.rps for r in results),
        p50=statistics.median(r.p50 for r in results),
        p99=statistics.median(r.p99 for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )


class WrkOutputError(ValueError):
    pass


def _seconds(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse(text: str) -> WrkResult:
    """Read wrk 4's report (run with `--latency`)."""
    m = re.search(r"(\d+) requests in " + _TIME, text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+" + _TIME, text, re.M)
    p99 = re.search(r"^\s+99%\s+" + _TIME, text, re.M)
    if not (m and rps and p50 and p99):
        raise WrkOutputError("unexpected wrk output (was --latency given?):\n" + text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(m.group(1)),
        seconds=_seconds(m.group(2), m.group(3)),
        rps=float(rps.group(1)),
        p50=_seconds(p50.group(1), p50.group(2)),
        p99=_seconds(p99.group(1), p99.group(2)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def command(
    url: str,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str],
    threads: int = 1,
    cpu: int | None = None,
) -> list[str]:
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    return pinned(cmd, cpu)


def run(
    url: str,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str],
    threads: int = 1,
    cpu: int | None = None,
) -> WrkResult:
    cmd = command(
        url,
        connections=connections,
        duration=duration,
        headers=headers,
        threads=threads,
        cpu=cpu,
    )
    # A hung wrk must not hang the run: it gets its duration plus a generous margin.
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise WrkOutputError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)
