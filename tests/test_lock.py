"""The lock (requirements/*.txt) agrees with pyproject.toml, and scripts/check_lock.py catches a
venv that drifted from it."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEV, RUNTIME = ROOT / "requirements" / "dev.txt", ROOT / "requirements" / "runtime.txt"


def load_check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lock = load_check_lock()


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(n) for n in names]


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME, ()), (DEV, ("dev", "bench"))], ids=["runtime", "dev"]
)
def test_every_declared_dependency_is_locked_inside_its_range(
    lock: Path, extras: tuple[str, ...]
) -> None:
    pins = check_lock.locked_versions(lock)
    for requirement in declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is declared but not in {lock.name}: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name]} outside {requirement}: run scripts/lock"
        )


def test_the_runtime_lock_is_the_dev_lock_without_the_tools() -> None:
    runtime, dev = check_lock.locked_versions(RUNTIME), check_lock.locked_versions(DEV)
    assert runtime.items() <= dev.items()
    assert "pytest" in dev and "pytest" not in runtime


def test_the_build_backend_is_locked() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = check_lock.locked_versions(RUNTIME)
    for requirement in map(Requirement, build):
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def test_every_pin_carries_hashes() -> None:
    for lock in (RUNTIME, DEV):
        for entry in lock.read_text().replace("\\\n", " ").split("\n"):
            if "==" in entry and not entry.lstrip().startswith("#"):
                assert "--hash=sha256:" in entry, f"{lock.name}: {entry.split()[0]} has no hash"


def test_markers_decide_what_applies_here(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# header\n"
        "alpha==1.0 \\\n    --hash=sha256:aa\n    # via beta\n"
        "gamma==2.0 ; sys_platform == 'no-such-platform' \\\n    --hash=sha256:bb\n"
        "Delta_Pkg==3.0 ; python_version >= '3.11' \\\n    --hash=sha256:cc\n"
    )
    assert check_lock.locked_versions(lock) == {"alpha": "1.0", "delta-pkg": "3.0"}


def test_differences_name_each_drift() -> None:
    pins = {"alpha": "1.0", "beta": "2.0", "gamma": "3.0"}
    installed = {"alpha": "1.0", "beta": "2.1", "pip": "24.0", "heliox": "0.1.0", "extra": "9"}
    assert check_lock.differences(pins, installed) == [
        "beta is 2.1, the lock says 2.0",
        "gamma==3.0 is locked but not installed",
        "extra==9 is installed but not in the lock",
    ]
    assert check_lock.differences(pins, {**installed, "beta": "2.0", "gamma": "3.0"}) == [
        "extra==9 is installed but not in the lock"
    ]


def test_this_venv_holds_exactly_the_dev_lock() -> None:
    """What scripts/test checks before the suite; here so a drift also shows as a test."""
    assert (
        check_lock.differences(check_lock.locked_versions(DEV), check_lock.installed_versions())
        == []
    )
