"""shared/lua/transition.lua: the one write of a job after its creation, each branch against real Redis."""

from __future__ import annotations

import json
import time

import redis

from shared.keys import Keys
from tests.lua_scripts import Run, decoded, job, stored


def transition_keys(keys: Keys, model: str = "m", tenant: str = "t", job_id: str = "j") -> list[str]:
    return [
        keys.job(job_id),
        keys.queued(model),
        keys.pending(model, tenant),
        keys.dispatched(model),
        keys.running,
        keys.expiring,
        keys.active(tenant),
        keys.finished(model),
        keys.job_events,
        keys.webhook_endpoint(tenant),
        keys.journal(model),
    ]


def call(client: redis.Redis, keys: Keys, job_id: str, allowed: list[str], patch: dict, guards: dict | None = None) -> list:  # type: ignore[type-arg]
    return Run(client, "transition")(  # type: ignore[no-any-return]
        transition_keys(keys, job_id=job_id),
        allowed=allowed,
        patch=list(patch.items()),
        guards=list((guards or {}).items()),
        ttl=120,
        channel=keys.events(job_id),
        now=time.time(),
    )


def test_a_missing_job_is_answered_0(lua_redis: redis.Redis, keys: Keys) -> None:
    assert call(lua_redis, keys, "nope", ["queued"], {"status": "in_progress"}) == [0, b""]


def test_a_status_not_allowed_or_a_failed_guard_changes_nothing(lua_redis: redis.Redis, keys: Keys) -> None:
    record = stored(lua_redis, keys, job())
    before = lua_redis.get(keys.job(record.id))
    code, raw = call(lua_redis, keys, record.id, ["in_progress"], {"status": "completed"})
    assert code == -1 and raw == before
    code, raw = call(lua_redis, keys, record.id, ["queued"], {"status": "in_progress"}, {"attempts": 1})
    assert code == -1 and lua_redis.get(keys.job(record.id)) == before


def test_a_change_is_patched_versioned_published_and_keeps_the_ttl(lua_redis: redis.Redis, keys: Keys) -> None:
    record = stored(lua_redis, keys, job())
    lua_redis.expire(keys.job(record.id), 500)
    pubsub = lua_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.events(record.id))
    pubsub.get_message(timeout=1)
    code, raw = call(lua_redis, keys, record.id, ["queued"], {"progress": 7}, {"attempts": 0})
    assert code == 1 and json.loads(raw)["progress"] == 7 and json.loads(raw)["version"] == 1
    message = pubsub.get_message(timeout=2)
    assert message is not None and json.loads(message["data"])["progress"] == 7
    assert 400 < lua_redis.ttl(keys.job(record.id)) <= 500
    pubsub.close()


def test_starting_leaves_every_queue_and_joins_the_running_index(lua_redis: redis.Redis, keys: Keys) -> None:
    record = stored(lua_redis, keys, job())
    for zset in (keys.queued("m"), keys.pending("m", "t"), keys.dispatched("m")):
        lua_redis.zadd(zset, {record.id: 1})
    lua_redis.hset(keys.journal("m"), record.id, "1")
    started = time.time()
    assert call(lua_redis, keys, record.id, ["queued"], {"status": "in_progress", "started_at": started})[0] == 1
    for zset in (keys.queued("m"), keys.pending("m", "t"), keys.dispatched("m")):
        assert lua_redis.zscore(zset, record.id) is None, zset
    assert not lua_redis.hexists(keys.journal("m"), record.id)
    assert lua_redis.zscore(keys.running, record.id) == started


def test_a_requeue_goes_back_to_the_worker_queue_and_the_journal_at_once(lua_redis: redis.Redis, keys: Keys) -> None:
    record = stored(lua_redis, keys, job(status="in_progress"))
    lua_redis.zadd(keys.running, {record.id: 5})
    lua_redis.zadd(keys.dispatched("m"), {"later": 9})
    assert call(lua_redis, keys, record.id, ["in_progress"], {"status": "queued", "worker": None})[0] == 1
    assert lua_redis.zscore(keys.queued("m"), record.id) == record.created_at
    assert lua_redis.zrange(keys.dispatched("m"), 0, -1) == [record.id.encode(), b"later"]  # ahead of later ones
    assert lua_redis.hexists(keys.journal("m"), record.id)
    assert lua_redis.zscore(keys.running, record.id) is None
    assert lua_redis.zscore(keys.pending("m", "t"), record.id) is None  # straight to the worker queue


