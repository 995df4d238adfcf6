"""shared/lua/readmit.lua: the reconciler's repair of a queued job no queue holds, checked atomically."""

from __future__ import annotations

import json

import redis

from shared.keys import BROKER_UNACKED, Keys
from shared.schemas import JobRecord
from tests.lua_scripts import Run, job, stored


def readmit(client: redis.Redis, keys: Keys, record: JobRecord, unacked: str) -> int:
    return int(
        Run(client, "readmit")(
            [
                keys.job(record.id),
                keys.pending("m", "t"),
                keys.ring("m"),
                keys.passes("m"),
                keys.vtime("m"),
                keys.dispatched("m"),
                keys.journal("m"),
                keys.broker_queue(keys.prefix),
                unacked,
                keys.tenants,
                keys.active("t"),
            ],
            id=record.id,
            wake=keys.wake,
            model="m",
        )
    )


def message(job_id: str) -> str:
    """The shape of a Celery message: the job id is in its headers, as plain text."""
    return json.dumps({"body": "W1sidmlkZW8iXV0=", "headers": {"task": "wanq.generate", "argsrepr": f"['{job_id}']"}})


def test_a_job_somewhere_or_not_queued_is_left_alone(lua_redis: redis.Redis, keys: Keys) -> None:
    unacked = keys.prefix + BROKER_UNACKED
    running = stored(lua_redis, keys, job(status="in_progress"))
    assert readmit(lua_redis, keys, running, unacked) == 0
    pending, journaled, listed, delivered = (stored(lua_redis, keys, job()) for _ in range(4))
    lua_redis.zadd(keys.pending("m", "t"), {pending.id: 1})
    lua_redis.hset(keys.journal("m"), journaled.id, "1")
    lua_redis.lpush(keys.broker_queue(keys.prefix), message(listed.id))
    lua_redis.hset(unacked, "tag", json.dumps([json.loads(message(delivered.id)), "", "wanq.m"]))
    for record in (pending, journaled, listed, delivered):
        assert readmit(lua_redis, keys, record, unacked) == 0, record.id
    assert lua_redis.zcard(keys.pending("m", "t")) == 1
    assert readmit(lua_redis, keys, job(), unacked) == 0  # no record at all


def test_a_stranded_job_goes_back_to_its_tenants_queue(lua_redis: redis.Redis, keys: Keys) -> None:
    stranded = stored(lua_redis, keys, job())
    lua_redis.zadd(keys.dispatched("m"), {stranded.id: 0})  # sent once, its message lost
    lua_redis.sadd(keys.active("t"), stranded.id, "video_other")  # take.lua counted it as running for t
    lua_redis.set(keys.vtime("m"), "2")
    assert readmit(lua_redis, keys, stranded, keys.prefix + BROKER_UNACKED) == 1
    assert lua_redis.zscore(keys.pending("m", "t"), stranded.id) == stranded.created_at
    assert lua_redis.zscore(keys.dispatched("m"), stranded.id) is None
    assert lua_redis.zscore(keys.ring("m"), "t") == 2 and lua_redis.sismember(keys.tenants, "t")
    # It no longer holds one of t's running places (else lost messages would block t under max_running_jobs).
    assert lua_redis.smembers(keys.active("t")) == {b"video_other"}
