"""The repository stands alone: no tracked file names a path of the machine it was written on or
a document that is not in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Assembled from parts so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            r"/" + r"work/",  # a checkout's absolute path on a development machine
            r"\.\./" + r"shared",  # a folder beside the checkout
            r"(?<![\w/])(?:HARDENING|DESIGN|STYLE)" + r"\.md",  # documents never shipped
            r"product" + r"-brief",
        ]
    )
)


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.decode().split("\0") if name]
    return [f for f in files if f.is_file() and b"\0" not in f.read_bytes()[:8192]]


def test_pattern_finds_what_it_is_for() -> None:
    samples = [
        "see /" + "work/shared/x",
        "../" + "shared/notes",
        "HARDENING" + ".md",
        "the product" + "-brief",
    ]
    for text in [*samples, "DESIGN" + ".md"]:
        assert OUTSIDE.search(text), text
    assert not OUTSIDE.search("docs/hardening.md and docs/reliability.md")


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
