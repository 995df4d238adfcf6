"""The job store's per-tenant pending counts and finished counters (what `/metrics` reports) follow
every path a job takes: create, claim, requeue, cancel, finish, delete. Real Redis, a model id of
its own so that no worker or other test sees these jobs."""

from __future__ import annotations

import uuid

from shared.schemas import GenerationSpec, JobRecord, JobStatus
from shared.store import JobStore

MODEL = "counts-test-model"


def _record(tenant: str) -> JobRecord:
    spec = GenerationSpec(
        model=MODEL,
        prompt="counting",
        negative_prompt="",
        width=64,
        height=64,
        num_frames=5,
        fps=8,
        num_inference_steps=1,
        guidance_scale=1.0,
        guidance_scale_2=None,
        flow_shift=1.0,
        seed=0,
    )
    return JobRecord(id=f"video_{uuid.uuid4().hex}", tenant=tenant, spec=spec)


def _pending(store: JobStore) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in store.redis.hgetall(store.pending_key(MODEL)).items() if int(v)}


def _finished(store: JobStore, status: str) -> int:
    return int(store.redis.hget(store.finished_key(MODEL), status) or 0)


def test_pending_and_finished_counts_follow_each_job(store: JobStore) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    canceled_before, completed_before = _finished(store, "canceled"), _finished(store, "completed")
    a1, a2, b1 = _record(alice), _record(alice), _record(bob)
    for record in (a1, a2, b1):
        store.create(record)
    assert _pending(store).items() >= {alice: 2, bob: 1}.items()

    # Claimed: no longer pending. Requeued (its worker died): pending again, once.
    assert store.transition(a1.id, allowed=[JobStatus.queued], patch={"status": "in_progress"}).ok
    assert _pending(store).get(alice) == 1
    assert store.transition(a1.id, allowed=[JobStatus.in_progress], patch={"status": "queued"}).ok
    assert store.transition(
        a1.id, allowed=[JobStatus.queued], patch={"progress": 0}
    ).ok  # a queued job changing stays counted once
    assert _pending(store).get(alice) == 2 and store.queued_count(MODEL) >= 3

    # Canceled while queued; completed after running; deleted while queued.
    assert store.transition(a2.id, allowed=[JobStatus.queued], patch={"status": "canceled"}).ok
    assert store.transition(a1.id, allowed=[JobStatus.queued], patch={"status": "in_progress"}).ok
    assert store.transition(a1.id, allowed=[JobStatus.in_progress], patch={"status": "completed"}).ok
    assert not store.transition(a1.id, allowed=[JobStatus.in_progress], patch={"status": "completed"}).ok
    store.delete(b1)
    assert alice not in _pending(store) and bob not in _pending(store)
    assert _finished(store, "canceled") == canceled_before + 1
    assert _finished(store, "completed") == completed_before + 1  # the refused second finish did not count
    for record in (a1, a2):
        store.delete(record)
    assert store.queued_count(MODEL) == 0
