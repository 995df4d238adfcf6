"""shared/lua/create.lua: a request's new jobs (one, or n) are admitted and stored together, or not at all."""

from __future__ import annotations

import redis

from shared.keys import Keys
from shared.schemas import JobRecord
from tests.lua_scripts import Run, job


def create(
    client: redis.Redis,
    keys: Keys,
    *records: JobRecord,
    limit: int = 10,
    models: tuple[str, ...] = ("m",),
    idem: str | bool = False,
) -> list:  # type: ignore[type-arg]
    model, tenant = records[0].spec.model, records[0].tenant
    return Run(client, "create")(  # type: ignore[no-any-return]
        [
            keys.tenant_jobs(tenant),
            keys.all_jobs,
            keys.queued(model),
            keys.pending(model, tenant),
            keys.ring(model),
            keys.passes(model),
            keys.vtime(model),
            keys.tenants,
            keys.idempotency(tenant, "k"),
            *(keys.job(r.id) for r in records),
            *(keys.pending(m, tenant) for m in models),
        ],
        ids=[r.id for r in records],
        records=[r.model_dump_json() for r in records],
        created_at=[r.created_at for r in records],
        tenant=tenant,
        max_waiting=limit,
        idempotency=idem,
        idempotency_ttl=60,
        wake=keys.wake,
        model=model,
    )


def test_an_admitted_job_is_stored_indexed_queued_and_announced(lua_redis: redis.Redis, keys: Keys) -> None:
    record = job()
    pubsub = lua_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.wake)
    pubsub.get_message(timeout=1)
    assert create(lua_redis, keys, record) == [1, 1]
    assert JobRecord.model_validate_json(lua_redis.get(keys.job(record.id)) or b"") == record
    for zset in (keys.tenant_jobs("t"), keys.all_jobs, keys.queued("m"), keys.pending("m", "t")):
        assert lua_redis.zscore(zset, record.id) == record.created_at, zset
    assert lua_redis.sismember(keys.tenants, "t") and lua_redis.zscore(keys.ring("m"), "t") == 0
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"m"
    pubsub.close()


def test_a_full_queue_refuses_and_stores_nothing(lua_redis: redis.Redis, keys: Keys) -> None:
    first, second = job(), job(model="other")
    assert create(lua_redis, keys, first, limit=2, models=("m", "other"))[0] == 1
    assert create(lua_redis, keys, second, limit=2, models=("m", "other")) == [1, 2]  # counted across models
    third = job()
    assert create(lua_redis, keys, third, limit=2, models=("m", "other")) == [0, 2]
    assert not lua_redis.exists(keys.job(third.id)) and lua_redis.zscore(keys.all_jobs, third.id) is None
    assert lua_redis.zcard(keys.pending("m", "t")) == 1


def test_sent_again_it_answers_created_and_changes_nothing(lua_redis: redis.Redis, keys: Keys) -> None:
    record = job()
    assert create(lua_redis, keys, record)[0] == 1
    assert create(lua_redis, keys, record) == [1, -1]
    assert lua_redis.zcard(keys.pending("m", "t")) == 1


def test_the_idempotency_entry_is_written_in_the_same_step(lua_redis: redis.Redis, keys: Keys) -> None:
    assert create(lua_redis, keys, job(), idem='{"job_id": "x"}')[0] == 1
    assert lua_redis.get(keys.idempotency("t", "k")) == b'{"job_id": "x"}' and 0 < lua_redis.ttl(keys.idempotency("t", "k")) <= 60
    other = Keys(keys.prefix + "b")
    assert create(lua_redis, other, job())[0] == 1
    assert not lua_redis.exists(other.idempotency("t", "k"))


def test_a_tenant_joins_the_ring_at_the_virtual_time_or_its_saved_pass(lua_redis: redis.Redis, keys: Keys) -> None:
    lua_redis.set(keys.vtime("m"), "3")
    create(lua_redis, keys, job(tenant="a"))
    assert lua_redis.zscore(keys.ring("m"), "a") == 3
    lua_redis.hset(keys.passes("m"), "b", "5.5")
    create(lua_redis, keys, job(tenant="b"))
    assert lua_redis.zscore(keys.ring("m"), "b") == 5.5
    lua_redis.zadd(keys.ring("m"), {"a": 4})
    create(lua_redis, keys, job(tenant="a"))  # already in the ring: stays where it is
    assert lua_redis.zscore(keys.ring("m"), "a") == 4


def test_n_jobs_are_all_stored_indexed_and_queued_in_their_order(lua_redis: redis.Redis, keys: Keys) -> None:
    records = [job(created_at=100.0 + i) for i in range(3)]
    assert create(lua_redis, keys, *records, idem='{"job_ids": ["a"]}') == [1, 3]
    for record in records:
        assert JobRecord.model_validate_json(lua_redis.get(keys.job(record.id)) or b"") == record
        for zset in (keys.tenant_jobs("t"), keys.all_jobs, keys.queued("m")):
            assert lua_redis.zscore(zset, record.id) == record.created_at, zset
    assert [i.decode() for i in lua_redis.zrange(keys.pending("m", "t"), 0, -1)] == [r.id for r in records]
    assert lua_redis.exists(keys.idempotency("t", "k"))


def test_n_jobs_that_would_pass_the_limit_are_all_refused_and_nothing_changes(lua_redis: redis.Redis, keys: Keys) -> None:
    assert create(lua_redis, keys, job(), limit=4)[0] == 1
    before = {k: lua_redis.dump(k) for k in lua_redis.keys(f"{keys.prefix}*")}
    records = [job() for _ in range(4)]  # 1 waiting + 4 > 4: refused whole, though 3 would fit
    assert create(lua_redis, keys, *records, limit=4, idem='{"job_ids": ["a"]}') == [0, 1]
    assert {k: lua_redis.dump(k) for k in lua_redis.keys(f"{keys.prefix}*")} == before
    assert create(lua_redis, keys, *records[:3], limit=4) == [1, 4]  # exactly the room left: admitted


def test_n_jobs_sent_again_answer_created_and_change_nothing(lua_redis: redis.Redis, keys: Keys) -> None:
    records = [job() for _ in range(2)]
    assert create(lua_redis, keys, *records) == [1, 2]
    assert create(lua_redis, keys, *records) == [1, -1]
    assert lua_redis.zcard(keys.pending("m", "t")) == 2 and lua_redis.zcard(keys.all_jobs) == 2
