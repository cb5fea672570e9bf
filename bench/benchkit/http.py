"""Tiny blocking HTTP client for set-up and checks (stdlib only; the load comes from wrk)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

# Loopback only: an environment proxy setting must not reroute the benchmark's own checks.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    payload: Any = None,
    timeout: float = 10.0,
) -> Reply:
    data = None
    hdrs = dict(headers or {})
    if payload is not None:
        data = json.dumps(payload).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Reply(resp.status, _lower(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, _lower(err.headers.items()), err.read())


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    return request("GET", url, headers=headers, timeout=timeout)


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}
