"""Check that this interpreter's installed packages are exactly a lock file's.

    .venv/bin/python scripts/check_lock.py requirements/dev.txt

Reads `pip freeze --all` and the lock (a requirements file from scripts/lock: `name==version`
lines with environment markers and hashes). Every locked package whose marker holds here must be
installed at exactly the locked version, and nothing else may be installed (pip itself and Heliox
aside). Exit 0 when they agree; otherwise each difference is printed with the command that fixes
it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Installed but never locked: the installer, and the project itself (an editable install).
NOT_LOCKED = frozenset({"pip", "heliox"})


def locked_versions(lock: Path) -> dict[str, str]:
    """The `name==version` pins of `lock` that apply to this interpreter and platform."""
    pins: dict[str, str] = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line.split(" --hash", 1)[0])
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        if spec.operator != "==":
            raise SystemExit(f"check-lock: {lock} pins {requirement.name} with {spec}, not ==")
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def installed_versions() -> dict[str, str]:
    """`pip freeze --all` of this interpreter, as name -> version (editable installs left out)."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    versions: dict[str, str] = {}
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith(("#", "-")):
            versions[canonicalize_name(name)] = version.strip()
    return versions


def differences(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    found = []
    for name, version in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            found.append(f"{name}=={version} is locked but not installed")
        elif have != version:
            found.append(f"{name} is {have}, the lock says {version}")
    for name in sorted(installed.keys() - pins.keys() - NOT_LOCKED):
        found.append(f"{name}=={installed[name]} is installed but not in the lock")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path, help="the lock file, e.g. requirements/dev.txt")
    lock: Path = parser.parse_args().lock
    pins = locked_versions(lock)
    found = differences(pins, installed_versions())
    if found:
        for difference in found:
            print(f"check-lock: {difference}", file=sys.stderr)
        print(
            f"check-lock: {sys.prefix} does not hold {lock}; rebuild it with "
            "`rm -rf .venv && scripts/setup dev`",
            file=sys.stderr,
        )
        return 1
    print(
        f"check-lock: {len(pins)} packages installed exactly as {lock} pins them", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
