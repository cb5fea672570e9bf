"""HTTP/1.1 on one upstream connection: the request written as bytes, the response parsed and
framed here, one request at a time.

The gateway relays bytes; it does not need a general client. What it needs of one is strict
parsing (a head a proxy must refuse is refused, RFC 9112), exact framing (a response is read to
its declared end and not a byte further), and a connection that says whether it may carry the
next request. A response's head is parsed in one pass over its bytes; its body is handed over as
it arrives, decoded from chunked framing when it has one.

Refused (`ResponseError`): a status line that is not `HTTP/1.x NNN`, a field line without a
colon, a name that is not a token, a value with NUL, CR or LF, a line over MAX_LINE bytes, more
than MAX_FIELDS fields, Content-Length that is not digits or differs between its lines, and
Content-Length beside Transfer-Encoding. Repaired as RFC 9112 tells a proxy to: obs-fold becomes
a space (§5.2); a Transfer-Encoding whose last coding is not chunked is read until the close and
passed on as it is (§6.3).

A response with more body than its Content-Length declares is cut at the declared length, its
connection closed rather than reused, and `overran` set: the surplus is never read as the start of
the next response. Bytes that arrive while no response is due (in the pool) are a surplus of the
last one, and close the connection the same way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import Any, cast

log = logging.getLogger("heliox.upstream")

MAX_LINE = 16 * 1024  # one status or field line (aiohttp's limit, which this replaces)
MAX_FIELDS = 256
MAX_HEAD = 1024 * 1024  # a whole response head
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
# Body bytes held for the reader before the socket is paused (and resumed under half of it).
READ_HIGH_WATER = 256 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Field names as sent -> lower case, for names already found to be tokens.
_NAMES: dict[bytes, bytes] = {}

# Framing of a response body.
NONE, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)
# What the connection expects next.
_IDLE, _HEAD, _BODY = range(3)
# Chunked decoding steps.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ResponseError(Exception):
    """The upstream's bytes are not an acceptable HTTP/1.1 response."""


