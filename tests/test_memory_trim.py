"""Returning freed heap memory to the system: glibc's malloc_trim, called from a worker thread."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import pytest

from heliox import memory_trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is a Linux C library")
def test_malloc_trim_is_found_and_releases_freed_heap_pages_on_glibc() -> None:
    trim = memory_trim.malloc_trim()
    assert trim is not None
    # 64 KiB blocks stay below glibc's mmap threshold, so they live in the heap. Every other one
    # is kept: the freed ones cannot merge into the heap's top (which free() may trim by itself),
    # and their whole pages are left for malloc_trim to hand back, which it reports with 1.
    blocks = [bytes(64 * 1024) for _ in range(512)]
    kept = blocks[::2]
    del blocks
    assert trim() == 1
    del kept  # held until after the trim


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


async def test_without_glibc_it_does_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(memory_trim, "malloc_trim", lambda: None)
    with caplog.at_level(logging.DEBUG, logger="heliox"):
        async with asyncio.timeout(5):
            await memory_trim.trim_periodically(0.01)  # returns at once instead of looping
    assert [r.getMessage() for r in caplog.records] == [
        "malloc_trim is not available here; memory trimming is off"
    ]
