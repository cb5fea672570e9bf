"""The Redis client for a Redis Cluster (REDIS_CLUSTER=true): redis-py's `RedisCluster` with the
same guards as the standalone `PipelinedRedis`.

What stays the same as standalone (`heliox.state.redis_pipe`): every command passes the
per-request budget (a request pays at most one Redis timeout) and the process's circuit breaker
(consecutive failures open it; a background probe closes it), raises `RedisUnavailable` when
either refuses, and counts the same failures as Redis trouble for /health. The breaker is one for
the whole cluster: a master that is down fails the requests whose keys it holds, and those
failures open the breaker like a standalone outage would (the gateway then fails open or closed
per route until a probe gets through again).

What differs: commands are routed by key slot over one small connection pool per node (no
hand-made pipelining; redis-py follows MOVED and ASK redirections and refreshes the slot map after
a failover). Every multi-key script keeps its keys in one hash slot, by the key layout of its
store. Pub/sub uses classic channels, which a cluster delivers to subscribers on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from heliox.core.breaker import Breaker, RecentEvents
from heliox.state.redis_pipe import PipelinedRedis

__all__ = ["ClusterRedis"]

# Connections per node beyond the commands in flight: for the pub/sub subscriptions, which hold
# one of a node's connections for as long as they last.
_SPARE_CONNECTIONS = 8


class ClusterRedis(RedisCluster):
    """RedisCluster whose commands pass the request budget and the circuit breaker."""

    # The guards are PipelinedRedis's own, over this class's `_send` and `_check`: one
    # implementation of the breaker, budget and probe for both kinds of deployment.
    _failed = PipelinedRedis._failed
    _may_send = PipelinedRedis._may_send
    _answered = PipelinedRedis._answered
    _note_trouble = PipelinedRedis._note_trouble
    _start_probe = PipelinedRedis._start_probe
    _run_probe = PipelinedRedis._run_probe

    def __init__(self, *args: Any, pool_wait: float = 2.0, **kwargs: Any) -> None:
        # `max_connections` (REDIS_POOL_SIZE) bounds the commands in flight, all nodes together;
        # more wait for a turn, up to `pool_wait` seconds, as for the standalone client's pool.
        # redis-py's cluster pools raise at once when full instead, so each node may have them
        # all (and a few to spare), and the wait is here, in order of arrival.
        in_flight = int(kwargs.get("max_connections") or 64)
        kwargs["max_connections"] = in_flight + _SPARE_CONNECTIONS
        super().__init__(*args, **kwargs)
        self.pipe = None  # no hand-made pipelining here (the standalone client's attribute)
        self.pool_wait = pool_wait
        self._turns = asyncio.Semaphore(in_flight)
        self.breaker = Breaker()
        self.trouble = RecentEvents(60)
        self.last_error = ""
        self.last_error_at = 0.0
        self.probe_key = "heliox:probe"
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ClusterRedis:
        return cast(ClusterRedis, super().from_url(url, **kwargs))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await PipelinedRedis.execute_command(cast(Any, self), *args, **kwargs)

    async def check(self) -> None:
        """The health check: `_check` unless the breaker is open (then it raises at once)."""
        await PipelinedRedis.check(cast(Any, self))

    async def _send(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            async with asyncio.timeout(self.pool_wait):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisTimeoutError(f"no free Redis connection within {self.pool_wait}s") from None
        try:
            return await RedisCluster.execute_command(self, *args, **options)
        except (RedisClusterUnreachableError, SlotNotCoveredError) as exc:
            # No node reachable, or nobody serving the slot: the cluster is down for this key,
            # as a lost connection is for one Redis (every caller handles ConnectionError).
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc
        except RedisClusterException as exc:
            # The client's own refusals (say keys of one command in different slots) are
            # mistakes in one command, as ResponseError is: not Redis trouble.
            raise ResponseError(f"Redis Cluster: {exc}") from exc
        finally:
            self._turns.release()

    async def _check(self) -> None:
        """PING every master, then a small write with an expiry (on the master of the probe
        key's slot): a cluster that answers but cannot store fails it too."""
        await self._send(("PING",), {"target_nodes": RedisCluster.PRIMARIES})
        await self._send(("SET", self.probe_key, b"1", "PX", 10_000), {})

    async def aclose(self, *args: Any, **kwargs: Any) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe
        await super().aclose(*args, **kwargs)
