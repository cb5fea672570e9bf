"""A steady open-loop load: requests started at a constant rate, each one recorded.

wrk reports one latency distribution per run; the SWR check needs every request's latency with
the time it completed (to bucket it by second) and its `X-Cache` (to see when the entry went
stale). Requests are started on a fixed schedule whatever the server's latency (open loop), so a
server that stalls meets the same offered load and its stall shows in the latencies instead of
slowing the client down. Latency is measured from the moment the request is handed to the client
(waiting for a pooled connection included) to the end of the body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
from yarl import URL


@dataclass(slots=True)
class Record:
    """One request; times are seconds since the run's start."""

    target: int  # index of the URL (server) it went to
    due: float  # when the schedule wanted it sent
    sent: float
    done: float
    status: int  # 0: no answer
    x_cache: str
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class LoadResult:
    rate: float
    seconds: float  # how long requests were being started
    records: list[Record] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    @property
    def max_lag(self) -> float:
        """How far behind its schedule the client fell (its own CPU, not the server)."""
        return max((r.sent - r.due for r in self.records), default=0.0)

    @property
    def achieved_rate(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else 0.0


class RateLoad:
    """`async with RateLoad(urls, headers, rate) as load: await load.run(seconds)`.

    Requests go to `urls` in turn (one URL per server), so each server gets rate/len(urls).
    """

    def __init__(
        self,
        urls: Sequence[str],
        headers: dict[str, str],
        rate: float,
        *,
        max_connections: int = 512,
        timeout: float = 30.0,
    ) -> None:
        if rate <= 0 or not urls:
            raise ValueError("a load needs a positive rate and at least one URL")
        # encoded=True: the path goes out exactly as written, query included.
        self.urls = [URL(u, encoded=True) for u in urls]
        self.headers = headers
        self.rate = rate
        self.max_connections = max_connections
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RateLoad:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, seconds: float | None, stop: asyncio.Event | None = None) -> LoadResult:
        """Start requests at `rate` for `seconds` (or until `stop` is set), then wait for the
        last answers."""
        if seconds is None and stop is None:
            raise ValueError("give seconds or a stop event")
        session = self._session
        assert session is not None, "use RateLoad as an async context manager"
        interval = 1.0 / self.rate
        start = time.perf_counter()
        result = LoadResult(self.rate, 0.0)
        pending: set[asyncio.Task[None]] = set()
        i = 0
        while True:
            due = i * interval
            if (seconds is not None and due >= seconds) or (stop is not None and stop.is_set()):
                break
            # Always yield, even when behind schedule, so answers keep being read.
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            target = i % len(self.urls)
            task = asyncio.create_task(self._one(session, target, due, start, result.records))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        result.seconds = i * interval
        if pending:
            await asyncio.gather(*pending)
        return result

    async def _one(
        self,
        session: aiohttp.ClientSession,
        target: int,
        due: float,
        start: float,
        out: list[Record],
    ) -> None:
        sent = time.perf_counter()
        status, x_cache, error = 0, "", ""
        try:
            async with session.get(self.urls[target], headers=self.headers) as resp:
                await resp.read()
                status = resp.status
                x_cache = resp.headers.get("X-Cache", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        done = time.perf_counter()
        out.append(Record(target, due, sent - start, done - start, status, x_cache, error))
