"""Revalidation through real gateway and upstream processes in both modes: an entry with a
validator outlives its freshness, and the next request sends a conditional request and is
answered from the stored body on a 304 (RFC 9111 §4.3)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import Gateway, Upstream, wait_until
from tests.e2e.test_cache_demos import calls, get, make_route, unique


def _after(seconds: float) -> None:
    """The traffic's own pause: the entry's freshness runs out (the clock is awaited, no state)."""
    until = time.time() + seconds
    wait_until(lambda: time.time() >= until, timeout=seconds + 5, interval=0.02)


@pytest.mark.parametrize("cache_control", ["max-age%3D1", "no-cache"])
def test_a_stale_entry_with_an_etag_is_revalidated_and_freshened(
    gateway: Gateway, upstream: Upstream, cache_control: str
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=60)
    token = unique("rv")
    path = f"/g/{route}/{token}?etag=%22abc%22&cache_control={cache_control}"
    first = get(gateway, path)
    assert first.headers["x-cache"] == "MISS"
    _after(1.2)
    again = get(gateway, path)
    assert (again.status_code, again.headers["x-cache"]) == (200, "REVALIDATED"), again.headers
    assert "fwd-status=304" in again.headers["cache-status"]
    assert again.content == first.content  # the stored body: the upstream sent none
    assert again.headers["etag"] == '"abc"'
    assert calls(upstream, f"/respond/{token}") == 2
    # The client's own validator matches the revalidated entry: 304 without a body.
    if cache_control == "max-age%3D1":
        mine = get(gateway, path, headers={"If-None-Match": '"abc"'})
        assert (mine.status_code, mine.headers["x-cache"], mine.content) == (304, "HIT", b"")
        assert calls(upstream, f"/respond/{token}") == 2
