"""shared/lua/claim_due.lua: webhook delivery takes what is due and leases it."""

from __future__ import annotations

import redis

from shared.keys import Keys
from tests.lua_scripts import Run


def test_due_deliveries_are_taken_up_to_the_limit_and_leased(lua_redis: redis.Redis, keys: Keys) -> None:
    lua_redis.zadd(keys.webhook_due, {"a": 1, "b": 2, "c": 3, "later": 50})
    taken = Run(lua_redis, "claim_due")([keys.webhook_due], now=10, limit=2, lease_end=100)
    assert taken == [b"a", b"b"]
    assert lua_redis.zscore(keys.webhook_due, "a") == 100 and lua_redis.zscore(keys.webhook_due, "b") == 100
    assert lua_redis.zscore(keys.webhook_due, "c") == 3 and lua_redis.zscore(keys.webhook_due, "later") == 50
    assert Run(lua_redis, "claim_due")([keys.webhook_due], now=10, limit=5, lease_end=100) == [b"c"]
