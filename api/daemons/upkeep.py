"""Upkeep: what keeps every job moving when processes die. Run by one process at a time (a Redis lock elects
it), inside the API by default (`WANQ_MAINTENANCE_ENABLED`), every `maintenance.interval_s`:

1. Dead workers' jobs. A job `in_progress` whose worker's heartbeat has expired (the worker was killed, lost
   its machine, or died between decoding and uploading) goes back to `queued`, and so does one whose worker is
   alive but no longer lists it (the run was lost, e.g. Redis stayed away longer than `worker.redis_retry_s`).
   This is the one mechanism that puts a job back (Celery's own redelivery is off: shared/queue.py). The
   requeue writes the dispatch journal in the same step, so nothing between it and the message can strand the
   job. A run that died past its time limit ends as `timeout` instead.
2. The reconciler checks the invariant every non-terminal job must hold: it is in exactly one of its tenant's
   queue, the dispatch journal, the Celery queue (waiting or delivered to a worker) or running on a live worker
   (item 1). A queued job found in none of the first three, twice in a row, is put back in its tenant's queue;
   one found waiting in its tenant's queue and also journaled or in the Celery queue leaves its tenant's queue;
   an ended or deleted job left in an index or a running count is taken out. Each repair is logged.
3. Expired outputs: completed jobs past `expires_at` lose their stored objects (content -> 410). Where the
   store supports it, a bucket lifecycle rule is set as well, as a backstop.
4. Orphans: every `maintenance.orphan_sweep_interval_s`, stored objects that no record names (under the job prefix:
   an input image stored before its job's record, which a crash between the two left alone, or the files of a job
   whose record is gone; under the LoRA prefix: a file whose record is gone) are deleted once older than
   `maintenance.orphan_grace_s`.

A round does nothing while Redis has lost its data (shared/deployment.py): every stored object would then look
orphaned, and there is nothing left in Redis to repair.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import jobstate
from shared.deployment import Deployment
from shared.fairqueue import FairQueue
from shared.keys import BROKER_UNACKED, text
from shared.loras import LoraStore
from shared.schemas import JobRecord, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from shared.timeouts import overran, timeout_message

log = logging.getLogger("wanq.upkeep")

Send = Callable[[str, str], None]
"""Sends a job's Celery message: (job id, model)."""

_JOB_ID = re.compile(r"video_[0-9a-f]{32}")


@dataclass(frozen=True)
class Repair:
    kind: str
    """requeued, timed_out, canceled (its cancel was pending), readmitted, dequeued (was queued twice), dropped (an
    ended job left in an index)."""
    job_id: str
    model: str


