"""The job store: job records in Redis, changed only by atomic transitions that also publish the change.

Layout (prefix `wanq`):
  wanq:job:{id}             the record, JSON
  wanq:jobs:{tenant}        sorted set of the tenant's job ids by creation time (listing)
  wanq:queued:{model}       sorted set of queued job ids by creation time (queue position)
  wanq:events:{id}          pub/sub channel: every new record state of the job, as JSON
  wanq:worker:{id}          a live worker's heartbeat (expires), wanq:workers:{model} its index
  wanq:durations:{model}    recent job run times (estimated start of queued jobs)
  wanq:running              sorted set of in_progress job ids (watched for dead workers)
  wanq:expiring             sorted set of completed job ids by expires_at (outputs swept then)
  wanq:job-events           stream of webhook events (video.started/completed/failed/canceled/progress), written
                            by the transition for jobs someone listens to; consumed by `wanq webhooks`
  wanq:alljobs              sorted set of every tenant's job ids by creation time (admin listing)
  wanq:finished:{model}     hash status -> number of jobs that ended so (the metrics' counters)
Fair dispatch (shared/fairqueue.py owns these; the transition below keeps them consistent):
  wanq:pending:{model}:{tenant}  a tenant's jobs waiting for dispatch; wanq:dispatched:{model} jobs sent
  to the worker queue, not started; wanq:active:{tenant} the tenant's dispatched jobs not yet ended
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from shared.schemas import TERMINAL_STATUSES, JobRecord, JobStatus

# KEYS: none (names derive from the record). ARGV: prefix, job id, allowed statuses (JSON list),
# patch and guards (JSON lists of [field, value] pairs: cjson cannot tell {} from []), record TTL
# once terminal.
# Returns {1, record} on success, {-1, record} when a status or guard check fails, {0, ""} if missing.
_TRANSITION = """
local prefix, id = ARGV[1], ARGV[2]
local key = prefix .. ':job:' .. id
local raw = redis.call('GET', key)
if not raw then return {0, ''} end
local job = cjson.decode(raw)
local allowed = cjson.decode(ARGV[3])
local was_status, was_progress = job.status, job.progress
local ok = (#allowed == 0)
for _, s in ipairs(allowed) do if s == job.status then ok = true end end
if not ok then return {-1, raw} end
for _, pair in ipairs(cjson.decode(ARGV[5])) do
  if job[pair[1]] ~= pair[2] then return {-1, raw} end
end
for _, pair in ipairs(cjson.decode(ARGV[4])) do job[pair[1]] = pair[2] end
-- Every stored state gets the next version, so readers can tell an older message from a newer one.
job.version = (type(job.version) == 'number' and job.version or 0) + 1
local out = cjson.encode(job)
redis.call('SET', key, out, 'KEEPTTL')
if job.status ~= 'queued' then
  redis.call('ZREM', prefix .. ':queued:' .. job.spec.model, id)
  -- Started or ended: no longer waiting for dispatch (a canceled job never starts) nor in the worker queue.
  redis.call('ZREM', prefix .. ':pending:' .. job.spec.model .. ':' .. job.tenant, id)
  redis.call('ZREM', prefix .. ':dispatched:' .. job.spec.model, id)
end
-- Running jobs are watched for dead workers; completed outputs are swept when they expire.
if job.status == 'in_progress' then
  redis.call('ZADD', prefix .. ':running', type(job.started_at) == 'number' and job.started_at or 0, id)
else
  redis.call('ZREM', prefix .. ':running', id)
end
if job.status == 'completed' or job.status == 'failed' or job.status == 'canceled' then
  redis.call('EXPIRE', key, tonumber(ARGV[6]))
  if job.status == 'completed' and type(job.expires_at) == 'number' then
    redis.call('ZADD', prefix .. ':expiring', job.expires_at, id)
  end
  redis.call('SREM', prefix .. ':active:' .. job.tenant, id)
  if job.status ~= was_status then
    redis.call('HINCRBY', prefix .. ':finished:' .. job.spec.model, job.status, 1)
  end
end
redis.call('PUBLISH', prefix .. ':events:' .. id, out)
-- Webhook events: written here, in the one place state changes, so that none is lost or doubled.
-- Only for jobs with a webhook_url or whose tenant has a default endpoint (shared/webhook_store.py's
-- endpoint key); progress only for jobs that opted in (the delivery process throttles it).
local event = nil
if job.status ~= was_status then
  event = ({in_progress = 'video.started', completed = 'video.completed', failed = 'video.failed',
            canceled = 'video.canceled'})[job.status]
elseif job.status == 'in_progress' and job.progress ~= was_progress and type(job.webhook_events) == 'table' then
  for _, name in ipairs(job.webhook_events) do if name == 'video.progress' then event = name end end
end
if event and (type(job.webhook_url) == 'string'
              or redis.call('EXISTS', prefix .. ':webhook-endpoint:' .. job.tenant) == 1) then
  -- Bounded in case no delivery process runs; it deletes what it has handled.
  redis.call('XADD', prefix .. ':job-events', 'MAXLEN', '~', 100000, '*', 'job', id, 'type', event, 'record', out)
end
return {1, out}
"""


@dataclass(frozen=True)
class TransitionResult:
    ok: bool
    record: JobRecord | None
    """The record after the change, or as it stood when the change was refused; None if missing."""


class JobStore:
    def __init__(self, client: redis.Redis, *, prefix: str = "wanq", record_ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.prefix = prefix
        self.record_ttl_s = record_ttl_s
        self._transition = client.register_script(_TRANSITION)

    @classmethod
    def from_url(cls, url: str, *, retry_s: float = 0, **kwargs: Any) -> JobStore:
        """`retry_s` > 0: commands that find Redis unreachable (restarting, loading its AOF) are retried for about
        that long before they raise, so a job pauses through a Redis restart instead of failing. Every command the
        store sends is safe to repeat: transitions are guarded, the rest are writes of the same value."""
        # A pooled connection that Redis closed (a restart, an idle timeout) fails its next command at once;
        # one immediate retry on a new connection hides that, while a Redis that is down still fails fast.
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 1)}
        if retry_s > 0:
            # Backoff 0.1, 0.2, ... capped at 1 s: about retry_s seconds in all, Redis' own restart included.
            options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=int(retry_s) + 4)
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30, **options)
        return cls(client, **kwargs)

    # Keys
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def tenant_jobs_key(self, tenant: str) -> str:
        return f"{self.prefix}:jobs:{tenant}"

    def all_jobs_key(self) -> str:
        return f"{self.prefix}:alljobs"

    def queued_key(self, model: str) -> str:
        return f"{self.prefix}:queued:{model}"

    def workers_key(self, model: str) -> str:
        """Sorted set: the model's workers by the time of their last heartbeat."""
        return f"{self.prefix}:workers:{model}"

    def durations_key(self, model: str) -> str:
        return f"{self.prefix}:durations:{model}"

    def finished_key(self, model: str) -> str:
        return f"{self.prefix}:finished:{model}"

    def events_channel(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    # Records
    def create(self, record: JobRecord) -> None:
        score = record.created_at
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.job_key(record.id), record.model_dump_json(), nx=True)
        pipe.zadd(self.tenant_jobs_key(record.tenant), {record.id: score})
        pipe.zadd(self.all_jobs_key(), {record.id: score})
        if record.status is JobStatus.queued:
            pipe.zadd(self.queued_key(record.spec.model), {record.id: score})
        created, *_ = pipe.execute()
        if not created:
            raise RuntimeError(f"job {record.id} already exists")

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(self.job_key(job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        ids = list(job_ids)
        if not ids:
            return []
        raws = self.redis.mget([self.job_key(i) for i in ids])
        return [JobRecord.model_validate_json(r) for r in raws if r]

    def transition(
        self,
        job_id: str,
        *,
        allowed: Iterable[JobStatus] = (),
        patch: dict[str, Any],
        guards: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """Applies `patch` atomically if the status is in `allowed` (empty = any) and guards hold."""
        code, raw = self._transition(
            args=[
                self.prefix,
                job_id,
                json.dumps([s.value for s in allowed]),
                json.dumps(list(patch.items())),
                json.dumps(list((guards or {}).items())),
                self.record_ttl_s,
            ]
        )
        record = JobRecord.model_validate_json(raw) if raw else None
        return TransitionResult(ok=code == 1, record=record)

    def cancel_queued(self, job_id: str, message: str) -> TransitionResult:
        """Ends a job that has not started (it never will); refused once it runs or has ended."""
        return self.transition(
            job_id,
            allowed=[JobStatus.queued],
            patch={
                "status": "canceled",
                "stage": "done",
                "completed_at": time.time(),
                "error": {"code": "canceled", "message": message},
            },
        )

    def delete(self, record: JobRecord) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.job_key(record.id))
        pipe.zrem(self.tenant_jobs_key(record.tenant), record.id)
        pipe.zrem(self.queued_key(record.spec.model), record.id)
        pipe.zrem(f"{self.prefix}:running", record.id)
        pipe.zrem(f"{self.prefix}:expiring", record.id)
        pipe.zrem(self.all_jobs_key(), record.id)
        pipe.zrem(f"{self.prefix}:pending:{record.spec.model}:{record.tenant}", record.id)
        pipe.zrem(f"{self.prefix}:dispatched:{record.spec.model}", record.id)
        pipe.srem(f"{self.prefix}:active:{record.tenant}", record.id)
        pipe.execute()

    def list_ids(self, tenant: str | None, *, after: str | None, limit: int, newest_first: bool) -> tuple[list[str], bool]:
        """One page of a tenant's job ids (None: every tenant's), after the cursor id (exclusive); returns (ids, has_more)."""
        key = self.tenant_jobs_key(tenant) if tenant is not None else self.all_jobs_key()
        start = 0
        if after is not None:
            rank: Any = self.redis.zrevrank(key, after) if newest_first else self.redis.zrank(key, after)
            if rank is None:
                return [], False
            start = int(rank) + 1
        fetch = self.redis.zrevrange if newest_first else self.redis.zrange
        ids = _texts(fetch(key, start, start + limit))
        return ids[:limit], len(ids) > limit

    def queue_position(self, record: JobRecord) -> int | None:
        """0-based place among the model's queued jobs, oldest first."""
        rank: Any = self.redis.zrank(self.queued_key(record.spec.model), record.id)
        return None if rank is None else int(rank)

    def queued_count(self, model: str) -> int:
        return int(self.redis.zcard(self.queued_key(model)))

    def running_ids(self) -> list[str]:
        return _texts(self.redis.zrange(f"{self.prefix}:running", 0, -1))

    def expired_ids(self, now: float, limit: int = 500) -> list[str]:
        return _texts(self.redis.zrangebyscore(f"{self.prefix}:expiring", 0, now, start=0, num=limit))

    def forget_expired(self, job_id: str) -> None:
        self.redis.zrem(f"{self.prefix}:expiring", job_id)

    # Run times of finished jobs, for estimates.
    def record_duration(self, model: str, seconds: float, keep: int = 20) -> None:
        key = self.durations_key(model)
        pipe = self.redis.pipeline()
        pipe.lpush(key, f"{seconds:.3f}")
        pipe.ltrim(key, 0, keep - 1)
        pipe.execute()

    def mean_duration(self, model: str) -> float | None:
        values = [float(v) for v in self.redis.lrange(self.durations_key(model), 0, -1)]
        return sum(values) / len(values) if values else None

    # Workers
    def heartbeat(self, worker_id: str, model: str, info: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.set(f"{self.prefix}:worker:{worker_id}", json.dumps({**info, "model": model, "seen_at": now}), px=int(ttl_s * 1000))
        pipe.zadd(self.workers_key(model), {worker_id: now})
        pipe.zremrangebyscore(self.workers_key(model), 0, now - 3600)
        pipe.execute()

    def forget_worker(self, worker_id: str, model: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(f"{self.prefix}:worker:{worker_id}")
        pipe.zrem(self.workers_key(model), worker_id)
        pipe.execute()

    def worker_alive(self, worker_id: str) -> bool:
        return bool(self.redis.exists(f"{self.prefix}:worker:{worker_id}"))

    def live_workers(self, model: str) -> list[dict[str, Any]]:
        ids = self.redis.zrange(self.workers_key(model), 0, -1)
        if not ids:
            return []
        raws = self.redis.mget([f"{self.prefix}:worker:{i.decode() if isinstance(i, bytes) else i}" for i in ids])
        return [json.loads(r) for r in raws if r]


def _texts(values: Any) -> list[str]:
    """Members as str (the client is built without decode_responses)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def is_terminal(status: str | JobStatus) -> bool:
    return JobStatus(status) in TERMINAL_STATUSES
