"""Responses held to their declared Content-Length (`upstream_client._ResponseHandler`), with
aiohttp's own parser: bytes are fed to the protocol as reads from the socket would be.

These also pin what the protocol relies on in aiohttp (each parsed head queued through its
`feed_data`, the connector building protocols with `_factory`): an aiohttp that changes either
fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError

from heliox.net.upstream_client import (
    UpstreamClient,
    UpstreamTarget,
    _Connector,
    _ResponseHandler,
)

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
SURPLUS = b"EXTRA-BYTES"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: Any) -> None:
        pass


def new_protocol(**params: Any) -> tuple[_ResponseHandler, FakeTransport]:
    proto = _ResponseHandler(asyncio.get_running_loop())
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.set_response_params(**params)
    return proto, transport


async def feed(proto: _ResponseHandler, *reads: bytes) -> None:
    for data in reads:
        proto.data_received(data)


async def body_of(proto: _ResponseHandler) -> tuple[int, bytes]:
    message, payload = await asyncio.wait_for(proto.read(), 2)
    return message.code, await asyncio.wait_for(payload.read(), 2)


def splits(data: bytes) -> list[list[bytes]]:
    """`data` as one read, cut after the head, cut inside the head's final CRLFCRLF, and one
    byte per read."""
    end = data.index(b"\r\n\r\n")
    return [
        [data],
        [data[: end + 4], data[end + 4 :]],
        [data[: end + 3], data[end + 3 :]],
        [data[: end + 1], data[end + 1 :]],
        [data[i : i + 1] for i in range(len(data))],
    ]


SPLIT_IDS = ["one-read", "after-head", "inside-crlfcrlf", "after-first-cr", "bytewise"]


@pytest.mark.parametrize("reads", splits(HEAD + b"hello"), ids=SPLIT_IDS)
async def test_a_response_of_its_declared_length_keeps_the_connection(reads: list[bytes]) -> None:
    proto, transport = new_protocol()
    await feed(proto, *reads)
    assert await body_of(proto) == (200, b"hello")
    assert (proto.overran, proto.should_close, transport.closed) == (False, False, False)


@pytest.mark.parametrize("reads", splits(HEAD + b"hello" + SURPLUS), ids=SPLIT_IDS)
async def test_a_surplus_is_dropped_and_closes_the_connection(reads: list[bytes]) -> None:
    proto, transport = new_protocol()
    await feed(proto, *reads)
    assert await body_of(proto) == (200, b"hello")
    assert proto.exception() is None  # not a failed response
    assert (proto.overran, proto.should_close, transport.closed) == (True, True, True)


async def test_a_surplus_after_the_body_closes_the_idle_connection() -> None:
    proto, transport = new_protocol()
    await feed(proto, HEAD + b"hello")
    assert await body_of(proto) == (200, b"hello")
    assert not transport.closed
    await feed(proto, SURPLUS)  # as while the connection waits in the pool
    assert (proto.overran, proto.should_close, transport.closed) == (True, True, True)
    assert proto.overran_at == proto.requests == 1  # the response it came after


async def test_a_whole_response_as_surplus_is_never_parsed() -> None:
    proto, transport = new_protocol()
    await feed(proto, HEAD + b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    assert await body_of(proto) == (200, b"hello")
    assert len(proto) == 0  # nothing else queued
    assert proto.overran and transport.closed


async def test_responses_in_turn_on_one_connection() -> None:
    proto, transport = new_protocol()
    for body in (b"hello", b"world"):
        await feed(proto, HEAD + body)
        assert await body_of(proto) == (200, body)
        proto.set_response_params()  # the next request on the connection
    assert (proto.overran, transport.closed) == (False, False)


async def test_a_surplus_where_the_next_head_is_due_is_told_apart() -> None:
    """The surplus arrives once the next request is on the connection: aiohttp fails that
    request, and `stray` says why (the client sends it again when it may)."""
    proto, transport = new_protocol()
    await feed(proto, HEAD + b"hello")
    assert await body_of(proto) == (200, b"hello")
    proto.set_response_params()  # the next request
    await feed(proto, SURPLUS + HEAD + b"hello")
    with pytest.raises(HttpProcessingError):
        await proto.read()
    assert (proto.stray, proto.overran, transport.closed) == (True, False, True)


async def test_a_malformed_first_head_is_stray_too() -> None:
    proto, transport = new_protocol()
    await feed(proto, b"NOT HTTP\r\n\r\n")
    assert proto.stray and transport.closed
    proto, _ = new_protocol()
    await feed(proto, HEAD + b"hello")
    assert not proto.stray


async def test_interim_responses_come_before_the_final_one() -> None:
    proto, transport = new_protocol()
    await feed(proto, b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"hel", b"lo")
    message, _ = await proto.read()
    assert message.code == 100
    assert await body_of(proto) == (200, b"hello")
    assert not proto.overran
    await feed(proto, SURPLUS)
    assert proto.overran and transport.closed


@pytest.mark.parametrize(
    ("params", "head"),
    [
        ({"skip_payload": True}, HEAD),  # a HEAD request's answer
        ({}, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ({}, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        ({}, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
    ids=["head", "204", "304", "empty"],
)
async def test_a_body_after_a_response_without_one_is_surplus(
    params: dict[str, Any], head: bytes
) -> None:
    proto, transport = new_protocol(**params)
    await feed(proto, head)
    assert (await body_of(proto))[1] == b""
    assert not proto.overran
    await feed(proto, b"hello")
    assert proto.overran and transport.closed


async def test_chunked_and_close_delimited_bodies_pass_as_they_are() -> None:
    proto, transport = new_protocol()
    await feed(
        proto, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert await body_of(proto) == (200, b"hello")
    proto.set_response_params(read_until_eof=True)  # as aiohttp's session asks
    await feed(proto, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", b" world")
    proto.connection_lost(None)
    assert await body_of(proto) == (200, b"hello world")
    assert not proto.overran and not transport.closed


async def test_a_body_larger_than_the_read_buffer_arrives_whole() -> None:
    """The parser pauses when the body's reader is full: the count of bytes still due must not
    lose track of what it held back."""
    body = bytes(range(256)) * 2048  # 512 KiB
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + SURPLUS
    proto, _ = new_protocol(read_bufsize=1024)
    reads = [data[i : i + 7000] for i in range(0, len(data), 7000)]
    message, payload = None, None
    for i, part in enumerate(reads):
        proto.data_received(part)
        if i == 0:
            message, payload = await proto.read()
    assert message is not None and payload is not None
    got = await asyncio.wait_for(payload.read(), 5)
    assert (len(got), got == body) == (len(body), True)
    assert proto.overran


async def test_the_connector_builds_these_protocols() -> None:
    connector = _Connector(idle_timeout=1.0)
    try:
        assert isinstance(connector._factory(), _ResponseHandler)
    finally:
        await connector.close()


# --- through UpstreamClient --------------------------------------------------------------


@pytest.fixture
async def overrunning() -> AsyncIterator[tuple[int, list[int]]]:
    """A server answering `/overrun` with surplus and anything else correctly; yields its port
    and the number of requests each connection answered."""
    per_connection: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                per_connection[index] += 1
                surplus = SURPLUS if head.startswith(b"GET /overrun ") else b""
                writer.write(HEAD + b"hello" + surplus)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], per_connection
    finally:
        server.close()


async def test_upstream_response_tells_an_overrun(overrunning: tuple[int, list[int]]) -> None:
    port, per_connection = overrunning
    client = UpstreamClient(pool_size=8, connect_timeout=2.0, read_timeout=5.0)
    await client.start()
    try:
        results, responses = [], []
        for path in ("/plain", "/overrun", "/plain", "/plain"):
            resp = await client.request(
                "GET", UpstreamTarget("http", "127.0.0.1", port, path), [], None
            )
            body = await resp.read_all(1024)
            results.append((resp.status, body, resp.overran))
            resp.release()
            responses.append(resp)
        assert results == [
            (200, b"hello", False),
            (200, b"hello", True),
            (200, b"hello", False),
            (200, b"hello", False),
        ]
        assert per_connection == [2, 2]  # closed after the overrun, reused otherwise
        # Told per response: the first one's connection overran later, on the second.
        assert [r.overran for r in responses] == [False, True, False, False]
    finally:
        await client.close()


async def test_a_late_surplus_sends_the_next_request_again() -> None:
    """The surplus leaves just before the answer to the next request on the connection: that
    request (a GET) is sent again on a new connection, once."""
    per_connection: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[bytes] = []
        per_connection.append(seen)
        owed = b""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ")[1])
                writer.write(owed + HEAD + b"hello")
                owed = SURPLUS
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    retries: list[None] = []
    client = UpstreamClient(
        pool_size=8, connect_timeout=2.0, read_timeout=5.0, on_retry=lambda: retries.append(None)
    )
    await client.start()
    try:
        for path in ("/a", "/b"):
            target = UpstreamTarget("http", "127.0.0.1", port, path)
            resp = await client.request("GET", target, [], None)
            assert (resp.status, await resp.read_all(1024)) == (200, b"hello")
            resp.release()
        assert per_connection == [[b"/a", b"/b"], [b"/b"]]
        assert len(retries) == 1
    finally:
        await client.close()
        server.close()
