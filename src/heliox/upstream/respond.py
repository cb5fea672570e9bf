"""`ANY /respond[/...]`: a response shaped by query parameters, for cache behaviour tests.

Header parameters may repeat (each value becomes its own header line). The default body carries a
per-call counter `n` so a test can tell a cached response from a fresh one.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from aiohttp import web
from multidict import CIMultiDict

from heliox.upstream.conditional import is_not_modified
from heliox.upstream.params import BadParam, float_param, int_param, int_value
from heliox.upstream.replies import JSON, dump
from heliox.upstream.stats import raw_path

MAX_DELAY = 30.0
MAX_SIZE = 64 * 1024 * 1024

# Query parameter -> response header it sets.
HEADER_PARAMS = {
    "cache_control": "Cache-Control",
    "etag": "ETag",
    "last_modified": "Last-Modified",
    "vary": "Vary",
    "surrogate_key": "Surrogate-Key",
    "cache_tag": "Cache-Tag",
    "expires": "Expires",
    "set_cookie": "Set-Cookie",
}
# §15.4.5 (RFC 9110): a 304 carries the validators and caching headers a 200 would have had.
_NOT_ON_304 = frozenset({"set-cookie", "content-type", "content-length", "transfer-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

RESPOND_CALLS: web.AppKey[itertools.count[int]] = web.AppKey("respond_calls")


def _checked(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise BadParam(f"{name} must not contain control characters")
    return value


def _headers(request: web.Request) -> CIMultiDict[str]:
    query = request.query
    headers: CIMultiDict[str] = CIMultiDict()
    for param, header in HEADER_PARAMS.items():
        for value in query.getall(param, ()):
            headers.add(header, _checked(param, value))
    for line in query.getall("header", ()):
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.fullmatch(name):
            raise BadParam("header must look like 'Name: value'")
        headers.add(name, _checked("header", value.strip()))
    return headers


def _body(request: web.Request, n: int) -> tuple[bytes, str]:
    query = request.query
    body = query.get("body")
    size = int_param(request, "size", -1, 0, MAX_SIZE)
    if body is not None and size >= 0:
        raise BadParam("give body or size, not both")
    if body is not None:
        return body.encode(), "text/plain; charset=utf-8"
    if size >= 0:
        return b"x" * size, "application/octet-stream"
    return dump({"n": n, "path": raw_path(request), "method": request.method}), JSON


async def respond(request: web.Request) -> web.Response:
    calls = request.app[RESPOND_CALLS]
    n = next(calls)
    query = request.query
    status = int_value("status", query["status"], 200, 599) if "status" in query else 200
    headers = _headers(request)
    body, default_type = _body(request, n)
    content_type = _checked("content_type", query.get("content_type", default_type))
    delay = float_param(request, "delay", 0.0, MAX_DELAY)
    if delay:
        await asyncio.sleep(delay)

    if 200 <= status < 300 and is_not_modified(
        request.method,
        request.headers.get("If-None-Match"),
        request.headers.get("If-Modified-Since"),
        headers.get("ETag"),
        headers.get("Last-Modified"),
    ):
        kept = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _NOT_ON_304)
        return web.Response(status=304, headers=kept)

    headers["Content-Type"] = content_type
    return web.Response(status=status, body=body, headers=headers)


def add_routes(app: web.Application) -> None:
    app[RESPOND_CALLS] = itertools.count(1)
    app.router.add_route("*", "/respond", respond)
    app.router.add_route("*", "/respond/{tail:.*}", respond)
