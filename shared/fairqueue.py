"""Per-tenant queues in front of each model's worker queue, drained fairly (stride scheduling).

A new job waits in its tenant's queue for its model. The dispatcher (shared/dispatcher.py) moves
jobs into the model's Celery queue only while that queue is short (`backlog` jobs per live worker),
picking the tenant with the lowest *pass*: each dispatch adds 1/weight to the tenant's pass, so
tenants share dispatches in proportion to their weights whatever their queue lengths. A tenant that
(re)joins starts at the current virtual time (the pass of the latest dispatch), so it neither
waits behind another tenant's backlog nor brings saved-up credit. A tenant at its `max_running_jobs`
is skipped, and gets no credit for the skip.

Fairness bound: when a tenant below its `max_running_jobs` submits a job while it has none waiting,
that job starts after at most `backlog x W + T - 1` job completions of its model, however many jobs
the others have queued and whatever the weights (W live workers, T tenants waiting). It joins at the
virtual time, which no waiting tenant's pass is below: only tenants tied with it (ties go by tenant
name, at most T - 1) are dispatched first, and the `backlog x W` jobs already handed to the worker
queue start before it. With one worker, backlog 1 and two tenants: 2. `queue_position` is the
job's place in this order (jobs in the worker queue first, then by pass).

Layout (prefix `wanq`; `m` a model id, `t` a tenant):
  wanq:pending:m:t     sorted set: t's jobs waiting for dispatch, by creation time
  wanq:ring:m          sorted set: tenants with waiting jobs -> pass
  wanq:passes:m        hash: pass of tenants that left the ring (no waiting jobs)
  wanq:vtime:m         the virtual time: pass of the latest dispatch
  wanq:dispatched:m    sorted set: jobs sent to the Celery queue and not yet started, by dispatch order
  wanq:dseq:m          counter for that order
  wanq:active:t        set: t's dispatched jobs that have not ended (its `max_running_jobs` count)
  wanq:dispatching:m   hash: job -> time, between taking a job and sending its message (a journal)
  wanq:tenants         set: every tenant that ever submitted (admin views)
  wanq:dispatch:wake   pub/sub channel: a job was submitted

Jobs counted as waiting in a model's worker queue: min(dispatched and not started, the broker list's
length + sends in flight). So a message a worker took before dying (Celery restores it only after
its visibility timeout) holds no slot, nor does the leftover message of a job canceled meanwhile.

Every change is one Lua script, so API processes and any number of dispatchers can act at once:
a job is taken by one dispatch only, and the worker queue never holds more than its target. The
store's transition removes a job from `pending`, `dispatched` and `active` as its state changes,
so a job canceled while it waits can never be dispatched.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.errors import RateLimited
from shared.idempotency import IdempotentCreate
from shared.queue import queue_name
from shared.schemas import JobRecord
from shared.settings import QuotaSettings
from shared.store import JobStore

# ARGV: prefix, model, tenant, job id, score, max waiting jobs, JSON list of every model id.
# Returns {1, waiting} when admitted, {0, waiting} when the tenant's queues are full.
_ADMIT = """
local p, m, t, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local waiting = 0
for _, model in ipairs(cjson.decode(ARGV[7])) do
  waiting = waiting + redis.call('ZCARD', p .. ':pending:' .. model .. ':' .. t)
end
if waiting >= tonumber(ARGV[6]) then return {0, waiting} end
redis.call('ZADD', p .. ':pending:' .. m .. ':' .. t, ARGV[5], id)
redis.call('SADD', p .. ':tenants', t)
local ring = p .. ':ring:' .. m
if not redis.call('ZSCORE', ring, t) then
  local saved = tonumber(redis.call('HGET', p .. ':passes:' .. m, t) or '0')
  local vtime = tonumber(redis.call('GET', p .. ':vtime:' .. m) or '0')
  redis.call('ZADD', ring, string.format('%.17g', math.max(saved, vtime)), t)
