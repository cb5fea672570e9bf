"""Fixtures of the gateway tests: the upstream client runs on asyncio's loop and on uvloop."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.loops import LoopFactory, loop_factories

ON_BOTH_LOOPS = ("test_upstream_client.py", "test_upstream_overrun.py", "test_upstream_tls.py")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    return loop_factories(item, ON_BOTH_LOOPS)
