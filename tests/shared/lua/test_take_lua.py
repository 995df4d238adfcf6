"""shared/lua/take.lua: the dispatcher's step, stride scheduling with running caps, against real Redis."""

from __future__ import annotations

import redis

from shared.keys import Keys
from tests.lua_scripts import Run


def take(
    client: redis.Redis,
    keys: Keys,
    tenants: list[str],
    *,
    target: int = 1,
    caps: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
) -> list:  # type: ignore[type-arg]
    return Run(client, "take")(  # type: ignore[no-any-return]
        [
            keys.dispatched("m"),
            keys.journal("m"),
            keys.broker_queue(keys.prefix),
            keys.ring("m"),
            keys.passes("m"),
            keys.vtime("m"),
            keys.dseq("m"),
            *(k for t in tenants for k in (keys.pending("m", t), keys.active(t))),
        ],
        tenants=tenants,
        target=target,
        caps=caps or {},
        cap=4,
        weights=weights or {},
        weight=1.0,
        now=123.0,
    )


def waiting(client: redis.Redis, keys: Keys, tenant: str, *jobs: str, joined: float = 0) -> None:
    client.zadd(keys.ring("m"), {tenant: joined}, nx=True)
    for n, job_id in enumerate(jobs):
        client.zadd(keys.pending("m", tenant), {job_id: n})


def test_the_lowest_pass_goes_first_and_is_recorded_everywhere(lua_redis: redis.Redis, keys: Keys) -> None:
    waiting(lua_redis, keys, "a", "a1", "a2", joined=1)
    waiting(lua_redis, keys, "b", "b1", joined=0.5)
    assert take(lua_redis, keys, ["a", "b"], target=5) == [b"b1", b"b"]
    assert lua_redis.zscore(keys.dispatched("m"), "b1") == 1 and lua_redis.hget(keys.journal("m"), "b1") == b"123"
    assert lua_redis.sismember(keys.active("b"), "b1") and lua_redis.get(keys.vtime("m")) == b"0.5"
    # b's queue is empty now: it leaves the ring with its next pass saved.
    assert lua_redis.zscore(keys.ring("m"), "b") is None and lua_redis.hget(keys.passes("m"), "b") == b"1.5"
    assert take(lua_redis, keys, ["a"], target=5) == [b"a1", b"a"]
    assert lua_redis.zscore(keys.ring("m"), "a") == 2  # pass + 1/weight


def test_no_room_in_the_worker_queue_takes_nothing(lua_redis: redis.Redis, keys: Keys) -> None:
    waiting(lua_redis, keys, "a", "a1", "a2")
    assert take(lua_redis, keys, ["a"], target=1)[0] == b"a1"
    assert take(lua_redis, keys, ["a"], target=1) == []  # a1 is in the journal (send in flight)
    lua_redis.hdel(keys.journal("m"), "a1")  # sent, and a worker took the message: the broker list is empty
    assert take(lua_redis, keys, ["a"], target=1)[0] == b"a2"  # a taken message holds no slot


def test_a_tenant_at_its_running_cap_is_skipped_without_credit(lua_redis: redis.Redis, keys: Keys) -> None:
    waiting(lua_redis, keys, "capped", "c1", joined=0)
    waiting(lua_redis, keys, "free", "f1", "f2", joined=1)
    lua_redis.sadd(keys.active("capped"), "running-one")
    assert take(lua_redis, keys, ["capped", "free"], target=5, caps={"capped": 1}) == [b"f1", b"free"]
    assert lua_redis.zscore(keys.ring("m"), "capped") == 1  # raised to the chosen pass: no credit for the wait


def test_weights_share_dispatches(lua_redis: redis.Redis, keys: Keys) -> None:
    waiting(lua_redis, keys, "heavy", *(f"h{n}" for n in range(4)))
    waiting(lua_redis, keys, "light", *(f"l{n}" for n in range(4)))
    order = [take(lua_redis, keys, ["heavy", "light"], target=99, weights={"heavy": 2.0})[1] for _ in range(6)]
    assert order == [b"heavy", b"light", b"heavy", b"heavy", b"light", b"heavy"]


def test_an_unlisted_tenant_in_the_ring_asks_for_a_retry(lua_redis: redis.Redis, keys: Keys) -> None:
    waiting(lua_redis, keys, "a", "a1")
    waiting(lua_redis, keys, "b", "b1")
    assert take(lua_redis, keys, ["a"]) == [b"retry", b"a", b"b"]
    assert lua_redis.zcard(keys.dispatched("m")) == 0
