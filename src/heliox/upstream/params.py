"""Query parameter parsing for the example upstream; bad values become a 400 answer."""

from __future__ import annotations

import math

from aiohttp import web


class BadParam(ValueError):
    """A query parameter the endpoint cannot use (answered with 400)."""


def float_param(request: web.Request, name: str, default: float, cap: float) -> float:
    """A non-negative number of seconds or similar, clamped to `cap`."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadParam(f"{name} must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadParam(f"{name} must be a finite number >= 0")
    return min(value, cap)


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer in [low, high]; out-of-range values are refused rather than clamped."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return int_value(name, raw, low, high)


def int_value(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 20:
        raise BadParam(f"{name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise BadParam(f"{name} must be between {low} and {high}")
    return value