end
redis.call('PUBLISH', p .. ':dispatch:wake', m)
return {1, waiting + 1}
"""

# ARGV: prefix, model, target (jobs allowed to wait in the worker queue), JSON {tenant: max running},
# default max running, JSON {tenant: weight}, default weight, now, the model's broker queue (a list).
# Returns {job id, tenant} for the job to send, or {} when there is no room or nothing to send.
_TAKE = """
local p, m = ARGV[1], ARGV[2]
local dispatched = p .. ':dispatched:' .. m
local journal = p .. ':dispatching:' .. m
local in_broker = redis.call('LLEN', ARGV[9]) + redis.call('HLEN', journal)
if math.min(redis.call('ZCARD', dispatched), in_broker) >= tonumber(ARGV[3]) then return {} end
local caps, defcap = cjson.decode(ARGV[4]), tonumber(ARGV[5])
local weights, defweight = cjson.decode(ARGV[6]), tonumber(ARGV[7])
local ring = p .. ':ring:' .. m
local entries = redis.call('ZRANGE', ring, 0, -1, 'WITHSCORES')
local skipped = {}
for i = 1, #entries, 2 do
  local t, pass = entries[i], tonumber(entries[i + 1])
  local pending = p .. ':pending:' .. m .. ':' .. t
  local active = p .. ':active:' .. t
  if redis.call('SCARD', active) >= tonumber(caps[t] or defcap) then
    table.insert(skipped, t)
  else
    local chosen = nil
    while true do
      local head = redis.call('ZRANGE', pending, 0, 0)[1]
      if not head then break end
      redis.call('ZREM', pending, head)
      local raw = redis.call('GET', p .. ':job:' .. head)
      if raw then
        local job = cjson.decode(raw)
        if job.status == 'queued' and job.cancel_requested ~= true then chosen = head; break end
      end
    end
    local next_pass = pass
    if chosen then next_pass = pass + 1 / tonumber(weights[t] or defweight) end
    if redis.call('ZCARD', pending) == 0 then
      redis.call('ZREM', ring, t)
      redis.call('HSET', p .. ':passes:' .. m, t, string.format('%.17g', next_pass))
    else
      redis.call('ZADD', ring, string.format('%.17g', next_pass), t)
    end
    if chosen then
      redis.call('SET', p .. ':vtime:' .. m, string.format('%.17g', pass))
      -- A tenant skipped for its running cap earns no credit meanwhile.
      for _, s in ipairs(skipped) do
        if tonumber(redis.call('ZSCORE', ring, s)) < pass then
          redis.call('ZADD', ring, string.format('%.17g', pass), s)
        end
      end
      redis.call('SADD', active, chosen)
      redis.call('ZADD', dispatched, redis.call('INCR', p .. ':dseq:' .. m), chosen)
      redis.call('HSET', journal, chosen, ARGV[8])
      return {chosen, t}
    end
  end
end
return {}
"""

# ARGV: prefix, model, created before (Unix time), how many of the oldest queued jobs to look at.
# A job the store holds as queued that is in no tenant queue, not dispatched and not being dispatched
# was stored but never admitted (the API stores and admits in one script, _CREATE; such a record comes
# from elsewhere: an older API during a rolling upgrade, a hand-made repair): it is admitted now, as
# _ADMIT does but past the tenant's limit.
# Returns the ids admitted.
_READMIT_STRAYS = """
local p, m = ARGV[1], ARGV[2]
local queued = p .. ':queued:' .. m
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', queued, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))) do
  local raw = redis.call('GET', p .. ':job:' .. id)
  if not raw then
    redis.call('ZREM', queued, id)
  else
    local job = cjson.decode(raw)
    local t = job.tenant
    local pending = p .. ':pending:' .. m .. ':' .. t
    if job.status == 'queued' and not redis.call('ZSCORE', pending, id)
        and not redis.call('ZSCORE', p .. ':dispatched:' .. m, id)
        and redis.call('HEXISTS', p .. ':dispatching:' .. m, id) == 0 then
      redis.call('ZADD', pending, string.format('%.17g', job.created_at), id)
      redis.call('SADD', p .. ':tenants', t)
      local ring = p .. ':ring:' .. m
      if not redis.call('ZSCORE', ring, t) then
        local saved = tonumber(redis.call('HGET', p .. ':passes:' .. m, t) or '0')
        local vtime = tonumber(redis.call('GET', p .. ':vtime:' .. m) or '0')
        redis.call('ZADD', ring, string.format('%.17g', math.max(saved, vtime)), t)
      end
      table.insert(found, id)
    end
  end
