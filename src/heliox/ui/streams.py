"""The UI's live parts as Server-Sent Events: the dashboard's figures and the request-log tail.

Each stream polls the gateway's own endpoints server-side (through `subrequest`) and pushes what
is new. A stream lasts at most `lifetime` seconds, then ends normally; the browser's EventSource
reconnects by itself and sends the last event id, so nothing is missed or repeated. That bound is
also what lets a shutting-down server finish: servers wait for open responses before they stop,
and the application is not always told when that starts (when it is, `stopping()` turns true and
the streams end at their next tick). A client that goes away is noticed at the next write (a
keep-alive comment at least every `KEEPALIVE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp

from heliox.ui import livestats, subrequest

log = logging.getLogger("heliox.ui")

SAMPLE_INTERVAL = 2.0
HISTORY_SECONDS = 15 * 60
KPI_WINDOW_SECONDS = 60.0
TOP_INTERVAL = 10.0
LOG_POLL_INTERVAL = 1.0
KEEPALIVE_SECONDS = 5.0
STREAM_LIFETIME = 10.0
RECONNECT_MS = 1000
LOG_BACKFILL = 50
LOG_BATCH = 500
ANALYTICS_WINDOW = "15m"

METRICS_PATH = "/metrics/prometheus"
BLOCKED_PATH = "/admin/abuse/blocked"
LOGS_PATH = "/admin/analytics/logs"
SUMMARY_PATH = "/admin/analytics/summary"
TOP_KEYS_PATH = "/admin/analytics/top-keys"
TOP_ROUTES_PATH = "/admin/analytics/top-routes"


def event(name: str, data: Any, *, event_id: str | None = None) -> bytes:
    """One SSE event; the JSON never holds a raw newline, so one `data:` line is enough."""
    lines = [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


@dataclass
class StreamTiming:
    """How the streams pace themselves (tests shorten these)."""

    lifetime: float = STREAM_LIFETIME
    sample_interval: float = SAMPLE_INTERVAL
    log_poll_interval: float = LOG_POLL_INTERVAL
    keepalive: float = KEEPALIVE_SECONDS
    top_interval: float = TOP_INTERVAL


@dataclass
class DashboardFeed:
    """Samples of this process's counters, shared by every open dashboard in the process."""

    timing: StreamTiming
    samples: deque[livestats.Sample] = field(
        default_factory=lambda: deque(maxlen=int(HISTORY_SECONDS / SAMPLE_INTERVAL) + 1)
    )
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self, app: ASGIApp, request: Request, *, abuse: bool) -> None:
        """Take a sample unless another stream took one moments ago."""
        async with self._lock:
            now = time.time()
            if self.samples and now - self.samples[-1].ts < self.timing.sample_interval * 0.75:
                return
            metrics = await subrequest.get(app, request, METRICS_PATH)
            if not metrics.ok:
                raise subrequest.SubrequestError(f"{METRICS_PATH} answered {metrics.status}")
            blocked = None
            if abuse:
                answer = await subrequest.get(app, request, BLOCKED_PATH)
                if answer.ok:
                    blocked = livestats.count_items(answer.json())
            text = metrics.body.decode("utf-8", "replace")
            self.samples.append(livestats.parse_sample(text, now, blocked_keys=blocked))

    def points_after(self, after: float | None) -> list[dict[str, Any]]:
        return livestats.points(list(self.samples), after=after)

    def kpis(self) -> dict[str, Any] | None:
        return livestats.window(list(self.samples), now=time.time(), seconds=KPI_WINDOW_SECONDS)


