"""WCAG AA contrast of the admin UI's colour tokens, in the light theme and the dark one.

Reads the custom properties of app.css (`:root`, and `:root` inside
`@media (prefers-color-scheme: dark)`) and checks every text/background pair the stylesheet uses
against 4.5:1, the AA minimum for normal-size text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = Path(__file__).resolve().parents[2] / "src" / "heliox" / "ui" / "static" / "app.css"
AA = 4.5
# (text, background): every pair app.css draws text with.
PAIRS = [
    ("text", "bg"),
    ("text", "surface"),
    ("text", "surface-2"),
    ("muted", "bg"),
    ("muted", "surface"),
    ("muted", "surface-2"),  # hover rows, notices, the muted empty states
    ("primary", "surface"),  # links, link buttons
    ("primary", "bg"),
    ("primary", "primary-soft"),  # pressed segments, primary badges
    ("ok", "ok-soft"),  # the "active" badge
    ("warn", "warn-soft"),
    ("danger", "danger-soft"),
    ("danger", "surface"),  # field errors, the required mark
    ("info", "info-soft"),
    ("neutral", "neutral-soft"),  # plain badges
    ("ok-strong", "ok-soft"),  # notices
    ("warn-strong", "warn-soft"),
    ("danger-strong", "danger-soft"),
    ("on-primary", "btn-primary"),
    ("on-primary", "btn-danger"),
    ("on-primary", "btn-danger-hover"),
    ("side-text", "side"),
]


def _properties(block: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z0-9-]+)\s*:\s*(#[0-9a-fA-F]{6})\s*;", block))


def themes() -> dict[str, dict[str, str]]:
    text = CSS.read_text()
    light_block = re.search(r"^:root\s*\{(.*?)\}", text, re.S | re.M)
    dark_block = re.search(
        r"@media\s*\(prefers-color-scheme:\s*dark\)\s*\{\s*:root\s*\{(.*?)\}", text, re.S
    )
    assert light_block is not None and dark_block is not None, "app.css lost a theme"
    light = _properties(light_block.group(1))
    return {"light": light, "dark": {**light, **_properties(dark_block.group(1))}}


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_the_formula_matches_known_ratios() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_text_colour_meets_aa_on_its_background(theme: str) -> None:
    tokens = themes()[theme]
    failing = []
    for fg, bg in PAIRS:
        assert fg in tokens and bg in tokens, f"--{fg} or --{bg} is not a #rrggbb token"
        ratio = contrast(tokens[fg], tokens[bg])
        if ratio < AA:
            failing.append(f"--{fg} {tokens[fg]} on --{bg} {tokens[bg]}: {ratio:.2f}")
    assert failing == [], f"below {AA}:1 in the {theme} theme"


def test_the_dark_theme_changes_the_surfaces() -> None:
    light, dark = themes()["light"], themes()["dark"]
    for name in ("bg", "surface", "text", "muted"):
        assert light[name] != dark[name], f"--{name} is the same in both themes"