end
if #found > 0 then redis.call('PUBLISH', p .. ':dispatch:wake', m) end
return found
"""

# ARGV: prefix, model, tenant, job id, JSON {tenant: weight}, default weight.
# Returns the job's 0-based place in dispatch order, or -1 if it is not waiting.
_POSITION = """
local p, m, t, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dispatched = p .. ':dispatched:' .. m
local rank = redis.call('ZRANK', dispatched, id)
if rank then return rank end
local k = redis.call('ZRANK', p .. ':pending:' .. m .. ':' .. t, id)
if not k then return -1 end
local weights, defweight = cjson.decode(ARGV[5]), tonumber(ARGV[6])
local ring = p .. ':ring:' .. m
local vtime = tonumber(redis.call('GET', p .. ':vtime:' .. m) or '0')
local mine = tonumber(redis.call('ZSCORE', ring, t) or vtime)
local v = mine + k / tonumber(weights[t] or defweight)
local ahead = redis.call('ZCARD', dispatched) + k
local entries = redis.call('ZRANGE', ring, 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local u, pass = entries[i], tonumber(entries[i + 1])
  if u ~= t then
    local w = tonumber(weights[u] or defweight)
    local n = redis.call('ZCARD', p .. ':pending:' .. m .. ':' .. u)
    -- u's i-th job goes at pass + i/w; count those before ours (ties go by tenant name).
    local span = (v - pass) * w
    local count
    if u < t then count = math.floor(span + 1e-9) + 1 else count = math.ceil(span - 1e-9) end
    ahead = ahead + math.max(0, math.min(n, count))
  end
end
return ahead
"""


# A new job, in one atomic step: admission to its tenant's queue (_ADMIT) and, only if admitted, its
# record and indexes (as JobStore.create writes them), then what the API answers with: its place in
# line (_POSITION), the model's live workers and its recent job durations (the start estimate).
# Either both the record and the queue entry exist or neither does: no job the client was refused
# can run, and none can sit stored but unqueued. One round trip. With an Idempotency-Key, the key's
# entry gets the job id in the same step, so a retry after a lost answer replays this job.
# A record that already exists under this id (ids are fresh per request) means this very script ran
# already, its answer lost and the command sent again: it answers as created and changes nothing.
# ARGV: _ADMIT's 7; record JSON, job key, tenant index, all-jobs index, queued index, created_at;
# JSON {tenant: weight}, default weight; workers key, live-since time, durations key;
# idempotency entry key ('' for none), its JSON, its TTL in seconds.
# Returns {admitted 0/1, waiting, place (-1 if none), live workers, {durations}}.
_CREATE = (
    "local function admit(ARGV)\n"
    + _ADMIT
    + "\nend\nlocal function position(ARGV)\n"
    + _POSITION
    + """
end
local durations = redis.call('LRANGE', ARGV[18], 0, -1)
local waiting = 0
if redis.call('EXISTS', ARGV[9]) == 0 then
  local admitted = admit({ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]})
  if admitted[1] == 0 then return {0, admitted[2], -1, 0, durations} end
  waiting = admitted[2]
  redis.call('SET', ARGV[9], ARGV[8])
  redis.call('ZADD', ARGV[10], ARGV[13], ARGV[4])
  redis.call('ZADD', ARGV[11], ARGV[13], ARGV[4])
  redis.call('ZADD', ARGV[12], ARGV[13], ARGV[4])
  if ARGV[19] ~= '' then redis.call('SET', ARGV[19], ARGV[20], 'EX', ARGV[21]) end
