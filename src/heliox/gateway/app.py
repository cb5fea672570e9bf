"""The data plane: `/g/{route}/{path}` as a plain ASGI callable in front of FastAPI.

One request, top to bottom (each step either lets the request go on or answers it):

  parse + canonicalise path → route → method/pattern → framing → key → admission →
  cache lookup → upstream (streamed both ways) → response → metrics + log (after the response)

Everything the steps read comes from the in-memory snapshot; nothing here touches SQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from fnmatch import fnmatchcase
from typing import Any

from heliox.core.headers import (
    forwarded_as_sent,
    has_conflicting_framing,
    header_value,
    header_values,
    host_problem,
    peer_is_trusted,
    request_client_ip,
    upstream_request_headers,
)
from heliox.core.paths import BadPath, parse_gateway_path
from heliox.gateway.abuse import AbuseMonitor
from heliox.gateway.admission_step import AdmissionStep
from heliox.gateway.cache_layer import CacheLayer
from heliox.gateway.exchange import ClientGone, Exchange, ProxyRequest, ResponseSink, body_stream
from heliox.gateway.proxy import pass_through
from heliox.gateway.refusals import RefusalGuard
from heliox.metrics import UNKNOWN_ROUTE
from heliox.runtime import Runtime
from heliox.snapshot import KeyConfig, RouteConfig, hash_key
from heliox.state.redis_pipe import start_request_budget

log = logging.getLogger("heliox.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/g/"
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_KEY_LENGTH = 256
DIGEST_MEMO_SIZE = 4096
# nginx's default: a request line over 8 KiB is 414 (granian's own limit is 64 KiB).
MAX_URI_BYTES = 8192
ERROR_LOG_INTERVAL = 5.0  # seconds between two log lines about failed upstream calls of a route
# The client's own X-Request-Id never reaches the upstream: the gateway sends exactly one.
_CLIENT_ONLY = frozenset({b"x-request-id"})
_CLIENT_ONLY_AND_LENGTH = frozenset({b"x-request-id", b"content-length"})
# A client's X-Request-Id is adopted when it is one plain token (a UUID, a trace id, ...), as
# Envoy and Kong's correlation-id plugin do; anything else gets the gateway's own id.
_REQUEST_ID_TOKEN = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class Gateway:
    def __init__(self, runtime: Runtime, fallback: ASGIApp) -> None:
        self.runtime = runtime
        self.fallback = fallback
        self.cache = CacheLayer(
            runtime.cache_deps(),
            lock_timeout=runtime.settings.cache_lock_timeout,
            lock_age=runtime.settings.cache_lock_age,
        )
        self.admission = AdmissionStep(runtime.admission, runtime.settings, runtime.metrics)
        self.admission.fail_open = runtime.fail_open_admissions
        # With Redis, each request may wait for it once (state/redis_pipe.py).
        self._redis_budget = runtime.redis is not None
        self.abuse = AbuseMonitor(runtime)
        self.refusals = RefusalGuard(runtime.settings, runtime.metrics)
        self.abuse.on_slowdown = self.admission.slow_down
        runtime.fill_flights = self.cache.flights
        self._seq = 0
        self._error_logged: dict[str, tuple[float, int]] = {}
        # Raw API key -> SHA-256 digest: hashing every request's key cost more than the lookup.
        self._digests: dict[bytes, str] = {}
        self._plain_vary: dict[tuple[str, ...], bool] = {}
        # Read on every request: an attribute of a pydantic model goes through its __getattr__
        # hook, several times the cost of a plain one. Settings do not change while serving.
        self._trusted_proxies = runtime.settings.trusted_proxy_networks
        self._max_body = runtime.settings.max_request_body_bytes
        # Names this deployment in Via (instances share SECRET_KEY): a request arriving with it
        # has already been through us, so a route pointing back at the gateway is a loop.
        deployment = hashlib.sha256(runtime.settings.secret_key.encode()).hexdigest()[:12]
        self.via_marker = b"heliox-" + deployment.encode()
        self.via = b"1.1 " + self.via_marker

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
                if self.runtime.settings.abuse_action == "multiplier":
                    self.runtime.add_task(asyncio.create_task(self.admission.watch_slowdowns()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.cache.close()
                await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- the request ---------------------------------------------------------------------------
    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.runtime
        if self._redis_budget:
            start_request_budget()
        ex = Exchange(scope["method"], time.perf_counter())
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        given = header_values(headers, b"x-request-id")
        if len(given) == 1 and _REQUEST_ID_TOKEN.fullmatch(given[0]):
            request_id = given[0]
            ex.request_id = request_id.decode("ascii")
        else:
            self._seq += 1
            ex.request_id = f"{rt.instance_id}-{self._seq:x}"
            request_id = ex.request_id.encode("ascii")
        peer = scope.get("client")
        peer_host = peer[0] if peer else None
        ex.client_ip = request_client_ip(peer_host, headers, self._trusted_proxies)
        sink = ResponseSink(send, ex)
        # On every answer, errors included: the id the upstream saw and the log row holds.
        sink.extra_headers.append((b"x-request-id", request_id))
        try:
            await self._serve(scope, receive, sink, headers, ex, peer_host)
        except ClientGone:
            if ex.body_error is ClientGone and not sink.started:
                # granian reports a malformed chunked body as a disconnect: a client still
                # there gets a 400; one really gone gets nothing either way.
                await sink.problem(
                    400,
                    "Bad request body",
                    "the request body was cut short or its chunked framing is malformed",
                    [(b"connection", b"close")],
                )
            ex.status = ex.status or 499
        except asyncio.CancelledError:
            ex.status = ex.status or 503  # cut at the shutdown deadline
            raise
        finally:
            ua = header_value(headers, b"user-agent")
            ex.user_agent = ua.decode("latin-1")[:500] if ua else ""
            self._after(ex)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        sink: ResponseSink,
        headers: list[tuple[bytes, bytes]],
        ex: Exchange,
        peer_host: str | None,
    ) -> None:
        rt = self.runtime
        snap = rt.snapshot
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if len(raw_path) + len(scope.get("query_string", b"")) > MAX_URI_BYTES:
            await sink.problem(
                414, "URI too long", f"the request target is longer than {MAX_URI_BYTES} bytes"
            )
            return
        try:
            gp = parse_gateway_path(raw_path)
        except BadPath as exc:
            await sink.problem(400, "Bad request path", exc.detail)
            return
        if gp is None:  # "/g/" with nothing after it
            await sink.problem(404, "Unknown route", "the URL must be /g/{route}/{path}")
            return
        ex.route_name = gp.route
        ex.path = gp.path
        route = snap.routes.get(gp.route)
        if route is None:
            await sink.problem(
                404, "Unknown route", f"no route is named {gp.route!r}; see GET /admin/routes"
            )
            return
        ex.route = route
        method = ex.method
        if method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            await sink.problem(
                405,
                "Method not allowed",
                f"route {route.name!r} does not accept {method}",
                [(b"allow", allow)],
            )
            return
        if route.path_pattern != "/*" and not fnmatchcase(gp.path, route.path_pattern):
            await sink.problem(
                404, "Path not routed", f"route {route.name!r} only serves {route.path_pattern}"
            )
            return
        framing = has_conflicting_framing(headers)
        if framing is not None:
            await sink.problem(400, "Bad request framing", framing)
            return
        bad_host = host_problem(headers, http_version=scope.get("http_version"))
        if bad_host is not None:
            await sink.problem(400, "Bad Host header", bad_host)
            return
        if self._looped(headers):
            await sink.problem(
                508,
                "Loop detected",
                f"the request has already passed through this gateway: route {route.name!r} "
                "points back at it",
            )
            return

        if not route.is_public:
            key = self._authenticate(headers)
            if key is None:
                retry = self.refusals.bad_key(ex.client_ip)
                if retry is not None:
                    self.refusals.note_bad_key(ex, retry)
                    await sink.problem(
                        429,
                        "Too many requests without a valid API key",
                        f"this address sent too many requests without a valid API key; retry in "
                        f"{retry} s",
                        [(b"retry-after", b"%d" % retry)],
                    )
                    return
                await sink.problem(
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
            else self._max_body
        )
        declared = header_value(headers, b"content-length")
        has_te = header_value(headers, b"transfer-encoding") is not None
        if declared is not None and int(declared) > limit:
            await sink.problem(
                413,
                "Request body too large",
                f"the body limit of route {route.name!r} is {limit} bytes",
            )
            return
        if not await self.admission.admit(route, ex.key, ex.client_ip, sink):
            return
        send_body = method not in BODYLESS_METHODS and (has_te or (declared not in (None, b"0")))

        await self._forward(
            scope,
            receive,
            sink,
            headers,
            ex,
            route,
            gp.encoded,
            peer_host,
            limit if send_body else None,
        )

    def _looped(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a Via field names this deployment (a loop, no generator: on every request)."""
        marker = self.via_marker
        for name, value in headers:  # noqa: SIM110 - any() would run a generator
            if name == b"via" and marker in value:
                return True
        return False

    def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> KeyConfig | None:
        raw: bytes | None = None
        for name, value in headers:
            if name == b"x-api-key":
                if raw is not None:  # two keys: ambiguous, refuse
                    return None
                raw = value
        if raw is None or not raw or len(raw) > MAX_KEY_LENGTH:
            return None
        digest = self._digests.get(raw)
        if digest is None:
            digest = hash_key(raw)
            if len(self._digests) >= DIGEST_MEMO_SIZE:
                self._digests.clear()  # bounded: unknown keys sprayed at us cannot grow it
            self._digests[raw] = digest
        key = self.runtime.snapshot.keys.get(digest)
        if key is None:
            return None
        if key.expires_at is not None and key.expires_at.timestamp() <= time.time():
            return None
        return key

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        sink: ResponseSink,
        headers: list[tuple[bytes, bytes]],
        ex: Exchange,
        route: RouteConfig,
        encoded_path: str,
        peer_host: str | None,
        body_limit: int | None,
    ) -> None:
        rt = self.runtime
        query: bytes = scope.get("query_string", b"")
        policy = route.cache_policy

        def prepare(keep: frozenset[bytes] | None) -> list[tuple[bytes, bytes]]:
            return self._upstream_headers(scope, headers, ex, route, peer_host, body_limit, keep)

        req = ProxyRequest(
            method=ex.method,
            route=route,
            path=ex.path,
            raw_query=query,
            client_headers=headers,
            prepare=prepare,
            encoded_path=encoded_path,
            lookup_plain=policy is not None
            and self._vary_plain(policy.vary_headers)
            and header_value(headers, b"connection") is None,
            tenant_id=ex.key.tenant_id if ex.key else None,
            ex=ex,
            body=self._body(receive, ex, route, body_limit) if body_limit is not None else None,
            body_limit=body_limit,
        )
        if policy is not None:
            await self.cache.serve(req, sink)
        else:
            await pass_through(rt.upstream, rt.metrics, req, sink)

    def _body(
        self, receive: Receive, ex: Exchange, route: RouteConfig, limit: int
    ) -> AsyncIterator[bytes]:
        """The request body, under the route's timeouts, else the settings'."""
        settings = self.runtime.settings
        min_rate = route.request_body_min_rate
        return body_stream(
            receive,
            ex,
            limit,
            route.timeout_seconds or settings.upstream_read_timeout,
            deadline=route.request_body_timeout_seconds or settings.request_body_timeout,
            min_rate=settings.request_body_min_rate if min_rate is None else min_rate,
            grace=settings.request_body_min_rate_grace,
        )

    def _vary_plain(self, names: tuple[str, ...]) -> bool:
        """Whether every vary header of a policy reaches the upstream as the client sent it."""
        plain = self._plain_vary.get(names)
        if plain is None:
            plain = all(forwarded_as_sent(n.encode("latin-1")) for n in names)
            self._plain_vary[names] = plain
        return plain

    def _upstream_headers(
        self,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        ex: Exchange,
        route: RouteConfig,
        peer_host: str | None,
        body_limit: int | None,
        keep: frozenset[bytes] | None,
    ) -> list[tuple[bytes, bytes]]:
        """The upstream request's headers (only the client's named in `keep`, when given):
        built only when the upstream is called."""
        host = header_value(headers, b"host") or b""
        policy = route.cache_policy
        if policy is not None and "host" not in policy.vary_headers:
            host = b""  # not in the cache key, so it must not shape a stored answer either
        peer_trusted = peer_is_trusted(peer_host, self._trusted_proxies)
        drop = _CLIENT_ONLY if body_limit is not None else _CLIENT_ONLY_AND_LENGTH
        up_headers = upstream_request_headers(
            headers,
            client_ip=ex.client_ip,
            peer_is_trusted=peer_trusted,
            proto=scope.get("scheme", "http"),
            host=host,
            via=self.via,
            drop=drop,
            peer=peer_host if peer_trusted else None,
            keep=keep,
        )
        up_headers.append((b"x-request-id", ex.request_id.encode()))
        return up_headers

    # --- after the response --------------------------------------------------------------------
    def _warn_upstream_error(self, ex: Exchange) -> None:
        """One log line per route every ERROR_LOG_INTERVAL seconds: during an upstream outage
        every request fails, and each already has its cause in its request-log row."""
        name = ex.route.name if ex.route is not None else UNKNOWN_ROUTE
        now = time.monotonic()
        last, suppressed = self._error_logged.get(name, (-ERROR_LOG_INTERVAL, 0))
        if now - last < ERROR_LOG_INTERVAL:
            self._error_logged[name] = (last, suppressed + 1)
            return
        self._error_logged[name] = (now, 0)  # bounded: route names come from configuration
        log.warning(
            "request %s (%s %r, route %r) answered %d: %s%s",
            ex.request_id,
            ex.method,
            ex.path[:200],
            ex.route_name[:100],
            ex.status,
            ex.error,
            f" ({suppressed} more on this route since the last line; see the request log)"
            if suppressed
            else "",
        )

    def _after(self, ex: Exchange) -> None:
        rt = self.runtime
        elapsed = time.perf_counter() - ex.start
        key = ex.key
        route = ex.route
        # Labelled by the configured route only: a name taken from the URL would let clients
        # create a series per request.
        rt.metrics.observe_request(
            route.name if route is not None else UNKNOWN_ROUTE,
            ex.status,
            elapsed,
            ex.cache_status,
            ex.upstream_seconds,
        )
        if ex.error is not None:
            self._warn_upstream_error(ex)
        now = time.time()
        if key is not None and ex.status != 429:
            self.abuse.observe(key, now)
        elif key is None and not self.refusals.keep_row(ex):
            return  # a refusal over its address's log budget: counted, not written
        row = (
            now,
            ex.request_id,
            key.tenant_id if key else None,
            key.id if key else None,
            route.id if route else None,
            ex.route_name[:100],
            ex.method,
            ex.path[:2000],
            ex.status,
            ex.cache_status,
            _ms(elapsed),
            _ms(ex.upstream_seconds) if ex.upstream_seconds is not None else None,
            ex.bytes_in,
            ex.bytes_out,
            ex.client_ip,
            ex.user_agent,
            ex.error[:500] if ex.error is not None else None,
            # Added later, so at the end: whoever reads rows by position keeps working.
            ex.cache_key,
            ex.upstream_status,
            ex.refused_by,
            ex.refusal,
        )
        if rt.access_log is not None:  # ACCESS_LOG: the same row, as a JSON line on stdout
            rt.access_log.add(row)
        rt.logs.enqueue(row)


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, as round(seconds * 1000, 3) gives them for the durations
    a request takes, without its correctly rounded decimal conversion (a visible share of a
    cache hit's cost)."""
    return int(seconds * 1_000_000 + 0.5) / 1000
