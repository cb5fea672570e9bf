"""Closes the client connections granian keeps open for too long (`heliox serve`, Linux).

granian 2.8 has no timeout for a connection that never sends a byte, times idle keep-alive
connections with its header read timeout, and has no connection cap other than one that stops
accepting for everyone (see heliox.core.connections for the policy applied instead). The guard
works from inside each worker process, where granian's sockets are:

- a thread lists the worker's descriptors (`/proc/self/fd`) every second or so, and every 50 ms
  while the worker is near its cap; a socket accepted on the gateway's listening port is a
  client connection, first seen (nearly) when it was accepted;
- what the kernel cannot tell, whether a request is in progress on a connection and when the
  last one ended, the ASGI wrapper records per client port (`ConnectionTracker`);
- a connection to close is shut down (`shutdown(2)`, on a duplicate of granian's descriptor),
  so granian sees the end of the stream and releases the connection itself. That step runs on
  the event loop, after checking again that no request began or ended there meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heliox.core.connections import (
    OVER_LIMIT,
    ClientConnection,
    ConnectionLimits,
    ConnectionPolicy,
    connection_limits,
    reserved_descriptors,
    to_close,
)

if TYPE_CHECKING:
    from heliox.config import Settings

log = logging.getLogger("heliox.connections")

# A connection is known by its client's port alone: the address's spelling differs between
# granian and the socket API (scope ids, IPv4-mapped forms), and a mismatch would make a request
# in progress look idle. Two clients on the same port share a record, which can only make the
# guard more lenient with them (a request in progress on either protects both).
Peer = str
# Checks while the worker is near its cap: new connections over it are closed this fast.
PRESSURE_INTERVAL = 0.05
MAX_INTERVAL = 1.0
NEAR_CAP = 0.9
WARN_EVERY = 10.0  # seconds between two warnings about connections closed over the cap
_FD_DIR = "/proc/self/fd"


def supported() -> bool:
    """Whether this platform lets a process list and inspect its own sockets."""
    return sys.platform.startswith("linux") and os.path.isdir(_FD_DIR)


def open_file_limit() -> int:
    # The soft limit: granian raises it to the hard one when it loads, before either caller.
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def limits_for(settings: Settings) -> ConnectionLimits:
    """The cap and ceiling a worker started with these settings applies (its main process
    computes the same for granian's backpressure: workers inherit its open-file limit)."""
    reserved = reserved_descriptors(settings.database_pool_size, settings.redis_pool_size)
    return connection_limits(settings.client_max_connections, open_file_limit(), reserved)


class ConnectionTracker:
    """Per client port: [requests in progress, when the last one ended (monotonic)].

    Written on the event loop by the ASGI wrapper; read by the guard's thread, which never
    writes (a lookup or a copy of a dict is atomic under the GIL)."""

    __slots__ = ("peers",)

    def __init__(self) -> None:
        self.peers: dict[Peer, list[float]] = {}

    def begin(self, client: Any) -> list[float] | None:
        if not client:
            return None  # a Unix socket: no address to know the connection by
        port = client[1]
        peer = port if type(port) is str else str(port)  # granian gives a string
        record = self.peers.get(peer)
        if record is None:
            record = self.peers[peer] = [0, 0.0]
        record[0] += 1
        return record  # the caller decrements [0] and sets [1] to time.monotonic() at the end


@dataclass(slots=True)
class _Socket:
    fd: int
    peer: Peer | None  # None: not a client connection (a listener, an upstream, Redis, ...)
    seen_at: float
    born_after: float  # the check before the one that first saw it: it was accepted later


class ConnectionGuard:
    def __init__(self, policy: ConnectionPolicy, tracker: ConnectionTracker) -> None:
        self.policy = policy
        self.tracker = tracker
        self.interval = min(max(min(policy.header_timeout, policy.idle_timeout) / 4, 0.05), 1.0)
        self._known: dict[int, _Socket] = {}  # by inode
        self._ports: set[int] = set()  # the listening ports of this worker
        self._last_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed_over_limit = 0
        self._warned_at = 0.0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="heliox-connections", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # --- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        interval = self.interval
        failed = False
        while not self._stop.wait(interval):
            try:
                interval = self.check()
                failed = False
            except Exception:
                # Once per run of failures: the check repeats every second.
                log.log(
                    logging.DEBUG if failed else logging.ERROR,
                    "connection check failed",
                    exc_info=True,
                )
                failed = True
                interval = MAX_INTERVAL

    def check(self) -> float:
        """One pass: closes what the policy says; returns the seconds until the next."""
        started = time.monotonic()
        sockets = _open_sockets()
        for inode in self._known.keys() - sockets.keys():
            del self._known[inode]
        fresh = [(inode, fd) for inode, fd in sockets.items() if inode not in self._known]
        if fresh:
            self._classify(fresh, started)
        peers = self.tracker.peers
        live: set[Peer] = set()
        conns: list[ClientConnection] = []
        where: dict[int, tuple[int, Peer]] = {}
        for inode, sock in self._known.items():
            peer = sock.peer
            if peer is None:
                continue
            # The latest number: a listing may have caught a duplicate of ours (see _borrowed).
            sock.fd = sockets[inode]
            live.add(peer)
            record = peers.get(peer)
            busy, last = False, None
            if record is not None:
                busy = record[0] > 0
                if record[1] >= sock.born_after:  # else a request on an earlier connection
                    last = record[1]
            conns.append(ClientConnection(inode, sock.seen_at, busy, last))
            where[inode] = (sock.fd, peer)
        now = time.monotonic()
        closing: list[tuple[int, int, Peer, str]] = []
        for inode, why in to_close(conns, now, self.policy):
            fd, peer = where[inode]
            closing.append((inode, fd, peer, why))
        stale = [
            (peer, record[1])
            for peer, record in list(peers.items())
            if peer not in live and record[0] <= 0 and record[1] < started
        ]
        self._last_check = started
        if (closing or stale) and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is ending
                self._loop.call_soon_threadsafe(self._apply, closing, stale, now)
        if len(conns) >= self.policy.max_connections * NEAR_CAP:
            return PRESSURE_INTERVAL
        return self.interval

    def _classify(self, fresh: list[tuple[int, int]], seen_at: float) -> None:
        found: list[tuple[int, int, tuple[bool, int, Peer | None] | None]] = []
        for inode, fd in fresh:
            info = _inspect(fd, inode)
            if info is _GONE:
                continue
            found.append((inode, fd, info))
            if info is not None and info[0]:
                self._ports.add(info[1])
        for inode, fd, info in found:
            if info is not None and not info[0] and info[1] in self._ports and info[2]:
                self._known[inode] = _Socket(fd, info[2], seen_at, self._last_check)
            elif info is None or info[0] or self._ports:
                self._known[inode] = _Socket(fd, None, seen_at, self._last_check)
            # else: the listener is not known yet; look at this one again next time

    # --- the event loop ------------------------------------------------------------------------
    def _apply(
        self,
        closing: list[tuple[int, int, Peer, str]],
        stale: list[tuple[Peer, float]],
        decided_at: float,
    ) -> None:
        peers = self.tracker.peers
        over = 0
        for inode, fd, peer, why in closing:
            record = peers.get(peer)
            if record is not None and (record[0] > 0 or record[1] > decided_at):
                continue  # a request began or ended there since the check
            if _shut_down(fd, inode):
                log.debug("closed the client connection from port %s (%s)", peer, why)
                over += why == OVER_LIMIT
        for peer, last in stale:
            record = peers.get(peer)
            if record is not None and record[0] <= 0 and record[1] == last:
                del peers[peer]
        if over:
            self._closed_over_limit += over
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                log.warning(
                    "over CLIENT_MAX_CONNECTIONS=%d on this worker: closed %d idle client "
                    "connections",
                    self.policy.max_connections,
                    self._closed_over_limit,
                )
                self._warned_at = now
                self._closed_over_limit = 0


_GONE: Any = object()  # the descriptor no longer holds the socket it was listed with


def _open_sockets() -> dict[int, int]:
    """inode -> descriptor of every socket this process holds."""
    try:
        fds = [int(name) for name in os.listdir(_FD_DIR)]
    except OSError:  # out of descriptors to list them with: try every number instead
        fds = list(range(open_file_limit()))
    found: dict[int, int] = {}
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            found[st.st_ino] = fd
    return found


@contextlib.contextmanager
def _borrowed(fd: int, inode: int) -> Iterator[socket.socket | None]:
    """A socket object for granian's descriptor `fd`, or None when `fd` no longer holds the
    socket `inode`. It works on a duplicate, so the check cannot be fooled by the number being
    reused meanwhile, and closing it leaves granian's connection alone; out of descriptors it
    borrows `fd` itself for the moment."""
    try:
        own: int | None = os.dup(fd)
    except OSError:
        own = None
    target = fd if own is None else own
    try:
        try:
            same = os.fstat(target).st_ino == inode
        except OSError:
            same = False
        if not same:
            yield None
            return
        sock = socket.socket(fileno=target)
        try:
            yield sock
        finally:
            sock.detach()  # the descriptor is closed below (own) or stays granian's (fd)
    finally:
        if own is not None:
            os.close(own)


def _inspect(fd: int, inode: int) -> Any:
    """(listening, local port, peer) of a TCP socket, None for any other socket, _GONE when the
    descriptor changed hands."""
    try:
        with _borrowed(fd, inode) as sock:
            if sock is None:
                return _GONE
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            if sock.type != socket.SOCK_STREAM:
                return None
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            port = int(sock.getsockname()[1])
            peer: Peer | None = None
            if not listening:
                with contextlib.suppress(OSError):  # not connected (yet, or any more)
                    peer = str(sock.getpeername()[1])
            return (listening, port, peer)
    except OSError:
        return _GONE


def _shut_down(fd: int, inode: int) -> bool:
    try:
        with _borrowed(fd, inode) as sock:
            if sock is None:
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
    except OSError:  # already closed by the client
        return False