async def dashboard_events(
    app: ASGIApp,
    request: Request,
    feed: DashboardFeed,
    *,
    features: dict[str, bool],
    instance: str,
    stopping: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    timing = feed.timing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timing.lifetime
    after = _float_or_none(request.headers.get("last-event-id"))
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    first = True
    next_top = loop.time()
    while True:
        try:
            await feed.refresh(app, request, abuse=features.get("abuse", False))
        except (subrequest.SubrequestError, ValueError) as exc:
            yield event("problem", {"detail": f"live figures unavailable: {exc}"})
        new = feed.points_after(after)
        if new or first:
            last_ts = new[-1]["ts"] if new else after
            payload = {"points": new, "kpi": feed.kpis(), "instance": instance, "reset": first}
            yield event("points", payload, event_id=None if last_ts is None else str(last_ts))
            after = last_ts
            first = False
        if loop.time() >= next_top:
            yield event("top", await _top(app, request, features))
            next_top = loop.time() + timing.top_interval
        remaining = deadline - loop.time()
        if remaining <= 0 or stopping():
            return
        await asyncio.sleep(min(timing.sample_interval, remaining))


async def _top(app: ASGIApp, request: Request, features: dict[str, bool]) -> dict[str, Any]:
    """Cluster-wide figures from the analytics API (SQL over every instance's request logs)."""
    if not features.get("analytics"):
        return {"available": False}
    params = {"window": ANALYTICS_WINDOW, "limit": 8}
    out: dict[str, Any] = {"available": True, "window": ANALYTICS_WINDOW}
    for name, path, query in (
        ("summary", SUMMARY_PATH, {"window": ANALYTICS_WINDOW}),
        ("keys", TOP_KEYS_PATH, params),
        ("routes", TOP_ROUTES_PATH, params),
    ):
        try:
            answer = await subrequest.get(app, request, path, query)
        except subrequest.SubrequestError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = answer.json() if answer.ok else {"error": f"{path} answered {answer.status}"}
    return out


@dataclass(frozen=True, slots=True)
class LogFilters:
    """The tail's filters, passed on to the log endpoint as they are (it validates them)."""

    route: str | None = None
    key_id: int | None = None
    status: str | None = None  # "404", or a class: "4xx"
    cache_status: str | None = None
    method: str | None = None
    path_prefix: str | None = None
    request_id: str | None = None
    key: str | None = None  # a key name or display prefix

    def params(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "key": self.key,
            "route": self.route,
            "key_id": self.key_id,
            "status": self.status,
            "cache_status": self.cache_status,
            "method": self.method,
            "path_prefix": self.path_prefix,
        }


async def log_events(
    app: ASGIApp,
    request: Request,
    filters: LogFilters,
    timing: StreamTiming,
    stopping: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timing.lifetime
    last_id = _int_or_none(request.headers.get("last-event-id"))
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    last_write = loop.time()
    backfill = last_id is None
    while True:
        params = filters.params()
        if backfill:
            params["limit"] = LOG_BACKFILL
        else:
            params.update(after_id=last_id, limit=LOG_BATCH)
        try:
            answer = await subrequest.get(app, request, LOGS_PATH, params)
        except subrequest.SubrequestError as exc:
            yield event("problem", {"detail": str(exc)})
            answer = None
        if answer is not None:
            if answer.status == 401:
                yield event("unauthorized", {})
                return
            if answer.status in (404, 405):
                yield event("unavailable", {"detail": "request logs are not available"})
                return
            if answer.status == 422:
                # The filters are wrong; polling again cannot fix that.
                yield event("invalid", {"detail": _problem_detail(answer)})
                return
            if not answer.ok:
                yield event("problem", {"detail": _problem_detail(answer)})
            else:
                rows = sorted(
                    (r for r in livestats.list_items(answer.json()) or [] if _row_id(r)),
                    key=_row_id,
                )
                if backfill or rows:
                    if rows:
                        last_id = _row_id(rows[-1])
                    elif backfill:
                        last_id = 0
                    yield event(
                        "rows",
                        {"rows": rows, "initial": backfill},
                        event_id=str(last_id),
                    )
                    last_write = loop.time()
                backfill = False
        if loop.time() - last_write >= timing.keepalive:
            yield comment("keep-alive")
            last_write = loop.time()
        remaining = deadline - loop.time()
        if remaining <= 0 or stopping():
            return
        await asyncio.sleep(min(timing.log_poll_interval, remaining))


def _problem_detail(answer: subrequest.SubResponse) -> str:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"]:
        return str(body["detail"])
    return f"the log endpoint answered {answer.status}"


def _row_id(row: Any) -> int:
    value = row.get("id") if isinstance(row, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text and len(text) <= 32 else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _int_or_none(text: str | None) -> int | None:
    if text and text.isdigit() and len(text) <= 19:
        return int(text)
    return None
