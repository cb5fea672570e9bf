"""Returning freed heap memory to the system: glibc's malloc_trim, called from a worker thread."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from heliox import memory_trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is a Linux C library")
def test_malloc_trim_is_found_and_callable_on_glibc() -> None:
    trim = memory_trim.malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released, 0: there was none to release


async def test_trims_every_interval_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    loop_thread = threading.get_ident()
    loop = asyncio.get_running_loop()
    three = asyncio.Event()

    def trim() -> int:
        calls.append(threading.get_ident())
        if len(calls) >= 3:
            loop.call_soon_threadsafe(three.set)
        return 1

    monkeypatch.setattr(memory_trim, "malloc_trim", lambda: trim)
    task = asyncio.create_task(memory_trim.trim_periodically(0.01))
    try:
        async with asyncio.timeout(10):
            await three.wait()
    finally:
        task.cancel()
    assert loop_thread not in calls  # the heaps are walked under their locks: not on the loop


async def test_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_trim, "malloc_trim", lambda: None)
    async with asyncio.timeout(5):
        await memory_trim.trim_periodically(0.01)  # returns at once instead of looping
