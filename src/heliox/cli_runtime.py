"""The runtime a one-shot CLI process (`heliox keys ...`) gives the admin API's handlers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.config import Settings


@dataclass
class CliRuntime:
    """What the admin API's handlers need from a gateway, for a one-shot CLI process."""

    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    redis: Any = None

    async def config_changed(self) -> None:
        """Tell running gateways to reload now (they also poll the version in the database)."""
        if self.redis is None:
            return
        from heliox.db.snapshot_loader import read_config_version
        from heliox.runtime import CONFIG_CHANNEL

        version = await read_config_version(self.session_factory)
        try:
            await self.redis.publish(self.settings.redis_key_prefix + CONFIG_CHANNEL, str(version))
        except Exception as exc:
            print(
                f"heliox: could not notify the gateways on Redis ({exc}); they pick the change "
                "up within CONFIG_POLL_INTERVAL",
                file=sys.stderr,
                flush=True,
            )
