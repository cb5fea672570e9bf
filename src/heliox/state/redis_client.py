"""The Redis client for REDIS_URL, as the gateway, `heliox worker` and the CLI's checks use it."""

from __future__ import annotations

from typing import Any

from heliox.config import Settings
from heliox.core.breaker import Breaker
from heliox.state.redis_pipe import PipelinedRedis

__all__ = ["redis_client"]


def redis_client(settings: Settings) -> Any:
    """The Redis client for REDIS_URL (db index and rediss:// TLS options come from the URL);
    with REDIS_CLUSTER, a cluster client that REDIS_URL's node introduces to the others."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry  # redis-py warns when handed the synchronous one
    from redis.backoff import NoBackoff

    breaker = Breaker(
        threshold=settings.redis_breaker_failures,
        base_open=settings.redis_breaker_open_seconds,
        max_open=max(settings.redis_breaker_open_seconds, settings.redis_breaker_max_open_seconds),
    )
    if settings.redis_cluster:
        from heliox.state.redis_cluster import ClusterRedis

        cluster = ClusterRedis.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,  # commands in flight, all nodes together
            pool_wait=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_connect_timeout,
            # No retries, as standalone: a request pays one timeout at most. A connection error
            # has the next command refresh the slot map (after a failover: the new master), and
            # MOVED and ASK redirections are followed regardless.
            retry=Retry(NoBackoff(), 0),
        )
        cluster.breaker = breaker
        return cluster

    # Bounded pool that waits (not fails) when busy; no retries, so an outage is seen in one
    # timeout and the hot path can fail open at once.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=15,
        retry=Retry(NoBackoff(), 0),
    )
    client = PipelinedRedis(connection_pool=pool)
    # The pool is this client's alone: aclose() must disconnect it. redis-py assumes a pool handed
    # to the constructor is shared and leaves its sockets open otherwise (as `from_pool` does).
    client.auto_close_connection_pool = True
    client.breaker = breaker
    return client
