"""What one round trip costs the gateway at concurrency 1, by the client that makes it.

    .venv/bin/python bench/round_trips.py            # upstream GET and Redis calls, 3 s each
    .venv/bin/python bench/round_trips.py --seconds 10

A MISS and a HIT on Redis each wait for one round trip. This measures that trip alone, in this
process, one call at a time, with the clients the gateway uses and with the least a client can
do, so the note on a missed target can say how much of it the trip is and how much the client:

- upstream: `UpstreamClient.request` (as the gateway calls it: its pool, the overrun guard,
  keep-alive rules, strict parsing) against a minimal HTTP/1.1 keep-alive client
  (`asyncio.Protocol`, the request pre-encoded, the response framed by its Content-Length, no
  checks), both reading the example upstream's `/items` over one pooled connection;
- Redis: PING and the admission script through the gateway's pipe (`state/redis_pipe.py`), and
  PING through a bare `asyncio.Protocol`.

Each line gives wall time per call (median of 3 runs) and CPU per call (user + system, all of
this process's threads). The example upstream and Redis run as they are; pin nothing else here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway as gw_kit
from benchkit.procs import Processes

DEFAULT_REDIS = os.environ.get("HELIOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class _Minimal(asyncio.Protocol):
    """The least an HTTP/1.1 (or RESP) client does: write the request, wait for `expect(data)`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: asyncio.Future[bytes] | None = None
        self.complete: Callable[[bytearray], int] = lambda data: 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.complete(self.buffer)
        if end and self.done is not None and not self.done.done():
            reply = bytes(self.buffer[:end])
            del self.buffer[:end]
            self.done.set_result(reply)

    async def call(self, request: bytes) -> bytes:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


def _http_complete(data: bytearray) -> int:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    head = bytes(data[:head_end]).lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise SystemExit("the upstream's answer has no Content-Length: not what this measures")
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else None])
    end = head_end + 4 + length
    return end if len(data) >= end else 0


def _resp_complete(data: bytearray) -> int:
    end = data.find(b"\r\n")
    return end + 2 if end >= 0 else 0


async def measure(
    name: str, call: Callable[[], Awaitable[object]], seconds: float
) -> tuple[float, float]:
    """(wall, CPU) seconds per call: the run with the median wall time of three."""
    for _ in range(200):  # warm: connections, memo tables, code paths
        await call()
    runs = []
    for _ in range(3):
        n = 0
        cpu0, wall0 = os.times(), time.perf_counter()
        end = wall0 + seconds / 3
        while time.perf_counter() < end:
            await call()
            n += 1
        cpu1, wall1 = os.times(), time.perf_counter()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        runs.append(((wall1 - wall0) / n, cpu / n))
    wall, cpu = sorted(runs)[1]
    print(f"{name:46} {wall * 1e6:7.1f} µs wall  {cpu * 1e6:6.1f} µs CPU  per call", flush=True)
    return wall, cpu


async def upstream_trips(port: int, seconds: float) -> None:
    from heliox.net.upstream_client import UpstreamClient, UpstreamTarget

    client = UpstreamClient(pool_size=16, connect_timeout=2, read_timeout=10)
    await client.start()
    target = UpstreamTarget("http", "127.0.0.1", port, gw_kit.ITEMS)
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"round-trips/1")]

    async def client_get() -> None:
        resp = await client.request("GET", target, headers, None)
        async for _ in resp.chunks():
            pass
        resp.release()

    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_Minimal, "127.0.0.1", port)
    proto.complete = _http_complete
    request = (
        f"GET {gw_kit.ITEMS} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: round-trips/1\r\n\r\n"
    ).encode()

    async def minimal_get() -> None:
        await proto.call(request)

    try:
        await measure("upstream GET, the gateway's UpstreamClient", client_get, seconds)
        await measure("upstream GET, minimal keep-alive client", minimal_get, seconds)
    finally:
        assert proto.transport is not None
        proto.transport.close()
        await client.close()


async def redis_trips(url: str, seconds: float) -> None:
    from heliox.config import load_settings
    from heliox.state.admission import TOKEN_BUCKET, AdmissionRequest, LimitSpec
    from heliox.state.admission_redis import RedisAdmission
    from heliox.state.redis_client import redis_client

    settings = load_settings(
        redis_url=url, admin_api_key=gw_kit.ADMIN_KEY, secret_key=gw_kit.SECRET
    )
    client = redis_client(settings)  # as `heliox serve` builds it
    admission = RedisAdmission(client, prefix="heliox-round-trips:")
    request = AdmissionRequest(
        subject="k:1", limit=LimitSpec(TOKEN_BUCKET, 1e6, 2_000_000), quota_subject="k:1"
    )
    host, _, port = url.removeprefix("redis://").split("/")[0].partition(":")
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_Minimal, host or "127.0.0.1", int(port or 6379))
    proto.complete = _resp_complete

    async def pipe_ping() -> None:
        await client.ping()

    async def admit() -> None:
        await admission.admit(request)

    async def bare_ping() -> None:
        await proto.call(b"*1\r\n$4\r\nPING\r\n")

    try:
        await measure("Redis PING, bare protocol", bare_ping, seconds)
        await measure("Redis PING, the gateway's pipe", pipe_ping, seconds)
        await measure("Redis admission script, the gateway's pipe", admit, seconds)
    finally:
        assert proto.transport is not None
        proto.transport.close()
        await client.aclose()


async def run(args: argparse.Namespace) -> None:
    procs = Processes(Path(tempfile.mkdtemp(prefix="heliox-round-trips-")))
    try:
        up = gw_kit.start_upstream(procs, None)
        await upstream_trips(up.port, args.seconds)
    finally:
        procs.stop_all()
    await redis_trips(args.redis_url, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measured client")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
