"""The example upstream over real TCP: items, slow, stats, echo, status, health, errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from heliox.upstream.stats import MAX_PATHS, OVERFLOW_PATH, RequestStats

JSON = "application/json"


async def get_json(
    client: aiohttp.ClientSession, path: str, params: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    """The status and the decoded JSON body (of whatever shape the endpoint answers)."""
    async with client.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def test_health(client: aiohttp.ClientSession) -> None:
    assert await get_json(client, "/health") == (200, {"status": "ok"})


async def test_items_list_is_cacheable_with_a_strong_etag(client: aiohttp.ClientSession) -> None:
    async with client.get("/items") as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.content_type == JSON
        assert resp.headers["Cache-Control"] == "public, max-age=60"
        etag = resp.headers["ETag"]
    assert etag == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    items = await (await client.get("/items")).json()
    assert len(items) == 10
    assert {"id", "name", "price", "color", "size"} <= set(items[0])


async def test_items_filters(client: aiohttp.ClientSession) -> None:
    status, items = await get_json(client, "/items", params={"color": "red", "size": "small"})
    assert status == 200
    assert [item["id"] for item in items] == ["4"]
    _, blue = await get_json(client, "/items", params={"color": "blue"})
    assert blue and all(item["color"] == "blue" for item in blue)


@pytest.mark.parametrize("form", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
async def test_items_answers_if_none_match_with_304(
    client: aiohttp.ClientSession, form: str
) -> None:
    async with client.get("/items") as first:
        etag = first.headers["ETag"]
    async with client.get("/items", headers={"If-None-Match": form.format(etag=etag)}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag
        assert resp.headers["Cache-Control"] == "public, max-age=60"


async def test_items_with_a_stale_etag_gets_the_body(client: aiohttp.ClientSession) -> None:
    async with client.get("/items", headers={"If-None-Match": '"stale"'}) as resp:
        assert resp.status == 200
        assert len(await resp.json()) == 10


async def test_item_by_id_and_sku(client: aiohttp.ClientSession) -> None:
    for key in [str(i) for i in range(1, 11)]:
        status, item = await get_json(client, f"/items/{key}")
        assert status == 200
        assert item["id"] == key
    status, item = await get_json(client, "/items/sku-1003")
    assert status == 200
    assert item["id"] == "3"
    async with client.get("/items/3") as resp:
        etag = resp.headers["ETag"]
    async with client.get("/items/3", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304


async def test_unknown_item_is_404_json(client: aiohttp.ClientSession) -> None:
    status, body = await get_json(client, "/items/nonexistent-product-xyz")
    assert status == 404
    assert body == {"error": "item not found", "status": 404, "id": "nonexistent-product-xyz"}


async def test_slow_waits_then_reports_its_delay(client: aiohttp.ClientSession) -> None:
    status, body = await get_json(client, "/slow", params={"delay": "0.05"})
    assert status == 200
    assert body["delay"] == 0.05
    assert isinstance(body["timestamp"], float)


@pytest.mark.parametrize("delay", ["abc", "-1", "nan", "inf"])
async def test_slow_refuses_bad_delays(client: aiohttp.ClientSession, delay: str) -> None:
    status, body = await get_json(client, "/slow", params={"delay": delay})
    assert status == 400
    assert "delay" in body["error"]


async def test_stats_count_by_path_and_reset(client: aiohttp.ClientSession) -> None:
    assert await get_json(client, "/stats") == (200, {"total": 0, "by_path": {}})
    for path in ["/items", "/items?color=red", "/items/1", "/health", "/no/such/path"]:
        async with client.get(path) as resp:
            await resp.read()
    expected = {
        "total": 5,
        "by_path": {"/items": 2, "/items/1": 1, "/health": 1, "/no/such/path": 1},
    }
    assert await get_json(client, "/stats") == (200, expected)
    # Reading the counters does not change them.
    assert await get_json(client, "/stats") == (200, expected)

    async with client.post("/stats/reset") as resp:
        assert resp.status == 200
        assert await resp.json() == {"total": 0, "by_path": {}}
    await get_json(client, "/items/2")
    assert await get_json(client, "/stats") == (200, {"total": 1, "by_path": {"/items/2": 1}})


def test_stats_share_one_bucket_beyond_the_path_limit() -> None:
    counters = RequestStats()
    for i in range(MAX_PATHS + 5):
        counters.count(f"/items/{i}")
    counters.count("/items/0")
    snapshot = counters.snapshot()
    assert snapshot["total"] == MAX_PATHS + 6
    by_path = snapshot["by_path"]
    assert isinstance(by_path, dict)
    assert len(by_path) == MAX_PATHS + 1
    assert by_path["/items/0"] == 2
    assert by_path[OVERFLOW_PATH] == 5


async def test_stats_count_a_request_while_it_is_still_in_flight(
    client: aiohttp.ClientSession,
) -> None:
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"last"

    async def post() -> Any:
        async with client.post("/upload", data=body()) as resp:
            return await resp.json()

    upload = asyncio.create_task(post())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            _, stats = await get_json(client, "/stats")
            if stats["by_path"].get("/upload") == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, stats
            await asyncio.sleep(0.01)
        assert not upload.done()
    finally:
        release.set()
    assert (await upload)["received"] == len(b"firstlast")


async def test_echo_reports_what_it_received(client: aiohttp.ClientSession) -> None:
    headers = [("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two")]
    async with client.post(
        "/echo/a/b", params=[("q", "1"), ("q", "2")], data=b"h\xc3\xa9llo", headers=headers
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo/a/b"
    assert seen["query"] == "q=1&q=2"
    assert seen["query_params"] == [["q", "1"], ["q", "2"]]
    sent = [pair for pair in seen["headers"] if pair[0].lower() in ("x-dup", "x-other")]
    assert sent == [["X-Dup", "one"], ["X-Other", "x"], ["X-Dup", "two"]]
    assert seen["body"] == "héllo"
    assert seen["body_encoding"] == "utf-8"
    assert seen["body_length"] == 6
    assert seen["client"]["host"] == "127.0.0.1"
    assert isinstance(seen["client"]["port"], int)


async def test_echo_base64_encodes_binary_bodies(client: aiohttp.ClientSession) -> None:
    raw = bytes([0xFF, 0x00, 0xFE, 0x80])
    async with client.put("/echo", data=raw) as resp:
        seen = await resp.json()
    assert seen["method"] == "PUT"
    assert seen["body_encoding"] == "base64"
    assert base64.b64decode(seen["body"]) == raw
    assert seen["body_length"] == 4


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "OPTIONS"])
async def test_echo_accepts_any_method(client: aiohttp.ClientSession, method: str) -> None:
    async with client.request(method, "/echo/x") as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == method
    assert seen["body_length"] == 0


async def test_echo_shows_the_path_exactly_as_sent(upstream_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    writer.write(
        b"GET /echo/a%2Fb/./c/../%252e?x=%20&x=+ HTTP/1.1\r\n"
        b"Host: h\r\nX-Dup: 1\r\nx-dup: 2\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert data.startswith(b"HTTP/1.1 200")
    seen = json.loads(data.partition(b"\r\n\r\n")[2])
    assert seen["path"] == "/echo/a%2Fb/./c/../%252e"
    assert seen["query"] == "x=%20&x=+"
    assert seen["http_version"] == "1.1"
    assert [p for p in seen["headers"] if p[0].lower() == "x-dup"] == [
        ["X-Dup", "1"],
        ["x-dup", "2"],
    ]


@pytest.mark.parametrize("code", [200, 201, 404, 418, 500, 503, 599])
async def test_status_answers_with_the_code(client: aiohttp.ClientSession, code: int) -> None:
    async with client.get(f"/status/{code}") as resp:
        assert resp.status == code
        assert (await resp.json())["status"] == code


async def test_status_without_body(client: aiohttp.ClientSession) -> None:
    async with client.post("/status/204") as resp:
        assert resp.status == 204
        assert await resp.read() == b""


@pytest.mark.parametrize("code", ["99", "100", "600", "99999999999999999999999"])
async def test_status_out_of_range_is_400(client: aiohttp.ClientSession, code: str) -> None:
    async with client.get(f"/status/{code}") as resp:
        assert resp.status == 400


async def test_router_errors_are_json(client: aiohttp.ClientSession) -> None:
    status, body = await get_json(client, "/nowhere")
    assert (status, body) == (404, {"error": "Not Found", "status": 404})
    async with client.delete("/items") as resp:
        assert resp.status == 405
        assert resp.content_type == JSON
        assert "GET" in resp.headers["Allow"]
