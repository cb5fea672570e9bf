"""The upstream HTTP client behind one small interface.

aiohttp with explicit timeouts, no redirects followed, no environment proxies and no
decompression: the gateway relays bytes, it does not reinterpret them. A leaner client can replace
this class as long as it keeps `request()` and `UpstreamResponse`.

Connections are bounded per route and per API key (`heliox.net.bulkhead`), not by one pool
for everything; and no connection goes to an address in UPSTREAM_DENY_NETWORKS, whatever name led
to it (checked on the resolved address, in the connector's socket factory).

Pooled connections are closed before a typical upstream would close them (`heliox.core.keepalive`:
UPSTREAM_KEEPALIVE_TIMEOUT, or less when the upstream announces a shorter `Keep-Alive: timeout=`),
and a request that fails on a reused connection before any byte of the response is sent once more
on a new connection when it can be replayed.

A response with more body than its `Content-Length` declares is handled as nginx does: it is cut
at the declared length, its connection is closed rather than pooled (the surplus is never read as
the start of the next response on it), and `UpstreamResponse.overran` says so, for the cache not
to store it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from heliox.core.keepalive import announced_timeout, idle_limit, may_replay
from heliox.core.netdeny import Network, address_denied
from heliox.net.bulkhead import Bulkheads, Busy, Permit
from heliox.snapshot import RouteConfig

log = logging.getLogger("heliox.upstream")

READ_CHUNK = 64 * 1024
BUSY_RETRY_AFTER = 1  # seconds: a slot frees as soon as any one of the requests in flight ends
_TITLES = {502: "Bad gateway", 503: "Service unavailable", 504: "Gateway timeout"}
# What the connector's socket factory is given: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time (502, 504), or the bulkheads
    left no connection for the request (503, `UpstreamBusy`).

    `detail` names the upstream's address and the cause: it is for the gateway's log and the
    request's log row. Clients get `public_detail`, which gives neither away.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def public_detail(self) -> str:
        if self.status == 504:
            return "the upstream did not answer in time"
        return "the upstream could not be reached or did not send a valid response"

    @property
    def title(self) -> str:
        return _TITLES.get(self.status, "Bad gateway")

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response fields the client's error answer carries besides the usual ones."""
        return []


class UpstreamBusy(UpstreamError):
    """503: no upstream connection for this request within the bulkheads (`bulkhead`): the
    route's are all in use, or the key already has its cap of requests in flight."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail)

    @property
    def public_detail(self) -> str:
        return self.detail  # names a limit, never the upstream's address

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"%d" % BUSY_RETRY_AFTER)]


class UpstreamAddressDenied(UpstreamError):
    """502: every address the upstream's host resolved to is in UPSTREAM_DENY_NETWORKS."""

    def __init__(self, detail: str) -> None:
        super().__init__(502, detail)

    @property
    def public_detail(self) -> str:
        return "the upstream's address is not allowed"


class _AddressNotAllowed(OSError):
    """Raised instead of opening a socket to a denied address. One message for every address:
    happy eyeballs keeps the exception's type only when all its attempts failed alike."""

    def __init__(self, address: str) -> None:
        super().__init__("address not allowed")
        self.address = address


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    path_and_query: str  # already percent-encoded


class _Attempt:
    """One try of an upstream request, as the connector sees it (through `_ATTEMPT`, which the
    request's task sets): whether it got a pooled connection, and whether it must not."""

    __slots__ = ("fresh", "protocol", "reused")

    def __init__(self) -> None:
        self.fresh = False
        self.reused = False
        self.protocol: ResponseHandler | None = None  # the connection's, once it has one


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("heliox_upstream_attempt", default=None)
# An origin as the pool knows it: (host, port, TLS).
Origin = tuple[str, int | None, bool]
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


# `_ResponseHandler._left` besides a count of body bytes still due.
_HEAD = -1  # a response head is due
_UNFRAMED = -2  # no Content-Length to hold the bytes to (chunked, until close, upgraded), or idle
_DROP = -3  # after a surplus: nothing more reaches the parser


