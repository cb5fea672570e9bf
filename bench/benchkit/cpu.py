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


class ForeignLoad:
    """Share of one CPU used by processes other than `pids` between `start()` and `stop()`."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self._start: Sample | None = None

    def _sample(self, pids: Iterable[int]) -> Sample | None:
        if self.cpu is None or not os.path.exists("/proc/stat"):
            return None
        busy, total = cpu_ticks(self.cpu)
        return Sample(busy, total, process_ticks(pids))

    def start(self, pids: Iterable[int]) -> None:
        self._start = self._sample(pids)

    def stop(self, pids: Iterable[int]) -> float | None:
        end = self._sample(pids)
        if self._start is None or end is None or end.total <= self._start.total:
            return None
        busy = end.busy - self._start.busy
        ours = end.ours - self._start.ours
        return max(0.0, (busy - ours) / (end.total - self._start.total))
