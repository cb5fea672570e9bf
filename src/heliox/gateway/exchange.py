"""Per-request objects shared by the pipeline steps: the exchange record, the response sink and
the request being proxied."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from heliox.gateway.responses import Headers, send_problem
from heliox.gateway.upstream_client import UpstreamTarget
from heliox.snapshot import CachePolicyConfig, KeyConfig, RouteConfig

log = logging.getLogger("heliox.gateway")

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
        "body_error", "body_failed", "bytes_in", "bytes_out", "cache_generation", "cache_status",
        "client_ip", "key", "method", "path", "request_id", "route", "route_name", "start",
        "status", "upstream_seconds", "user_agent",
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
        # From admission on Redis: what the cache's in-process copies are checked against.
        self.cache_generation: bytes | None = None


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
        try:
            self.ex.bytes_out += await send_problem(self._send, status, title, detail, hdrs, **ext)
        except OSError as exc:
            # The client is gone: nothing to answer, but say so for whoever debugs a missing reply.
            log.debug("could not send %d to the client: %r", status, exc)


Prepare = Callable[[], tuple[list[tuple[bytes, bytes]], UpstreamTarget]]


class ProxyRequest:
    """A request that passed routing, authentication and admission, ready for cache or upstream.

    The upstream side (sanitised headers and target) is built on first use: a fresh cache HIT
    never needs it, and building it was a measurable share of a HIT. What the cache reads to look
    a request up (Range, Cache-Control, preconditions, vary values) comes from `lookup_headers`,
    which is the client's own list whenever the upstream would see those fields unchanged.
    """

    __slots__ = (
        "_prepare", "_target", "_upstream_headers", "body", "body_limit", "client_headers",
        "ex", "lookup_plain", "method", "path", "raw_query", "route", "tenant_id",
    )  # fmt: skip

    def __init__(
        self,
        *,
        method: str,
        route: RouteConfig,
        path: str,  # canonical decoded path under the route
        raw_query: bytes,
        client_headers: list[tuple[bytes, bytes]],  # as the client sent them
        tenant_id: int | None,
        ex: Exchange,
        upstream_headers: list[tuple[bytes, bytes]] | None = None,
        target: UpstreamTarget | None = None,
        prepare: Prepare | None = None,
        lookup_plain: bool = False,
        body: AsyncIterator[bytes] | None = None,
        body_limit: int | None = None,
    ) -> None:
        if prepare is None and (upstream_headers is None or target is None):
            raise TypeError("give either prepare, or both upstream_headers and target")
        self.method = method
        self.route = route
        self.path = path
        self.raw_query = raw_query
        self.client_headers = client_headers
        self.tenant_id = tenant_id
        self.ex = ex
        self._upstream_headers = upstream_headers
        self._target = target
        self._prepare = prepare
        # True when the client's headers may stand in for the upstream's in a cache lookup.
        self.lookup_plain = lookup_plain
        self.body = body
        self.body_limit = body_limit

    def _build(self) -> None:
        assert self._prepare is not None
        self._upstream_headers, self._target = self._prepare()
        self._prepare = None

    @property
    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """Sanitised: what the upstream will see."""
        if self._upstream_headers is None:
            self._build()
        assert self._upstream_headers is not None
        return self._upstream_headers

    @property
    def target(self) -> UpstreamTarget:
        if self._target is None:
            self._build()
        assert self._target is not None
        return self._target

    @property
    def lookup_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers a cache lookup reads: the same values the upstream would see."""
        return self.client_headers if self.lookup_plain else self.upstream_headers

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
    try:
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
    except BaseException:
        # Every failure (stall, excess, disconnect, cancel) leaves this frame in an exception's
        # traceback, and the upstream client keeps that exception in reference cycles until the
        # garbage collector runs. `receive` is bound to granian's protocol object, which owns
        # the unfinished request body; granian reliably closes such a connection only once that
        # object is gone, so a client could wait for the close our 408 announced until the next
        # collection.
        del receive
        raise


def _signal(ex: Exchange) -> None:
    if ex.body_failed is not None:
        ex.body_failed.set()
