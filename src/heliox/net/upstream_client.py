"""The upstream HTTP client behind one small interface: `request()` and `UpstreamResponse`.

HTTP/1.1 over pooled connections (`heliox.net.http1`): no redirects followed, no environment
proxies, no decompression: the gateway relays bytes, it does not reinterpret them. It replaced
aiohttp's client, which cost about 140 µs of CPU per request more than the exchange itself
(`bench/round_trips.py`).

Connections are bounded per route and per API key (`heliox.net.bulkhead`), not by one pool
for everything; and no connection goes to an address in UPSTREAM_DENY_NETWORKS, whatever name led
to it (checked on each resolved address, just before connecting to it).

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
import ipaddress
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from time import monotonic
from typing import NamedTuple

from aiohappyeyeballs import AddrInfoType as AddrInfo
from aiohappyeyeballs import start_connection

from heliox.core.headers import header_value
from heliox.core.keepalive import announced_timeout, idle_limit, may_replay
from heliox.core.netdeny import Network, address_denied
from heliox.net.bulkhead import Bulkheads, Busy, Permit
from heliox.net.http1 import ConnectionClosed, Http1Connection, ResponseError
from heliox.snapshot import RouteConfig

log = logging.getLogger("heliox.upstream")

BUSY_RETRY_AFTER = 1  # seconds: a slot frees as soon as any one of the requests in flight ends
_TITLES = {502: "Bad gateway", 503: "Service unavailable", 504: "Gateway timeout"}
DNS_TTL = 30.0  # seconds a resolved name is reused
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's recommended connection attempt delay
DNS_CACHE_SIZE = 1024
# How often idle pooled connections are looked at, at most (they are closed once past their limit).
IDLE_SWEEP_INTERVAL = 1.0


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


class UpstreamTarget(NamedTuple):
    """Where one upstream request goes. A named tuple, immutable and built per MISS: a frozen
    dataclass sets each field through object.__setattr__, several times the cost."""

    scheme: str
    host: str
    port: int
    path_and_query: str  # already percent-encoded


# An origin as the pool knows it: (host, port, TLS).
Origin = tuple[str, int, bool]


def _before_response(exc: BaseException) -> bool:
    """Whether an exchange failed before any byte of its response arrived: the upstream closed or
    reset the connection, as when it had closed the idle connection first."""
    if isinstance(exc, ConnectionClosed):
        return exc.before_response
    return isinstance(exc, ConnectionError)  # writing to a connection already closing


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


class _Exchange:
    """What a response holds of its request: the connection, and the body still being sent."""

    __slots__ = ("body_task", "conn", "origin", "request_no")

    def __init__(
        self, conn: Http1Connection, origin: Origin, body_task: asyncio.Task[None] | None
    ) -> None:
        self.conn = conn
        self.origin = origin
        self.body_task = body_task
        self.request_no = conn.requests


class UpstreamResponse:
    __slots__ = (
        "_client",
        "_exchange",
        "_held",
        "_permit",
        "_timeout",
        "content_length",
        "headers",
        "status",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        exchange: _Exchange,
        client: UpstreamClient,
        timeout: float,
        permit: Permit | None = None,
    ) -> None:
        self.status = status
        self.headers = headers  # names in lower case
        self.content_length = content_length  # as declared
        self._exchange = exchange
        self._held = True  # the connection is this response's until released or closed
        self._client = client
        self._timeout = timeout
        # The request's share of its route's connections and its key's cap: held until the
        # response is released or closed, which is when its connection is free again.
        self._permit = permit

    @property
    def overran(self) -> bool:
        """True once the upstream sent more body than its Content-Length declares: the body read
        is cut at the declared length and the connection closed, and the response is not one to
        store. Known by the time the body's last byte is read when the surplus came with it; a
        surplus sent later still closes the connection, but may come after the body was used."""
        exchange = self._exchange
        return exchange.conn.overran and exchange.conn.overran_at == exchange.request_no

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError when the upstream breaks off mid-body."""
        if not self._held:
            return
        conn = self._exchange.conn
        try:
            while True:
                data = await conn.read(self._timeout)
                if not data:
                    return
                yield data
        except (ConnectionClosed, ResponseError, OSError) as exc:
            raise UpstreamError(502, f"upstream broke off the response body: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamError(504, "upstream stopped sending the response body") from exc

    @property
    def body_done(self) -> bool:
        """The body has been read to its end: the chunk just read was the last one. A relay
        then ends the client's answer with it rather than with an empty message of its own."""
        return self._held and self._exchange.conn.drained

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
        """Done with the response: its connection goes back to the pool when the response was
        read to its end (and the request's body sent whole), else it is closed."""
        if self._held:
            self._held = False
            self._client.give_back(self._exchange)
        self._free()

    def close(self) -> None:
        """Done with the response, which was not read to its end: its connection is dropped."""
        if self._held:
            self._held = False
            if self._exchange.body_task is not None:
                self._exchange.body_task.cancel()
            self._exchange.conn.abort()
        self._free()

    def _free(self) -> None:
        permit = self._permit
        if permit is not None:
            self._permit = None
            permit.release()

    def __del__(self) -> None:
        # A response dropped without release (a cancellation at an unlucky moment) must not keep
        # its route's slot, or its connection, forever. Runs for every response: a try costs
        # nothing until it catches, suppress() builds an object and calls two methods.
        try:
            if self._held:
                self._held = False
                self._exchange.conn.abort()
            self._free()
        except Exception:  # at interpreter exit the loop may be gone
            pass


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
        # Below the idle timeout of typical upstreams (Node's 5 s), so that the upstream does not
        # close a connection just as a request is sent on it.
        self._keepalive_timeout = keepalive_timeout
        self._on_retry = on_retry
        self._read_timeout = read_timeout
        self.bulkheads = Bulkheads(
            route_limit=pool_size, key_limit=max_requests_per_key, wait=pool_timeout
        )
        self._deny = deny_networks
        self._denied_logged: set[tuple[str, str]] = set()
        self._started = False
        # Idle connections per origin, with when each became idle; the most recent last. No
        # shared limit: each route has its own (`bulkhead`), so that one upstream that hangs
        # cannot hold the connections every other route needs.
        self._idle: dict[Origin, deque[tuple[Http1Connection, float]]] = {}
        self._limits: dict[Origin, float] = {}  # origins that announced a shorter timeout
        self._announced: dict[bytes, float] = {}  # Keep-Alive values already parsed
        self._sweep: asyncio.TimerHandle | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._host_fields: dict[tuple[str, int, str], bytes] = {}
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self._idle.values():
            for conn, _ in conns:
                conn.close()
        self._idle.clear()

    # --- the request --------------------------------------------------------------------------
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
        if not self._started:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        permit: Permit | None = None
        deny = self._deny
        if route is not None:
            if route.allow_private_upstream:
                deny = ()
            try:
                permit = await self.bulkheads.acquire(
                    route.id, route.max_upstream_connections, key_id
                )
            except Busy as exc:
                raise UpstreamBusy(_busy_detail(exc, route)) from None
        try:
            return await self._send(method, target, headers, body, timeout, deny, permit)
        except BaseException:
            if permit is not None:
                permit.release()
            raise

    async def _send(
        self,
        method: str,
        target: UpstreamTarget,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None,
        timeout: float | None,  # noqa: ASYNC109 - a per-route socket read timeout, not a deadline
        deny: tuple[Network, ...],
        permit: Permit | None,
    ) -> UpstreamResponse:
        origin = (target.host, target.port, target.scheme == "https")
        read_timeout = self._read_timeout if timeout is None else timeout
        connect_timeout = (
            self._connect_timeout if timeout is None else min(self._connect_timeout, timeout)
        )
        tracked = None if body is None or isinstance(body, bytes) else _TrackedBody(body)
        head, chunked = self._request_head(method, target, headers, body)
        fresh = False
        for last in (False, True):
            conn = None if fresh else self._checkout(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target, deny, connect_timeout)
            try:
                exchange, status, fields, length = await self._exchange(
                    conn, origin, method, head, body, tracked, chunked, read_timeout
                )
            except TimeoutError as exc:
                conn.abort()
                raise UpstreamError(504, f"upstream {target.host}:{target.port} timed out") from exc
            except (ConnectionClosed, ResponseError, OSError) as exc:
                conn.abort()
                # The upstream closed a pooled connection as the request went out (its idle
                # timeout ran out first): once more on a new connection, if replayable.
                if last or not (
                    reused
                    and (_before_response(exc) or conn.stray)
                    and may_replay(
                        method, body_streamed=None if tracked is None else tracked.started
                    )
                ):
                    raise UpstreamError(
                        502, f"upstream {target.host}:{target.port} failed: {exc}"
                    ) from exc
                log.debug(
                    "retrying %s to upstream %s:%d on a new connection: the reused one failed (%s)",
                    method,
                    target.host,
                    target.port,
                    exc,
                )
                if self._on_retry is not None:
                    self._on_retry()
                fresh = True
                continue
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(status, fields, length, exchange, self, read_timeout, permit)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _exchange(
        self,
        conn: Http1Connection,
        origin: Origin,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        tracked: _TrackedBody | None,
        chunked: bool,
        timeout: float,  # noqa: ASYNC109 - the socket read timeout, from the request on
    ) -> tuple[_Exchange, int, list[tuple[bytes, bytes]], int | None]:
        conn.start(head_request=method == "HEAD")
        body_task: asyncio.Task[None] | None = None
        if tracked is not None:
            conn.write(head)
            body_task = asyncio.ensure_future(_send_body(conn, tracked, chunked=chunked))
            body_task.add_done_callback(_observed)
        elif isinstance(body, bytes) and body:
            conn.write(head + body)
        else:
            conn.write(head)
        answer = conn.head_future()
        try:
            if body_task is not None and not answer.done():
                # No read timeout while the body goes out (it has limits of its own, see
                # `heliox.gateway.exchange.body_stream`): the upstream's time to answer counts
                # from the body's end. An answer that comes before it is taken as it comes.
                # A body that fails aborts the connection (`_send_body`), which fails `answer`;
                # the handler below then raises the body's own failure.
                await asyncio.wait((answer, body_task), return_when=asyncio.FIRST_COMPLETED)
            response = await conn.head(timeout)
        except BaseException:
            if body_task is not None:
                if body_task.done() and not body_task.cancelled():
                    failure = body_task.exception()
                    # The client's body failed (too large, too slow, gone): that is the story.
                    if failure is not None and not isinstance(failure, OSError):
                        raise failure from None
                body_task.cancel()
            raise
        keep_alive = header_value(response.headers, b"keep-alive")
        if keep_alive is not None:
            self._learn(origin, keep_alive)
        return (
            _Exchange(conn, origin, body_task),
            response.status,
            response.headers,
            response.length,
        )

    def _request_head(
        self,
        method: str,
        target: UpstreamTarget,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> tuple[bytes, bool]:
        """The request line and fields, as bytes, and whether the body goes chunked (streamed,
        with no declared length). Host is the route's; the framing is the body's."""
        host_key = (target.host, target.port, target.scheme)
        host = self._host_fields.get(host_key)
        if host is None:
            host = b"host: " + _host_value(target).encode("idna") + b"\r\n"
            if len(self._host_fields) >= 1024:
                self._host_fields.clear()
            self._host_fields[host_key] = host
        fields = [
            b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target.path_and_query.encode("ascii")),
            host,
        ]
        in_memory = body is None or isinstance(body, bytes)
        has_length = False
        for name, value in headers:
            if name == b"host" or name == b"transfer-encoding":
                continue  # the route's host; framing is this client's
            if name == b"content-length":
                if in_memory:
                    continue  # the body's own length, below
                has_length = True
            fields.append(name + b": " + value + b"\r\n")
        chunked = not in_memory and not has_length
        if isinstance(body, bytes) and body:
            fields.append(b"content-length: %d\r\n" % len(body))
        elif chunked:
            fields.append(b"transfer-encoding: chunked\r\n")
        fields.append(b"\r\n")
        data = b"".join(fields)
        # Every line ends in CRLF, and nothing else holds CR, LF or NUL: no value can add a field
        # or end the head early (the pipeline checks values too; this is the last line of it).
        if data.count(b"\n") != len(fields) or data.count(b"\r") != len(fields) or b"\x00" in data:
            raise UpstreamError(502, "a request field holds CR, LF or NUL: not sent upstream")
        return data, chunked

    # --- connections --------------------------------------------------------------------------
    def _checkout(self, origin: Origin) -> Http1Connection | None:
        conns = self._idle.get(origin)
        if not conns:
            return None
        too_old = monotonic() - self._limits.get(origin, self._keepalive_timeout)
        while conns:
            conn, since = conns.pop()  # the most recently used: the least likely to be closed
            if conn.closed:
                continue
            if since <= too_old:
                # This one, and every older one, has been idle too long.
                conn.close()
                while conns:
                    conns.pop()[0].close()
                break
            return conn
        del self._idle[origin]
        return None

    def give_back(self, exchange: _Exchange) -> None:
        """A released response's connection: pooled when it may carry another request."""
        conn = exchange.conn
        task = exchange.body_task
        if task is not None and (not task.done() or task.cancelled() or task.exception()):
            task.cancel()
            conn.abort()  # the request's body is not all sent: the connection is in no state
            return
        if not conn.reusable or not self._started:
            conn.close()
            return
        if self._limits.get(exchange.origin, self._keepalive_timeout) <= 0:
            conn.close()  # the upstream announced it keeps nothing idle worth reusing
            return
        conns = self._idle.get(exchange.origin)
        if conns is None:
            conns = self._idle[exchange.origin] = deque()
        conns.append((conn, monotonic()))
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close idle connections past their limit, so none is left for the upstream to close."""
        self._sweep = None
        now = monotonic()
        for origin in list(self._idle):
            conns = self._idle[origin]
            too_old = now - self._limits.get(origin, self._keepalive_timeout)
            while conns and (conns[0][0].closed or conns[0][1] <= too_old):
                conns.popleft()[0].close()
            if not conns:
                del self._idle[origin]
        if self._idle:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(IDLE_SWEEP_INTERVAL, self._sweep_idle)

    def _learn(self, origin: Origin, keep_alive: bytes) -> None:
        """Note the Keep-Alive header of a response from `origin`."""
        limit = self._announced.get(keep_alive)
        if limit is None:
            if len(self._announced) >= 64:
                self._announced.clear()  # upstreams send one value or few: stays tiny anyway
            announced = announced_timeout(keep_alive.decode("latin-1"))
            limit = idle_limit(self._keepalive_timeout, announced)
            self._announced[keep_alive] = limit
        if limit < self._keepalive_timeout:
            if self._limits.get(origin) != limit:
                if len(self._limits) >= 4096:
                    self._limits.clear()
                self._limits[origin] = limit
        elif origin in self._limits:
            del self._limits[origin]

    async def _connect(
        self,
        target: UpstreamTarget,
        deny: tuple[Network, ...],
        timeout: float,  # noqa: ASYNC109 - resolving, connecting and TLS together
    ) -> Http1Connection:
        """A new connection to `target`. Every address its host resolves to that `deny` does not
        refuse (checked on the address about to be connected to, after DNS, so neither a host's
        name nor a cached or rebound lookup gets past it), tried as RFC 8305 says: the next one
        starts 0.25 s after the last, families interleaved, the first to connect wins."""
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if target.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                infos = await self._resolve(target.host, target.port)
                allowed = [i for i in infos if not (deny and address_denied(str(i[4][0]), deny))]
                if not allowed:
                    denied = str(infos[0][4][0])
                    self._log_denied(target, denied)
                    raise UpstreamAddressDenied(
                        f"upstream {target.host}:{target.port} resolves to {denied}, which "
                        "UPSTREAM_DENY_NETWORKS refuses"
                    )
                sock = await start_connection(
                    allowed, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
                )
                try:
                    _, conn = await loop.create_connection(
                        Http1Connection,
                        sock=sock,
                        ssl=tls,
                        server_hostname=target.host if tls is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
                return conn
        except TimeoutError as exc:
            raise UpstreamError(504, f"upstream {target.host}:{target.port} timed out") from exc
        except OSError as exc:  # no address, refused, unreachable, TLS refused
            raise UpstreamError(
                502, f"upstream {target.host}:{target.port} refused or unreachable: {exc}"
            ) from exc

    async def _resolve(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses of `host`, in the resolver's order; reused for DNS_TTL seconds."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        now = monotonic()
        found = self._dns.get((host, port))
        if found is not None and found[0] > now:
            return found[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[AddrInfo] = []
        seen: set[object] = set()
        for info in infos:
            if info[4] not in seen:
                seen.add(info[4])
                addresses.append(info)
        if len(self._dns) >= DNS_CACHE_SIZE:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL, addresses)
        return addresses

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

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


async def _send_body(conn: Http1Connection, body: _TrackedBody, *, chunked: bool) -> None:
    """Stream a request body: chunked unless the request declared its length."""
    try:
        async for chunk in body:
            if not chunk:
                continue
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
    except BaseException:
        conn.abort()  # a request cut short: the upstream must not take it for a whole one
        raise


def _observed(task: asyncio.Task[None]) -> None:
    """A request body's task may fail after its response was taken (the upstream answered early
    and closed): its failure is the response's business then, not an unretrieved exception."""
    if not task.cancelled():
        task.exception()


def _host_value(target: UpstreamTarget) -> str:
    """The Host field for `target`: the host, bracketed when an IPv6 address, and the port unless
    it is the scheme's default."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _busy_detail(exc: Busy, route: RouteConfig) -> str:
    if exc.reason == "key":
        return (
            f"this API key already has {exc.limit} requests waiting on upstreams, the most one "
            "key may have at a time"
        )
    return f"all {exc.limit} upstream connections of route {route.name!r} are in use"
