"""In-process GET requests to the gateway's own HTTP API, on behalf of a UI session.

The live streams read the same endpoints the browser would (the admin API, /metrics), through the
app itself, so authentication, validation and the data all have one source. Only the session
cookie is passed along: the sub-request is authenticated exactly as the browser would be.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message

DEFAULT_TIMEOUT = 5.0
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SubResponse:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class SubrequestError(Exception):
    """The endpoint did not answer in time, or answered with more than we accept."""


async def get(
    app: ASGIApp,
    parent: HTTPConnection,
    path: str,
    params: dict[str, Any] | None = None,
    *,
    deadline: float = DEFAULT_TIMEOUT,
) -> SubResponse:
    """GET `path` from `app` with the parent request's cookie; parameters that are None drop."""
    query = urlencode(
        [(k, str(v)) for k, v in (params or {}).items() if v is not None and v != ""]
    ).encode("ascii")
    forwarded = [
        (name, value)
        for name, value in parent.scope.get("headers", ())
        if name in (b"cookie", b"host")
    ]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": parent.scope.get("scheme", "http"),
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": query,
        "headers": forwarded,
        "client": parent.scope.get("client"),
        "server": parent.scope.get("server"),
        "state": {},
    }
    status = 0
    content_type = ""
    chunks: list[bytes] = []
    size = 0
    done = asyncio.Event()
    sent_request = False

    async def receive() -> Message:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, content_type, size
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type":
                    content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise SubrequestError(f"{path} answered more than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                done.set()

    try:
        async with asyncio.timeout(deadline):
            await app(scope, receive, send)
    except TimeoutError as exc:
        raise SubrequestError(f"{path} did not answer within {deadline}s") from exc
    finally:
        done.set()
    return SubResponse(status, b"".join(chunks), content_type)
