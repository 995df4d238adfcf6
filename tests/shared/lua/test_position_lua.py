"""shared/lua/position.lua: a queued job's place in the stride order, and the start estimate's inputs."""

from __future__ import annotations

import time

import redis

from shared.keys import Keys
from tests.lua_scripts import Run


def position(
    client: redis.Redis, keys: Keys, job_id: str, tenant: str, tenants: list[str], weights: dict[str, float] | None = None
) -> list:  # type: ignore[type-arg]
    return Run(client, "position")(  # type: ignore[no-any-return]
        [
            keys.dispatched("m"),
            keys.pending("m", tenant),
            keys.ring("m"),
            keys.vtime("m"),
            keys.workers("m"),
            keys.durations("m"),
            *(keys.pending("m", t) for t in tenants),
        ],
        id=job_id,
        tenant=tenant,
        tenants=tenants,
        weights=weights or {},
        weight=1.0,
        live_since=time.time() - 10,
    )


def test_a_dispatched_job_is_placed_by_dispatch_order_and_one_not_waiting_at_minus_one(
    lua_redis: redis.Redis, keys: Keys
) -> None:
    lua_redis.zadd(keys.dispatched("m"), {"first": 1, "second": 2})
    assert position(lua_redis, keys, "second", "t", ["t"])[0] == 1
    assert position(lua_redis, keys, "elsewhere", "t", ["t"])[0] == -1


def test_waiting_jobs_are_placed_in_stride_order_by_weight(lua_redis: redis.Redis, keys: Keys) -> None:
    # heavy has weight 2, light 1, both joined at pass 0: passes heavy 0, .5, 1; light 0, 1, 2 (ties by name).
    lua_redis.zadd(keys.ring("m"), {"heavy": 0, "light": 0})
    for n in range(3):
        lua_redis.zadd(keys.pending("m", "heavy"), {f"h{n}": n})
        lua_redis.zadd(keys.pending("m", "light"), {f"l{n}": n})
    weights = {"heavy": 2.0}
    heavy = [position(lua_redis, keys, f"h{n}", "heavy", ["heavy", "light"], weights)[0] for n in range(3)]
    light = [position(lua_redis, keys, f"l{n}", "light", ["heavy", "light"], weights)[0] for n in range(3)]
    assert heavy == [0, 2, 3] and light == [1, 4, 5]
    lua_redis.zadd(keys.dispatched("m"), {"sent": 1})  # jobs in the worker queue go first
    assert position(lua_redis, keys, "h0", "heavy", ["heavy", "light"], weights)[0] == 1


def test_an_unlisted_tenant_in_the_ring_asks_for_a_retry_with_the_members(lua_redis: redis.Redis, keys: Keys) -> None:
    lua_redis.zadd(keys.ring("m"), {"a": 0, "b": 0})
    lua_redis.zadd(keys.pending("m", "a"), {"x": 1})
    assert position(lua_redis, keys, "x", "a", ["a"]) == [b"retry", b"a", b"b"]
    assert position(lua_redis, keys, "x", "a", ["a", "b"])[0] == 0


def test_live_workers_and_durations_come_with_the_place(lua_redis: redis.Redis, keys: Keys) -> None:
    now = time.time()
    lua_redis.zadd(keys.workers("m"), {"alive": now, "dead": now - 60})
    lua_redis.lpush(keys.durations("m"), "2.5", "3.5")
    place, live, durations = position(lua_redis, keys, "x", "t", ["t"])
    assert place == -1 and live == 1 and sorted(durations) == [b"2.5", b"3.5"]
