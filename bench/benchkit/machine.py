"""What the benchmark needs on the machine, and what the machine is (for the report)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import nginx as nginx_mod

INSTALL_HINT = (
    "install them with: apt-get install -y nginx-light wrk   "
    "(Debian/Ubuntu; the `nginx` package works too; prefix with sudo when not root)"
)
# What to apt-get for each missing tool.
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "taskset": "util-linux"}


def install_hint(missing: list[str]) -> str:
    packages = [PACKAGES[m] for m in missing if m in PACKAGES]
    if not packages:
        return INSTALL_HINT
    return (
        f"install with: apt-get install -y {' '.join(packages)}   (Debian/Ubuntu; for nginx the "
        "`nginx` package works too; prefix with sudo when not root)"
    )


@dataclass
class Tools:
    nginx: str
    wrk: str
    missing: list[str] = field(default_factory=list)


def find_tools() -> Tools:
    missing: list[str] = []
    ng = nginx_mod.binary()
    wrk = shutil.which("wrk")
    if ng is None:
        missing.append("nginx")
    if wrk is None:
        missing.append("wrk")
    if shutil.which("taskset") is None:
        missing.append("taskset")
    return Tools(ng or "", wrk or "", missing)


def heliox_importable() -> str | None:
    """None when `python -m heliox` works with this interpreter, else what to do."""
    done = subprocess.run(
        [sys.executable, "-c", "import heliox, granian, aiohttp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:
        return None
    return (
        f"{sys.executable} cannot import heliox ({done.stderr.strip().splitlines()[-1]}); "
        "run scripts/setup and use .venv/bin/python bench/run.py"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def source_revision() -> str:
    """The commit the measured code is at, and whether the work tree had changes on top."""
    root = Path(__file__).resolve().parents[2]
    head = _version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return head
    changed = len(done.stdout.splitlines())
    return f"{head} + {changed} changed files" if changed else head


def describe(tools: Tools) -> dict[str, object]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "heliox": pkg("heliox"),
        "revision": source_revision(),
        "granian": pkg("granian"),
        "nginx": nginx_mod.version(tools.nginx) if tools.nginx else "missing",
        "wrk": _version([tools.wrk, "-v"]).split(" [")[0] if tools.wrk else "missing",
    }
