"""Each Redis script against a redis-server of its own (`own_redis`), a fresh key prefix per test."""

from __future__ import annotations

import uuid

import pytest
import redis

from shared.keys import Keys


@pytest.fixture
def lua_redis(own_redis: redis.Redis) -> redis.Redis:
    return own_redis


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:10]}")
