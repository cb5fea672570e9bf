"""Request counting for the example upstream (`GET /stats`, `POST /stats/reset`).

Tests and the demo compare these counts with what the gateway received to prove caching,
coalescing and negative caching kept requests away from the upstream.
"""

from __future__ import annotations

from aiohttp import web

from heliox.upstream.replies import json_reply

# Paths of the counters themselves: reading them must not change them.
UNCOUNTED = frozenset({"/stats", "/stats/reset"})
# Distinct paths kept apart; beyond this (say, a flood of random 404 ids) they share one bucket.
MAX_PATHS = 10_000
OVERFLOW_PATH = "(other)"


class RequestStats:
    """Requests seen, in total and by raw path (query excluded), counted on arrival."""

    __slots__ = ("by_path", "total")

    def __init__(self) -> None:
        self.total = 0
        self.by_path: dict[str, int] = {}

    def count(self, path: str) -> None:
        self.total += 1
        by_path = self.by_path
        if path in by_path:
            by_path[path] += 1
        elif len(by_path) < MAX_PATHS:
            by_path[path] = 1
        else:
            by_path[OVERFLOW_PATH] = by_path.get(OVERFLOW_PATH, 0) + 1

    def reset(self) -> None:
        self.total = 0
        self.by_path = {}

    def snapshot(self) -> dict[str, object]:
        return {"total": self.total, "by_path": dict(self.by_path)}


STATS = web.AppKey("stats", RequestStats)


def raw_path(request: web.Request) -> str:
    """The path as sent on the request line, without the query string."""
    target = request.raw_path
    cut = target.find("?")
    return target if cut < 0 else target[:cut]


async def get_stats(request: web.Request) -> web.Response:
    return json_reply(request.app[STATS].snapshot())


async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATS].reset()
    return json_reply(request.app[STATS].snapshot())


def add_routes(app: web.Application, counters: RequestStats) -> None:
    app[STATS] = counters
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/stats/reset", reset_stats)
