"""Pass-through: send the request upstream and stream the answer back, storing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from heliox.core.cachecontrol import TARGETED_FIELDS
from heliox.core.headers import downstream_response_headers
from heliox.gateway.exchange import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    ProxyRequest,
    ResponseSink,
)
from heliox.metrics import Metrics
from heliox.net.upstream_client import UpstreamClient, UpstreamError, UpstreamResponse

VIA = b"1.1 heliox"
# Fields only the gateway may set: an upstream must not be able to claim a HIT, hand out
# rate-limit numbers, speak for the gateway's internals or replace the request's id, live or
# from a stored entry.
_GATEWAY_OWNED = frozenset({b"x-cache", b"cache-status", b"x-request-id"})
_GATEWAY_OWNED_PREFIXES = (b"x-heliox-", b"ratelimit", b"x-ratelimit-")


# The fields that address the gateway's cache (RFC 9213 CDN-Cache-Control, Surrogate-Control):
# consumed here, whether or not the route caches, and never relayed. RFC 9213 §3 lets a cache
# that uses CDN-Cache-Control remove it; the gateway is the last cache before API clients, and
# the value would tell every client how the origin tunes the gateway.
CONSUMED_FIELDS = frozenset(TARGETED_FIELDS)


def gateway_owned(name: bytes) -> bool:
    """Whether header `name` (lower-case) is the gateway's alone to set."""
    return name in _GATEWAY_OWNED or name.startswith(_GATEWAY_OWNED_PREFIXES)


def from_upstream(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream response's headers as the client may see them."""
    # A loop, not a comprehension: this runs on every MISS, and a comprehension is a function
    # object and a frame on Python 3.11.
    kept: list[tuple[bytes, bytes]] = []
    for name, value in downstream_response_headers(headers, drop=CONSUMED_FIELDS):
        if not gateway_owned(name):
            kept.append((name, value))
    return kept


async def call_upstream(
    client: UpstreamClient, metrics: Metrics, req: ProxyRequest, sink: ResponseSink
) -> UpstreamResponse | None:
    """The upstream's response, or None when an error answer has already been sent."""
    ex = req.ex
    t0 = time.perf_counter()
    try:
        if req.body is None:
            resp = await client.request(
                req.method,
                req.target,
                req.upstream_headers,
                None,
                timeout=req.timeout,
                route=req.route,
                key_id=req.key_id,
            )
        else:
            resp = await _request_with_body(client, req)
    except (BodyTooLarge, BodyTimeout, ClientGone, UpstreamError) as exc:
        # The call may fail for what the body stream did (its connection aborted under it):
        # the stream's own flag is the truth.
        if ex.body_error is BodyTooLarge or isinstance(exc, BodyTooLarge):
            await sink.problem(
                413,
                "Request body too large",
                f"the body limit of route {req.route.name!r} is {req.body_limit} bytes",
            )
            return None
        timed_out = ex.body_error is not None and issubclass(ex.body_error, BodyTimeout)
        if timed_out or isinstance(exc, BodyTimeout):
            await sink.problem(
                408,
                "Request body timed out",
                ex.body_detail or "the request body did not arrive in time",
                [(b"connection", b"close")],
            )
            return None
        if ex.body_error is ClientGone or isinstance(exc, ClientGone):
            raise ClientGone from exc
        assert isinstance(exc, UpstreamError)
        metrics.upstream_errors[(req.route.name, exc.status)] += 1
        await send_upstream_error(sink, exc)
        return None
    ex.upstream_seconds = time.perf_counter() - t0
    ex.upstream_status = resp.status
    return resp


async def _request_with_body(client: UpstreamClient, req: ProxyRequest) -> UpstreamResponse:
    """The upstream call, given up as soon as the client's body fails (too large, stalled, gone):
    an upstream still waiting for the rest of that body would otherwise hold us until its own
    timeout, or forever."""
    ex = req.ex
    ex.body_failed = failed = asyncio.Event()
    call = asyncio.ensure_future(
        client.request(
            req.method,
            req.target,
            req.upstream_headers,
            req.body,
            timeout=req.timeout,
            route=req.route,
            key_id=req.key_id,
        )
    )
    watch = asyncio.ensure_future(failed.wait())
    try:
        await asyncio.wait((call, watch), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Cancelled: an answer that arrived meanwhile must give its connection back now.
        if call.done() and not call.cancelled() and call.exception() is None:
            call.result().close()
        raise
    finally:
        watch.cancel()
        if not call.done():
            call.cancel()
    if ex.body_error is not None:
        # The client's body failed: whatever the upstream made of the part it got is moot.
        if call.done() and not call.cancelled() and call.exception() is None:
            call.result().close()
        else:
            with contextlib.suppress(BaseException):
                await call
        raise ex.body_error()
    if call.cancelled():
        raise asyncio.CancelledError
    return call.result()


async def send_upstream_error(
    sink: ResponseSink, exc: UpstreamError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The 502/503/504 for a failed upstream call: the client learns what happened and the request
    id; the upstream's address and the cause go to the log and the request's log row."""
    ex = sink.ex
    ex.error = exc.detail
    detail = (
        f"{exc.public_detail}; retry later, or quote request id {ex.request_id} to the "
        "gateway's operator"
    )
    extra = exc.headers  # Retry-After on a 503 from the bulkheads
    if extra:
        headers = [*(headers or ()), *extra]
    await sink.problem(exc.status, exc.title, detail, headers, request_id=ex.request_id)


async def relay(
    resp: UpstreamResponse, req: ProxyRequest, sink: ResponseSink, x_cache: bytes, metrics: Metrics
) -> None:
    """Stream an upstream response to the client as it arrives; an upstream that breaks off
    mid-body aborts the client's connection (and counts as an upstream error)."""
    out = from_upstream(resp.headers)
    out.append((b"via", VIA))
    out.append((b"x-cache", x_cache))
    try:
        await sink.start(resp.status, out)
        if req.method != "HEAD":
            async for chunk in resp.chunks():
                await sink.body(chunk, more=not resp.body_done)
        await sink.end()
    except UpstreamError as exc:
        resp.close()
        metrics.upstream_errors[(req.route.name, exc.status)] += 1
        await sink.abort(exc.detail)  # the head is out: only an abort says it failed
    finally:
        resp.release()


async def pass_through(
    client: UpstreamClient, metrics: Metrics, req: ProxyRequest, sink: ResponseSink
) -> int | None:
    """Proxy without the cache; returns the upstream status (None when it could not be reached)."""
    resp = await call_upstream(client, metrics, req, sink)
    if resp is None:
        return None
    req.ex.cache_status = "BYPASS"
    await relay(resp, req, sink, b"BYPASS", metrics)
    return resp.status
