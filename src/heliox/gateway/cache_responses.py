"""Answers the cache sends itself: stored entries (or 304s from them) and negative-cache 404s,
each with `X-Cache`, RFC 9211 `Cache-Status` and, for stored entries, `Age`."""

from __future__ import annotations

from heliox.core.freshness import age_header, not_modified, not_modified_headers
from heliox.gateway.exchange import ProxyRequest, ResponseSink
from heliox.gateway.proxy import CONSUMED_FIELDS, VIA, from_upstream, gateway_owned
from heliox.state.cache import CacheEntry

__all__ = [
    "NEGATIVE_DETAIL",
    "from_upstream",
    "gateway_owned",
    "send_entry",
    "send_negative",
    "status_headers",
]

# RFC 9110 §8.6: no Content-Length on these.
_NO_LENGTH = frozenset({204, 304})

NEGATIVE_DETAIL = (
    "answered from the negative cache without asking the upstream: it recently answered 404 "
    "for this URL. A new resource can be hidden for a few minutes by this; send "
    "'Cache-Control: no-cache' to ask the upstream again."
)


def status_headers(
    x_cache: str, status_field: bytes, key: str | None = None
) -> list[tuple[bytes, bytes]]:
    """X-Cache and Cache-Status; with the entry's `key` (RFC 9211 §2.7; "c:" and a hex digest: no
    escaping needed), which `POST /admin/cache/purge {"key": ...}` takes."""
    if key is not None:
        status_field = b'%b; key="%b"' % (status_field, key.encode("ascii"))  # one copy
    return [(b"x-cache", x_cache.encode("ascii")), (b"cache-status", status_field)]


def _replayed(entry: CacheEntry) -> tuple[tuple[bytes, bytes], ...]:
    """The fields `entry` is sent with, worked out once per entry: a HIT would otherwise filter
    every stored field again."""
    replayed = entry.replayed
    if replayed is None:
        # The fields targeting this cache stay in the entry (a 304 that freshens it recomputes
        # its times from them, RFC 9111 §4.3.4) but are never replayed to a client.
        fields = [
            (n, v) for n, v in entry.headers if n != b"content-length" and n not in CONSUMED_FIELDS
        ]
        if entry.status not in _NO_LENGTH:
            fields.append((b"content-length", b"%d" % len(entry.body)))
        replayed = entry.replayed = tuple(fields)
    return replayed


async def send_entry(
    sink: ResponseSink,
    req: ProxyRequest,
    entry: CacheEntry,
    now: float,
    x_cache: str,
    status_field: bytes,
) -> None:
    """Serve `entry`; a 304 when the request's preconditions match it (RFC 9110 §13.2)."""
    req.ex.cache_status = x_cache
    if not_modified(entry.headers, req.lookup_headers, status=entry.status):
        headers = not_modified_headers(entry.headers)
        status = 304
        body = b""
    else:
        headers = list(_replayed(entry))
        status = entry.status
        body = b"" if req.method == "HEAD" else entry.body
    headers.append((b"age", age_header(entry, now)))
    headers.append((b"via", VIA))
    headers.extend(status_headers(x_cache, status_field, req.ex.cache_key))
    await sink.start(status, headers)
    await sink.body(body, more=False)


async def send_negative(sink: ResponseSink, req: ProxyRequest, status_field: bytes) -> None:
    """The 404 for a URL the negative cache remembers, when no stored 404 is left to serve."""
    req.ex.cache_status = "NEGATIVE"
    await sink.problem(
        404,
        "Not Found",
        NEGATIVE_DETAIL,
        [(b"via", VIA), *status_headers("NEGATIVE", status_field, req.ex.cache_key)],
        negative_cache=True,
    )
