"""Give freed heap memory back to the system now and then (glibc's `malloc_trim`).

Cached answers of a few kilobytes are allocated with malloc, and an LRU at its cap frees and
allocates them all day. glibc keeps the freed pages inside its heaps, so the worker's resident
memory crept upward (about 2.5 MiB a minute in the embedded soak) although the cache itself stayed
at its cap. `malloc_trim(0)` returns the free pages of every heap to the kernel. It walks the heaps
under their locks, so it runs in a worker thread, every MEMORY_TRIM_INTERVAL seconds.

Elsewhere than glibc (musl, macOS) there is nothing to call and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("heliox")


def malloc_trim() -> Callable[[], int] | None:
    """glibc's malloc_trim(0) as a callable, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def trim_periodically(interval: float) -> None:
    """Until cancelled: trim the heaps every `interval` seconds (nothing to do without glibc)."""
    trim = malloc_trim()
    if trim is None:
        log.debug("malloc_trim is not available here; memory trimming is off")
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim)
