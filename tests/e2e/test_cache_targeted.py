"""Response fields that target the gateway's cache, through real gateway and upstream processes
in both modes: CDN-Cache-Control (RFC 9213) and Surrogate-Control decide what the cache stores
and for how long, over Cache-Control, and are never relayed to a client."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.e2e.harness import Gateway, Upstream
from tests.e2e.test_cache_demos import calls, get, make_route, poll, unique

TARGETED = ("cdn-cache-control", "surrogate-control")


def respond(token: str, **headers: str) -> str:
    """The query asking the upstream's `/respond/{token}` to answer with `headers`."""
    lines = "&".join(
        "header=" + quote(f"{name.replace('_', '-')}: {value}", safe="")
        for name, value in headers.items()
    )
    return f"{token}?{lines}"


def assert_not_relayed(answer: httpx.Response) -> None:
    leaked = [name for name in TARGETED if name in answer.headers]
    assert not leaked, answer.headers


def twice(gw: Gateway, path: str) -> tuple[httpx.Response, httpx.Response]:
    first, second = get(gw, path), get(gw, path)
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    return first, second


@pytest.mark.parametrize("field", ["CDN-Cache-Control", "Surrogate-Control"])
def test_a_targeted_max_age_stores_what_cache_control_forbids(
    gateway: Gateway, upstream: Upstream, field: str
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=5)
    token = unique("stored")
    first, second = twice(
        gateway, f"/g/{route}/" + respond(token, Cache_Control="no-store", **{field: "max-age=60"})
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json()["n"] == first.json()["n"]
    assert calls(upstream, f"/respond/{token}") == 1
    # Cache-Control still speaks to the client: it sees the upstream's own.
    assert second.headers["cache-control"] == "no-store"
    for answer in (first, second):
        assert_not_relayed(answer)


@pytest.mark.parametrize("mode", ["origin", "policy"])
@pytest.mark.parametrize("field", ["CDN-Cache-Control", "Surrogate-Control"])
def test_a_targeted_no_store_is_never_stored(
    gateway: Gateway, upstream: Upstream, mode: str, field: str
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", mode=mode, ttl_seconds=60)
    token = unique("unstored")
    first, second = twice(
        gateway, f"/g/{route}/" + respond(token, Cache_Control="max-age=60", **{field: "no-store"})
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert second.json()["n"] != first.json()["n"]
    assert calls(upstream, f"/respond/{token}") == 2
    assert "stored" not in first.headers["cache-status"]
    for answer in (first, second):
        assert_not_relayed(answer)


def test_cdn_cache_control_takes_precedence_over_surrogate_control(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=60)
    token = unique("precedence")
    query = respond(
        token,
        Cache_Control="max-age=60",
        Surrogate_Control="max-age=60",
        CDN_Cache_Control="no-store",
    )
    first, second = twice(gateway, f"/g/{route}/{query}")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert calls(upstream, f"/respond/{token}") == 2


def test_an_unparsable_cdn_cache_control_is_ignored(gateway: Gateway, upstream: Upstream) -> None:
    # RFC 9213 §2.2: the field is ignored, so Cache-Control's no-store applies.
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=60)
    token = unique("invalid")
    query = respond(token, Cache_Control="no-store", CDN_Cache_Control="Max-Age=60")
    first, second = twice(gateway, f"/g/{route}/{query}")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert calls(upstream, f"/respond/{token}") == 2
    for answer in (first, second):
        assert_not_relayed(answer)


def test_a_route_without_a_cache_does_not_relay_them_either(
    gateway: Gateway, upstream: Upstream
) -> None:
    name = unique("plain")
    with gateway.admin() as admin:
        created = admin.post(
            "/admin/routes", json={"name": name, "upstream_url": upstream.url + "/respond"}
        )
        assert created.status_code == 201, created.text
    token = unique("relayed")
    query = respond(
        token,
        Cache_Control="max-age=60",
        CDN_Cache_Control="max-age=60",
        Surrogate_Control="max-age=60",
    )
    answer = get(gateway, f"/g/{name}/{query}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "max-age=60"
    assert_not_relayed(answer)
    assert calls(upstream, f"/respond/{token}") == 1


def test_a_304_freshens_an_entry_by_its_targeted_field(
    gateway: Gateway, upstream: Upstream
) -> None:
    # RFC 9111 §4.3.4: the freshened entry is aged by the targeted field again (Cache-Control's
    # no-store would leave it nothing), and its replays still do not carry the field.
    route, _ = make_route(gateway, upstream.url + "/respond", mode="origin", ttl_seconds=60)
    token = unique("freshen")
    query = respond(token, Cache_Control="no-store", CDN_Cache_Control="max-age=2", ETag='"v1"')
    path = f"/g/{route}/{query}"
    first = get(gateway, path)
    assert first.headers["x-cache"] == "MISS"
    answers = poll(lambda: get(gateway, path), lambda r: r.headers["x-cache"] != "HIT")
    assert answers[-1].headers["x-cache"] == "REVALIDATED", answers[-1].headers
    again = get(gateway, path)
    assert again.headers["x-cache"] == "HIT", again.headers
    assert again.json()["n"] == first.json()["n"]
    assert calls(upstream, f"/respond/{token}") == 2
    for answer in (*answers, again):
        assert_not_relayed(answer)
