"""The job store counts the jobs that end, by model and status (`wanq_jobs_finished_total`), in the
transition itself: once per job, whichever path ends it. Real Redis; a model id of its own so that
no worker or other test sees these jobs."""

from __future__ import annotations

from shared import jobstate
from shared.errors import WanqError
from shared.schemas import JobRecord, Stage
from shared.store import JobStore
from tests.records import job_record, store_job

MODEL = "counts-test-model"


def _record(store: JobStore) -> JobRecord:
    record = job_record(MODEL, "counts")
    store_job(store, record)
    return record


def _finished(store: JobStore) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in store.redis.hgetall(store.keys.finished(MODEL)).items()}


def test_each_ended_job_is_counted_once_by_status(store: JobStore) -> None:
    before = _finished(store)
    done, canceled, failed = _record(store), _record(store), _record(store)
    running = jobstate.claim(store, done, worker="counts", deadline_at=0)
    assert running.ok and running.record is not None
    assert jobstate.progress(store, running.record, 1, Stage.denoising, 1, 2, {}).ok  # not an ending
    assert _finished(store) == before
    assert jobstate.complete(store, running.record, 1, outputs={}, timings={}, retention_s=60).ok
    assert not jobstate.complete(store, running.record, 1, outputs={}, timings={}, retention_s=60).ok  # refused
    assert jobstate.expire(store, running.record).ok  # a later change of a completed job: no second count
    assert jobstate.cancel_queued(store, canceled, "test").ok
    assert jobstate.give_up(store, failed).ok
    after = _finished(store)
    for status in ("completed", "canceled", "failed"):
        assert after.get(status, 0) == before.get(status, 0) + 1, status
    assert not jobstate.fail(store, failed, 0, WanqError("again")).ok  # ended: no second ending, no second count
    assert _finished(store) == after
    for record in (done, canceled, failed):
        store.delete(record)
