"""`/respond`: responses shaped by query parameters, for the gateway's cache tests."""

from __future__ import annotations

import aiohttp
import pytest

LM = "Wed, 21 Oct 2015 07:28:00 GMT"


async def test_default_body_counts_calls(client: aiohttp.ClientSession) -> None:
    async with client.get("/respond") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        first = await resp.json()
    async with client.post("/respond/some/where", params={"x": "1"}) as resp:
        second = await resp.json()
    assert first == {"n": 1, "path": "/respond", "method": "GET"}
    assert second == {"n": 2, "path": "/respond/some/where", "method": "POST"}


async def test_caching_headers_are_set_as_given(client: aiohttp.ClientSession) -> None:
    params = [
        ("cache_control", "public, max-age=30, stale-while-revalidate=10"),
        ("etag", '"v1"'),
        ("last_modified", LM),
        ("vary", "Accept-Encoding"),
        ("surrogate_key", "items item-1"),
        ("cache_tag", "tag-a,tag-b"),
        ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ("set_cookie", "a=1; Path=/"),
        ("set_cookie", "b=2"),
        ("header", "Age: 7"),
        ("header", "X-Extra: yes"),
    ]
    async with client.get("/respond", params=params) as resp:
        headers = resp.headers
        assert resp.status == 200
    assert headers["Cache-Control"] == "public, max-age=30, stale-while-revalidate=10"
    assert headers["ETag"] == '"v1"'
    assert headers["Last-Modified"] == LM
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["Surrogate-Key"] == "items item-1"
    assert headers["Cache-Tag"] == "tag-a,tag-b"
    assert headers["Expires"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert headers["Age"] == "7"
    assert headers["X-Extra"] == "yes"


async def test_status_body_and_content_type(client: aiohttp.ClientSession) -> None:
    params = {"status": "404", "body": "gone", "content_type": "text/html"}
    async with client.get("/respond", params=params) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "text/html"
        assert await resp.text() == "gone"


async def test_size_gives_a_body_of_that_many_bytes(client: aiohttp.ClientSession) -> None:
    async with client.get("/respond", params={"size": "100000"}) as resp:
        assert len(await resp.read()) == 100000
        assert resp.headers["Content-Length"] == "100000"


async def test_if_none_match_gets_304_with_the_caching_headers(
    client: aiohttp.ClientSession,
) -> None:
    params = {"etag": '"v1"', "cache_control": "max-age=5", "set_cookie": "s=1", "vary": "Accept"}
    async with client.get("/respond", params=params, headers={"If-None-Match": '"v1"'}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == '"v1"'
        assert resp.headers["Cache-Control"] == "max-age=5"
        assert resp.headers["Vary"] == "Accept"
        assert "Set-Cookie" not in resp.headers
    # The 304 still counted as a call.
    async with client.get("/respond") as resp:
        assert (await resp.json())["n"] == 2


async def test_mismatched_etag_gets_the_full_response(client: aiohttp.ClientSession) -> None:
    params = {"etag": '"v2"'}
    async with client.get("/respond", params=params, headers={"If-None-Match": '"v1"'}) as resp:
        assert resp.status == 200
        assert (await resp.json())["n"] == 1


@pytest.mark.parametrize(
    ("since", "status"),
    [(LM, 304), ("Thu, 22 Oct 2015 07:28:00 GMT", 304), ("Tue, 20 Oct 2015 07:28:00 GMT", 200)],
)
async def test_if_modified_since(client: aiohttp.ClientSession, since: str, status: int) -> None:
    params = {"last_modified": LM}
    async with client.get("/respond", params=params, headers={"If-Modified-Since": since}) as resp:
        assert resp.status == status
        if status == 304:
            assert resp.headers["Last-Modified"] == LM


async def test_if_none_match_takes_precedence(client: aiohttp.ClientSession) -> None:
    params = {"etag": '"v2"', "last_modified": LM}
    headers = {"If-None-Match": '"v1"', "If-Modified-Since": LM}
    async with client.get("/respond", params=params, headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("method", "status"), [("POST", 200), ("GET", 404)])
async def test_no_304_for_unsafe_methods_or_error_statuses(
    client: aiohttp.ClientSession, method: str, status: int
) -> None:
    params = {"etag": '"v1"', "status": str(status)}
    async with client.request(
        method, "/respond", params=params, headers={"If-None-Match": '"v1"'}
    ) as resp:
        assert resp.status == status


async def test_delay_then_answers(client: aiohttp.ClientSession) -> None:
    async with client.get("/respond", params={"delay": "0.02"}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "params",
    [
        {"status": "abc"},
        {"status": "700"},
        {"status": "101"},
        {"delay": "-1"},
        {"size": "-5"},
        {"size": "10", "body": "x"},
        {"header": "No colon"},
        {"header": "Bad Name: x"},
        {"header": "X-Ok: a\r\nInjected: 1"},
        {"cache_control": "max-age=1\r\nInjected: 1"},
    ],
)
async def test_bad_parameters_are_400(
    client: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    async with client.get("/respond", params=params) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()
        assert "Injected" not in resp.headers