end
local place = position({ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[14], ARGV[15]})
local live = redis.call('ZCOUNT', ARGV[16], ARGV[17], '+inf')
return {1, waiting, place, live, durations}
"""
)

# A queued job's place in line and what its start estimate needs, for the API's GET (clients poll it).
# ARGV: _POSITION's 6; workers key, live-since time, durations key.
# Returns {place (-1 if not waiting), live workers, {durations}}.
_PLACE = (
    "local function position(ARGV)\n"
    + _POSITION
    + """
end
local place = position({ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]})
return {place, redis.call('ZCOUNT', ARGV[7], ARGV[8], '+inf'), redis.call('LRANGE', ARGV[9], 0, -1)}
"""
)


@dataclass(frozen=True)
class Placement:
    """A queued job's place in line and what its start estimate needs (from `create`, or `aplace` for a GET)."""

    admitted: bool
    waiting: int
    position: int | None
    live_workers: int
    mean_duration_s: float | None

    @classmethod
    def from_script(cls, place: Any, live: Any, durations: list[Any], *, admitted: bool = True, waiting: int = 0) -> Placement:
        """From what _CREATE and _PLACE return: place (-1: not waiting), live workers, recent durations."""
        values = [float(v) for v in durations]
        return cls(
            admitted=admitted,
            waiting=waiting,
            position=None if int(place) < 0 else int(place),
            live_workers=int(live),
            mean_duration_s=sum(values) / len(values) if values else None,
        )

    def estimated_start_at(self, now: float) -> int | None:
        return estimated_start_at(now, self.position, self.live_workers, self.mean_duration_s)


