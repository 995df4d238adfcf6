"""A new job is stored and queued in one atomic script (FairQueue.create / acreate): either the record
and its queue entry both exist or neither does, and the answer carries the job's place in line and
what its start estimate needs. Real Redis; a model id of its own, so no worker or dispatcher sees it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from shared import jobstate
from shared.errors import RateLimited
from shared.fairqueue import FairQueue
from shared.idempotency import IN_FLIGHT_S, Claim, IdempotencyKeys
from shared.settings import QuotaSettings
from shared.store import JobStore
from tests.records import job_record


def _fresh(store: JobStore, **quota: int) -> tuple[FairQueue, str, str]:
    model, tenant = f"create-test-{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    quotas = QuotaSettings(tenants={tenant: quota})
    return FairQueue(store, quotas, [model]), model, tenant


def test_create_stores_and_queues_or_refuses_with_nothing_stored(store: JobStore) -> None:
    fairq, model, tenant = _fresh(store, max_queued_jobs=2)
    first, second, third = (job_record(model, tenant) for _ in range(3))

    created = [fairq.create(first), fairq.create(second)]
    assert [c.position for c in created] == [0, 1]
    assert [c.admitted for c in created] == [True, True]
    assert store.get(first.id) == first and store.get(second.id) == second
    assert fairq.waiting_count(tenant) == 2
    assert fairq.place(second).position == 1
    assert store.redis.zscore(store.keys.tenant_jobs(tenant), first.id) == pytest.approx(first.created_at)
    assert store.redis.zscore(store.keys.queued(model), second.id) is not None

    with pytest.raises(RateLimited) as refused:
        fairq.create(third)
    assert refused.value.param == "max_queued_jobs" and "2 jobs waiting" in str(refused.value)
    # Refused means never stored: no record, in no index, in no queue.
    assert store.get(third.id) is None
    assert store.redis.zscore(store.keys.tenant_jobs(tenant), third.id) is None
    assert store.redis.zscore(store.keys.all_jobs, third.id) is None
    assert fairq.place(third).position is None and fairq.waiting_count(tenant) == 2

    # A job that leaves the queue frees its slot.
    assert jobstate.cancel_queued(store, first, "test").ok
    assert fairq.create(third).position == 1


def test_acreate_answers_with_place_live_workers_and_mean_duration(store: JobStore) -> None:
    fairq_sync, model, tenant = _fresh(store, max_queued_jobs=10)
    url = store.redis.connection_pool.connection_kwargs
    aclient = aioredis.Redis(host=url["host"], port=url["port"], db=url.get("db", 0))
    fairq = FairQueue(store, fairq_sync.quotas, [model], aclient=aclient, worker_ttl_s=10)
    store.heartbeat("w-live", model, {}, ttl_s=10)
    store.record_duration(model, 30.0)
    store.record_duration(model, 50.0)

    records = [job_record(model, tenant) for _ in range(3)]

    async def go() -> list[object]:
        try:
            created = [await fairq.acreate(record) for record in records]
            # What a GET of a queued job answers with: the same, looked up in one script.
            looked_up = await fairq.aplace(records[2])
            assert (looked_up.position, looked_up.live_workers, looked_up.mean_duration_s) == (2, 1, pytest.approx(40.0))
            return created
        finally:
            await aclient.aclose()

    before = time.time()
    created = asyncio.run(go())
    assert [c.position for c in created] == [0, 1, 2]  # type: ignore[attr-defined]
    assert all(c.live_workers == 1 and c.mean_duration_s == pytest.approx(40.0) for c in created)  # type: ignore[attr-defined]
    # Third in line, one worker, 40 s a job: about 2.5 jobs' time from now.
    start = created[2].estimated_start_at(before)  # type: ignore[attr-defined]
    assert start == int(before + 40.0 * 2.5)


def test_the_same_create_sent_again_changes_nothing_and_completes_its_idempotency_key(store: JobStore) -> None:
    # What redis-py does when the answer to the script is lost on a dropped connection: send it again.
    fairq, model, tenant = _fresh(store, max_queued_jobs=5)
    keys = IdempotencyKeys(store.redis, keys=store.keys, ttl_s=3600)
    record = job_record(model, tenant)
    assert keys.begin(tenant, "retry-me", "fp").outcome == "new"
    assert 0 < store.redis.ttl(keys._key(tenant, "retry-me")) <= IN_FLIGHT_S  # an unfinished request holds it briefly
    completion = keys.completion(tenant, "retry-me", "fp", record.id)

    first = fairq.create(record, completion)
    again = fairq.create(record, completion)
    assert first.position == again.position == 0 and again.admitted
    assert fairq.waiting_count(tenant) == 1 and store.redis.zcard(store.keys.tenant_jobs(tenant)) == 1
    # The job and the key's entry were written in the same step: a retry of the request replays this job.
    assert keys.job_of(tenant, "retry-me") == record.id
    assert keys.begin(tenant, "retry-me", "fp") == Claim("replay", record.id, (record.id,))
    assert store.redis.ttl(keys._key(tenant, "retry-me")) > IN_FLIGHT_S
