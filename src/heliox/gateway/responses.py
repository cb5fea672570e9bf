"""Small ASGI senders for the gateway's own answers (errors are RFC 9457 problem+json)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from heliox.core.problem import PROBLEM_CONTENT_TYPE, problem_body

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_problem(
    send: Send,
    status: int,
    title: str,
    detail: str,
    headers: Headers | None = None,
    **extensions: object,
) -> int:
    ext: dict[str, Any] = extensions
    body = problem_body(status, title, detail, **ext)
    hdrs: Headers = [(b"content-type", PROBLEM_CONTENT_TYPE), (b"cache-control", b"no-store")]
    if headers:
        hdrs.extend(headers)
    await send_bytes(send, status, body, hdrs)
    return len(body)
