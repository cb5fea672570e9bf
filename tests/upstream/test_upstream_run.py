"""`run()` as a real process: one line of output, no access log, clean exit on signals."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys

import aiohttp
import pytest

SCRIPT = "from heliox.upstream.app import run; run('127.0.0.1', 0)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_quietly_and_stops_on_signal(sig: signal.Signals) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.fullmatch(r".*(http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        async with aiohttp.ClientSession() as session:
            for path in ["/health", "/items", "/nope", "/slow?delay=x"]:
                async with session.get(match.group(1) + path) as resp:
                    await resp.read()
            # A deliberate mid-body reset is not worth a log line either.
            with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                async with session.get(match.group(1) + "/abort?after=10") as resp:
                    await resp.read()
            async with session.get(match.group(1) + "/stats") as resp:
                assert (await resp.json())["total"] == 5
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert await proc.stdout.read() == b""
        assert await proc.stderr.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
