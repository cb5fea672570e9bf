"""Helpers for the hardening tests: a raw HTTP/1.1 client that sends bytes exactly as written,
a base for a test's own upstream server, upstream counters, admin shortcuts and process probes
(resident memory, open files)."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import random
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from tests.e2e.harness import ACME, Gateway, Upstream, wait_until

KEY = ACME.encode()
PROBLEM = "application/problem+json"
IO_TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the server closed the connection after this response

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON, of whatever shape the endpoint answers (as httpx's)."""
        return httpx.Response(200, content=self.body).json()


class RawConnection:
    """One TCP connection; `read_reply` parses one response (Content-Length, chunked or
    close-delimited), leaving what follows in the buffer."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT, *, source: str = "") -> None:
        # `source`: another loopback address (127.0.0.2, ...) for a client of its own.
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed mid-line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_reply(self, *, head_request: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before a response: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines)
        ]
        reply = Reply(status, headers, b"", False)
        length = reply.header("content-length")
        if head_request or status in (204, 304):
            pass
        elif length is not None:
            reply.body = self._take(int(length))
        elif (reply.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            while self._line():  # trailers
                pass
            reply.body = b"".join(parts)
        else:
            while self._fill():
                pass
            reply.body, self.buf = self.buf, b""
            reply.closed = True
        if (reply.header("connection") or "").lower() == "close" and not reply.closed:
            reply.closed = self.at_eof()
        return reply

    def at_eof(self) -> bool:
        """True when the server has closed; recv returns at once when it has."""
        return not self.buf and not self._fill()


def exchange(port: int, data: bytes, *, source: str = "") -> Reply:
    with RawConnection(port, source=source) as conn:
        conn.send(data)
        return conn.read_reply(head_request=data.startswith(b"HEAD "))


def request(
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
    host: bytes | None = b"gw.test",
    key: bytes | None = KEY,
    close: bool = True,
) -> bytes:
    """A request exactly as given: no normalisation of the target, the headers or the body."""
    lines = [method.encode() + b" " + target.encode("latin-1") + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    if key is not None:
        lines.append(b"X-API-Key: " + key)
    lines += [name + b": " + value for name, value in headers or []]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class LoopServer:
    """A TCP server of a test's own on 127.0.0.1 (a port of its own), run on an asyncio loop in
    a thread of its own; a subclass answers connections in `serve` and sets its own fields before
    calling `super().__init__()`, which listens at once. Use as a context manager, or call
    `close`: it stops listening and ends the connections still open."""

    def __init__(self) -> None:
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await self.serve(reader, writer)
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _stop(self) -> None:
        self._server.close()
        tasks = list(self._connections.values())
        for writer, task in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tag() -> str:
    return uuid.uuid4().hex[:12]


_addresses = itertools.count(random.randrange(1 << 17))


def fresh_address() -> str:
    """A client address no other call of this test run returns (198.18.0.0/15, the benchmarking
    range), to send as X-Forwarded-For to a gateway that trusts 127.0.0.1: state kept per client
    address (bad-key allowances, admin lock-outs; in Redis, shared by the run's gateways) starts
    empty for it."""
    return str(ipaddress.IPv4Address("198.18.0.0") + next(_addresses) % (1 << 17))


def upstream_hits(upstream: Upstream, path: str) -> int:
    by_path: dict[str, int] = upstream.stats()["by_path"]
    return by_path.get(path, 0)


def assert_still_serving(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/g/webhooks/items", headers={"X-API-Key": ACME}, timeout=10)
    assert r.status_code == 200, r.text


def create_route(gw: Gateway, **fields: object) -> str:
    """Create a route and wait until this gateway serves it; returns its name."""
    name = str(fields.setdefault("name", f"r-{tag()}"))
    with gw.admin() as admin:
        r = admin.post("/admin/routes", json=fields)
        assert r.status_code == 201, r.text
    # An oversize declared body is refused (413, or 405 without POST) once the route exists,
    # without reaching its upstream or spending a rate-limit token; 404 while it is unknown.
    probe = request("POST", f"/g/{name}/", [(b"Content-Length", b"%d" % (1 << 40))])
    wait_until(lambda: exchange(gw.port, probe).status != 404, timeout=10)
    return name


def create_key(gw: Gateway, tenant_id: int | None = None, **limits: object) -> tuple[int, str]:
    """A fresh key (in a fresh tenant unless one is given), live on this gateway."""
    with gw.admin() as admin:
        if tenant_id is None:
            tenant = admin.post("/admin/tenants", json={"name": f"t-{tag()}"})
            assert tenant.status_code == 201, tenant.text
            tenant_id = int(tenant.json()["id"])
        key = admin.post("/admin/keys", json={"tenant_id": tenant_id, "name": "k", **limits})
        assert key.status_code == 201, key.text
    key_id, plaintext = int(key.json()["id"]), str(key.json()["key"])
    wait_until(lambda: key_is_live(gw, plaintext), timeout=10)
    return key_id, plaintext


def key_is_live(gw: Gateway, key: str) -> bool:
    """Whether `key` authenticates, without spending a rate-limit token or quota: a declared
    oversize body is refused (413) after authentication and before admission."""
    probe = request(
        "POST", "/g/webhooks/upload", [(b"Content-Length", b"%d" % (1 << 40))], key=key.encode()
    )
    status = exchange(gw.port, probe).status
    assert status in (401, 413), status
    return status == 413


# --- process probes -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        found += [int(p) for p in text.split()]
    return found


def serving_pids(gw: Gateway) -> list[int]:
    """The gateway's processes: the granian main process and its workers."""
    root = gw.proc.popen.pid
    pids = [root]
    i = 0
    while i < len(pids):
        pids += _children(pids[i])
        i += 1
    return pids


def worker_pid(gw: Gateway) -> int:
    """The process that runs the application (granian's worker; the main process with none)."""
    pids = serving_pids(gw)
    return pids[-1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
