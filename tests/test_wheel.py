"""The built wheel, installed into a fresh virtualenv, runs the demo from an empty folder.

Opt-in (it builds wheels for every dependency and creates a virtualenv, about a minute):
    HELIOX_TEST_WHEEL=1 .venv/bin/pytest tests/test_wheel.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ACME, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    os.environ.get("HELIOX_TEST_WHEEL", "") in ("", "0", "false"),
    reason="builds and installs the wheel (about a minute): set HELIOX_TEST_WHEEL=1",
)


def sh(*args: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .`: Heliox and every dependency, as wheels."""
    folder = tmp_path_factory.mktemp("wheels")
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", ".", "-w", folder)
    return folder


def test_the_wheel_holds_every_file_of_the_package(wheels: Path) -> None:
    (wheel,) = wheels.glob("heliox-*.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("heliox/")}
    source = {
        str(p.relative_to(ROOT / "src"))
        for p in (ROOT / "src" / "heliox").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    # Migrations, Lua scripts, templates and static files included.
    assert sorted(source - packaged) == []


def test_installed_demo_serves_the_verify_setup_commands(tmp_path: Path, wheels: Path) -> None:
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    sh(venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links", wheels, "heliox")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sh(venv / "bin" / "heliox", "version", cwd=empty).startswith("heliox ")

    port, upstream_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "ADMIN_", "SECRET_", "HELIOX_", "PYTHON"))
    }
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [venv / "bin" / "heliox", "demo", "--port", str(port), "--upstream-port",
         str(upstream_port)],
        cwd=empty, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()
            return httpx.get(base + "/health", timeout=2).status_code == 200

        wait_until(up, 60)
        # The README's quick-start checks.
        assert httpx.get(base + "/health", timeout=10).json()["status"] == "ok"
        items = httpx.get(base + "/g/demo/items", headers={"X-API-Key": ACME}, timeout=10)
        assert items.status_code == 200
        assert items.json()
        # Templates and static files came with the wheel.
        assert httpx.get(base + "/ui/login", timeout=10).status_code == 200
        assert httpx.get(base + "/ui/static/app.css", timeout=10).status_code == 200
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0, (tmp_path / "demo.log").read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        log.close()
    assert (empty / "heliox.db").is_file()  # the demo kept its data in the folder it ran in
