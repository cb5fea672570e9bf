"""Event loops the network code is tested on: asyncio's own and, where it is installed (not on
Windows), uvloop, which servers such as uvicorn and granian pick by themselves when it is there.
A protocol that assumed asyncio's transport classes failed every upstream connection on uvloop.

A conftest names the test modules to run on both (`loop_factories`); the rest of its folder
keeps asyncio's loop alone. Without uvloop (Windows, no dev extra) they run on asyncio's alone,
except under HELIOX_REQUIRE_SERVICES (CI), where its absence is an error."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Collection, Mapping

import pytest

from tests.conftest import REQUIRE_SERVICES

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

ASYNCIO: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}

try:
    import uvloop
except ImportError:  # Windows, or an environment without the dev extra
    if REQUIRE_SERVICES and sys.platform != "win32":
        # CI installs the dev lock, which has it: its absence would drop the uvloop cases quietly.
        raise
    BOTH = ASYNCIO
else:
    BOTH = {**ASYNCIO, "uvloop": uvloop.new_event_loop}


def loop_factories(item: pytest.Item, modules: Collection[str]) -> Mapping[str, LoopFactory]:
    """Both loops for the tests of `modules` (file names), asyncio's alone for the others."""
    return BOTH if item.path.name in modules else ASYNCIO
