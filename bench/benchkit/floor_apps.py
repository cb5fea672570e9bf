"""Bare apps for granian that answer like a Heliox cache HIT and do nothing else.

They measure the floor: what the server and the interface cost before any gateway work. The answer
has the size and the header count of a real HIT from `/g/demo/items`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

BODY = b"[" + b",".join(b'{"id":"%d","name":"item %04d","price":19.99}' % (i, i) for i in range(23))
BODY = (BODY + b"]")[:941]
_HEADERS = [
    ("cache-control", "public, max-age=60"),
    ("etag", '"c0c46d58505b61c7c79d3d517259cfe2"'),
    ("content-type", "application/json"),
    ("content-length", str(len(BODY))),
    ("age", "1"),
    ("via", "1.1 heliox"),
    ("x-cache", "HIT"),
    ("cache-status", "heliox; hit; ttl=29"),
    ("ratelimit-limit", "2000000"),
    ("ratelimit-remaining", "1999999"),
    ("ratelimit-reset", "1"),
    ("x-ratelimit-limit", "2000000"),
    ("x-ratelimit-remaining", "1999999"),
    ("x-ratelimit-reset", "1"),
]
ASGI_HEADERS = [(n.encode(), v.encode()) for n, v in _HEADERS]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def asgi_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": ASGI_HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def rsgi_app(scope: Any, protocol: Any) -> None:
    protocol.response_bytes(200, _HEADERS, BODY)
