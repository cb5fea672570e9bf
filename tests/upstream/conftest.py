"""A real example upstream on an ephemeral port, and a client session pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from heliox.upstream.app import start


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    runner, port = await start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(upstream_port: int) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{upstream_port}", auto_decompress=False
    ) as session:
        yield session
