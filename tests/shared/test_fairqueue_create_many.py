"""The n jobs of one request are stored and queued in one atomic script (FairQueue.create_many / acreate_many): all
or none at the tenant's limit, in the order of the request, and an Idempotency-Key names all n ids in that order.
Real Redis of its own (no stack): a fresh key prefix per test."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from shared.errors import RateLimited
from shared.fairqueue import FairQueue
from shared.idempotency import Claim, IdempotencyKeys
from shared.keys import Keys
from shared.quotas import Quotas
from shared.settings import QuotaSettings
from shared.store import JobStore
from tests.records import job_record


@pytest.fixture
def store(own_redis: redis.Redis) -> JobStore:
    return JobStore(own_redis, keys=Keys(f"n{uuid.uuid4().hex[:10]}"))


def _fresh(store: JobStore, **quota: int) -> tuple[FairQueue, str, str]:
    model, tenant = f"m{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    return FairQueue(store, QuotaSettings(tenants={tenant: quota}), [model]), model, tenant


def _snapshot(store: JobStore) -> dict[bytes, bytes | None]:
    return {k: store.redis.dump(k) for k in store.redis.keys(f"{store.keys.prefix}*")}  # type: ignore[misc]


def test_create_many_is_all_or_none_at_the_tenant_limit(store: JobStore) -> None:
    fairq, model, tenant = _fresh(store, max_queued_jobs=4)
    fairq.create(job_record(model, tenant))
    before = _snapshot(store)
    four = [job_record(model, tenant, seed=s) for s in range(4)]  # 1 waiting + 4 > 4, though 3 would fit
    with pytest.raises(RateLimited) as refused:
        fairq.create_many(four)
    assert refused.value.param == "max_queued_jobs"
    assert "4 more would pass" in str(refused.value) and "none of the 4 was created" in str(refused.value)
    # Nothing created: no record, no index, no queue entry, no ring change.
    assert _snapshot(store) == before
    assert all(store.get(r.id) is None for r in four) and fairq.waiting_count(tenant) == 1

    three = four[:3]  # exactly the room left
    placed = fairq.create_many(three)
    assert [p.position for p in placed] == [1, 2, 3] and all(p.waiting == 4 for p in placed)
    assert [r.id for r in store.get_many([r.id for r in three])] == [r.id for r in three]
    with pytest.raises(RateLimited) as more_than_the_limit:
        fairq.create_many([job_record(model, tenant) for _ in range(5)])
    assert "ask for at most 4 at once" in str(more_than_the_limit.value)


def test_create_many_keeps_the_order_of_its_records_and_refuses_mixed_requests(store: JobStore) -> None:
    fairq, model, tenant = _fresh(store, max_queued_jobs=10)
    records = [job_record(model, tenant, seed=7 + i) for i in range(3)]
    placed = fairq.create_many(records)
    assert [p.position for p in placed] == [0, 1, 2]
    pending = [i.decode() for i in store.redis.zrange(store.keys.pending(model, tenant), 0, -1)]
    assert pending == [r.id for r in records]
    assert [fairq.place(r).position for r in records] == [0, 1, 2]
    with pytest.raises(ValueError, match="share their tenant and model"):
        fairq.create_many([job_record(model, tenant), job_record(model, "someone-else")])
    with pytest.raises(ValueError, match="at least one"):
        fairq.create_many([])


def test_acreate_many_and_its_idempotent_replay_name_the_same_ids_in_order(store: JobStore) -> None:
    fairq_sync, model, tenant = _fresh(store, max_queued_jobs=10)
    url = store.redis.connection_pool.connection_kwargs
    aclient = aioredis.Redis(host=url["host"], port=url["port"], db=url.get("db", 0))
    fairq = FairQueue(store, fairq_sync.quotas, [model], aclient=aclient)
    keys = IdempotencyKeys(store.redis, keys=store.keys, ttl_s=3600)
    records = [job_record(model, tenant, seed=s) for s in (5, 6, 7)]
    ids = [r.id for r in records]
    assert keys.begin(tenant, "three", "fp").outcome == "new"
    completion = keys.completion(tenant, "three", "fp", ids)

    async def go() -> tuple[list[int | None], list[int | None]]:
        try:
            first = await fairq.acreate_many(records, completion)
            again = await fairq.acreate_many(records, completion)  # the same script sent again: changes nothing
            return [p.position for p in first], [p.position for p in again]
        finally:
            await aclient.aclose()

    assert asyncio.run(go()) == ([0, 1, 2], [0, 1, 2])
    assert fairq.waiting_count(tenant) == 3 and store.redis.zcard(store.keys.tenant_jobs(tenant)) == 3
    assert keys.begin(tenant, "three", "fp") == Claim("replay", ids[0], tuple(ids))
    assert keys.jobs_of(tenant, "three") == tuple(ids) and keys.job_of(tenant, "three") == ids[0]
    assert keys.begin(tenant, "three", "other").outcome == "mismatch"


def test_an_idempotency_entry_written_before_n_still_replays_its_one_job(store: JobStore) -> None:
    keys = IdempotencyKeys(store.redis, keys=store.keys, ttl_s=3600)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    store.redis.set(keys._key(tenant, "old"), '{"fp": "fp", "job_id": "video_old"}')
    assert keys.begin(tenant, "old", "fp") == Claim("replay", "video_old", ("video_old",))
    assert keys.jobs_of(tenant, "old") == ("video_old",)
    one = keys.completion(tenant, "new", "fp", "video_one")  # the one-id form callers already use
    assert one.entry == '{"fp": "fp", "job_id": "video_one", "job_ids": ["video_one"]}'


def test_the_early_room_check_counts_the_whole_request(store: JobStore, own_redis: redis.Redis) -> None:
    fairq, model, tenant = _fresh(store, max_queued_jobs=3, max_pixel_frames=64 * 64 * 5)
    url = own_redis.connection_pool.connection_kwargs
    quotas = Quotas(fairq.quotas, fairq, aioredis.Redis(host=url["host"], port=url["port"]))
    spec = job_record(model, tenant).spec
    fairq.create(job_record(model, tenant))
    quotas.check_room(tenant, spec, 2)  # 1 + 2 = 3: room
    with pytest.raises(RateLimited, match="3 more would pass"):
        quotas.check_room(tenant, spec, 3)
    quotas.check_sizes(tenant, [spec, spec])
    with pytest.raises(RateLimited, match="max_pixel_frames"):
        quotas.check_sizes(tenant, [spec, job_record(model, tenant, num_frames=9).spec])


def test_a_jobs_size_counts_its_post_processing(store: JobStore, own_redis: redis.Redis) -> None:
    # 64x64 x 9 generated; x2 interpolation and x2 upscaling write 17 frames at 64x64 and 17 at 128x128, 1/256 each
    generated, post = 64 * 64 * 9, (64 * 64 * 17 + 128 * 128 * 17) // 256
    fairq, model, tenant = _fresh(store, max_pixel_frames=generated)
    url = own_redis.connection_pool.connection_kwargs
    quotas = Quotas(fairq.quotas, fairq, aioredis.Redis(host=url["host"], port=url["port"]))
    quotas.check_size(tenant, job_record(model, tenant, num_frames=9).spec)  # at the limit
    with pytest.raises(RateLimited, match="max_pixel_frames") as refused:
        quotas.check_size(tenant, job_record(model, tenant, num_frames=9, interpolate=2, upscale=2).spec)
    expected = f"64x64 x 9 frames = {generated} pixel-frames, plus {post} for interpolate 2 and upscale 2, exceeds"
    assert expected in refused.value.message
