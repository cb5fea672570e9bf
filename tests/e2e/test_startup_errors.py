"""Starting `heliox serve` wrong: a busy port, production without storage, an unreachable
database or Redis, several bad variables. Each refusal names what to fix, at once, without a
traceback (unless DEBUG=true), and never prints a password.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    ACME,
    Gateway,
    Proc,
    Upstream,
    free_port,
    gateway_env,
    gateway_in,
    start_gateway,
    start_process,
    wait_until,
)


def serve_until_exit(
    workdir: Path, env: dict[str, str], args: list[str], timeout: float = 60
) -> tuple[int, str]:
    """Run `heliox serve ARGS` and wait for it to give up; (exit status, output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = start_process("serve", ["serve", *args], env, workdir)
    try:
        status = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        pytest.fail("heliox serve kept running:\n" + proc.output())
    return status, proc.output()


@pytest.fixture(scope="module")
def first(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    with gateway_in(workdir, "first", gateway_env(upstream)) as gw:
        yield gw


def _instance(url: str) -> str:
    # A new connection each time, so that the kernel may pick either listener.
    return str(httpx.get(url + "/health", timeout=10).json()["instance"])


# --- a busy port ------------------------------------------------------------------------------
def test_a_second_gateway_on_a_busy_port_refuses_to_start(
    tmp_path: Path, upstream: Upstream, first: Gateway
) -> None:
    before = _instance(first.url)
    status, output = serve_until_exit(tmp_path, gateway_env(upstream), ["--port", str(first.port)])
    assert status == 1, output
    assert f"--port {first.port}: 127.0.0.1:{first.port} is already in use" in output
    assert "--reuse-port" in output  # says how to share on purpose
    assert "Listening" not in output and "listening on" not in output
    assert not (tmp_path / "heliox.db").exists()  # refused before touching anything
    # Every request still reaches the first gateway.
    assert {_instance(first.url) for _ in range(20)} == {before}


def test_reuse_port_shares_the_port_on_purpose(
    tmp_path: Path, upstream: Upstream, first: Gateway
) -> None:
    proc: Proc = start_process(
        "second", ["serve", "--port", str(first.port), "--reuse-port"], gateway_env(upstream),
        tmp_path,
    )  # fmt: skip
    try:
        seen: set[str] = set()

        def both_answer() -> bool:
            assert proc.popen.poll() is None, proc.output()
            seen.add(_instance(first.url))
            return len(seen) == 2

        wait_until(both_answer, 60, 0.01)
    finally:
        assert proc.stop() == 0, proc.output()


# --- production without storage --------------------------------------------------------------
def test_production_without_database_or_redis_refuses_to_start(
    tmp_path: Path, upstream: Upstream
) -> None:
    env = gateway_env(upstream, extra={"DEPLOYMENT_MODE": "production"})
    status, output = serve_until_exit(tmp_path, env, ["--port", str(free_port())])
    assert status == 2, output
    assert (
        "DATABASE_URL, REDIS_URL: DEPLOYMENT_MODE=production needs PostgreSQL and Redis" in output
    )
    assert "Traceback" not in output
    assert not (tmp_path / "heliox.db").exists()  # no SQLite file was created


# --- unreachable database and Redis ------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("db.invalid:5432", "the host name does not resolve"),
        ("127.0.0.1:{closed}", "connection refused"),
    ],
)
def test_an_unreachable_database_is_named_with_its_host_and_port(
    tmp_path: Path, upstream: Upstream, host: str, reason: str
) -> None:
    target = host.format(closed=free_port())
    url = f"postgresql://heliox:s3cret-pw@{target}/heliox"
    env = gateway_env(upstream, database_url=url, extra={"DATABASE_TIMEOUT": "3"})
    status, output = serve_until_exit(tmp_path, env, ["--port", str(free_port())])
    assert status == 1, output
    assert f"DATABASE_URL: cannot use the database at {target}: {reason}" in output
    assert "s3cret-pw" not in output
    assert "Traceback" not in output and "sqlalche.me" not in output
    # DEBUG=true adds the traceback for whoever debugs the start-up.
    status, output = serve_until_exit(
        tmp_path / "debug", {**env, "DEBUG": "true"}, ["--port", str(free_port())]
    )
    assert status == 1 and "Traceback" in output and "s3cret-pw" not in output


def test_an_unreachable_redis_is_one_named_line_not_a_traceback(
    tmp_path: Path, upstream: Upstream, pg_database: str
) -> None:
    closed = free_port()
    env = gateway_env(
        upstream, database_url=pg_database, redis_url=f"redis://:r3dis-pw@127.0.0.1:{closed}/0"
    )
    gw = start_gateway(tmp_path, env)
    try:
        r = httpx.get(gw.url + "/g/demo/items", headers={"X-API-Key": ACME}, timeout=10)
        assert r.status_code == 200  # fail open
        # The periodic job reports its Redis failure at start: one line, no traceback.
        wait_until(lambda: "job log-retention failed" in gw.proc.output(), 30)
        output = gw.proc.output()
        assert f"REDIS_URL: Redis at 127.0.0.1:{closed} does not answer" in output
        assert "Traceback" not in output and "r3dis-pw" not in output
    finally:
        assert gw.proc.stop() == 0


# --- every bad variable at once ---------------------------------------------------------------
def test_every_bad_variable_is_named_in_one_go(tmp_path: Path, upstream: Upstream) -> None:
    env = gateway_env(
        upstream,
        database_url="mysql://app:db-pw@db:3306/heliox",
        redis_url="redis://cache:6379/not-a-number",
        extra={"ADMIN_API_KEY": "short", "SECRET_KEY": "", "SHUTDOWN_TIMEOUT": "-1"},
    )
    status, output = serve_until_exit(tmp_path, env, ["--port", str(free_port())])
    assert status == 2, output
    for name in (
        "DATABASE_URL:",
        "REDIS_URL:",
        "SHUTDOWN_TIMEOUT:",
        "ADMIN_API_KEY:",
        "SECRET_KEY:",
    ):
        assert f"\n  {name}" in output, name
    assert "db-pw" not in output and "Traceback" not in output
