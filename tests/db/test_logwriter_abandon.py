"""The request-log writer's write timeout closes only the connection of the call that timed out:
the engine's pool is shared with the admin API and the config loader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from heliox.db.engine import make_engine
from heliox.db.logwriter import LogWriter
from heliox.metrics import Metrics


class Leftover:
    """The driver connection a failed write left behind (by now back in the shared pool)."""

    terminated = False

    def terminate(self) -> None:
        self.terminated = True


async def test_a_timeout_never_terminates_the_connection_of_an_earlier_failed_call(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/logs.db")
    try:
        writer = LogWriter(
            engine,
            is_postgres=False,
            metrics=Metrics(),
            queue_size=1000,
            spill_path=tmp_path / "spill.jsonl",
            write_timeout=0.1,
        )
        leftover = Leftover()
        writer._driver = leftover  # what a write that raised after taking its connection leaves

        async def waiting_for_a_connection() -> None:
            await asyncio.Event().wait()  # a database that hangs before giving a connection

        with pytest.raises(TimeoutError):
            await writer._bounded(waiting_for_a_connection())
        assert leftover.terminated is False
    finally:
        await engine.dispose()