def estimated_start_at(now: float, position: int | None, live_workers: int, mean_duration_s: float | None) -> int | None:
    """Jobs ahead drain across the live workers; the running ones are assumed half done."""
    if position is None or not live_workers or mean_duration_s is None:
        return None
    return int(now + mean_duration_s * (position // live_workers + 0.5))


@dataclass(frozen=True)
class Taken:
    job_id: str
    tenant: str


class FairQueue:
    def __init__(
        self,
        store: JobStore,
        quotas: QuotaSettings,
        models: list[str],
        *,
        backlog: int = 1,
        aclient: aioredis.Redis | None = None,
        worker_ttl_s: float = 10.0,
    ) -> None:
        self.store = store
        self.worker_ttl_s = worker_ttl_s
        self.backlog = backlog
        self.redis = store.redis
        self.prefix = store.prefix
        self.quotas = quotas
        self.models = list(models)
        self._create = self.redis.register_script(_CREATE)
        self._acreate = aclient.register_script(_CREATE) if aclient is not None else None
        self._aplace = aclient.register_script(_PLACE) if aclient is not None else None
        self._take = self.redis.register_script(_TAKE)
        self._position = self.redis.register_script(_POSITION)
        self._readmit_strays = self.redis.register_script(_READMIT_STRAYS)
        overrides = quotas.tenants.items()
        self._caps = json.dumps({t: q.max_running_jobs for t, q in overrides if q.max_running_jobs is not None})
        self._weights = json.dumps({t: q.weight for t, q in overrides if q.weight is not None})

    # Keys
    def pending_key(self, model: str, tenant: str) -> str:
        return f"{self.prefix}:pending:{model}:{tenant}"

    def dispatched_key(self, model: str) -> str:
        return f"{self.prefix}:dispatched:{model}"

    def active_key(self, tenant: str) -> str:
        return f"{self.prefix}:active:{tenant}"

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}:dispatch:wake"

    def journal_key(self, model: str) -> str:
        return f"{self.prefix}:dispatching:{model}"

    # API side
    def waiting_count(self, tenant: str) -> int:
        """The tenant's jobs waiting for dispatch, all models together (its `max_queued_jobs` count)."""
        pipe = self.redis.pipeline(transaction=False)
        for model in self.models:
            pipe.zcard(self.pending_key(model, tenant))
        return sum(int(n) for n in pipe.execute())

    def retry_hint(self, model: str) -> int:
        """Seconds until a queue slot is likely to free: the model's mean job time (5 s if unknown)."""
        return _retry_hint(self.store.mean_duration(model))

    def create(self, record: JobRecord, idempotency: IdempotentCreate | None = None) -> Placement:
        """Stores a new job and puts it in its tenant's queue, atomically; raises RateLimited if that queue
        is full (then nothing was stored). Sent again after a lost answer, it changes nothing."""
        return self._created(record, self._create(args=self._create_args(record, idempotency)))

    async def acreate(self, record: JobRecord, idempotency: IdempotentCreate | None = None) -> Placement:
        """`create` through redis.asyncio, on the API's event loop (needs `aclient`)."""
        assert self._acreate is not None, "FairQueue was built without an asyncio client"
        return self._created(record, await self._acreate(args=self._create_args(record, idempotency)))

    def _create_args(self, record: JobRecord, idempotency: IdempotentCreate | None) -> list[Any]:
        store, model = self.store, record.spec.model
        created_at = repr(record.created_at)
        return [
            self.prefix,
            model,
            record.tenant,
            record.id,
            created_at,
            self.quotas.for_tenant(record.tenant).max_queued_jobs,
            json.dumps(self.models),
            record.model_dump_json(),
            store.job_key(record.id),
            store.tenant_jobs_key(record.tenant),
            store.all_jobs_key(),
            store.queued_key(model),
            created_at,
            self._weights,
            self.quotas.weight,
            store.workers_key(model),
            repr(time.time() - self.worker_ttl_s),
            store.durations_key(model),
            *(("", "", 0) if idempotency is None else (idempotency.key, idempotency.entry, idempotency.ttl_s)),
        ]

    def _created(self, record: JobRecord, result: list[Any]) -> Placement:
        admitted, waiting, place, live, durations = result
        created = Placement.from_script(place, live, durations, admitted=bool(admitted), waiting=int(waiting))
        if not created.admitted:
            limit = self.quotas.for_tenant(record.tenant).max_queued_jobs
            raise queue_full(record.tenant, created.waiting, limit, _retry_hint(created.mean_duration_s))
        return created

    def position(self, record: JobRecord) -> int | None:
        """0-based place in the model's dispatch order, if nobody else submits and no cap intervenes."""
        place = int(
            self._position(args=[self.prefix, record.spec.model, record.tenant, record.id, self._weights, self.quotas.weight])
        )
        return None if place < 0 else place

    async def aplace(self, record: JobRecord) -> Placement:
        """A queued job's place in line, live workers and mean duration, in one round trip (needs `aclient`)."""
        assert self._aplace is not None, "FairQueue was built without an asyncio client"
        store, model = self.store, record.spec.model
        place, live, durations = await self._aplace(
            args=[
                self.prefix,
                model,
                record.tenant,
                record.id,
                self._weights,
                self.quotas.weight,
                store.workers_key(model),
                repr(time.time() - self.worker_ttl_s),
                store.durations_key(model),
            ]
        )
        return Placement.from_script(place, live, durations)

    # Dispatcher side
    def take(self, model: str, target: int) -> Taken | None:
        """Takes the next job to send to `model`'s worker queue, if it has room below `target`."""
        result = self._take(
            args=[
                self.prefix,
                model,
                target,
                self._caps,
                self.quotas.max_running_jobs,
                self._weights,
                self.quotas.weight,
                time.time(),
                queue_name(model),
            ]
        )
        if not result:
            return None
        job_id, tenant = (text(v) for v in result)
        return Taken(job_id, tenant)

    def sent(self, job_id: str, model: str) -> None:
        """The job's message is in the worker queue: nothing to recover for it."""
        self.redis.hdel(self.journal_key(model), job_id)

    def unsent(self, older_than_s: float) -> list[tuple[str, str]]:
        """(job id, model) taken for dispatch longer ago than `older_than_s` whose send was never confirmed."""
        now = time.time()
        stale = []
        for model in self.models:
            for job_id, taken_at in self.redis.hgetall(self.journal_key(model)).items():
                if now - float(text(taken_at)) > older_than_s:
                    stale.append((text(job_id), model))
        return stale

    def readmit_strays(self, model: str, older_than_s: float, limit: int = 1000) -> list[str]:
        """Admits queued jobs of `model` created over `older_than_s` ago that no queue holds (see _READMIT_STRAYS)."""
        found = self._readmit_strays(args=[self.prefix, model, repr(time.time() - older_than_s), limit])
        return [text(i) for i in found]

    def sweep_active(self) -> int:
        """Drops ended or vanished jobs from the running counts (a safety net; transitions do this)."""
        removed = 0
        for tenant in self.tenants():
            ids = [text(i) for i in self.redis.smembers(self.active_key(tenant))]
            if not ids:
                continue
            records = dict(zip(ids, self.redis.mget([self.store.job_key(i) for i in ids]), strict=True))
            for job_id, raw in records.items():
                if raw is None or JobRecord.model_validate_json(raw).status.is_terminal():
                    removed += int(self.redis.srem(self.active_key(tenant), job_id))
        return removed

    # Admin views
    def tenants(self) -> list[str]:
        return sorted(text(t) for t in self.redis.smembers(f"{self.prefix}:tenants"))

    def depth(self, model: str, live_workers: int) -> dict[str, Any]:
        """Queue depth of one model, per tenant: waiting for dispatch, in the worker queue, running."""
        tenants = self.tenants()
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zcard(self.pending_key(model, tenant))
            pipe.smembers(self.active_key(tenant))
        pipe.zrange(f"{self.prefix}:ring:{model}", 0, -1, withscores=True)
        pipe.llen(queue_name(model))
        *per_tenant, ring, broker_length = pipe.execute()
        passes = {text(k): float(v) for k, v in ring}
        active_ids = {text(i) for members in per_tenant[1::2] for i in members}
        active = {r.id: r for r in self.store.get_many(sorted(active_ids)) if r.spec.model == model}
        rows = {}
        for tenant, waiting, members in zip(tenants, per_tenant[0::2], per_tenant[1::2], strict=True):
            mine = [active[i] for i in (text(m) for m in members) if i in active]
            row = {
                "waiting": int(waiting),
                "dispatched": sum(1 for r in mine if r.status.value == "queued"),
                "running": sum(1 for r in mine if r.status.value == "in_progress"),
            }
            if any(row.values()):
                policy = self.quotas.for_tenant(tenant)
                rows[tenant] = {
                    **row,
                    "max_running_jobs": policy.max_running_jobs,
                    "weight": policy.weight,
                    "pass": passes.get(tenant),
                }
        return {
            "model": model,
            "live_workers": live_workers,
            "target": self.target(live_workers),
            "broker_queue_length": int(broker_length),
            "waiting": sum(r["waiting"] for r in rows.values()),
            "dispatched": sum(r["dispatched"] for r in rows.values()),
            "running": sum(r["running"] for r in rows.values()),
            "tenants": rows,
        }

    def target(self, live_workers: int) -> int:
        """Jobs that may wait in a model's worker queue. With no live worker still `backlog`, so that
        a queue-length autoscaler sees demand and starts one."""
        return self.backlog * max(1, live_workers)


def text(value: object) -> str:
    """A Redis reply item as str (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _retry_hint(mean_duration_s: float | None) -> int:
    return 5 if mean_duration_s is None else min(600, max(1, math.ceil(mean_duration_s)))


def queue_full(tenant: str, waiting: int, limit: int, retry_after_s: int) -> RateLimited:
    return RateLimited(
        f"tenant {tenant!r} has {waiting} jobs waiting, the limit of its queue (quota max_queued_jobs = {limit}); "
        "retry when some have started or cancel some",
        retry_after_s=retry_after_s,
        param="max_queued_jobs",
    )
