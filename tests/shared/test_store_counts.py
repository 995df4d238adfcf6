"""The job store counts the jobs that end, by model and status (`wanq_jobs_finished_total`), in the
transition itself: once per job, whichever path ends it. Real Redis; a model id of its own so that
no worker or other test sees these jobs."""

from __future__ import annotations

from shared.schemas import JobRecord, JobStatus
from shared.store import JobStore
from tests.records import job_record

MODEL = "counts-test-model"


def _record() -> JobRecord:
    return job_record(MODEL, "counts")


def _finished(store: JobStore) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in store.redis.hgetall(store.finished_key(MODEL)).items()}


def test_each_ended_job_is_counted_once_by_status(store: JobStore) -> None:
    before = _finished(store)
    done, canceled, failed = _record(), _record(), _record()
    for record in (done, canceled, failed):
        store.create(record)
    assert store.transition(done.id, allowed=[JobStatus.queued], patch={"status": "in_progress"}).ok
    assert store.transition(done.id, allowed=[JobStatus.in_progress], patch={"progress": 50}).ok  # not an ending
    assert _finished(store) == before
    assert store.transition(done.id, allowed=[JobStatus.in_progress], patch={"status": "completed"}).ok
    assert not store.transition(done.id, allowed=[JobStatus.in_progress], patch={"status": "completed"}).ok  # refused
    assert store.transition(done.id, patch={"stage": "done"}).ok  # a later change of a completed job: no second count
    assert store.transition(canceled.id, allowed=[JobStatus.queued], patch={"status": "canceled"}).ok
    assert store.transition(failed.id, allowed=[JobStatus.queued], patch={"status": "failed"}).ok
    after = _finished(store)
    for status in ("completed", "canceled", "failed"):
        assert after.get(status, 0) == before.get(status, 0) + 1, status
    for record in (done, canceled, failed):
        store.delete(record)