class ConnectionClosed(Exception):
    """The connection ended before the response, or its body, was complete. `before_response`:
    no byte of the response had arrived (the upstream may have closed an idle connection just
    as the request went out)."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class Head:
    """A parsed response head: names in lower case, values as sent (obs-fold unfolded)."""

    __slots__ = ("framing", "headers", "keep_alive", "length", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        framing: int,
        length: int | None,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.framing = framing
        self.length = length  # the declared Content-Length (it frames the body when LENGTH)
        self.keep_alive = keep_alive


def parse_head(data: bytes, *, head_request: bool) -> Head:
    """The head in `data` (its bytes up to, not including, the blank line)."""
    lines = data.split(b"\r\n")
    breaks = len(lines) - 1
    # Every CR and LF is part of a line break, and there is no NUL: no value can hide a field.
    if data.count(b"\r") != breaks or data.count(b"\n") != breaks or b"\x00" in data:
        raise ResponseError("the head holds a NUL, or a CR or LF outside a line break")
    status_line = lines[0]
    if len(status_line) > MAX_LINE:
        raise ResponseError("status line too long")
    m = _STATUS_LINE.fullmatch(status_line)
    if m is None:
        raise ResponseError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    minor = m.group(1)
    status = int(m.group(2))
    if breaks > MAX_FIELDS:
        raise ResponseError(f"more than {MAX_FIELDS} header fields")
    headers: list[tuple[bytes, bytes]] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    names = _NAMES
    for line in lines[1:]:
        if len(line) > MAX_LINE:
            raise ResponseError("header line too long")
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 §5.2): a proxy replaces it with a space.
            if not headers:
                raise ResponseError("a folded line before any field")
            value = line.strip(b" \t")
            name, previous = headers[-1]
            headers[-1] = (name, previous + b" " + value if previous else value)
            continue
        raw, colon, value = line.partition(b":")
        if not colon:
            raise ResponseError(f"a field line without a colon: {line[:80]!r}")
        known = names.get(raw)  # names repeat from response to response: checked once each
        if known is None:
            if _TOKEN.fullmatch(raw) is None:
                raise ResponseError(f"a field name that is not a token: {raw[:80]!r}")
            known = raw.lower()
            if len(names) >= 4096:
                names.clear()
            names[raw] = known
        name = known
        value = value.strip(b" \t")
        headers.append((name, value))
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        elif name == b"connection":
            connection.append(value.lower())
    keep_alive = minor == b"1"
    if connection:
        tokens = {t.strip() for v in connection for t in v.split(b",")}
        keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
    length: int | None = None
    if lengths:
        if codings:
            # RFC 9112 §6.3: a response with both is a smuggling attempt or a broken server.
            raise ResponseError("both Content-Length and Transfer-Encoding")
        declared = lengths[0]
        if len(lengths) > 1 or b"," in declared:  # repeated: only the same length, repeated
            values = {part.strip() for v in lengths for part in v.split(b",")}
            if len(values) != 1:
                raise ResponseError("Content-Length lines disagree")
            (declared,) = values
        if not declared.isdigit() or len(declared) > 18:
            raise ResponseError(f"Content-Length is not a number: {declared[:40]!r}")
        length = int(declared)
    if head_request or status < 200 or status in (204, 304):
        framing = NONE
    elif codings:
        last = b",".join(codings).split(b",")[-1].strip().lower()
        framing = CHUNKED if last == b"chunked" else UNTIL_CLOSE
        if framing == UNTIL_CLOSE:
            keep_alive = False
    elif length is not None:
        framing = LENGTH if length else NONE
    else:
        framing = UNTIL_CLOSE
        keep_alive = False
    return Head(status, headers, framing, length, keep_alive)


class Http1Connection(asyncio.Protocol):
    """One upstream connection. `start(head_request)` before each request is written, then
    `head()` and `read()` until it returns b"". `reusable` says whether it may carry the next."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.requests = 0  # requests sent on the connection so far
        self.overran = False
        self.overran_at = 0  # the request whose response overran (1 for the first)
        # Bytes that were not a response where one was due: on a reused connection, most likely
        # the surplus of the previous response, sent after it.
        self.stray = False
        self.closed = False
        self._state = _IDLE
        self._head_request = False
        self._buf = bytearray()  # head bytes, or chunked framing not yet decoded
        self._scanned = 0  # where the search for the head's end resumes
        self._got_bytes = False  # any byte of the current response
        self._head: Head | None = None
        self._head_waiter: asyncio.Future[Head] | None = None
        self._framing = NONE
        self._left = 0  # LENGTH: body bytes still due; CHUNKED: of the current chunk
        self._chunk_step = _SIZE
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._eof = False  # the body is complete (the reader still has `_body` to take)
        self._error: Exception | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio.Transport, and
        # servers run the app on uvloop whenever it is installed (uvicorn; granian unless told
        # otherwise, as `heliox serve` tells it): that check failed every upstream call with 502.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        state = self._state
        if state == _HEAD:
            self._fail_head(
                ConnectionClosed(
                    f"the upstream closed the connection before the response ({exc or 'EOF'})",
                    before_response=not self._got_bytes,
                )
            )
        elif state == _BODY:
            if self._framing == UNTIL_CLOSE:
                self._finish_body()
            else:
                self._fail_body(
                    ConnectionClosed(
                        f"the upstream closed the connection mid-body ({exc or 'EOF'})",
                        before_response=False,
                    )
                )
        self._state = _IDLE
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _BODY and self._framing == LENGTH and len(data) <= self._left:
            self._left -= len(data)
            self._deliver(data)
            if not self._left:
                self._finish_body()
            return
        if state == _IDLE:
            self._surplus(len(data))
            return
        if state == _HEAD:
            self._got_bytes = True
            self._buf += data
            self._parse_heads()
            return
        self._body_bytes(data)

    # --- the request side ----------------------------------------------------------------------
    def start(self, *, head_request: bool) -> None:
        """A request is about to be written: its response is due from now on."""
        self.requests += 1
        self._state = _HEAD
        self._head_request = head_request
        self._got_bytes = False
        self._buf.clear()
        self._scanned = 0
        self._head = None
        self._head_waiter = None
        self._framing = NONE
        self._body.clear()
        self._buffered = 0
        self._eof = False
        self._error = None
        if self._paused and self.transport is not None:
            # The last response arrived whole but its reader left it (a body over the cache's
            # size limit, say): the socket was paused for it, and the next response needs it.
            self._paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionResetError("the upstream connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is full."""
        if self.closed:
            raise ConnectionResetError("the upstream connection is closed")
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def head_future(self) -> asyncio.Future[Head]:
        """The response's head (interim 1xx responses skipped), as a future."""
        waiter = self._head_waiter
        if waiter is None:
            waiter = self._head_waiter = asyncio.get_running_loop().create_future()
            if self._head is not None:
                waiter.set_result(self._head)
            elif self._error is not None:
                waiter.set_exception(self._error)
        return waiter

    async def head(self, timeout: float | None = None) -> Head:  # noqa: ASYNC109 - a read timeout
        """The response's head (interim 1xx responses skipped). TimeoutError when `timeout`
        seconds pass without it."""
        waiter = self.head_future()
        if waiter.done() or timeout is None:
            return await waiter
        # One timer handle, not `asyncio.timeout`: this is on every upstream call's path.
        timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def read(self, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - per read
        """Body bytes as they arrive (all that is buffered, joined); b"" once it is complete.
        TimeoutError when `timeout` seconds pass without any."""
        while True:
            if self._body:
                body = self._body
                data = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            loop = asyncio.get_running_loop()
            waiter = self._body_waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._body_waiter = None
                if timer is not None:
                    timer.cancel()

    @property
    def drained(self) -> bool:
        """The body is complete and its reader has taken all of it: `read()` returns b""."""
        return self._eof and not self._body and self._error is None

    @property
    def complete(self) -> bool:
        """The last response arrived to its end (nothing of it left on the socket; what the
        reader did not take is dropped with the next `start`)."""
        return self._eof and self._error is None and self._state == _IDLE

    @property
    def reusable(self) -> bool:
        head = self._head
        return (
            self.complete
            and not self.closed
            and not self.overran
            and head is not None
            and head.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- parsing -------------------------------------------------------------------------------
    def _parse_heads(self) -> None:
        while self._state == _HEAD:
            buf = self._buf
            # Searched from where the last search stopped: a head trickled in byte by byte
            # costs one pass, not one per read.
            end = buf.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                self._scanned = max(0, len(buf) - 3)
                if len(buf) > MAX_HEAD:
                    self._refuse(ResponseError("response head too large"))
                elif len(buf) - buf.rfind(b"\r\n") > MAX_LINE + 2:
                    self._refuse(ResponseError("header line too long"))
                return
            self._scanned = 0
            try:
                head = parse_head(bytes(buf[:end]), head_request=self._head_request)
            except ResponseError as exc:
                self._refuse(exc)
                return
            del buf[: end + 4]
            if head.status < 200 and head.status != 101:
                continue  # an interim response: the final one follows
            self._head = head
            self._framing = head.framing
            if head.status == 101:
                self._framing = UNTIL_CLOSE  # another protocol from here on: never reused
                head.keep_alive = False
            self._state = _BODY
            if self._framing == NONE:
                self._finish_body()
            elif self._framing == LENGTH:
                assert head.length is not None
                self._left = head.length
            elif self._framing == CHUNKED:
                self._chunk_step = _SIZE
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(head)
            rest = bytes(buf)
            buf.clear()
            if rest:
                if self._state == _IDLE:
                    self._surplus(len(rest))
                else:
                    self._body_bytes(rest)
            return

    def _body_bytes(self, data: bytes) -> None:
        framing = self._framing
        if framing == LENGTH:
            left = self._left
            if len(data) <= left:
                self._left = left - len(data)
                self._deliver(data)
                if not self._left:
                    self._finish_body()
                return
            if left:
                self._deliver(data[:left])
            self._left = 0
            self._finish_body()
            self._surplus(len(data) - left)
        elif framing == UNTIL_CLOSE:
            self._deliver(data)
        else:
            self._buf += data
            self._decode_chunks()

    def _decode_chunks(self) -> None:
        buf = self._buf
        while self._state == _BODY:
            step = self._chunk_step
            if step == _DATA:
                if not buf:
                    return
                take = min(self._left, len(buf))
                self._deliver(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._chunk_step = _DATA_END
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_CHUNK_LINE:
                    self._fail_body(ResponseError("chunk framing line too long"))
                return
            line = bytes(buf[:end])
            del buf[: end + 2]
            if step == _DATA_END:
                if line:
                    self._fail_body(ResponseError("chunk data longer than its size"))
                    return
                self._chunk_step = _SIZE
            elif step == _SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size) is None:
                    self._fail_body(ResponseError(f"bad chunk size line: {line[:40]!r}"))
                    return
                self._left = int(size, 16)
                self._chunk_step = _DATA if self._left else _TRAILER
            elif not line:  # _TRAILER: the blank line ends the message; trailers are dropped
                self._finish_body()
                if buf:
                    rest = len(buf)
                    buf.clear()
                    self._surplus(rest)
                return

    def _deliver(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _finish_body(self) -> None:
        self._state = _IDLE
        self._eof = True
        self._wake_reader()

    def _fail_body(self, exc: Exception) -> None:
        self._state = _IDLE
        self._error = exc
        self.abort()
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_head(self, exc: Exception) -> None:
        self._state = _IDLE
        self._error = exc
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _refuse(self, exc: ResponseError) -> None:
        """Bytes where a head was due that are none: the connection is done for."""
        self.stray = True
        self._fail_head(exc)
        self.abort()

    def _surplus(self, size: int) -> None:
        """More bytes than the last response declared: cut there, and never reuse the
        connection (what follows is not a response this client asked for)."""
        if not self.overran:
            self.overran = True
            self.overran_at = self.requests
            log.warning(
                "upstream %s sent more data than its response declared (%d bytes or more): "
                "response cut at its declared end, connection closed",
                self.peer[:2] if isinstance(self.peer, tuple) else "?",
                size,
            )
        self._state = _IDLE
        self.close()  # what the reader has not taken yet stays with it


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream sent nothing within the read timeout"))
