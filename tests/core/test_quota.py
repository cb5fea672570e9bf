"""Quota periods: calendar days and months in IANA zones, DST included."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliox.core.quota import (
    QuotaCalendar,
    daily_period,
    monthly_period,
    period,
    period_end,
    period_id,
    quota_allows,
)

HOUR = 3600


def epoch(
    tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, fold: int = 0
) -> float:
    return datetime(y, mo, d, h, mi, s, fold=fold, tzinfo=ZoneInfo(tz)).timestamp()


def test_utc_day_and_month() -> None:
    now = epoch("UTC", 2026, 11, 27, 15, 30)
    assert period_id("daily", now) == "d:2026-11-27"
    assert period_id("monthly", now) == "m:2026-11"
    assert period_end("daily", now) == epoch("UTC", 2026, 11, 28)
    assert period_end("monthly", now) == epoch("UTC", 2026, 12, 1)
    assert daily_period(now).start == epoch("UTC", 2026, 11, 27)
    assert monthly_period(now).start == epoch("UTC", 2026, 11, 1)


def test_boundaries_are_half_open() -> None:
    midnight = epoch("UTC", 2026, 11, 28)
    assert period_id("daily", midnight - 1e-6) == "d:2026-11-27"
    assert period_id("daily", midnight) == "d:2026-11-28"
    assert period_id("daily", midnight - 0.0000004) == "d:2026-11-27"  # not rounded up


def test_the_zone_decides_the_day() -> None:
    now = epoch("UTC", 2026, 11, 28, 3)  # 22:00 the day before in New York
    assert period_id("daily", now, "America/New_York") == "d:2026-11-27"
    assert period_end("daily", now, "America/New_York") == epoch("UTC", 2026, 11, 28, 5)
    assert period_id("daily", now, "Asia/Tokyo") == "d:2026-11-28"


def test_month_rolls_over_the_year_and_leap_february() -> None:
    dec = epoch("Europe/Berlin", 2026, 12, 31, 23, 59, 59)
    assert period_id("monthly", dec, "Europe/Berlin") == "m:2026-12"
    assert period_end("monthly", dec, "Europe/Berlin") == epoch("Europe/Berlin", 2027, 1, 1)
    feb = monthly_period(epoch("UTC", 2028, 2, 10), "UTC")
    assert (feb.end - feb.start) / 86400 == 29


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("America/New_York", (2026, 3, 8), 23),  # spring forward
        ("America/New_York", (2026, 11, 1), 25),  # fall back
        ("Europe/London", (2026, 3, 29), 23),
        ("Europe/London", (2026, 10, 25), 25),
        ("Australia/Lord_Howe", (2026, 4, 5), 24.5),  # half-hour DST
        ("America/New_York", (2026, 11, 27), 24),
    ],
)
def test_dst_days_are_23_or_25_hours(tz: str, day: tuple[int, int, int], hours: float) -> None:
    p = daily_period(epoch(tz, *day, 12), tz)
    assert p.id == f"d:{day[0]:04d}-{day[1]:02d}-{day[2]:02d}"
    assert (p.end - p.start) / HOUR == hours


def test_a_month_containing_a_dst_change_is_an_hour_short() -> None:
    p = monthly_period(epoch("America/New_York", 2026, 3, 15), "America/New_York")
    assert p.end - p.start == 31 * 86400 - HOUR


def test_a_day_whose_midnight_does_not_exist_starts_at_the_transition() -> None:
    # Havana sprang forward from 24:00 to 01:00 on 2015-03-08: the day began at 01:00 CDT.
    tz = "America/Havana"
    p = daily_period(epoch(tz, 2015, 3, 8, 12), tz)
    assert p.start == epoch(tz, 2015, 3, 8, 1)
    assert p.end - p.start == 23 * HOUR
    before = daily_period(p.start - 1, tz)
    assert before.id == "d:2015-03-07"
    assert before.end == p.start


def test_a_skipped_calendar_day() -> None:
    # Samoa skipped 2011-12-30: the 29th ends where the 31st begins.
    tz = "Pacific/Apia"
    p = daily_period(epoch(tz, 2011, 12, 29, 12), tz)
    nxt = daily_period(p.end, tz)
    assert nxt.id == "d:2011-12-31"
    assert nxt.start == p.end


def test_a_fall_back_across_midnight_keeps_now_inside_its_period() -> None:
    # Goose Bay, 1990-10-28 00:00:59 -> 1990-10-27 23:01: the 27th comes back for an hour.
    tz = "America/Goose_Bay"
    now = epoch(tz, 1990, 10, 27, 23, 30, fold=1)
    p = daily_period(now, tz)
    assert p.id == "d:1990-10-27"
    assert p.start <= now < p.end


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Pacific/Apia",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "America/Sao_Paulo",
    "Africa/Cairo",
]


@settings(max_examples=400, deadline=None)
@given(
    now=st.floats(epoch("UTC", 1995, 1, 1), epoch("UTC", 2060, 1, 1)),
    tz=st.sampled_from(ZONES),
    kind=st.sampled_from(["daily", "monthly"]),
)
def test_periods_contain_now_and_tile_time(now: float, tz: str, kind: str) -> None:
    p = period(kind, now, tz)  # type: ignore[arg-type]
    assert p.start <= now < p.end
    local = datetime.fromtimestamp(math.floor(now), ZoneInfo(tz))
    expected = f"d:{local.date().isoformat()}" if kind == "daily" else f"m:{local:%Y-%m}"
    assert p.id == expected
    nxt = period(kind, p.end, tz)  # type: ignore[arg-type]
    assert nxt.start == p.end
    assert nxt.id != p.id
    assert period(kind, p.start, tz).id == p.id  # type: ignore[arg-type]
    if kind == "daily":
        assert 22 * HOUR <= p.end - p.start <= 26 * HOUR


def test_calendar_caches_until_now_leaves_the_period() -> None:
    cal = QuotaCalendar("America/New_York")
    now = epoch("America/New_York", 2026, 11, 27, 23, 59)
    first = cal.daily(now)
    assert cal.daily(now + 30) is first
    assert cal.daily(first.end).id == "d:2026-11-28"
    month = cal.monthly(now)
    assert cal.monthly(now + 1) is month
    assert month.id == "m:2026-11"
    assert cal.monthly(month.end).id == "m:2026-12"


def test_quota_allows_up_to_the_limit() -> None:
    assert quota_allows(9, 10)
    assert not quota_allows(10, 10)
    assert not quota_allows(8, 10, cost=3)


def test_utc_alias_and_tzinfo_objects_agree() -> None:
    now = epoch("UTC", 2026, 6, 1, 0, 0, 1)
    assert daily_period(now, UTC) == daily_period(now, "UTC")
