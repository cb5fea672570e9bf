"""Per-request objects shared by the pipeline steps: the exchange record, the response sink and
the request being proxied."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from heliox.gateway.responses import Headers, send_problem
from heliox.gateway.upstream_client import UpstreamTarget
from heliox.snapshot import CachePolicyConfig, KeyConfig, RouteConfig

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class BodyTimeout(Exception):
    """The client stopped sending its request body for longer than the route's timeout."""


class Exchange:
    """What one request accumulates for its log row and metrics."""

    __slots__ = (
        "body_error", "body_failed", "bytes_in", "bytes_out", "cache_status", "client_ip", "key",
        "method", "path", "request_id", "route", "route_name", "start", "status",
        "upstream_seconds", "user_agent",
    )  # fmt: skip

    def __init__(self, method: str, start: float) -> None:
        self.method = method
        self.start = start
        self.route: RouteConfig | None = None
        self.route_name = ""
        self.key: KeyConfig | None = None
        self.path = ""
        self.status = 0
        self.cache_status = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_seconds: float | None = None
        self.client_ip = ""
        self.user_agent = ""
        self.request_id = ""
        self.body_error: type[Exception] | None = None  # set by the body stream when it gives up
        # Set with body_error, for whoever waits on the upstream meanwhile (see call_upstream).
        self.body_failed: asyncio.Event | None = None


class ResponseSink:
    """Wraps ASGI send: records status and bytes, maps a vanished client to ClientGone, and adds
    the per-request headers (rate-limit fields, request id) to whatever answer goes out."""

    __slots__ = ("_send", "ex", "extra_headers", "started")

    def __init__(self, send: Send, ex: Exchange) -> None:
        self._send = send
        self.ex = ex
        self.started = False
        self.extra_headers: Headers = []

    async def start(self, status: int, headers: Headers) -> None:
        self.ex.status = status
        self.started = True
        if self.extra_headers:
            headers.extend(self.extra_headers)
        try:
            await self._send({"type": "http.response.start", "status": status, "headers": headers})
        except OSError as exc:
            raise ClientGone from exc

    async def body(self, chunk: bytes, *, more: bool) -> None:
        self.ex.bytes_out += len(chunk)
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": more})
        except OSError as exc:
            raise ClientGone from exc

    async def problem(
        self, status: int, title: str, detail: str, headers: Headers | None = None, **ext: object
    ) -> None:
        self.ex.status = status
        self.started = True
        hdrs = list(headers) if headers else []
        hdrs.extend(self.extra_headers)
        with contextlib.suppress(OSError):
            self.ex.bytes_out += await send_problem(self._send, status, title, detail, hdrs, **ext)


@dataclass(slots=True)
class ProxyRequest:
    """A request that passed routing, authentication and admission, ready for cache or upstream."""

    method: str
    route: RouteConfig
    path: str  # canonical decoded path under the route
    raw_query: bytes
    client_headers: list[tuple[bytes, bytes]]  # as the client sent them
    upstream_headers: list[tuple[bytes, bytes]]  # sanitised, what the upstream will see
    target: UpstreamTarget
    tenant_id: int | None
    ex: Exchange
    body: AsyncIterator[bytes] | None = None
    body_limit: int | None = None
    downstream_extra: Headers = field(default_factory=list)

    @property
    def policy(self) -> CachePolicyConfig | None:
        return self.route.cache_policy

    @property
    def timeout(self) -> float | None:
        return self.route.timeout_seconds


async def body_stream(
    receive: Receive, ex: Exchange, limit: int, idle_timeout: float | None = None
) -> AsyncIterator[bytes]:
    """The client's request body, streamed; stops at `limit` bytes with BodyTooLarge, and with
    BodyTimeout when no part of it arrives for `idle_timeout` seconds."""
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        except TimeoutError:
            ex.body_error = BodyTimeout
            _signal(ex)
            raise BodyTimeout from None
        if message["type"] == "http.disconnect":
            ex.body_error = ClientGone
            _signal(ex)
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            ex.bytes_in += len(chunk)
            if ex.bytes_in > limit:
                ex.body_error = BodyTooLarge
                _signal(ex)
                raise BodyTooLarge
            yield chunk
        if not message.get("more_body", False):
            return


def _signal(ex: Exchange) -> None:
    if ex.body_failed is not None:
        ex.body_failed.set()
