"""The job store: job records and the indexes around them in Redis, workers' heartbeats, recent run times.

Reading is open to all; a record changes only through the state machine (shared/jobstate.py), which calls
`apply` here: one atomic script (shared/lua/transition.lua) that checks, patches, keeps every index in step
and publishes the new state. A job is created by the fair queue (shared/fairqueue.py), admitted and stored
in one script. Key names come from shared/keys.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from shared import lua
from shared.estimate import RunTimes
from shared.keys import Keys, text
from shared.redisconn import connect
from shared.schemas import JobRecord
from shared.settings import Settings


@dataclass(frozen=True)
class TransitionResult:
    ok: bool
    record: JobRecord | None
    """The record after the change, or as it stood when the change was refused; None if missing."""


class JobStore:
    def __init__(self, client: redis.Redis, *, keys: Keys | None = None, record_ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.record_ttl_s = record_ttl_s
        self._transition = lua.load(client, "transition")

    @classmethod
    def from_settings(cls, settings: Settings, *, retry_s: float = 0) -> JobStore:
        """`retry_s` > 0: a running job pauses through a Redis restart instead of failing (shared/redisconn.py)."""
        return cls(
            connect(settings.redis, retry_s=retry_s),
            keys=Keys(settings.redis.key_prefix),
            record_ttl_s=settings.jobs.record_ttl_s,
        )

    # Records -------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(self.keys.job(job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        ids = list(job_ids)
        if not ids:
            return []
        raws = self.redis.mget([self.keys.job(i) for i in ids])
        return [JobRecord.model_validate_json(r) for r in raws if r]

    def apply(self, record: JobRecord, allowed: Iterable[str], patch: dict[str, Any], guards: dict[str, Any]) -> TransitionResult:
        """One transition, atomically: for shared/jobstate.py only (every change of a job is one of its functions)."""
        keys, model, tenant = self.keys, record.spec.model, record.tenant
        code, raw = self._transition(
            keys=[
                keys.job(record.id),
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
            ],
            args=lua.argv(
                allowed=sorted(allowed),
                guards=list(guards.items()),
                patch=list(patch.items()),
                ttl=self.record_ttl_s,
                channel=keys.events(record.id),
                now=time.time(),
            ),
        )
        updated = JobRecord.model_validate_json(raw) if raw else None
        return TransitionResult(ok=code == 1, record=updated)

    def delete(self, record: JobRecord) -> None:
        """The record and every index entry (DELETE /v1/videos/{id}); a run still going finds it gone and stops."""
        keys, model, tenant = self.keys, record.spec.model, record.tenant
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.job(record.id))
        for index in (keys.tenant_jobs(tenant), keys.all_jobs, keys.queued(model), keys.running, keys.expiring):
            pipe.zrem(index, record.id)
        pipe.zrem(keys.pending(model, tenant), record.id)
        pipe.zrem(keys.dispatched(model), record.id)
        pipe.hdel(keys.journal(model), record.id)
        pipe.srem(keys.active(tenant), record.id)
        pipe.execute()

    def list_ids(self, tenant: str | None, *, after: str | None, limit: int, newest_first: bool) -> tuple[list[str], bool]:
        """One page of a tenant's job ids (None: every tenant's), after the cursor id (exclusive); returns (ids, has_more)."""
        key = self.keys.tenant_jobs(tenant) if tenant is not None else self.keys.all_jobs
        start = 0
        if after is not None:
            rank: Any = self.redis.zrevrank(key, after) if newest_first else self.redis.zrank(key, after)
            if rank is None:
                return [], False
            start = int(rank) + 1
        fetch = self.redis.zrevrange if newest_first else self.redis.zrange
        ids = [text(i) for i in fetch(key, start, start + limit)]
        return ids[:limit], len(ids) > limit

    def queued_count(self, model: str) -> int:
        return int(self.redis.zcard(self.keys.queued(model)))

    def queued_ids(self, model: str) -> list[str]:
        return [text(i) for i in self.redis.zrange(self.keys.queued(model), 0, -1)]

    def running_ids(self) -> list[str]:
        return [text(i) for i in self.redis.zrange(self.keys.running, 0, -1)]

    def expired_ids(self, now: float, limit: int = 500) -> list[str]:
        return [text(i) for i in self.redis.zrangebyscore(self.keys.expiring, 0, now, start=0, num=limit)]

    def forget_expired(self, job_id: str) -> None:
        self.redis.zrem(self.keys.expiring, job_id)

    # Run times of finished jobs, for estimates ---------------------------------------------------
    def record_duration(self, model: str, seconds: float, keep: int = 20) -> None:
        key = self.keys.durations(model)
        pipe = self.redis.pipeline()
        pipe.lpush(key, f"{seconds:.3f}")
        pipe.ltrim(key, 0, keep - 1)
        pipe.execute()

    def mean_duration(self, model: str) -> float | None:
        values = [float(v) for v in self.redis.lrange(self.keys.durations(model), 0, -1)]
        return sum(values) / len(values) if values else None

    def record_run_times(self, model: str, tokens: int, times: RunTimes) -> None:
        self.redis.hset(self.keys.runtimes(model), str(tokens), times.dumps())

    def run_times(self, model: str, tokens: int) -> RunTimes | None:
        """The latest finished run's times of the model at this many video tokens (shared/estimate.py)."""
        raw = self.redis.hget(self.keys.runtimes(model), str(tokens))
        return RunTimes.loads(raw) if raw else None

    # Workers -------------------------------------------------------------------------------------
    def heartbeat(self, worker_id: str, model: str, info: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.set(self.keys.worker(worker_id), json.dumps({**info, "model": model, "seen_at": now}), px=int(ttl_s * 1000))
        pipe.zadd(self.keys.workers(model), {worker_id: now})
        pipe.zremrangebyscore(self.keys.workers(model), 0, now - 3600)
        pipe.execute()

    def forget_worker(self, worker_id: str, model: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.worker(worker_id))
        pipe.zrem(self.keys.workers(model), worker_id)
        pipe.execute()

    def worker_info(self, worker_id: str) -> dict[str, Any] | None:
        """The worker's latest heartbeat, or None once it expired (the worker is dead)."""
        raw = self.redis.get(self.keys.worker(worker_id))
        return json.loads(raw) if raw else None

    def live_workers(self, model: str) -> list[dict[str, Any]]:
        ids = [text(i) for i in self.redis.zrange(self.keys.workers(model), 0, -1)]
        if not ids:
            return []
        raws = self.redis.mget([self.keys.worker(i) for i in ids])
        return [json.loads(r) for r in raws if r]
