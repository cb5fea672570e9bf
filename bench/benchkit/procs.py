"""Start processes pinned to a CPU, wait for them, and always stop them (Ctrl-C included).

Every process gets its own session, so stopping it means signalling its whole process group: the
gateway's granian worker and nginx's worker go with their parents. Ports are picked below 32768
(outside the kernel's ephemeral range) and checked free.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType


def free_port() -> int:
    for _ in range(500):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except ProcessExited:
            raise
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready within {timeout:.0f} s (last error: {last!r})")


class ProcessExited(RuntimeError):
    pass


_niceness = 0


def set_niceness(value: int) -> None:
    """Niceness for every measured process started from now on (0: leave it alone).

    On a machine others use too, a negative value (root only) keeps their jobs from taking the
    pinned CPU away mid-run; both nginx and Heliox get the same, so the comparison stays fair.
    """
    global _niceness
    _niceness = value


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c cpu` (children inherit the affinity and niceness)."""
    out = ["taskset", "-c", str(cpu), *cmd] if cpu is not None else list(cmd)
    return ["nice", "-n", str(_niceness), *out] if _niceness else out


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessExited(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        if self.popen.returncode is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        # The leader may be gone while a worker lingers: kill the group regardless.
        _signal_group(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Processes:
    """Everything this run started; `stop_all` is safe to call more than once."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as fh:
            popen = subprocess.Popen(
                list(cmd),
                env=dict(env if env is not None else os.environ),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.alive()]

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()


def children(pid: int) -> list[int]:
    """Direct child pids of `pid` (Linux /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found.extend(int(p) for p in text.split())
    return found


def exit_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit and SIGINT KeyboardInterrupt, so `finally` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    # Started in the background by a non-interactive shell, Python inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
