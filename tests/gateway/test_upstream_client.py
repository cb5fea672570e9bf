"""`UpstreamClient`'s pool, connections and request bodies against real servers on loopback: idle
connections closed by the client's own sweep before an upstream would close them, an upstream that
answers before it has read the body, a streamed body sent chunked or by its declared length, an
IPv6 literal, and a name whose addresses are tried until one answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from heliox.net.upstream_client import UpstreamClient, UpstreamTarget

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A loopback HTTP/1.1 server: `answer(head, reader)` gives the bytes to send per request."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0  # connections the peer (the client) closed
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                reply = await self.answer(head, reader)
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        finally:
            writer.close()

    async def answer(self, head: bytes, reader: asyncio.StreamReader) -> bytes:
        return OK

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def target(self, path: str = "/") -> UpstreamTarget:
        assert self.server is not None
        return UpstreamTarget("http", "127.0.0.1", self.server.sockets[0].getsockname()[1], path)


async def _wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _get(client: UpstreamClient, target: UpstreamTarget) -> bytes:
    resp = await client.request("GET", target, [], None)
    try:
        return await resp.read_all(1024) or b""
    finally:
        resp.release()


async def test_an_idle_connection_is_closed_by_the_client_once_past_its_limit() -> None:
    client = UpstreamClient(pool_size=4, connect_timeout=2, read_timeout=2, keepalive_timeout=0.3)
    await client.start()
    try:
        async with Server() as server:
            assert await _get(client, server.target()) == b"ok"
            assert await _get(client, server.target()) == b"ok"
            assert (server.opened, server.closed) == (1, 0)  # reused while fresh
            # No request comes: the client's own sweep closes it, the upstream sees the close.
            await _wait_for(lambda: server.closed == 1)
            assert await _get(client, server.target()) == b"ok"
            assert server.opened == 2
    finally:
        await client.close()


async def _body(parts: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for _ in range(parts):
        yield b"x" * size
        await asyncio.sleep(0)


async def test_an_answer_before_the_body_is_read_is_taken_and_its_connection_dropped() -> None:
    class Early(Server):
        async def answer(self, head: bytes, reader: asyncio.StreamReader) -> bytes:
            if head.startswith(b"POST"):
                # Refuses at once without reading the (large) body, as an upstream over its
                # limit does, and stops reading: what follows on the connection is that body.
                return (
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            return OK

    client = UpstreamClient(pool_size=4, connect_timeout=2, read_timeout=5)
    await client.start()
    try:
        async with Early() as server:
            resp = await client.request("POST", server.target("/up"), [], _body(200))
            assert resp.status == 413
            assert await resp.read_all(1024) == b""
            resp.release()  # the body was not all sent: the connection is not reused
            assert await _get(client, server.target()) == b"ok"
            assert server.opened == 2
    finally:
        await client.close()


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_a_streamed_body_arrives_whole(declared: bool) -> None:
    class Echo(Server):
        async def answer(self, head: bytes, reader: asyncio.StreamReader) -> bytes:
            if b"transfer-encoding: chunked" in head:
                body = b""
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                await reader.readexactly(2)  # the last chunk's CRLF
            elif b"content-length: " in head:
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            else:
                return OK  # a GET
            self.bodies.append(body)
            return OK

    client = UpstreamClient(pool_size=4, connect_timeout=2, read_timeout=5)
    await client.start()
    try:
        async with Echo() as server:
            headers = [(b"content-length", b"%d" % (3 * 64 * 1024))] if declared else []
            resp = await client.request("PUT", server.target("/put"), headers, _body(3))
            assert (resp.status, await resp.read_all(16)) == (200, b"ok")
            resp.release()
            assert server.bodies == [b"x" * (3 * 64 * 1024)]
            assert await _get(client, server.target()) == b"ok"
            assert server.opened == 1  # whole body sent, response read: the connection is reused
    finally:
        await client.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_literal_upstream_is_reached_and_named_in_brackets() -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(pool_size=4, connect_timeout=2, read_timeout=2)
    await client.start()
    try:
        assert await _get(client, UpstreamTarget("http", "::1", port, "/v6")) == b"ok"
        assert heads[0].startswith(b"GET /v6 HTTP/1.1\r\nhost: [::1]:%d\r\n" % port)
    finally:
        await client.close()
        server.close()


async def test_a_name_is_resolved_and_its_addresses_tried_until_one_answers() -> None:
    # "localhost" may resolve to ::1 first; the server listens on 127.0.0.1 only.
    client = UpstreamClient(pool_size=4, connect_timeout=2, read_timeout=2)
    await client.start()
    try:
        async with Server() as server:
            port = server.target().port
            assert await _get(client, UpstreamTarget("http", "localhost", port, "/")) == b"ok"
            assert b"\r\nhost: localhost:%d\r\n" % port in server.heads[0]
    finally:
        await client.close()
