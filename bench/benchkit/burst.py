"""Many requests for one URL, sent at the same instant over connections opened beforehand.

A client that connects while it sends spreads its requests over the time the server takes to
accept them; here every connection is opened and used once first (so the server has accepted it
and holds it as keep-alive), then all requests are written in one pass of the event loop with no
await in between. That is as concurrent as one client process can make them: the spread between
the first and the last write is reported, and is a few milliseconds for a thousand requests.

Plain asyncio streams and a small HTTP/1.1 response reader (Content-Length, chunked, or
read-to-close), so no client library's pool decides when a request really leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Connections opened at once while setting up; the servers' accept queues are far larger.
CONNECT_CONCURRENCY = 100


@dataclass(slots=True)
class Answer:
    """One request of a burst; times are `time.perf_counter()` seconds."""

    target: int  # index of the server it went to
    sent: float
    done: float
    status: int  # 0: no answer (see `error`)
    headers: dict[str, str]  # lower-case names
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class Target:
    host: str
    port: int


class Connection:
    def __init__(
        self, target: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def request_bytes(target: Target, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-case headers, body) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    status = int(parts[1])
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailer fields
                return status, headers, b"".join(chunks)
            chunks.append((await reader.readexactly(size + 2))[:-2])
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await reader.read()


async def _exchange(conn: Connection, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    conn.writer.write(payload)
    return await read_response(conn.reader)


async def open_connections(
    targets: Sequence[Target],
    count: int,
    warm_path: str,
    headers: dict[str, str],
    within: float = 60.0,
) -> list[Connection]:
    """`count` keep-alive connections spread evenly over `targets`, each used once for
    `warm_path` (which must answer 200)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    opened: list[Connection] = []

    async def one(i: int) -> None:
        index = i % len(targets)
        target = targets[index]
        async with gate:
            reader, writer = await asyncio.open_connection(target.host, target.port)
            conn = Connection(index, reader, writer)
            opened.append(conn)
            status, _, _ = await _exchange(conn, request_bytes(target, warm_path, headers))
        if status != 200:
            raise RuntimeError(
                f"warming a connection: {warm_path} on :{target.port} answered {status}, not 200"
            )

    try:
        async with asyncio.timeout(within):
            await asyncio.gather(*(one(i) for i in range(count)))
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return opened


async def fire(
    connections: Sequence[Connection],
    targets: Sequence[Target],
    path: str,
    headers: dict[str, str],
    within: float = 60.0,
) -> list[Answer]:
    """Write one request for `path` on every connection in a single pass, then read all the
    answers; the connections are closed afterwards."""
    payloads = [request_bytes(t, path, headers) for t in targets]
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    readers: list[asyncio.Task[tuple[int, dict[str, str], bytes]]] = []
    try:
        # No await from the first write to the last: every request is on the wire before any
        # answer is looked at.
        for conn in connections:
            sent.append(time.perf_counter())
            conn.writer.write(payloads[conn.target])
        done_at: list[float] = [0.0] * len(connections)

        async def read(i: int, conn: Connection) -> tuple[int, dict[str, str], bytes]:
            try:
                return await read_response(conn.reader)
            finally:
                done_at[i] = time.perf_counter()

        readers = [loop.create_task(read(i, c)) for i, c in enumerate(connections)]
        _, pending = await asyncio.wait(readers, timeout=within)
        for task in pending:
            task.cancel()
        answers: list[Answer] = []
        for i, (conn, task) in enumerate(zip(connections, readers, strict=True)):
            if task in pending:
                answers.append(Answer(conn.target, sent[i], time.perf_counter(), 0, {}, "timeout"))
            elif task.exception() is not None:
                exc = task.exception()
                answers.append(
                    Answer(conn.target, sent[i], done_at[i], 0, {}, f"{type(exc).__name__}: {exc}")
                )
            else:
                status, hdrs, _ = task.result()
                answers.append(Answer(conn.target, sent[i], done_at[i], status, hdrs))
        return answers
    finally:
        for task in readers:
            task.cancel()
        for conn in connections:
            conn.close()
