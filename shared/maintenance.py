"""Periodic upkeep, run by one API replica at a time (a Redis lock elects it):

- Orphaned jobs: a job `in_progress` whose worker's heartbeat has expired (the worker was killed,
  lost its machine, or died between decoding and uploading) goes back to `queued` and is enqueued
  again; so does one whose worker is alive but no longer lists it in its heartbeat (the attempt was
  lost, e.g. Redis stayed away longer than `worker.redis_retry_s` while it ran). The broker's own
  visibility timeout is far longer than any job, so this is what makes redelivery prompt; the job
  record counts attempts and gives up after `jobs.max_attempts`.
- Expired outputs: completed jobs past `expires_at` lose their stored objects (content -> 410).
  Where the store supports it, a bucket lifecycle rule is set as well, as a backstop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from celery import Celery

from shared.queue import enqueue
from shared.schemas import JobStatus
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from shared.timeouts import overran, timeout_message

log = logging.getLogger("wanq.maintenance")


class Maintenance:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.celery = celery
        self.lock_key = f"{store.prefix}:maintenance:lock"
        self.owner = uuid.uuid4().hex

    def requeue_orphans(self) -> list[str]:
        requeued = []
        grace = self.settings.worker.heartbeat_ttl_s
        for job_id in self.store.running_ids():
            record = self.store.get(job_id)
            if record is None or record.status is not JobStatus.in_progress or record.worker is None:
                continue
            if self._still_running(record.id, record.worker):
                continue
            if record.attempt_started_at and time.time() - record.attempt_started_at < grace:
                continue  # claimed a moment ago by a worker whose first heartbeat may not be visible yet
            if overran(record):
                self.store.transition(
                    job_id,
                    allowed=[JobStatus.in_progress],
                    guards={"attempts": record.attempts},
                    patch={
                        "status": "failed",
                        "stage": "done",
                        "completed_at": time.time(),
                        "error": {"code": "timeout", "message": timeout_message(record)},
                    },
                )
                continue
            result = self.store.transition(
                job_id,
                allowed=[JobStatus.in_progress],
                guards={"attempts": record.attempts, "worker": record.worker},
                patch={"status": "queued", "stage": "queued", "progress": 0, "step": 0, "worker": None},
            )
            if result.ok:
                model = record.spec.model
                self.store.redis.zadd(self.store.queued_key(model), {job_id: record.created_at})
                # Back in the worker queue, ahead of everything dispatched after it (shared/fairqueue.py).
                self.store.redis.zadd(f"{self.store.prefix}:dispatched:{model}", {job_id: 0})
                enqueue(self.celery, job_id, model)
                requeued.append(job_id)
                log.warning(
                    "requeued a job whose worker died",
                    extra={
                        "job_id": job_id,
                        "model": record.spec.model,
                        "tenant": record.tenant,
                        "worker": record.worker,
                        "attempts": record.attempts,
                    },
                )
        return requeued

    def _still_running(self, job_id: str, worker: str) -> bool:
        """The worker is alive and, by its latest heartbeat, still busy with the job. A live worker that no
        longer lists it lost the attempt (e.g. it could not record progress while Redis was away)."""
        raw = self.store.redis.get(f"{self.store.prefix}:worker:{worker}")
        if raw is None:
            return False
        jobs = json.loads(raw).get("jobs")
        return jobs is None or job_id in jobs  # None: a worker of a version that does not list its jobs

    def sweep_expired(self) -> list[str]:
        swept = []
        for job_id in self.store.expired_ids(time.time()):
            self.storage.delete_prefix(self.storage.job_prefix(job_id))
            self.store.forget_expired(job_id)
            swept.append(job_id)
        if swept:
            log.info("deleted expired outputs", extra={"count": len(swept)})
        return swept

    def run_once(self) -> None:
        self.requeue_orphans()
        self.sweep_expired()

    def _lead(self, ttl_s: float) -> bool:
        """Holds (or renews) the lock; True while this process is the one doing upkeep."""
        ms = int(ttl_s * 1000)
        if self.store.redis.set(self.lock_key, self.owner, nx=True, px=ms):
            return True
        if self.store.redis.get(self.lock_key) == self.owner.encode():
            self.store.redis.pexpire(self.lock_key, ms)
            return True
        return False

    def run_forever(self, stop: threading.Event) -> None:
        interval = self.settings.maintenance.interval_s
        while not stop.is_set():
            try:
                if self._lead(interval * 3):
                    self.run_once()
            except Exception as exc:  # Redis or S3 away for a moment: try again next round
                log.warning("maintenance round failed: %s", exc)
            stop.wait(interval)

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(target=self.run_forever, args=(stop,), name="wanq-maintenance", daemon=True).start()
        return stop
