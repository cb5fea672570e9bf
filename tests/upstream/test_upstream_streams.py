"""Streaming and fault endpoints: /bytes, /drip, /abort, /upload."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from heliox.upstream.streams import pattern


async def test_bytes_streams_exactly_n_bytes(client: aiohttp.ClientSession) -> None:
    n = 3 * 65536 + 123
    received = bytearray()
    async with client.get(f"/bytes/{n}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(n)
        assert resp.content_type == "application/octet-stream"
        async for chunk in resp.content.iter_chunked(10_000):
            received += chunk
    assert len(received) == n
    assert bytes(received) == pattern(n)
    assert received[256:260] == bytes([0, 1, 2, 3])


async def test_bytes_zero_and_head(client: aiohttp.ClientSession) -> None:
    async with client.get("/bytes/0") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with client.head("/bytes/1000") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        assert await resp.read() == b""
    # The connection is still in a sane state after the HEAD.
    async with client.get("/bytes/10") as resp:
        assert await resp.read() == pattern(10)


async def test_bytes_over_the_cap_is_400(client: aiohttp.ClientSession) -> None:
    async with client.get(f"/bytes/{1024**3 + 1}") as resp:
        assert resp.status == 400


async def test_drip_trickles_a_chunked_body(client: aiohttp.ClientSession) -> None:
    params = {"chunks": "4", "interval": "0.01", "size": "5"}
    async with client.get("/drip", params=params) as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
        body = await resp.read()
    assert body == pattern(5) * 4


@pytest.mark.parametrize(
    "params",
    [{"chunks": "1000", "interval": "1"}, {"size": "0"}, {"chunks": "x"}, {"interval": "-1"}],
)
async def test_drip_refuses_bad_parameters(
    client: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    async with client.get("/drip", params=params) as resp:
        assert resp.status == 400


# A body that never ends would otherwise hold the test until the suite timeout.
READ_TIMEOUT = aiohttp.ClientTimeout(sock_read=10)


async def _read_until_error(resp: aiohttp.ClientResponse) -> tuple[int, BaseException | None]:
    got = 0
    try:
        async for chunk in resp.content.iter_any():
            got += len(chunk)
    except aiohttp.ServerTimeoutError:
        pytest.fail("the upstream stalled instead of dropping the connection")
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("mode", ["reset", "close"])
async def test_abort_breaks_the_body_midway(client: aiohttp.ClientSession, mode: str) -> None:
    params = {"after": "5000", "mode": mode}
    async with client.get("/abort", params=params, timeout=READ_TIMEOUT) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(5000 + 1024)
        got, error = await _read_until_error(resp)
    assert error is not None, "the client read a complete body"
    assert got <= 5000
    if mode == "close":
        assert got == 5000
    # The upstream itself carries on.
    async with client.get("/health") as resp:
        assert resp.status == 200


async def test_abort_before_any_body_byte(client: aiohttp.ClientSession) -> None:
    params = {"after": "0", "length": "10"}
    async with client.get("/abort", params=params, timeout=READ_TIMEOUT) as resp:
        assert resp.headers["Content-Length"] == "10"
        got, error = await _read_until_error(resp)
    assert error is not None
    assert got == 0


async def test_abort_refuses_a_length_it_could_fulfil(client: aiohttp.ClientSession) -> None:
    async with client.get("/abort", params={"after": "10", "length": "10"}) as resp:
        assert resp.status == 400


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_upload_counts_a_streamed_body(client: aiohttp.ClientSession, method: str) -> None:
    pieces = [os.urandom(65536) for _ in range(20)] + [b"tail"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async with client.request(method, "/upload", data=body()) as resp:
        assert resp.status == 200
        answer = await resp.json()
    whole = b"".join(pieces)
    assert answer == {"received": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


async def test_upload_of_nothing(client: aiohttp.ClientSession) -> None:
    async with client.post("/upload") as resp:
        assert (await resp.json())["received"] == 0
