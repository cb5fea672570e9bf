"""Idle limits of pooled upstream connections and which failed requests may be sent again."""

from __future__ import annotations

import pytest

from heliox.core.keepalive import announced_timeout, idle_limit, may_replay


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("timeout=5", 5.0),
        ("timeout=5, max=100", 5.0),
        ("max=100, timeout=2", 2.0),
        ("Timeout = 7", 7.0),
        ('timeout="3"', 3.0),
        ("timeout=0", 0.0),
        ("timeout=5, timeout=9", 5.0),  # the first one counts
        ("timeout=999999999", 86_400.0),  # bounded
        ("max=100", None),
        ("", None),
        ("timeout=", None),
        ("timeout=-1", None),
        ("timeout=1.5", None),
        ("timeout=five", None),
        ("timeouts=5", None),
        ("timeout", None),
    ],
)
def test_announced_timeout(value: str, expected: float | None) -> None:
    assert announced_timeout(value) == expected


@pytest.mark.parametrize(
    ("setting", "announced", "expected"),
    [
        (4.0, None, 4.0),  # nothing announced: the setting
        (4.0, 5.0, 4.0),  # Node.js's default: one second of margin, as the setting's default
        (4.0, 60.0, 4.0),  # a longer timeout never lengthens the setting
        (30.0, 5.0, 4.0),
        (30.0, 2.0, 1.0),
        (30.0, 1.0, 0.0),  # too short to reuse safely
        (30.0, 0.0, 0.0),
        (0.5, 5.0, 0.5),
    ],
)
def test_idle_limit(setting: float, announced: float | None, expected: float) -> None:
    assert idle_limit(setting, announced) == expected


@pytest.mark.parametrize(
    ("method", "body_streamed", "expected"),
    [
        ("GET", None, True),
        ("HEAD", None, True),
        ("OPTIONS", None, True),
        ("PUT", None, True),  # a body held in memory can be sent again
        ("DELETE", None, True),
        ("PUT", False, True),
        ("PUT", True, False),  # a streamed body that has started cannot be read again
        ("POST", None, False),  # the upstream may have acted on it
        ("PATCH", None, False),
        ("POST", True, False),
        ("POST", False, True),  # its body had not started: the upstream has not got it all
        ("PATCH", False, True),
    ],
)
def test_may_replay(method: str, body_streamed: bool | None, expected: bool) -> None:
    assert may_replay(method, body_streamed=body_streamed) is expected
