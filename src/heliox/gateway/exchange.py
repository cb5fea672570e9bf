"""Per-request objects shared by the pipeline steps: the exchange record, the response sink and
the request being proxied."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

from heliox.core.headers import GATEWAY_REQUEST_HEADERS
from heliox.core.paths import join_upstream_path
from heliox.gateway.responses import Headers, send_problem
from heliox.net.upstream_client import UpstreamTarget
from heliox.snapshot import KeyConfig, RouteConfig

log = logging.getLogger("heliox.gateway")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class AnswerAborted(Exception):
    """Raised to the server to abort the client's connection: the answer's head is out and its
    body cannot be finished (the upstream broke off or stalled mid-body). A cut connection is
    the only signal an HTTP/1.1 client cannot mistake for the whole answer. The cause is in
    the request's log row and Heliox's own warning; the server's report of the exception, a
    traceback logged as an application error, is left out of the log (`structured_log`)."""


# How long `ResponseSink.abort` lets the server write what it was given before the abort: granian
# hands the head and the body's parts to hyper, which writes them to the socket once the body
# has nothing more ready; an abort that reaches it before that closes the connection with them
# still in its buffer. With a short body the client then got no answer at all: 10 times in 900
# without the pause, none in 1,800 with 5 ms (also with both CPUs busy). 10 ms still fell short
# once in 400 while the test suite loaded the machine in two processes (the server's thread was
# not scheduled in time), so the margin is ten times that: it only delays an answer that is
# failing anyway, and ASGI gives no signal that the bytes have reached the socket.
ABORT_GRACE = 0.1


class BodyTimeout(Exception):
    """The client stopped sending its request body for longer than the route's timeout."""


class BodyDeadline(BodyTimeout):
    """The request body took longer in all than its deadline (REQUEST_BODY_TIMEOUT)."""


class BodyTooSlow(BodyTimeout):
    """The request body arrived slower than its minimum rate (REQUEST_BODY_MIN_RATE)."""


