"""Fault injection with real processes and sockets: a TCP proxy the test can cut, and a Redis
server the test owns."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.e2e.harness import free_port, wait_until


class TcpProxy:
    """Forwards 127.0.0.1:port to a target. `cut()` drops every connection and refuses new ones
    (a dependency that is down); `hang()` keeps every connection open and forwards nothing
    either way, new ones included (a dependency that hangs). `restore()` ends either: hung
    connections are dropped, new ones are forwarded again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._up = True
        self.hung = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        self._writers.add(writer)
        if self.hung:
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass  # swallowed
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if not self.hung:
                        dst.write(data)
                        await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def _drop_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        def do() -> None:
            self._up = False
            self._drop_all()

        self._loop.call_soon_threadsafe(do)

    def hang(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "hung", True)

    def restore(self) -> None:
        def do() -> None:
            if self.hung:
                self._drop_all()
            self.hung = False
            self._up = True

        self._loop.call_soon_threadsafe(do)

    async def _shutdown(self) -> None:
        self._up = False
        self._drop_all()
        if self._server is not None:
            self._server.close()
        # Connection handlers still reading (hung ones) end here, not as pending tasks destroyed
        # with the loop.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()  # its self-pipe sockets are not closed otherwise


class OwnRedis:
    """A redis-server on its own port, owned by the test: stop, start, pause, flush at will."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.client().ping(), timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """Redis stopped in its tracks (SIGSTOP) for the block: connections stay open and new
        ones are accepted by the kernel, but nothing is answered, as CLIENT PAUSE does; unlike
        a pause, the hang ends when the block does rather than at a time fixed in advance."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)
