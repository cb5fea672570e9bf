"""The upstream connection's HTTP/1.1 framing (`heliox.net.http1`): responses held to their
declared Content-Length, surplus bytes never read as a response, chunked and close-delimited
bodies, interim responses, strict heads. Bytes are fed to the connection as reads from the socket
would be; then the same through `UpstreamClient` against real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from heliox.net.http1 import (
    CHUNKED,
    LENGTH,
    NONE,
    UNTIL_CLOSE,
    ConnectionClosed,
    Http1Connection,
    ResponseError,
    parse_head,
)
from heliox.net.upstream_client import UpstreamClient, UpstreamError, UpstreamTarget

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
SURPLUS = b"EXTRA-BYTES"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.paused = False
        self.written: list[bytes] = []

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))


def new_connection(*, head_request: bool = False) -> tuple[Http1Connection, FakeTransport]:
    conn = Http1Connection()
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.start(head_request=head_request)
    return conn, transport


def feed(conn: Http1Connection, *reads: bytes) -> None:
    for data in reads:
        conn.data_received(data)


async def body_of(conn: Http1Connection) -> tuple[int, bytes]:
    head = await asyncio.wait_for(conn.head(), 2)
    parts = []
    while chunk := await asyncio.wait_for(conn.read(), 2):
        parts.append(chunk)
    return head.status, b"".join(parts)


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
    conn, transport = new_connection()
    feed(conn, *reads)
    assert await body_of(conn) == (200, b"hello")
    assert (conn.overran, conn.reusable, transport.closed) == (False, True, False)


@pytest.mark.parametrize("reads", splits(HEAD + b"hello" + SURPLUS), ids=SPLIT_IDS)
async def test_a_surplus_is_dropped_and_closes_the_connection(reads: list[bytes]) -> None:
    conn, transport = new_connection()
    feed(conn, *reads)
    assert await body_of(conn) == (200, b"hello")  # not a failed response
    assert (conn.overran, conn.reusable, transport.closed) == (True, False, True)


async def test_a_surplus_after_the_body_closes_the_idle_connection() -> None:
    conn, transport = new_connection()
    feed(conn, HEAD + b"hello")
    assert await body_of(conn) == (200, b"hello")
    assert not transport.closed
    feed(conn, SURPLUS)  # as while the connection waits in the pool
    assert (conn.overran, conn.reusable, transport.closed) == (True, False, True)
    assert conn.overran_at == conn.requests == 1  # the response it came after


async def test_a_whole_response_as_surplus_is_never_parsed() -> None:
    conn, transport = new_connection()
    feed(conn, HEAD + b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    assert await body_of(conn) == (200, b"hello")
    assert conn.overran and transport.closed


async def test_responses_in_turn_on_one_connection() -> None:
    conn, transport = new_connection()
    for body in (b"hello", b"world"):
        feed(conn, HEAD + body)
        assert await body_of(conn) == (200, body)
        assert conn.reusable
        conn.start(head_request=False)  # the next request on the connection
    assert (conn.overran, transport.closed, conn.requests) == (False, False, 3)


async def test_a_surplus_where_the_next_head_is_due_is_told_apart() -> None:
    """The surplus arrives once the next request is on the connection: that request fails, and
    `stray` says why (the client sends it again when it may)."""
    conn, transport = new_connection()
    feed(conn, HEAD + b"hello")
    assert await body_of(conn) == (200, b"hello")
    conn.start(head_request=False)  # the next request
    feed(conn, SURPLUS + HEAD + b"hello")
    with pytest.raises(ResponseError):
        await conn.head()
    assert (conn.stray, conn.overran, transport.closed) == (True, False, True)


async def test_a_malformed_first_head_is_stray_too() -> None:
    conn, transport = new_connection()
    feed(conn, b"NOT HTTP\r\n\r\n")
    assert conn.stray and transport.closed
    conn, _ = new_connection()
    feed(conn, HEAD + b"hello")
    assert not conn.stray


async def test_interim_responses_come_before_the_final_one() -> None:
    conn, transport = new_connection()
    feed(conn, b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"hel", b"lo")
    assert await body_of(conn) == (200, b"hello")
    assert not conn.overran
    feed(conn, SURPLUS)
    assert conn.overran and transport.closed


@pytest.mark.parametrize(
    ("head_request", "head"),
    [
        (True, HEAD),  # a HEAD request's answer
        (False, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        (False, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
    ids=["head", "204", "304", "empty"],
)
async def test_a_body_after_a_response_without_one_is_surplus(
    head_request: bool, head: bytes
) -> None:
    conn, transport = new_connection(head_request=head_request)
    feed(conn, head)
    assert (await body_of(conn))[1] == b""
    assert not conn.overran and conn.reusable
    feed(conn, b"hello")
    assert conn.overran and transport.closed


@pytest.mark.parametrize(
    "data",
    splits(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    ),
    ids=SPLIT_IDS,
)
async def test_chunked_bodies_are_decoded_and_trailers_dropped(data: list[bytes]) -> None:
    conn, transport = new_connection()
    feed(conn, *data)
    assert await body_of(conn) == (200, b"hello world")
    assert conn.reusable and not transport.closed
    feed(conn, SURPLUS)
    assert conn.overran and transport.closed


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\nhello\r\n", b"5\r\nhello!!\r\n", b"1" * 5000],
    ids=["bad-size", "longer-than-its-size", "endless-size-line"],
)
async def test_malformed_chunks_fail_the_body(chunks: bytes) -> None:
    conn, transport = new_connection()
    feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    await conn.head()
    with pytest.raises(ResponseError):
        while await conn.read():
            pass
    assert transport.closed and not conn.reusable


async def test_a_close_delimited_body_ends_with_the_connection() -> None:
    conn, _ = new_connection()
    feed(conn, b"HTTP/1.0 200 OK\r\n\r\nhello", b" world")
    conn.connection_lost(None)
    assert await body_of(conn) == (200, b"hello world")
    assert not conn.overran and not conn.reusable


async def test_a_connection_lost_mid_body_fails_the_body() -> None:
    conn, _ = new_connection()
    feed(conn, HEAD + b"hel")
    await conn.head()
    assert await conn.read() == b"hel"
    conn.connection_lost(None)
    with pytest.raises(ConnectionClosed) as caught:
        await conn.read()
    assert not caught.value.before_response


async def test_a_connection_lost_before_the_response_says_so() -> None:
    conn, _ = new_connection()
    conn.connection_lost(None)
    with pytest.raises(ConnectionClosed) as caught:
        await conn.head()
    assert caught.value.before_response
    conn, _ = new_connection()
    feed(conn, b"HTTP/1.1 200")
    conn.connection_lost(ConnectionResetError())
    with pytest.raises(ConnectionClosed) as caught:
        await conn.head()
    assert not caught.value.before_response  # part of a head came: not a clean retry case


async def test_a_large_body_pauses_the_socket_until_it_is_read() -> None:
    body = bytes(range(256)) * 2048  # 512 KiB
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + SURPLUS
    conn, transport = new_connection()
    feed(conn, *(data[i : i + 7000] for i in range(0, len(data), 7000)))
    assert transport.paused  # more than the high-water mark waits for its reader
    status, got = await body_of(conn)
    assert (status, len(got), got == body) == (200, len(body), True)
    assert not transport.paused and conn.overran


async def test_a_connection_paused_for_an_unread_body_reads_again_for_the_next_response() -> None:
    body = b"x" * (600 * 1024)
    conn, transport = new_connection()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert (await conn.head()).status == 200
    assert transport.paused and conn.reusable  # arrived whole; its reader took none of it
    conn.start(head_request=False)  # the next request on the pooled connection
    assert not transport.paused
    feed(conn, HEAD + b"hello")
    assert await body_of(conn) == (200, b"hello")


# --- heads -------------------------------------------------------------------------------------


def test_obs_fold_is_unfolded_and_names_are_lower_case() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2", head_request=False
    )
    assert head.headers == [(b"x-folded", b"a b"), (b"content-length", b"2")]
    assert (head.framing, head.length, head.keep_alive) == (LENGTH, 2, True)


@pytest.mark.parametrize(
    ("lines", "framing", "keep_alive"),
    [
        (b"Transfer-Encoding: gzip, chunked", CHUNKED, True),
        (b"Transfer-Encoding: xchunked", UNTIL_CLOSE, False),  # RFC 9112 6.3: read to the close
        (b"Content-Length: 5\r\nContent-Length: 5", LENGTH, True),  # the same length twice
        (b"Content-Length: 5\r\nConnection: close", LENGTH, False),
        (b"X-Other: 1", UNTIL_CLOSE, False),
    ],
)
def test_framing(lines: bytes, framing: int, keep_alive: bool) -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\n" + lines, head_request=False)
    assert (head.framing, head.keep_alive) == (framing, keep_alive)


def test_http_1_0_keeps_the_connection_only_when_asked() -> None:
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0", head_request=False).keep_alive
    kept = parse_head(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1", head_request=False
    )
    assert kept.keep_alive and kept.framing == LENGTH
    assert parse_head(HEAD[:-4], head_request=True).framing == NONE


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b",
        b"HTTP/1.1 200 OK\r\nX Bad: 1",
        b"HTTP/1.1 200 OK\r\nX-Bad",
        b"HTTP/1.1 200 OK\r\n : folded first",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000,
        b"HTTP/1.1 200 OK" + b"".join(b"\r\nX-H%d: v" % i for i in range(300)),
    ],
)
def test_heads_a_proxy_must_refuse(head: bytes) -> None:
    with pytest.raises(ResponseError):
        parse_head(head, head_request=False)


async def test_a_head_that_never_ends_is_refused_once_too_long() -> None:
    conn, transport = new_connection()
    feed(conn, b"HTTP/1.1 200 OK\r\nX-Big: ", *([b"a" * 4096] * 5))
    with pytest.raises(ResponseError):
        await conn.head()
    assert transport.closed


# --- the request's head ------------------------------------------------------------------------


def request_head(
    target: UpstreamTarget, headers: list[tuple[bytes, bytes]], body: Any
) -> tuple[bytes, bool]:
    client = UpstreamClient(pool_size=1, connect_timeout=1, read_timeout=1)
    return client._request_head("POST", target, headers, body)


def test_the_request_head_names_the_routes_host_and_frames_the_body() -> None:
    target = UpstreamTarget("http", "api.example", 80, "/a?b=1")
    head, chunked = request_head(target, [(b"host", b"evil"), (b"x-a", b"1")], b"{}")
    assert head == (
        b"POST /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n"
    )
    assert not chunked
    head, chunked = request_head(UpstreamTarget("https", "::1", 8443, "/"), [], None)
    assert head.startswith(b"POST / HTTP/1.1\r\nhost: [::1]:8443\r\n") and not chunked


def test_a_streamed_body_goes_chunked_unless_its_length_is_declared() -> None:
    target = UpstreamTarget("http", "127.0.0.1", 8080, "/")
    head, chunked = request_head(target, [], object())
    assert chunked and b"\r\ntransfer-encoding: chunked\r\n" in head
    head, chunked = request_head(target, [(b"content-length", b"7")], object())
    assert not chunked and b"\r\ncontent-length: 7\r\n" in head and b"chunked" not in head


@pytest.mark.parametrize("value", [b"a\r\nx-injected: 1", b"a\nb", b"a\rb", b"a\x00b"])
def test_a_field_that_could_split_the_request_is_never_sent(value: bytes) -> None:
    target = UpstreamTarget("http", "127.0.0.1", 8080, "/")
    with pytest.raises(UpstreamError):
        request_head(target, [(b"x-a", value)], None)


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