def message_job(raw: bytes | str) -> str | None:
    """The job id a Celery message (kombu's JSON envelope, protocol 2) carries as its first argument."""
    try:
        envelope = json.loads(raw)
        if isinstance(envelope, list):  # an unacked entry: [message, exchange, routing key]
            envelope = envelope[0]
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        match = _JOB_ID.search(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        return match.group(0) if match else None


class Upkeep:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, fairq: FairQueue, send: Send) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.fairq = fairq
        self.send = send
        self.owner = uuid.uuid4().hex
        self._suspects: set[str] = set()
        """Queued jobs found in no queue at the last round: put back if still so now."""
        self.deployment = Deployment(store.redis, store.keys, storage, fresh_start=settings.maintenance.fresh_start)
        self._next_orphan_sweep = 0.0

    # 1. Dead workers' jobs ---------------------------------------------------------------------
    def requeue_orphans(self) -> list[Repair]:
        repairs = []
        grace = self.settings.worker.heartbeat_ttl_s
        for record in self.store.get_many(self.store.running_ids()):
            if record.status is not JobStatus.in_progress or record.worker is None:
                continue
            if self._still_running(record.id, record.worker):
                continue
            if record.attempt_started_at and time.time() - record.attempt_started_at < grace:
                continue  # claimed a moment ago by a worker whose first heartbeat may not be visible yet
            if overran(record):
                if jobstate.time_out(self.store, record, timeout_message(record)).ok:
                    repairs.append(self._log(Repair("timed_out", record.id, record.spec.model), record))
                continue
            if record.cancel_requested:
                # Its cancel was accepted: it ends here rather than waiting in the queue for a worker to end it.
                if jobstate.cancel_running(self.store, record, record.attempts).ok:
                    repairs.append(self._log(Repair("canceled", record.id, record.spec.model), record))
                continue
            if jobstate.requeue(self.store, record).ok:
                self._send(record.id, record.spec.model)
                repairs.append(self._log(Repair("requeued", record.id, record.spec.model), record))
        return repairs

    def _still_running(self, job_id: str, worker: str) -> bool:
        """The worker is alive and, by its latest heartbeat, still busy with the job. A live worker that no
        longer lists it lost the run (e.g. it could not record progress while Redis was away)."""
        info = self.store.worker_info(worker)
        if info is None:
            return False
        jobs = info.get("jobs")
        return jobs is None or job_id in jobs  # None: a worker of a version that does not list its jobs

    def _send(self, job_id: str, model: str) -> None:
        """Sends the message of a job the journal holds; if this fails, the dispatcher sends it later."""
        try:
            self.send(job_id, model)
        except Exception as exc:
            log.warning("upkeep: sending %s failed (%s); the dispatcher sends it from the journal", job_id, exc)
            return
        self.fairq.sent(job_id, model)

    # 2. The reconciler ---------------------------------------------------------------------------
    def reconcile(self) -> list[Repair]:
        repairs: list[Repair] = []
        suspects: set[str] = set()
        for model in self.settings.models:
            repairs += self._reconcile_model(model, suspects)
        repairs += self._drop_ended_from_running_counts()
        self._suspects = suspects
        return repairs

    def _reconcile_model(self, model: str, suspects: set[str]) -> list[Repair]:
        keys, redis = self.store.keys, self.store.redis
        tenants = self.fairq.tenants()
        # A snapshot in one round trip; each repair below checks again atomically what it relies on.
        pipe = redis.pipeline(transaction=False)
        pipe.zrange(keys.queued(model), 0, -1)
        pipe.zrange(keys.dispatched(model), 0, -1)
        pipe.hkeys(keys.journal(model))
        pipe.lrange(keys.broker_queue(model), 0, -1)
        pipe.hvals(BROKER_UNACKED)
        for tenant in tenants:
            pipe.zrange(keys.pending(model, tenant), 0, -1)
        queued, dispatched, journal, broker, unacked, *pending_lists = pipe.execute()
        pending = {tenant: {text(i) for i in ids} for tenant, ids in zip(tenants, pending_lists, strict=True)}
        waiting = {job for ids in pending.values() for job in ids}
        journaled = {text(i) for i in journal}
        in_broker = {job for job in map(message_job, [*broker, *unacked]) if job is not None}
        indexed = {text(i) for i in queued} | {text(i) for i in dispatched} | waiting | journaled
        records = {r.id: r for r in self.store.get_many(sorted(indexed))}

        repairs = []
        for job_id in sorted(indexed):
            record = records.get(job_id)
            if record is None or record.status is not JobStatus.queued:
                repairs += self._drop(job_id, model, record, pending)
                continue
            places = (job_id in waiting) + (job_id in journaled) + (job_id in in_broker)
            if places == 0:
                if job_id not in self._suspects:
                    suspects.add(job_id)  # maybe between two steps of a dispatch: look again next round
                elif self.fairq.readmit(record):
                    repairs.append(self._log(Repair("readmitted", job_id, model), record))
            elif job_id in waiting and places > 1:
                # Waiting for dispatch although already sent: it must not be sent again.
                redis.zrem(keys.pending(model, record.tenant), job_id)
                repairs.append(self._log(Repair("dequeued", job_id, model), record))
        return repairs

    def _drop(self, job_id: str, model: str, record: JobRecord | None, pending: dict[str, set[str]]) -> list[Repair]:
        """An ended (or deleted) job that an index of queued jobs still lists: out of them all."""
        if record is not None and record.status is JobStatus.in_progress:
            return []  # claimed since the snapshot
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.zrem(keys.queued(model), job_id)
        pipe.zrem(keys.dispatched(model), job_id)
        pipe.hdel(keys.journal(model), job_id)
        for tenant, ids in pending.items():
            if job_id in ids:
                pipe.zrem(keys.pending(model, tenant), job_id)
        if any(pipe.execute()):
            return [self._log(Repair("dropped", job_id, model), record)]
        return []

    def _drop_ended_from_running_counts(self) -> list[Repair]:
        """Ended or vanished jobs out of the tenants' running counts and the running index."""
        keys, redis = self.store.keys, self.store.redis
        repairs = []
        sets = {keys.active(t): t for t in self.fairq.tenants()}
        members = {key: [text(i) for i in redis.smembers(key)] for key in sets}
        running = self.store.running_ids()
        ids = sorted({i for found in members.values() for i in found} | set(running))
        records = {r.id: r for r in self.store.get_many(ids)}
        for key, found in members.items():
            for job_id in found:
                record = records.get(job_id)
                if (record is None or record.status.is_terminal()) and redis.srem(key, job_id):
                    repairs.append(self._log(Repair("dropped", job_id, record.spec.model if record else "?"), record))
        for job_id in running:
            record = records.get(job_id)
            if (record is None or record.status is not JobStatus.in_progress) and redis.zrem(keys.running, job_id):
                repairs.append(self._log(Repair("dropped", job_id, record.spec.model if record else "?"), record))
        return repairs

    def _log(self, repair: Repair, record: JobRecord | None) -> Repair:
        extra: dict[str, Any] = {"job_id": repair.job_id, "model": repair.model, "repair": repair.kind}
        if record is not None:
            extra.update(tenant=record.tenant, attempts=record.attempts, worker=record.worker)
        message = {
            "requeued": "upkeep: requeued a job whose worker died",
            "timed_out": "upkeep: a job whose worker died past its time limit failed with timeout",
            "canceled": "upkeep: a job whose worker died had a cancel pending; it is canceled",
            "readmitted": "upkeep: put back a queued job that no queue held",
            "dequeued": "upkeep: a job waiting for dispatch was already sent; it waits no more",
            "dropped": "upkeep: took an ended job out of the queues' indexes",
        }[repair.kind]
        log.warning(message, extra=extra)
        return repair

    # 3. Expired outputs ---------------------------------------------------------------------------
    def sweep_expired(self) -> list[str]:
        swept = []
        for job_id in self.store.expired_ids(time.time()):
            self.storage.delete_prefix(self.storage.job_prefix(job_id))
            record = self.store.get(job_id)
            if record is not None:
                jobstate.expire(self.store, record)
            self.store.forget_expired(job_id)
            swept.append(job_id)
        if swept:
            log.info("deleted expired outputs", extra={"count": len(swept)})
        return swept

    # 4. Orphans ---------------------------------------------------------------------------------
    def sweep_orphans(self) -> list[str]:
        """Deletes the stored objects no record names that are older than the grace period; returns their keys."""
        cutoff = time.time() - self.settings.maintenance.orphan_grace_s
        swept: list[str] = []
        # Under the job prefix, by job: a job's objects go together, once the newest is past the grace period.
        jobs: dict[str, list[dict[str, Any]]] = {}
        prefix = self.storage.settings.key_prefix
        for obj in self.storage.list_objects(prefix):
            job_id = obj["Key"][len(prefix) :].split("/", 1)[0]
            if _JOB_ID.fullmatch(job_id):  # anything else there is not wanq's to judge
                jobs.setdefault(job_id, []).append(obj)
        old = sorted(job for job, objs in jobs.items() if max(o["LastModified"].timestamp() for o in objs) < cutoff)
        if old:
            pipe = self.store.redis.pipeline(transaction=False)
            for job_id in old:
                pipe.exists(self.store.keys.job(job_id))
            for job_id, exists in zip(old, pipe.execute(), strict=True):
                if not exists:
                    self.storage.delete_prefix(self.storage.job_prefix(job_id))
                    swept += [o["Key"] for o in jobs[job_id]]
        # Under the LoRA prefix (`<owner>/<id>.safetensors`), by owner: the files its records name stay.
        loras, prefix = LoraStore(self.store.redis, self.store.keys), self.settings.loras.key_prefix
        named: dict[str, set[str]] = {}
        for obj in self.storage.list_objects(prefix):
            if obj["LastModified"].timestamp() >= cutoff:
                continue
            owner = obj["Key"][len(prefix) :].split("/", 1)[0]
            if owner not in named:
                named[owner] = {r.storage_key for r in loras.listing(owner)}
            if obj["Key"] not in named[owner]:
                self.storage.delete(obj["Key"])
                swept.append(obj["Key"])
        if swept:
            log.warning("upkeep: deleted stored objects that no record names", extra={"count": len(swept), "keys": swept[:20]})
        return swept

    # Running it --------------------------------------------------------------------------------
    def run_once(self) -> list[Repair]:
        if self.deployment.problem() is not None:
            return []  # logged at critical level; /readyz says it too
        repairs = self.requeue_orphans() + self.reconcile()
        self.sweep_expired()
        if time.monotonic() >= self._next_orphan_sweep:
            # Scheduled before it runs: a sweep that raises (S3 away) waits for its next turn, not the next round.
            self._next_orphan_sweep = time.monotonic() + self.settings.maintenance.orphan_sweep_interval_s
            self.sweep_orphans()
        return repairs

    def _lead(self, ttl_s: float) -> bool:
        """Holds (or renews) the lock; True while this process is the one doing upkeep."""
        redis, lock = self.store.redis, self.store.keys.upkeep_lock
        ms = int(ttl_s * 1000)
        if redis.set(lock, self.owner, nx=True, px=ms):
            return True
        if redis.get(lock) == self.owner.encode():
            redis.pexpire(lock, ms)
            return True
        return False

    def run_forever(self, stop: threading.Event) -> None:
        interval = self.settings.maintenance.interval_s
        while not stop.is_set():
            try:
                if self._lead(interval * 3):
                    self.run_once()
            except Exception as exc:  # Redis or S3 away for a moment: try again next round
                log.warning("upkeep round failed: %s", exc)
            stop.wait(interval)

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(target=self.run_forever, args=(stop,), name="wanq-upkeep", daemon=True).start()
        return stop
