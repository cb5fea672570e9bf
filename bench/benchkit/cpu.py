"""How busy the server CPU was with work that is not ours, from /proc (Linux).

The measured processes are pinned to one CPU; anything else the kernel runs there (another user's
job, a database serving someone else) takes cycles from them and lowers their figures. Reported per
run so a noisy run can be told from a slow one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchkit.procs import children


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return sum(values) - idle, sum(values)
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def process_ticks(pids: Iterable[int]) -> int:
    """User + system ticks of these processes and all their descendants (threads included)."""
    total = 0
    seen: set[int] = set()
    stack = list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        stack.extend(children(pid))
    return total


@dataclass
class Sample:
    busy: int
    total: int
    ours: int
    path: int


@dataclass
class Usage:
    foreign: float | None  # share of the CPU used by processes that are not ours
    path_seconds: float | None  # CPU time of the processes serving the measured requests


class CpuMeter:
    """What happened on the server CPU between `start()` and `stop()`.

    `ours` are all the processes this run started; `path` those that serve the requests being
    measured (the server, and the upstream behind it). CPU time per request is independent of
    what else the machine does, unlike requests per second, so it is the steadier figure on a
    shared machine.
    """

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self._start: Sample | None = None
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _sample(self, ours: Iterable[int], path: Iterable[int]) -> Sample | None:
        if not os.path.exists("/proc/stat"):
            return None
        busy, total = cpu_ticks(self.cpu) if self.cpu is not None else (0, 0)
        return Sample(busy, total, process_ticks(ours), process_ticks(path))

    def start(self, ours: Iterable[int], path: Iterable[int]) -> None:
        self._start = self._sample(ours, path)

    def stop(self, ours: Iterable[int], path: Iterable[int]) -> Usage:
        end = self._sample(ours, path)
        first = self._start
        if first is None or end is None:
            return Usage(None, None)
        path_seconds = (end.path - first.path) / self._hz
        if self.cpu is None or end.total <= first.total:
            return Usage(None, path_seconds)
        busy = end.busy - first.busy
        mine = end.ours - first.ours
        return Usage(max(0.0, (busy - mine) / (end.total - first.total)), path_seconds)
