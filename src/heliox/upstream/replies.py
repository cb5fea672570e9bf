"""JSON response building shared by the example upstream's handlers."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

JSON = "application/json"


def dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_reply(
    value: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=dump(value), status=status, content_type=JSON, headers=headers)


def error_reply(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: object
) -> web.Response:
    return json_reply({"error": message, "status": status, **extra}, status, headers)
