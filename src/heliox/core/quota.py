"""Quota periods on calendar boundaries: a day and a calendar month in an IANA time zone.

A period is [start, end) in UTC epoch seconds. Days are 23, 24 or 25 hours around DST changes;
where local midnight does not exist (zones that spring forward at 00:00), the day starts at the
transition, which is what `zoneinfo` gives for a non-existent time with fold=0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

Kind = Literal["daily", "monthly"]


@dataclass(frozen=True, slots=True)
class QuotaPeriod:
    id: str  # "d:2026-11-27" or "m:2026-11"
    start: float  # UTC epoch seconds, inclusive
    end: float  # UTC epoch seconds, exclusive: when the quota resets


def zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _local_midnight(day: date, tz: tzinfo, after: float | None = None) -> float:
    """Epoch of the first instant of `day` in `tz` (later than `after`, when given)."""
    ts = datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
    if after is not None and ts <= after:
        # Midnight repeated by a fall-back at 00:00: the day begins at its second occurrence.
        ts = datetime(day.year, day.month, day.day, fold=1, tzinfo=tz).timestamp()
    return ts


def _local_date(now: float, tz: tzinfo) -> date:
    # Whole seconds: boundaries are whole seconds, and fromtimestamp would round 23:59:59.9999996
    # up into the next day.
    return datetime.fromtimestamp(math.floor(now), tz).date()


def daily_period(now: float, tz: str | tzinfo = "UTC") -> QuotaPeriod:
    tzi = zone(tz)
    day = _local_date(now, tzi)
    nxt = date.fromordinal(day.toordinal() + 1)
    start, end = _local_midnight(day, tzi), _local_midnight(nxt, tzi, now)
    return QuotaPeriod(f"d:{day.isoformat()}", start, end)


def monthly_period(now: float, tz: str | tzinfo = "UTC") -> QuotaPeriod:
    tzi = zone(tz)
    day = _local_date(now, tzi)
    first = day.replace(day=1)
    nxt = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
    start, end = _local_midnight(first, tzi), _local_midnight(nxt, tzi, now)
    return QuotaPeriod(f"m:{day.year:04d}-{day.month:02d}", start, end)


def period(kind: Kind, now: float, tz: str | tzinfo = "UTC") -> QuotaPeriod:
    return daily_period(now, tz) if kind == "daily" else monthly_period(now, tz)


def period_id(kind: Kind, now: float, tz: str | tzinfo = "UTC") -> str:
    return period(kind, now, tz).id


def period_end(kind: Kind, now: float, tz: str | tzinfo = "UTC") -> float:
    """When the quota of the period containing `now` resets, as a UTC epoch."""
    return period(kind, now, tz).end


def quota_allows(used: int, limit: int, cost: int = 1) -> bool:
    return used + cost <= limit


class QuotaCalendar:
    """The current daily and monthly periods of one zone, recomputed when `now` leaves them."""

    __slots__ = ("_daily", "_monthly", "tz")

    def __init__(self, tz: str | tzinfo = "UTC") -> None:
        self.tz = zone(tz)
        self._daily = QuotaPeriod("", 0.0, 0.0)
        self._monthly = QuotaPeriod("", 0.0, 0.0)

    def daily(self, now: float) -> QuotaPeriod:
        p = self._daily
        if p.start <= now < p.end:
            return p
        p = self._daily = daily_period(now, self.tz)
        return p

    def monthly(self, now: float) -> QuotaPeriod:
        p = self._monthly
        if p.start <= now < p.end:
            return p
        p = self._monthly = monthly_period(now, self.tz)
        return p