class _ResponseHandler(ResponseHandler):
    """aiohttp's protocol for one upstream connection, which gives its HTTP parser no byte past a
    response's declared `Content-Length`. aiohttp's parser reads any such surplus as the start of
    the next response on the connection: arrived with the body, it fails the response being read;
    arrived later, it fails or forges the next one. Here the surplus is dropped, the connection
    is closed instead of pooled, and `overran` is set.

    The cost on the way of every response: one search for the end of its head (in the bytes that
    hold it, which are fed to the parser in two calls instead of one), then one comparison per
    read. Relies on aiohttp's `ResponseHandler` feeding each parsed response head to its own
    `feed_data`, and on `data_received` being where every byte read goes (aiohttp is pinned;
    tests/gateway/test_upstream_overrun.py breaks if either changes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._left = _UNFRAMED
        self._carry = b""  # the end of the previous read, while a head is due: "\r\n\r" spans reads
        self.overran = False
        self.requests = 0  # requests sent on the connection so far
        self.overran_at = 0  # the one whose response overran (1 for the first)
        # Where a response head was due came bytes that are none: on a reused connection, most
        # likely the surplus of the previous response, sent after it.
        self.stray = False

    def set_response_params(self, **kwargs: Any) -> None:
        # Called for each request on the connection, before the request is sent.
        if self._left != _DROP:
            self._left = _HEAD
            self._carry = b""
            self.requests += 1
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        left = self._left
        # Body bytes within the declared length, unframed bytes, or b"" (resuming the parser).
        if len(data) <= left or left == _UNFRAMED or not data:
            if left > 0:
                self._left = left - len(data)
            super().data_received(data)
        elif left != _DROP:
            self._framed(data)

    def _framed(self, data: bytes) -> None:
        """`data` holds (the end of) a response head, or more than the body still due."""
        while data:
            left = self._left
            if left == _HEAD:
                joined = self._carry + data if self._carry else data
                end = joined.find(b"\r\n\r\n")
                if end < 0:
                    self._carry = joined[-3:]
                    super().data_received(data)
                    self._check_head()
                    return
                cut = end + 4 - len(self._carry)
                self._carry = b""
                # The head alone: a parsed head sets `_left` (feed_data) before the body is read.
                super().data_received(data[:cut])
                data = data[cut:]
                if self._check_head():
                    return
            elif left == _UNFRAMED:
                super().data_received(data)
                return
            elif len(data) <= left:
                self._left = left - len(data)
                super().data_received(data)
                return
            else:
                if left:
                    super().data_received(data[:left])
                self._left = 0
                self._overrun(len(data) - left)
                return

    def _check_head(self) -> bool:
        """Whether the parser refused the bytes where a head was due (aiohttp has then failed
        the request and closed the connection)."""
        if self._left == _HEAD and isinstance(self.exception(), HttpProcessingError):
            self.stray = True
            self._left = _DROP
            return True
        return False

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        # aiohttp's `data_received` queues each response head here, with the body's stream.
        super().feed_data(data, size)
        if self._left == _UNFRAMED:
            return
        message, payload = data
        if message.code == 101 or message.upgrade:
            self._left = _UNFRAMED  # another protocol from here on
        elif message.code < 200:
            self._left = _HEAD  # an interim response: the final one follows
        elif payload is EMPTY_PAYLOAD:
            self._left = 0  # HEAD, 204, 304: no body whatever the headers say
        elif message.chunked or "Transfer-Encoding" in message.headers:
            self._left = _UNFRAMED
        else:
            declared = message.headers.get("Content-Length")
            try:
                # The parser has taken the body bytes of this read already.
                self._left = max(int(declared) - payload.total_bytes, 0)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self._left = _UNFRAMED  # none (read until close), or one the parser took as is

    def _overrun(self, surplus: int) -> None:
        self.overran = True
        self.overran_at = self.requests
        self._left = _DROP
        self.force_close()  # never pooled: released, the connection is closed
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.warning(
            "upstream %s sent more data than its Content-Length declared (%d bytes or more): "
            "response cut at the declared length, connection closed",
            peer[:2] if peer else "?",
            surplus,
        )
        payload = self._payload  # aiohttp's: the last response's body stream
        if self.transport is not None and (payload is None or payload.is_eof()):
            # The body is all with its reader: close now, which is also what ends a connection
            # that idles in the pool. A body the parser still holds back (its reader was full)
            # keeps the connection until the response is released.
            self.transport.close()


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, which already closes connections idle for `keepalive_timeout`, plus:
    a shorter idle limit per origin learnt from its `Keep-Alive: timeout=`, a note on the attempt
    of whether its connection was reused, and no pooled connection for an attempt that needs a
    new one. Overrides aiohttp's `_get` and reads its `_conns` (aiohttp is pinned)."""

    def __init__(self, *, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(keepalive_timeout=idle_timeout, **kwargs)
        # aiohttp's protocol factory, replaced to hold responses to their Content-Length.
        self._factory = cast(
            "functools.partial[ResponseHandler]",
            functools.partial(_ResponseHandler, loop=self._loop),
        )
        self._idle_timeout = idle_timeout
        self._limits: dict[Origin, float] = {}  # origins that announced a shorter timeout
        self._announced: dict[str, float] = {}  # Keep-Alive values already parsed

    def learn(self, origin: Origin, keep_alive: str) -> None:
        """Note the Keep-Alive header of a response from `origin`."""
        limit = self._announced.get(keep_alive)
        if limit is None:
            if len(self._announced) >= 64:
                self._announced.clear()  # upstreams send one value or few: stays tiny anyway
            limit = idle_limit(self._idle_timeout, announced_timeout(keep_alive))
            self._announced[keep_alive] = limit
        if limit < self._idle_timeout:
            if self._limits.get(origin) != limit:
                if len(self._limits) >= 4096:
                    self._limits.clear()
                self._limits[origin] = limit
        elif origin in self._limits:
            del self._limits[origin]

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.protocol = conn.protocol
        return conn

    async def _get(
        self, key: ConnectionKey, traces: list[Trace]
    ) -> aiohttp.connector.Connection | None:
        attempt = _ATTEMPT.get()
        if attempt is not None and attempt.fresh:
            return None
        limit = self._limits.get((key.host, key.port, key.is_ssl))
        if limit is not None and (conns := self._conns.get(key)):
            # Oldest first (released connections are appended): drop those idle too long.
            too_old = monotonic() - limit
            while conns and conns[0][1] <= too_old:
                proto, _ = conns.popleft()
                proto.close()
        conn = await super()._get(key, traces)
        if conn is not None and attempt is not None:
            attempt.reused = True
        return conn


def _stray_head(attempt: _Attempt) -> bool:
    """Whether the attempt's connection failed on bytes where the response head was due. On a
    reused connection they are, as a rule, the previous response's surplus that arrived after it
    (`_ResponseHandler`): not this response's first byte, so the request may be sent again as
    when the connection had closed under it."""
    protocol = attempt.protocol
    return isinstance(protocol, _ResponseHandler) and protocol.stray


class _TrackedBody:
    """A streamed request body that remembers whether any of it has been read for sending."""

    __slots__ = ("_it", "started")

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._it = body.__aiter__()
        self.started = False

    def __aiter__(self) -> _TrackedBody:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        return await self._it.__anext__()


def _before_response(exc: BaseException) -> bool:
    """Whether an error of a request means its connection failed before any byte of the response:
    the peer closed or reset it, as when it had closed the idle connection first."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # A response head cut short is carried as the partial message.
        return not isinstance(exc.message, RawResponseMessage)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False  # connecting failed: no pooled connection was involved
    if isinstance(exc, aiohttp.client_exceptions.ClientConnectionResetError):
        return True  # writing the request to a connection already closing
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _RESET_ERRNOS


class UpstreamResponse:
    __slots__ = ("_permit", "_protocol", "_request_no", "_resp", "headers", "status")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        permit: Permit | None = None,
        protocol: ResponseHandler | None = None,
    ) -> None:
        self._resp = resp
        # Its connection's, to tell `overran`; the connection may serve later requests.
        self._protocol = protocol
        self._request_no = protocol.requests if isinstance(protocol, _ResponseHandler) else 0
        # The request's share of its route's connections and its key's cap: held until the
        # response is released or closed, which is when its connection is free again.
        self._permit = permit
        self.status = resp.status
        self.headers: list[tuple[bytes, bytes]] = [
            (name.lower(), value) for name, value in resp.raw_headers
        ]

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    @property
    def overran(self) -> bool:
        """True once the upstream sent more body than its Content-Length declares: the body read
        is cut at the declared length and the connection closed, and the response is not one to
        store. Known by the time the body's last byte is read when the surplus came with it; a
        surplus sent later still closes the connection, but may come after the body was used."""
        protocol = self._protocol
        return (
            isinstance(protocol, _ResponseHandler)
            and protocol.overran_at == self._request_no
            and protocol.overran
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError when the upstream breaks off mid-body."""
        try:
            async for chunk in self._resp.content.iter_chunked(READ_CHUNK):
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError(502, f"upstream broke off the response body: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamError(504, "upstream stopped sending the response body") from exc

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body if it fits in `limit` bytes, else None (the rest is left unread)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self._resp.release()
        self._free()

    def close(self) -> None:
        # Closing (not releasing) drops the connection: used when the body was not read to the end.
        self._resp.close()
        self._free()

    def _free(self) -> None:
        permit = self._permit
        if permit is not None:
            self._permit = None
            permit.release()

    def __del__(self) -> None:
        # A response dropped without release (a cancellation at an unlucky moment) must not keep
        # its route's slot forever.
        with contextlib.suppress(Exception):  # at interpreter exit the loop may be gone
            self._free()


class UpstreamClient:
    """`pool_size` is each route's default limit of upstream connections (see `bulkhead`);
    `deny_networks` are the addresses no connection may go to, whatever the host's name;
    `keepalive_timeout` is how long an idle connection is kept for reuse (less when its upstream
    announces less); `on_retry` is called when a request is sent again on a new connection."""

    def __init__(
        self,
        *,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        pool_timeout: float = 5.0,
        max_requests_per_key: int = 128,
        deny_networks: tuple[Network, ...] = (),
        keepalive_timeout: float = 4.0,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive_timeout = keepalive_timeout
        self._on_retry = on_retry
        self._read_timeout = read_timeout
        self.bulkheads = Bulkheads(
            route_limit=pool_size, key_limit=max_requests_per_key, wait=pool_timeout
        )
        self._deny = deny_networks
        self._denied_logged: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        # For routes that opt in to private upstreams (allow_private_upstream): no deny list.
        self._open_session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = self._new_session(self._deny)
        self._open_session = self._new_session(()) if self._deny else self._session

    def _guarded_socket(self, addr_info: AddrInfo) -> socket.socket:
        """A socket for `addr_info`, unless its address is denied: checked on the address about
        to be connected to, after DNS, so neither a host's name nor a cached or rebound lookup
        gets past it."""
        family, type_, proto, _, sockaddr = addr_info
        if address_denied(str(sockaddr[0]), self._deny):
            raise _AddressNotAllowed(str(sockaddr[0]))
        return socket.socket(family=family, type=type_, proto=proto)

    def _new_session(self, deny: tuple[Network, ...]) -> aiohttp.ClientSession:
        connector = _Connector(
            # Below the idle timeout of typical upstreams (Node's 5 s), so that the upstream does
            # not close a connection just as a request is sent on it.
            idle_timeout=self._keepalive_timeout,
            # No shared limit: each route has its own (`bulkhead`), so that one upstream that
            # hangs cannot hold the connections every other route needs.
            limit=0,
            limit_per_host=0,
            socket_factory=self._guarded_socket if deny else None,
            ttl_dns_cache=30,
            enable_cleanup_closed=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
            ),
            read_bufsize=READ_CHUNK,
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
            max_headers=256,
        )
        # aiohttp would send an idempotent request again itself, on whatever pooled connection
        # comes next (often one the upstream has closed as well): `_send` retries instead, once,
        # only after a reused connection failed, and on a new connection.
        session._retry_connection = False
        return session

    async def close(self) -> None:
        for session in {self._session, self._open_session}:
            if session is not None:
                await session.close()
        self._session = self._open_session = None

    async def request(
        self,
        method: str,
        target: UpstreamTarget,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-route socket read timeout, not a deadline
        route: RouteConfig | None = None,
        key_id: int | None = None,
    ) -> UpstreamResponse:
        """Send the request; `route` and `key_id` (the API key it is made for) subject it to the
        bulkheads. Raises UpstreamError (UpstreamBusy: no connection within the bulkheads)."""
        session = self._session
        if session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        permit: Permit | None = None
        if route is not None:
            if route.allow_private_upstream:
                session = self._open_session or session
            try:
                permit = await self.bulkheads.acquire(
                    route.id, route.max_upstream_connections, key_id
                )
            except Busy as exc:
                raise UpstreamBusy(_busy_detail(exc, route)) from None
        try:
            resp, protocol = await self._send(session, method, target, headers, body, timeout)
            keep_alive = resp.headers.get("Keep-Alive")
            if keep_alive is not None and isinstance(connector := session.connector, _Connector):
                connector.learn((target.host, target.port, target.scheme == "https"), keep_alive)
            return UpstreamResponse(resp, permit, protocol)
        except BaseException:
            if permit is not None:
                permit.release()
            raise

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: UpstreamTarget,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None,
        timeout: float | None,  # noqa: ASYNC109 - a per-route socket read timeout, not a deadline
    ) -> tuple[aiohttp.ClientResponse, ResponseHandler | None]:
        # Built from parts, never by joining strings: the host can only ever be the route's host.
        path, _, query = target.path_and_query.partition("?")
        url = URL.build(
            scheme=target.scheme,
            host=target.host,
            port=target.port,
            path=path,
            query_string=query,
            encoded=True,
        )
        hdrs: CIMultiDict[str] = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
        )
        req_timeout = None
        if timeout is not None:
            req_timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(self._connect_timeout, timeout), sock_read=timeout
            )
        tracked = None if body is None or isinstance(body, bytes) else _TrackedBody(body)
        data = body if tracked is None else tracked
        sock_timeout = req_timeout if req_timeout is not None else aiohttp.helpers.sentinel
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            for last in (False, True):
                try:
                    resp = await session.request(
                        method,
                        url,
                        headers=hdrs,
                        data=data,
                        allow_redirects=False,
                        compress=None,
                        chunked=None,
                        timeout=sock_timeout,
                    )
                    break
                except aiohttp.ClientError as exc:
                    # The upstream closed a pooled connection as the request went out (its idle
                    # timeout ran out first): once more on a new connection, if replayable.
                    if last or not (
                        attempt.reused
                        and (_before_response(exc) or _stray_head(attempt))
                        and may_replay(
                            method, body_streamed=None if tracked is None else tracked.started
                        )
                    ):
                        raise
                    log.debug(
                        "retrying %s to upstream %s:%d on a new connection: the reused one "
                        "failed (%s)",
                        method,
                        target.host,
                        target.port,
                        exc,
                    )
                    if self._on_retry is not None:
                        self._on_retry()
                    attempt.fresh = True
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamError(504, f"upstream {target.host}:{target.port} timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _AddressNotAllowed):
                self._log_denied(target, exc.os_error.address)
                raise UpstreamAddressDenied(
                    f"upstream {target.host}:{target.port} resolves to "
                    f"{exc.os_error.address}, which UPSTREAM_DENY_NETWORKS refuses"
                ) from exc
            raise UpstreamError(
                502, f"upstream {target.host}:{target.port} refused or unreachable: {exc.os_error}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"upstream {target.host}:{target.port} failed: {exc}") from exc
        finally:
            _ATTEMPT.reset(token)
        return resp, attempt.protocol

    def _log_denied(self, target: UpstreamTarget, address: str) -> None:
        """Tell the operator once per host and address (a route's every request would repeat it)."""
        seen = (target.host, address)
        if seen in self._denied_logged:
            return
        if len(self._denied_logged) >= 1024:
            self._denied_logged.clear()
        self._denied_logged.add(seen)
        log.warning(
            "refused to connect to upstream %s:%d at %s: the address is in UPSTREAM_DENY_NETWORKS "
            "(a route may opt in with allow_private_upstream)",
            target.host,
            target.port,
            address,
        )


def _busy_detail(exc: Busy, route: RouteConfig) -> str:
    if exc.reason == "key":
        return (
            f"this API key already has {exc.limit} requests waiting on upstreams, the most one "
            "key may have at a time"
        )
    return f"all {exc.limit} upstream connections of route {route.name!r} are in use"
