"""The ASGI wrapper `heliox serve` runs the application in: a deadline for in-flight requests
at shutdown (SHUTDOWN_TIMEOUT), and no request left unlogged when the log queue is flushed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heliox.connection_guard import ConnectionGuard
    from heliox.runtime import Runtime

# The logger these messages have always been written under (the `heliox serve` command's).
log = logging.getLogger("heliox.cli")

# At the lifespan shutdown, how long a request task still running may take before it is cancelled.
SETTLE_SECONDS = 0.5

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class GracefulShutdown:
    """ASGI wrapper used by `heliox serve`: in-flight requests get SHUTDOWN_TIMEOUT, no more.

    On SIGTERM/SIGINT granian stops accepting and waits for every in-flight request, however
    long, before it runs the lifespan shutdown (which flushes the log queue). After `timeout`
    seconds the requests still running are cancelled (503 if nothing was sent yet), so the
    shutdown and the flush always happen; `settle` makes sure no request is still to be logged
    when the flush starts.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        timeout: float,
        guard: ConnectionGuard | None = None,
        runtime: Runtime | None = None,
    ):
        self.app = app
        self.timeout = timeout
        # Told when the server begins to shut down: long-lived streams (the UI's SSE) end then.
        self.runtime = runtime
        # Closes silent, idle and surplus client connections; learns from here which
        # connections have a request in progress.
        self.guard = guard
        self.tracker = guard.tracker if guard is not None else None
        self.inflight: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.deadline_passed = False
        self._signals_hooked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._hook_signals()
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        task = asyncio.current_task()
        if task is None:
            await self.app(scope, receive, send)
            return
        self.inflight.add(task)
        tracker = self.tracker
        record = tracker.begin(scope.get("client")) if tracker is not None else None
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.deadline_passed:
                raise
            task.uncancel()
            await _refuse_during_shutdown(send)
        finally:
            self.inflight.discard(task)
            if record is not None:
                record[0] -= 1
                record[1] = time.monotonic()

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "lifespan.startup" and self.guard is not None:
                self.guard.start()
            elif message["type"] == "lifespan.shutdown":
                if self.guard is not None:
                    self.guard.stop()
                await self.settle()
            return message

        return wrapped

    async def settle(self) -> None:
        """Before the runtime stops and flushes its log queue, no request may be left running.

        granian starts the lifespan shutdown once every connection is closed, yet a request's
        task can still be waiting for the acknowledgement of its last `send`, which never comes:
        its log record would be lost. Such tasks are given a moment, then cancelled, so they
        record their request before the flush.
        """
        pending = {task for task in self.inflight if not task.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=SETTLE_SECONDS)
        if pending:
            log.debug("cancelling %d orphaned request tasks before the log flush", len(pending))
            self.deadline_passed = True
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=SETTLE_SECONDS)

    def _hook_signals(self) -> None:
        # granian's own handlers (installed on the event loop) keep working: the loop learns of
        # the signal through its wakeup fd; this adds a Python-level handler beside them.
        if self._signals_hooked:
            return
        self._signals_hooked = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self.begin_shutdown)
                if callable(previous):
                    previous(signum, frame)

            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread: the server's own limits apply
                log.debug("cannot watch %s outside the main thread", sig)

    def begin_shutdown(self) -> None:
        if self.draining:
            return
        self.draining = True
        if self.runtime is not None:
            self.runtime.draining = True  # long-lived streams end at their next tick
        if self.inflight:
            log.info(
                "shutting down: waiting up to %g s for %d requests in flight",
                self.timeout,
                len(self.inflight),
            )
        asyncio.get_running_loop().call_later(self.timeout, self._deadline)

    def _deadline(self) -> None:
        self.deadline_passed = True
        if self.inflight:
            log.warning(
                "shutdown deadline (SHUTDOWN_TIMEOUT=%g s): cancelling %d requests still running",
                self.timeout,
                len(self.inflight),
            )
        for task in list(self.inflight):
            task.cancel()


async def _refuse_during_shutdown(send: Send) -> None:
    from heliox.core.problem import PROBLEM_CONTENT_TYPE, problem_body

    body = problem_body(503, "", "the gateway shut down before the response was ready; retry")
    # Fails harmlessly when the response had already started: the connection is then cut.
    with contextlib.suppress(Exception):
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