def test_an_ending_sets_the_ttl_frees_the_slot_and_counts_once(lua_redis: redis.Redis, keys: Keys) -> None:
    record = stored(lua_redis, keys, job(status="in_progress"))
    lua_redis.sadd(keys.active("t"), record.id)
    expires = time.time() + 100
    assert call(lua_redis, keys, record.id, ["in_progress"], {"status": "completed", "expires_at": expires})[0] == 1
    assert 0 < lua_redis.ttl(keys.job(record.id)) <= 120
    assert lua_redis.zscore(keys.expiring, record.id) == expires
    assert not lua_redis.sismember(keys.active("t"), record.id)
    assert call(lua_redis, keys, record.id, ["completed"], {"outputs": {}})[0] == 1  # a later change: no second count
    assert lua_redis.hgetall(keys.finished("m")) == {b"completed": b"1"}
    assert decoded(lua_redis, keys, record.id)["outputs"] == {}


def test_webhook_events_only_for_jobs_someone_listens_to(lua_redis: redis.Redis, keys: Keys) -> None:
    silent = stored(lua_redis, keys, job())
    hooked = stored(lua_redis, keys, job(webhook_url="https://example.com/hook", webhook_events=["video.progress"]))
    for record in (silent, hooked):
        call(lua_redis, keys, record.id, ["queued"], {"status": "in_progress"})
        call(lua_redis, keys, record.id, ["in_progress"], {"progress": 10})
        call(lua_redis, keys, record.id, ["in_progress"], {"stage": "decoding"})  # no progress change: no event
    events = [(e[b"job"].decode(), e[b"type"].decode()) for _, e in lua_redis.xrange(keys.job_events)]
    assert events == [(hooked.id, "video.started"), (hooked.id, "video.progress")]
    # A tenant endpoint makes every job of the tenant's send its lifecycle events (progress only if opted in).
    lua_redis.set(keys.webhook_endpoint("t"), "{}")
    call(lua_redis, keys, silent.id, ["in_progress"], {"progress": 20})
    call(lua_redis, keys, silent.id, ["in_progress"], {"status": "failed"})
    assert [e[b"type"] for _, e in lua_redis.xrange(keys.job_events)][-1:] == [b"video.failed"]
    assert len(lua_redis.xrange(keys.job_events)) == 3


def test_preview_events_only_where_asked_for(lua_redis: redis.Redis, keys: Keys) -> None:
    # The job asks (its own URL), the job does not ask (lifecycle only), and a job that names nothing follows the
    # tenant's endpoint, which asks once its events include video.preview.
    asks = stored(lua_redis, keys, job(webhook_url="https://example.com/a", webhook_events=["video.preview"]))
    silent = stored(lua_redis, keys, job(webhook_url="https://example.com/b"))
    follows = stored(lua_redis, keys, job())
    lua_redis.set(keys.webhook_endpoint("t"), json.dumps({"url": "https://example.com/t", "events": None}))
    for record in (asks, silent, follows):
        call(lua_redis, keys, record.id, ["queued"], {"status": "in_progress"})
        call(lua_redis, keys, record.id, ["in_progress"], {"preview_step": 2, "outputs": {"preview": "k"}})
    lua_redis.set(keys.webhook_endpoint("t"), json.dumps({"url": "https://example.com/t", "events": ["video.preview"]}))
    for record in (asks, silent, follows):
        call(lua_redis, keys, record.id, ["in_progress"], {"preview_step": 4, "outputs": {"preview": "k"}})
        call(lua_redis, keys, record.id, ["in_progress"], {"outputs": {"preview": "k"}})  # same step: no event
    previews = [
        (e[b"job"].decode(), json.loads(e[b"record"])["preview_step"])
        for _, e in lua_redis.xrange(keys.job_events)
        if e[b"type"] == b"video.preview"
    ]
    assert previews == [(asks.id, 2), (asks.id, 4), (follows.id, 4)]


def test_progress_events_follow_the_tenant_endpoint_as_previews_do(lua_redis: redis.Redis, keys: Keys) -> None:
    # A job naming no events and no URL follows the tenant's endpoint: once the endpoint lists video.progress, its
    # progress changes are written; a job with a URL of its own and no events keeps the lifecycle set.
    follows = stored(lua_redis, keys, job())
    own_url = stored(lua_redis, keys, job(webhook_url="https://example.com/own"))
    lua_redis.set(keys.webhook_endpoint("t"), json.dumps({"url": "https://example.com/t", "events": ["video.progress"]}))
    for record in (follows, own_url):
        call(lua_redis, keys, record.id, ["queued"], {"status": "in_progress"})
        call(lua_redis, keys, record.id, ["in_progress"], {"progress": 40})
    progress = [e[b"job"].decode() for _, e in lua_redis.xrange(keys.job_events) if e[b"type"] == b"video.progress"]
    assert progress == [follows.id]
