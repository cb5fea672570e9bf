"""Run the real `heliox` processes on loopback for end-to-end tests.

Ports are picked below 32768 (outside the ephemeral range) and checked free; readiness is polled
with a deadline, never slept for.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_KEY = "test-admin-key-0123456789abcdef"
SECRET = "test-secret-key-0123456789abcdef"
ACME = "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"
ACME_STAGE = "hx_stage_acme_3f5g7h9j2k4l6m8n0p"
TECHFLOW = "hx_prod_techflow_9a1b3c5d7e2f4g6h8i"
CLOUDBRIDGE = "hx_prod_cloudbridge_5m7n9p1q3r5s7t9u2v"
SEEDED_KEYS = (ACME, ACME_STAGE, TECHFLOW, CLOUDBRIDGE)


# Where tests pick ports: below the ephemeral range (from 32768), where the kernel never hands
# one out by itself. scripts/test runs the suite in several processes (pytest-xdist); each picks
# from a slice of its own, so that two never pick the same port in the moment before its server
# binds it.
PORTS = (20000, 32000)


def port_range() -> tuple[int, int]:
    """The ports (inclusive) this test process picks from."""
    low, high = PORTS
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if count <= 1 or not worker.startswith("gw"):
        return low, high
    width = (high - low + 1) // count
    low += int(worker[2:]) * width
    return low, low + width - 1


def free_port() -> int:
    low, high = port_range()
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last error: {last!r})")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode


def start_process(
    name: str,
    args: list[str],
    env: Mapping[str, str],
    cwd: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> Proc:
    """`preexec_fn` runs in the child before heliox starts (say, to lower its `ulimit -n`)."""
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-m", "heliox", *args],
            env=dict(env),
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return Proc(name, popen, log_path)


@dataclass
class Upstream:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.url + "/stats", timeout=5).json()
        return stats

    def reset(self) -> None:
        httpx.post(self.url + "/stats/reset", timeout=5)


@dataclass
class Gateway:
    proc: Proc
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kw)  # type: ignore[arg-type]

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=10, headers={"X-Admin-Key": self.env["ADMIN_API_KEY"]}
        )


def start_upstream(workdir: Path) -> Upstream:
    port = free_port()
    env = {**os.environ}
    proc = start_process(f"upstream-{port}", ["upstream", "--port", str(port)], env, workdir)
    up = Upstream(proc, port)
    try:
        wait_until(lambda: httpx.get(up.url + "/health", timeout=1).status_code == 200, 20)
    except TimeoutError:
        proc.stop()
        raise RuntimeError("example upstream did not start:\n" + proc.output()) from None
    return up


def gateway_env(
    upstream: Upstream | None,
    *,
    database_url: str = "",
    redis_url: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DEPLOYMENT_MODE", "AUTO_SEED")
    }
    env.update(
        ADMIN_API_KEY=ADMIN_KEY,
        SECRET_KEY=SECRET,
        AUTO_SEED="true",
        LOG_LEVEL="WARNING",
        CONFIG_POLL_INTERVAL="0.5",
    )
    if upstream is not None:
        env["EXAMPLE_UPSTREAM_URL"] = upstream.url
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    if extra:
        env.update(extra)
    return env


def start_gateway(
    workdir: Path,
    env: Mapping[str, str],
    args: list[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Gateway:
    port = free_port()
    proc = start_process(
        f"gateway-{port}", ["serve", "--port", str(port), *(args or [])], env, workdir, preexec_fn
    )
    gw = Gateway(proc, port, dict(env))
    try:
        wait_until(lambda: _ready(gw), 60)
    except TimeoutError:
        proc.stop()
        raise RuntimeError("gateway did not start:\n" + proc.output()) from None
    return gw


@contextmanager
def gateway_in(
    workdir: Path,
    name: str,
    env: Mapping[str, str],
    args: list[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Gateway]:
    """A gateway of its own in `workdir/name` for a fixture's lifetime, stopped afterwards."""
    folder = workdir / name
    folder.mkdir()
    gw = start_gateway(folder, env, args, preexec_fn)
    try:
        yield gw
    finally:
        gw.proc.stop()


def gateway_in_both_modes(name: str, extra: Mapping[str, str]) -> Any:
    """A module fixture `name`: a gateway with the settings `extra`, once embedded and once on
    PostgreSQL + Redis (the module's `production_env`); each test using it runs in both modes.
    One mode's gateway runs at a time. Bind it to `name` in the test module:
    `refusing = gateway_in_both_modes("refusing", {...})`."""

    @pytest.fixture(scope="module", params=["embedded", "production"], name=name)
    def fixture(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Gateway]:
        if request.param == "embedded":
            env = gateway_env(request.getfixturevalue("upstream"), extra=extra)
        else:
            env = {**request.getfixturevalue("production_env"), **extra}
        with gateway_in(workdir, f"{name}-{request.param}", env) as gw:
            yield gw

    return fixture


def _ready(gw: Gateway) -> bool:
    if gw.proc.popen.poll() is not None:
        raise RuntimeError("gateway exited:\n" + gw.proc.output())
    return httpx.get(gw.url + "/health", timeout=1).status_code == 200


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()
