"""Invalidation through real gateway and upstream processes in both modes: by the URIs a write's
response names (RFC 9111 §4.4), by one entry's exact key, and a fill that began before a write
(which must not store the old answer)."""

from __future__ import annotations

import re
import threading

import httpx

from tests.e2e.harness import Gateway, Upstream, wait_until
from tests.e2e.test_cache_demos import PROBLEM, calls, get, make_route, purge, unique


def _key(answer: httpx.Response) -> str:
    found = re.search(r'key="([a-z]{1,4}:[0-9a-f]{32})"', answer.headers["cache-status"])
    assert found, answer.headers["cache-status"]
    return found.group(1)


def test_a_write_invalidates_the_uri_its_location_names(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", ttl_seconds=60)
    token = unique("loc")
    target = f"/g/{route}/{token}/item"
    assert get(gateway, target).headers["x-cache"] == "MISS"
    assert get(gateway, target).headers["x-cache"] == "HIT"
    # The upstream's Location is in its own URL space: /respond/<token>/item is the route's
    # /<token>/item. A Location on another origin is left alone.
    for location in (f"http://elsewhere.example/respond/{token}/item", f"/respond/{token}/item"):
        write = get(
            gateway, f"/g/{route}/{token}/new?header=Location%3A%20{location}", method="POST"
        )
        assert write.status_code == 200
        expected = "HIT" if "elsewhere" in location else "MISS"
        assert get(gateway, target).headers["x-cache"] == expected, location


def test_purge_by_the_key_cache_status_shows(gateway: Gateway) -> None:
    token = unique("key")
    one, other = f"/g/demo/respond/{token}/one", f"/g/demo/respond/{token}/other"
    for path in (one, other):
        get(gateway, path)
    hit = get(gateway, one)
    assert hit.headers["x-cache"] == "HIT"
    assert purge(gateway, {"key": _key(hit)}).json() == {"purged": 1}
    assert purge(gateway, {"key": _key(hit)}).json() == {"purged": 0}
    assert get(gateway, one).headers["x-cache"] == "MISS"
    assert get(gateway, other).headers["x-cache"] == "HIT"  # only that entry went
    for bad in ({"key": "not-a-key"}, {"key": _key(hit), "route": "demo"}):
        r = purge(gateway, bad)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        assert "key" in r.text


def test_a_fill_that_began_before_a_write_does_not_store_the_old_answer(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", ttl_seconds=60)
    token = unique("race")
    target = f"/g/{route}/{token}?delay=1"
    answers: list[httpx.Response] = []
    leader = threading.Thread(target=lambda: answers.append(get(gateway, target)), daemon=True)
    leader.start()
    wait_until(lambda: calls(upstream, f"/respond/{token}") == 1, timeout=10)
    location = f"/respond/{token}%3Fdelay%3D1"
    write = get(gateway, f"/g/{route}/{token}-w?header=Location%3A%20{location}", method="POST")
    assert write.status_code == 200
    leader.join(15)
    assert answers[0].headers["x-cache"] == "MISS"
    after = get(gateway, target)
    assert after.headers["x-cache"] == "MISS", after.headers  # not the answer from before
    assert after.json()["n"] > answers[0].json()["n"]
    assert get(gateway, target).headers["x-cache"] == "HIT"
