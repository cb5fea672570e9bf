"""The example upstream service (`heliox upstream`, port 8001).

What the demo, the tests and the benchmark put behind the gateway: a small item catalogue with
validators, a slow endpoint, request counters, an echo, a response shaped by query parameters, and
streaming and fault endpoints. Deterministic, and quiet: nothing is logged per request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import time
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from heliox.upstream import respond, stats, streams
from heliox.upstream.catalogue import CACHE_CONTROL, Catalogue, Encoded
from heliox.upstream.conditional import etag_matches
from heliox.upstream.params import BadParam, float_param, int_value
from heliox.upstream.replies import JSON, dump, error_reply, json_reply
from heliox.upstream.stats import UNCOUNTED, RequestStats, raw_path

MAX_SLOW_DELAY = 30.0
# /echo reads whole bodies; streaming uploads go to /upload, which has no limit.
MAX_ECHO_BODY = 16 * 1024 * 1024

CATALOGUE = Catalogue()
HEALTH_BODY = dump({"status": "ok"})


def _middleware(counters: RequestStats) -> Middleware:
    @web.middleware
    async def count_and_shape_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Counted on arrival, so a request still in its handler is already visible in /stats.
        path = raw_path(request)
        if path not in UNCOUNTED:
            counters.count(path)
        try:
            return await handler(request)
        except BadParam as exc:
            return error_reply(400, str(exc))
        except web.HTTPException as exc:
            # The router's own 404/405/413 answers are plain text; keep every error JSON.
            if exc.status < 400 or exc.content_type == JSON:
                raise
            headers = {
                name: value
                for name, value in exc.headers.items()
                if name.lower() not in ("content-type", "content-length")
            }
            return error_reply(exc.status, exc.reason, headers)

    return count_and_shape_errors


def _validated(request: web.Request, encoded: Encoded) -> web.Response:
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": encoded.etag}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and etag_matches(if_none_match, encoded.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=encoded.body, content_type=JSON, headers=headers)


async def list_items(request: web.Request) -> web.Response:
    query = request.query
    return _validated(request, CATALOGUE.listing(query.get("color"), query.get("size")))


async def get_item(request: web.Request) -> web.Response:
    key = request.match_info["id"]
    encoded = CATALOGUE.item(key)
    if encoded is None:
        return error_reply(404, "item not found", id=key)
    return _validated(request, encoded)


async def slow(request: web.Request) -> web.Response:
    delay = float_param(request, "delay", 1.0, MAX_SLOW_DELAY)
    await asyncio.sleep(delay)
    return json_reply({"delay": delay, "timestamp": time.time()})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    target = request.raw_path
    path, _, query_string = target.partition("?")
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    host, port = (peer[0], peer[1]) if isinstance(peer, tuple) else (request.remote, None)
    return json_reply(
        {
            "method": request.method,
            "path": path,
            "target": target,
            "http_version": f"{request.version.major}.{request.version.minor}",
            "query": query_string,
            "query_params": [[name, value] for name, value in request.query.items()],
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in request.raw_headers
            ],
            "body": text,
            "body_encoding": encoding,
            "body_length": len(body),
            "client": {"host": host, "port": port},
        }
    )


async def status(request: web.Request) -> web.Response:
    code = int_value("code", request.match_info["code"], 200, 599)
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = ""
    return json_reply({"status": code, "reason": reason}, code)


async def health(request: web.Request) -> web.Response:
    return web.Response(body=HEALTH_BODY, content_type=JSON)


def make_app() -> web.Application:
    """The upstream application, with fresh counters."""
    counters = RequestStats()
    app = web.Application(middlewares=[_middleware(counters)], client_max_size=MAX_ECHO_BODY)
    router = app.router
    router.add_get("/health", health)
    router.add_get("/items", list_items)
    router.add_get("/items/{id}", get_item)
    router.add_get("/slow", slow)
    router.add_route("*", "/echo", echo)
    router.add_route("*", "/echo/{tail:.*}", echo)
    router.add_route("*", r"/status/{code:\d+}", status)
    stats.add_routes(app, counters)
    respond.add_routes(app)
    streams.add_routes(app)
    return app


async def start(
    host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 1.0
) -> tuple[web.AppRunner, int]:
    """Serve the upstream in the running loop; returns the runner (call `cleanup()`) and port."""
    runner = web.AppRunner(
        make_app(), access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def _serve(host: str, port: int) -> None:
    runner, bound = await start(host, port, shutdown_timeout=5.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # no loop signal handlers here (Windows): Ctrl-C still ends asyncio.run
    shown = f"[{host}]" if ":" in host else host
    print(f"Heliox example upstream serving on http://{shown}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run(host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve until SIGINT or SIGTERM (blocking)."""
    # Ctrl-C where the loop cannot install signal handlers arrives as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port))
