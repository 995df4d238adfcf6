"""The one place Redis clients are built, so every process talks to Redis with the same timeouts and retries.

- `connect(settings)`: the blocking client (dispatcher, upkeep, workers, webhook delivery, admin commands).
  A pooled connection that Redis closed (a restart, an idle timeout) fails its next command at once; one
  immediate retry on a new connection hides that, while a Redis that is down still fails fast.
  `retry_s` > 0 (a worker's running job): commands that find Redis unreachable are retried for about that
  long, so a job pauses through a Redis restart instead of failing. Every command wanq sends is safe to
  repeat: transitions are guarded, the rest write the same value again.
- `connect_async(settings)`: the same for the API's event loop (redis.asyncio).
- `connect_async(settings, retry=False)`: no retry at all, for pub/sub: a subscription that silently
  reconnected would have missed whatever was published meanwhile, so a dropped connection must surface.

Each client's pool blocks: past `max_connections` busy connections a command waits up to `pool_timeout_s`
for one to come free (redis-py's default pool raises at once, which answered 503 to ordinary bursts of
requests while Redis was healthy), then raises `PoolExhausted`, which says so.
"""

from __future__ import annotations

import queue
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from shared.settings import RedisSettings

SOCKET_TIMEOUT_S = 10
CONNECT_TIMEOUT_S = 5
HEALTH_CHECK_S = 30


class PoolExhausted(redis.ConnectionError):
    """Every pooled connection stayed busy for the whole wait: the process is overloaded, Redis may be fine."""

    def __init__(self, max_connections: int, timeout_s: float | None) -> None:
        super().__init__(
            f"all {max_connections} Redis connections of this process stayed busy for {timeout_s} s "
            "(WANQ_REDIS_MAX_CONNECTIONS, WANQ_REDIS_POOL_TIMEOUT_S)"
        )


class _BlockingPool(redis.BlockingConnectionPool):
    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if isinstance(exc.__context__, queue.Empty):  # the wait ran out (a refused connect has its OSError)
                raise PoolExhausted(self.max_connections, self.timeout) from None
            raise


class _AsyncBlockingPool(aioredis.BlockingConnectionPool):
    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError):  # the wait ran out (a refused connect has its OSError)
                raise PoolExhausted(self.max_connections, self.timeout) from None
            raise


def connect(settings: RedisSettings, *, retry_s: float = 0) -> redis.Redis:
    retry = Retry(NoBackoff(), 1)
    if retry_s > 0:
        # Backoff 0.1, 0.2, ... capped at 1 s: about retry_s seconds in all, Redis' own restart included.
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=int(retry_s) + 4)
    pool = _BlockingPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        retry=retry,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S,
    )
    return redis.Redis.from_pool(pool)


def connect_async(settings: RedisSettings, *, retry: bool = True) -> aioredis.Redis:
    """No socket timeout: a pub/sub read waits as long as the stream is open (the hub bounds its own waits)."""
    pool = _AsyncBlockingPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        # redis-py's default is three retries with backoff; ours is one at once, or none.
        retry=AsyncRetry(NoBackoff(), 1 if retry else 0),
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
    return aioredis.Redis.from_pool(pool)
