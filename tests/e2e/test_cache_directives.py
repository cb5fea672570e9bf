"""The request's own Cache-Control on answers shared between requests, and the negative cache in
origin mode, through real gateway and upstream processes in both modes (and across two
instances on one Redis): RFC 9111 §5.2.1 and §4.2."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.e2e.harness import Gateway, Upstream, wait_until
from tests.e2e.test_cache_demos import calls, get, make_route, unique


@contextmanager
def slow_fill(gw: Gateway, path: str) -> Iterator[list[httpx.Response]]:
    """A GET of `path` (its upstream answer takes a second) running while the block runs; its
    answer is in the list afterwards."""
    answers: list[httpx.Response] = []
    leader = threading.Thread(target=lambda: answers.append(get(gw, path)), daemon=True)
    leader.start()
    try:
        yield answers
    finally:
        leader.join(15)


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0"])
def test_a_request_that_must_ask_the_origin_never_takes_another_requests_fill(
    gateway: Gateway, upstream: Upstream, directive: str
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", ttl_seconds=60)
    token = unique("fill")
    path = f"/g/{route}/{token}?delay=1"
    with slow_fill(gateway, path) as leader:
        wait_until(lambda: calls(upstream, f"/respond/{token}") == 1, timeout=10)
        own = get(gateway, path, headers={"Cache-Control": directive})
    assert own.headers["x-cache"] == "MISS", own.headers
    assert "collapsed" not in own.headers["cache-status"]
    assert own.json()["n"] != leader[0].json()["n"]
    assert calls(upstream, f"/respond/{token}") == 2


def test_across_instances_a_request_that_must_ask_the_origin_never_waits_for_the_other(
    pg_gateway: Gateway, pg_gateway_b: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(pg_gateway, upstream.url + "/respond", ttl_seconds=60)
    wait_until(lambda: get(pg_gateway_b, f"/g/{route}/probe").status_code == 200, timeout=10)
    for directive in ("no-cache", "max-age=0", None):
        token = unique("remote")
        path = f"/g/{route}/{token}?delay=1"
        with slow_fill(pg_gateway, path) as leader:
            wait_until(lambda t=token: calls(upstream, f"/respond/{t}") == 1, timeout=10)
            headers = {"Cache-Control": directive} if directive else {}
            answer = get(pg_gateway_b, path, headers=headers)
        if directive is None:
            # Without a directive the other instance's answer is shared: one upstream call.
            assert "collapsed" in answer.headers["cache-status"], answer.headers
            assert answer.content == leader[0].content
            assert calls(upstream, f"/respond/{token}") == 1
            continue
        assert answer.headers["x-cache"] == "MISS", (directive, answer.headers)
        assert "collapsed" not in answer.headers["cache-status"]
        assert answer.json()["n"] != leader[0].json()["n"]
        assert calls(upstream, f"/respond/{token}") == 2


def test_origin_mode_never_answers_negative_from_a_404_the_origin_let_expire(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=60)
    token = unique("gone")
    expired = f"/g/{route}/{token}?status=404&expires=Thu,%2001%20Jan%201970%2000:00:00%20GMT"
    for _ in range(2):
        answer = get(gateway, expired)
        assert (answer.status_code, answer.headers["x-cache"]) == (404, "MISS"), answer.headers
    assert calls(upstream, f"/respond/{token}") == 2
    # A 404 the origin lets be reused for 30 s is answered NEGATIVE without asking it.
    kept = unique("gone30")
    fresh = f"/g/{route}/{kept}?status=404&cache_control=max-age%3D30"
    assert get(gateway, fresh).headers["x-cache"] == "MISS"
    again = get(gateway, fresh)
    assert (again.status_code, again.headers["x-cache"]) == (404, "NEGATIVE")
    assert calls(upstream, f"/respond/{kept}") == 1


def test_the_routes_lock_timeout_bounds_the_wait_for_another_requests_fill(
    gateway: Gateway, upstream: Upstream
) -> None:
    """The policy's `lock_timeout_seconds` (0.2 s here, 5 s by default): a request waits that
    long for another's fill of the same entry, then goes upstream alone."""
    route, _ = make_route(
        gateway, upstream.url + "/respond", ttl_seconds=60, lock_timeout_seconds=0.2
    )
    token = unique("lock")
    path = f"/g/{route}/{token}?delay=1.5"
    with slow_fill(gateway, path) as leader:
        wait_until(lambda: calls(upstream, f"/respond/{token}") == 1, timeout=10)
        alone = get(gateway, path)
    assert alone.headers["x-cache"] == "MISS", alone.headers
    assert alone.json()["n"] != leader[0].json()["n"]
    assert calls(upstream, f"/respond/{token}") == 2
