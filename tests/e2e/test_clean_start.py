"""Production mode starts quietly: `heliox serve` and `heliox keys` on PostgreSQL + Redis print
nothing on stderr but their own progress lines and, at LOG_LEVEL=INFO, informational log records
— no library warning (a redis-py release that warns about how its client is built, say) and no
WARNING or ERROR record reaches an operator's terminal or log collector.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ACME, free_port, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Everything `heliox` itself writes to stderr is a progress line with this prefix, or a log
# record in the text format (structured_log.TEXT_FORMAT); only INFO and DEBUG records are quiet.
OWN_PREFIX = "heliox: "
QUIET_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|DEBUG) \S+: ")


def run_heliox(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "heliox", *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def foreign_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if not line.startswith(OWN_PREFIX) and not QUIET_RECORD.match(line)
    ]


def test_foreign_lines_are_everything_but_progress() -> None:
    stderr = (
        "heliox: migrating database …\n"
        "/venv/lib/redis/asyncio/connection.py:3126: UserWarning: A synchronous Retry was passed\n"
        "  connection_kwargs['retry'] = _to_async_retry(retry)\n"
        "2026-12-07 02:04:52,429 INFO _granian: Starting granian (main PID: 1106)\n"
        "2026-12-07 02:04:52,430 WARNING heliox.gateway: request 1 answered 502\n"
    )
    assert len(foreign_lines(stderr)) == 3


def test_production_serve_and_keys_print_no_warning(
    workdir: Path, production_env: dict[str, str]
) -> None:
    env = {k: v for k, v in production_env.items() if not k.startswith("PYTHONWARNINGS")}
    env["LOG_LEVEL"] = "INFO"  # the default an operator runs with
    folder = workdir / "clean-start"
    folder.mkdir()
    port = free_port()
    serve = run_heliox(["serve", "--port", str(port)], env, folder)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert serve.poll() is None, "heliox serve exited"
            status: str = httpx.get(url + "/health", timeout=1).json()["status"]
            return status == "ok"

        wait_until(healthy, 60)
        # Use Redis and PostgreSQL the way traffic and operators do: admission, the cache, admin.
        for _ in range(3):
            answer = httpx.get(url + "/g/demo/items", headers={"X-API-Key": ACME}, timeout=10)
            assert answer.status_code == 200
        admin = {"X-Admin-Key": env["ADMIN_API_KEY"]}
        assert httpx.get(url + "/admin/keys", headers=admin, timeout=10).status_code == 200
        keys = subprocess.run(
            [sys.executable, "-m", "heliox", "keys", "list"],
            env=env, cwd=folder, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert keys.returncode == 0, keys.stderr
        assert "acme" in keys.stdout.lower()
        assert foreign_lines(keys.stderr) == []
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        _, serve_stderr = serve.communicate(timeout=30)
    assert serve.returncode == 0
    assert foreign_lines(serve_stderr) == [], serve_stderr