class Exchange:
    """What one request accumulates for its log row and metrics."""

    __slots__ = (
        "body_detail", "body_error", "body_failed", "bytes_in", "bytes_out", "cache_generation",
        "cache_key", "cache_status", "client_ip", "error", "key", "method", "path", "refusal",
        "refused_by", "request_id", "route", "route_name", "start", "status", "upstream_seconds",
        "upstream_status", "user_agent",
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
        self.upstream_status: int | None = None  # the upstream's own status, when it answered
        self.client_ip = ""
        self.user_agent = ""
        self.request_id = ""
        # Why the upstream failed (its address and the cause): for the log, never the client.
        self.error: str | None = None
        self.body_error: type[Exception] | None = None  # set by the body stream when it gives up
        self.body_detail = ""  # with a BodyTimeout: which limit, for the client
        # Set with body_error, for whoever waits on the upstream meanwhile (see call_upstream).
        self.body_failed: asyncio.Event | None = None
        # From admission on Redis: what the cache's in-process copies are checked against.
        self.cache_generation: bytes | None = None
        self.cache_key: str | None = None  # the entry's key, shown in Cache-Status (purge by it)
        # Set only when a limit refused the request (a 429, or a fail-closed 503): which one
        # (the 429 problem's `limit` value, or "bad_key" / "unavailable"), and its numbers as
        # compact JSON, built then and written as they are (see heliox.gateway.admission_step).
        self.refused_by: str | None = None
        self.refusal: str | None = None


class ResponseSink:
    """Wraps ASGI send: records status and bytes, maps a vanished client to ClientGone, and adds
    the per-request headers (rate-limit fields, request id) to whatever answer goes out."""

    __slots__ = ("_send", "ended", "ex", "extra_headers", "started")

    def __init__(self, send: Send, ex: Exchange) -> None:
        self._send = send
        self.ex = ex
        self.started = False
        self.ended = False  # the answer's last message has been handed to the server
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
        self.ended = not more
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": more})
        except OSError as exc:
            raise ClientGone from exc

    async def end(self) -> None:
        """End the answer, unless its last part already did (a relay sends the upstream's last
        part as the end when it knows it is the last, and one message fewer goes out)."""
        if not self.ended:
            await self.body(b"", more=False)

    async def abort(self, detail: str) -> NoReturn:
        """Cut the client's connection under an answer whose head is out (AnswerAborted), once
        the server has had `ABORT_GRACE` to write what it was given."""
        self.ex.error = f"{detail}; the answer was under way, so its connection was cut"
        await asyncio.sleep(ABORT_GRACE)
        raise AnswerAborted(detail)

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


# The upstream request's headers; given a `keep` set, only the client headers it names go, besides
# the gateway's own (see heliox.core.headers.upstream_request_headers).
Prepare = Callable[[frozenset[bytes] | None], list[tuple[bytes, bytes]]]


class ProxyRequest:
    """A request that passed routing, authentication and admission, ready for cache or upstream.

    The upstream side (sanitised headers and target) is built on first use: a fresh cache HIT
    never needs it, and building it was a measurable share of a HIT. What the cache reads to look
    a request up (Range, Cache-Control, preconditions, vary values) comes from `lookup_headers`,
    which is the client's own list whenever the upstream would see those fields unchanged. A
    cache fill sends `kept_headers(...)`: only what the cache key holds or what cannot shape a
    stored answer, so a miss builds that list and usually no other.
    """

    __slots__ = (
        "_prepare", "_target", "_upstream_headers", "body", "body_limit", "client_headers",
        "encoded_path", "ex", "lookup_plain", "method", "path", "raw_query", "route", "tenant_id",
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
        encoded_path: str | None = None,  # the canonical path percent-encoded, with `prepare`
        lookup_plain: bool = False,
        body: AsyncIterator[bytes] | None = None,
        body_limit: int | None = None,
    ) -> None:
        if (prepare is None or encoded_path is None) and (
            upstream_headers is None or target is None
        ):
            raise TypeError(
                "give either prepare and encoded_path, or both upstream_headers and target"
            )
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
        self.encoded_path = encoded_path
        # True when the client's headers may stand in for the upstream's in a cache lookup.
        self.lookup_plain = lookup_plain
        self.body = body
        self.body_limit = body_limit

    @property
    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """Sanitised: what the upstream sees of a request the cache does not store."""
        if self._upstream_headers is None:
            assert self._prepare is not None
            self._upstream_headers = self._prepare(None)
        return self._upstream_headers

    def kept_headers(self, keep: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
        """`upstream_headers` with, of the client's own headers, only those named in `keep`."""
        if self._prepare is not None:
            return self._prepare(keep)
        return [
            (name, value)
            for name, value in self.upstream_headers
            if name in keep or name in GATEWAY_REQUEST_HEADERS
        ]

    @property
    def key_id(self) -> int | None:
        """The API key the request is made for (None on a public route): the bulkheads count
        its upstream requests against it."""
        key = self.ex.key
        return key.id if key is not None else None

    @property
    def target(self) -> UpstreamTarget:
        """The route's upstream, its base path, the canonical path and the query."""
        if self._target is None:
            assert self.encoded_path is not None
            route = self.route
            path_qs = join_upstream_path(route.upstream_base_path, self.encoded_path)
            if self.raw_query:
                path_qs += "?" + self.raw_query.decode("latin-1")
            self._target = UpstreamTarget(
                route.upstream_scheme, route.upstream_host, route.upstream_port, path_qs
            )
        return self._target

    @property
    def lookup_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers a cache lookup reads: the same values the upstream would see."""
        return self.client_headers if self.lookup_plain else self.upstream_headers

    @property
    def timeout(self) -> float | None:
        return self.route.timeout_seconds


async def body_stream(
    receive: Receive,
    ex: Exchange,
    limit: int,
    idle_timeout: float | None = None,
    *,
    deadline: float | None = None,
    min_rate: int = 0,
    grace: float = 0.0,
) -> AsyncIterator[bytes]:
    """The client's request body, streamed; stops at `limit` bytes with BodyTooLarge, and with a
    BodyTimeout when no part of it arrives for `idle_timeout` seconds, when it takes more than
    `deadline` seconds in all (BodyDeadline), or when, `grace` seconds in, it has averaged less
    than `min_rate` bytes/s (BodyTooSlow; 0: no minimum).

    Only the time spent waiting for the client counts: while the upstream is slow to take what
    was read, the client is not to blame. A timer that restarted with every part let a client
    sending a byte now and then hold its request, and a connection, for as long as it liked."""
    loop = asyncio.get_running_loop()
    waited = 0.0
    try:
        while True:
            wait, kind = idle_timeout, BodyTimeout
            if deadline is not None and (wait is None or deadline - waited < wait):
                wait, kind = deadline - waited, BodyDeadline
            if min_rate:
                # Behind the rate once the bytes so far no longer cover the time since `grace`.
                left = grace + ex.bytes_in / min_rate - waited
                if wait is None or left < wait:
                    wait, kind = left, BodyTooSlow
            started = loop.time()
            try:
                if wait is not None and wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                ex.body_error = kind
                ex.body_detail = _timeout_detail(kind, idle_timeout, deadline, min_rate, grace)
                _signal(ex)
                raise kind from None
            waited += loop.time() - started
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


def _timeout_detail(
    kind: type[BodyTimeout],
    idle_timeout: float | None,
    deadline: float | None,
    min_rate: int,
    grace: float,
) -> str:
    if kind is BodyDeadline:
        return (
            f"the request body did not arrive in full within {deadline:g} s; send it faster, "
            "or in smaller requests"
        )
    if kind is BodyTooSlow:
        return (
            f"the request body arrived slower than {min_rate} bytes/s (the minimum once "
            f"{grace:g} s have passed); send it faster"
        )
    if idle_timeout is None:
        return "no part of the request body arrived in time"
    return f"no part of the request body arrived within {idle_timeout:g} s (the route's timeout)"


def _signal(ex: Exchange) -> None:
    if ex.body_failed is not None:
        ex.body_failed.set()
