"""The data plane: `/g/{route}/{path}` as a plain ASGI callable in front of FastAPI.

One request, top to bottom (each step either lets the request go on or answers it):

  parse + canonicalise path → route → method/pattern → framing → key → admission →
  cache lookup → upstream (streamed both ways) → response → metrics + log (after the response)

Everything the steps read comes from the in-memory snapshot; nothing here touches SQL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from fnmatch import fnmatchcase
from typing import Any

from heliox.core.headers import (
    client_ip,
    downstream_response_headers,
    has_conflicting_framing,
    header_value,
    upstream_request_headers,
)
from heliox.core.paths import BadPath, join_upstream_path, parse_gateway_path
from heliox.gateway.responses import Headers, send_problem
from heliox.gateway.upstream_client import UpstreamError, UpstreamTarget
from heliox.runtime import Runtime
from heliox.snapshot import KeyConfig, RouteConfig, hash_key

log = logging.getLogger("heliox.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/g/"
VIA = b"1.1 heliox"
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_KEY_LENGTH = 256


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class Exchange:
    """What one request accumulates for its log row and metrics."""

    __slots__ = (
        "body_error",
        "bytes_in",
        "bytes_out",
        "cache_status",
        "client_ip",
        "key",
        "method",
        "path",
        "request_id",
        "route",
        "route_name",
        "start",
        "status",
        "upstream_seconds",
        "user_agent",
    )

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


class Gateway:
    def __init__(self, runtime: Runtime, fallback: ASGIApp) -> None:
        self.runtime = runtime
        self.fallback = fallback
        self._seq = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith(PREFIX):
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- the request ---------------------------------------------------------------------------
    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.runtime
        ex = Exchange(scope["method"], time.perf_counter())
        self._seq += 1
        ex.request_id = f"{rt.instance_id}-{self._seq:x}"
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        peer = scope.get("client")
        peer_host = peer[0] if peer else None
        settings = rt.settings
        trusted = settings.trusted_proxy_networks
        ex.client_ip = client_ip(peer_host, header_value(headers, b"x-forwarded-for"), trusted)
        sender = _CountingSend(send, ex)
        try:
            await self._serve(scope, receive, sender, headers, ex, peer_host)
        except ClientGone:
            ex.status = ex.status or 499
        finally:
            ua = header_value(headers, b"user-agent")
            ex.user_agent = ua.decode("latin-1")[:500] if ua else ""
            self._after(ex)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: _CountingSend,
        headers: list[tuple[bytes, bytes]],
        ex: Exchange,
        peer_host: str | None,
    ) -> None:
        rt = self.runtime
        snap = rt.snapshot
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        try:
            gp = parse_gateway_path(raw_path)
        except BadPath as exc:
            await send.problem(400, "Bad request path", exc.detail)
            return
        if gp is None:  # "/g/" with nothing after it
            await send.problem(404, "Unknown route", "the URL must be /g/{route}/{path}")
            return
        ex.route_name = gp.route
        ex.path = gp.path
        route = snap.routes.get(gp.route)
        if route is None:
            await send.problem(
                404, "Unknown route", f"no route is named {gp.route!r}; see GET /admin/routes"
            )
            return
        ex.route = route
        method = ex.method
        if method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            await send.problem(
                405,
                "Method not allowed",
                f"route {route.name!r} does not accept {method}",
                [(b"allow", allow)],
            )
            return
        if route.path_pattern != "/*" and not fnmatchcase(gp.path, route.path_pattern):
            await send.problem(
                404, "Path not routed", f"route {route.name!r} only serves {route.path_pattern}"
            )
            return
        framing = has_conflicting_framing(headers)
        if framing is not None:
            await send.problem(400, "Bad request framing", framing)
            return

        if not route.is_public:
            key = self._authenticate(headers)
            if key is None:
                await send.problem(
                    401,
                    "Unauthorized",
                    "a valid API key is required in the X-API-Key header",
                    [(b"www-authenticate", b'ApiKey header="X-API-Key"')],
                )
                return
            ex.key = key

        # Request body: refuse what is declared too large before reading any of it.
        limit = (
            route.max_request_body_bytes
            if route.max_request_body_bytes is not None
            else rt.settings.max_request_body_bytes
        )
        declared = header_value(headers, b"content-length")
        has_te = header_value(headers, b"transfer-encoding") is not None
        if declared is not None and int(declared) > limit:
            await send.problem(
                413,
                "Request body too large",
                f"the body limit of route {route.name!r} is {limit} bytes",
            )
            return
        send_body = method not in BODYLESS_METHODS and (has_te or (declared not in (None, b"0")))

        await self._forward(
            scope,
            receive,
            send,
            headers,
            ex,
            route,
            gp.encoded,
            peer_host,
            limit if send_body else None,
        )

    def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> KeyConfig | None:
        raw: bytes | None = None
        for name, value in headers:
            if name == b"x-api-key":
                if raw is not None:  # two keys: ambiguous, refuse
                    return None
                raw = value
        if raw is None or not raw or len(raw) > MAX_KEY_LENGTH:
            return None
        key = self.runtime.snapshot.keys.get(hash_key(raw))
        if key is None:
            return None
        if key.expires_at is not None and key.expires_at.timestamp() <= time.time():
            return None
        return key

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: _CountingSend,
        headers: list[tuple[bytes, bytes]],
        ex: Exchange,
        route: RouteConfig,
        encoded_path: str,
        peer_host: str | None,
        body_limit: int | None,
    ) -> None:
        rt = self.runtime
        query: bytes = scope.get("query_string", b"")
        path_qs = join_upstream_path(route.upstream_base_path, encoded_path)
        if query:
            path_qs += "?" + query.decode("latin-1")
        target = UpstreamTarget(
            route.upstream_scheme, route.upstream_host, route.upstream_port, path_qs
        )
        host = header_value(headers, b"host") or b""
        peer_trusted = _is_trusted(peer_host, rt)
        drop = frozenset() if body_limit is not None else frozenset({b"content-length"})
        up_headers = upstream_request_headers(
            headers,
            client_ip=ex.client_ip,
            peer_is_trusted=peer_trusted,
            proto=scope.get("scheme", "http"),
            host=host,
            via=VIA,
            drop=drop,
        )
        up_headers.append((b"x-request-id", ex.request_id.encode()))
        body = _body_stream(receive, ex, body_limit) if body_limit is not None else None
        t0 = time.perf_counter()
        try:
            resp = await rt.upstream.request(
                ex.method, target, up_headers, body, timeout=route.timeout_seconds
            )
        except (BodyTooLarge, ClientGone, UpstreamError) as exc:
            # aiohttp may wrap what the body stream raised: the stream's own flag is the truth.
            if ex.body_error is BodyTooLarge or isinstance(exc, BodyTooLarge):
                await send.problem(
                    413,
                    "Request body too large",
                    f"the body limit of route {route.name!r} is {body_limit} bytes",
                )
                return
            if ex.body_error is ClientGone or isinstance(exc, ClientGone):
                raise ClientGone from exc
            assert isinstance(exc, UpstreamError)
            rt.metrics.upstream_errors[(route.name, exc.status)] += 1
            title = "Bad gateway" if exc.status == 502 else "Gateway timeout"
            await send.problem(exc.status, title, exc.detail)
            return
        ex.upstream_seconds = time.perf_counter() - t0
        ex.cache_status = "BYPASS"
        out = downstream_response_headers(resp.headers)
        out.append((b"via", VIA))
        out.append((b"x-cache", b"BYPASS"))
        out.append((b"x-request-id", ex.request_id.encode()))
        try:
            await send.start(resp.status, out)
            if ex.method == "HEAD":
                await send.body(b"", more=False)
                return
            async for chunk in resp.chunks():
                await send.body(chunk, more=True)
            await send.body(b"", more=False)
        except UpstreamError:
            # Headers are out: the only honest signal left is to abort the client connection.
            resp.close()
            raise
        finally:
            resp.release()

    # --- after the response --------------------------------------------------------------------
    def _after(self, ex: Exchange) -> None:
        rt = self.runtime
        elapsed = time.perf_counter() - ex.start
        rt.metrics.observe_request(
            ex.route_name or "-", ex.status, elapsed, ex.cache_status, ex.upstream_seconds
        )
        key = ex.key
        route = ex.route
        rt.logs.enqueue(
            (
                time.time(),
                ex.request_id,
                key.tenant_id if key else None,
                key.id if key else None,
                route.id if route else None,
                ex.route_name[:100],
                ex.method,
                ex.path[:2000],
                ex.status,
                ex.cache_status,
                round(elapsed * 1000, 3),
                round(ex.upstream_seconds * 1000, 3) if ex.upstream_seconds is not None else None,
                ex.bytes_in,
                ex.bytes_out,
                ex.client_ip,
                ex.user_agent,
            )
        )


class _CountingSend:
    """Wraps ASGI send: records status and bytes, maps a vanished client to ClientGone."""

    __slots__ = ("_send", "ex", "started")

    def __init__(self, send: Send, ex: Exchange) -> None:
        self._send = send
        self.ex = ex
        self.started = False

    async def start(self, status: int, headers: Headers) -> None:
        self.ex.status = status
        self.started = True
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
        with contextlib.suppress(OSError):
            self.ex.bytes_out += await send_problem(
                self._send, status, title, detail, headers, **ext
            )


async def _body_stream(receive: Receive, ex: Exchange, limit: int) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ex.body_error = ClientGone
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            ex.bytes_in += len(chunk)
            if ex.bytes_in > limit:
                ex.body_error = BodyTooLarge
                raise BodyTooLarge
            yield chunk
        if not message.get("more_body", False):
            return


def _is_trusted(peer_host: str | None, rt: Runtime) -> bool:
    nets = rt.settings.trusted_proxy_networks
    if not nets or not peer_host:
        return False
    import ipaddress

    try:
        addr = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    return any(addr in net for net in nets)
