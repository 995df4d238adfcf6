"""Per-tenant queues in front of each model's worker queue, drained fairly (stride scheduling).

A new job waits in its tenant's queue for its model. The dispatcher (api/daemons/dispatcher.py) moves
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

Keys (shared/keys.py; `m` a model id, `t` a tenant): pending:m:t (t's waiting jobs), ring:m (tenants with
waiting jobs -> pass), passes:m (passes of tenants that left the ring), vtime:m (pass of the latest dispatch),
dispatched:m (sent, not started, in dispatch order), dispatching:m (the journal: taken, send not confirmed),
active:t (t's dispatched jobs that have not ended: its running count), tenants, and the wake channel.

Jobs counted as waiting in a model's worker queue: min(dispatched and not started, the broker list's
length + sends in flight). So a message a worker took before dying (Celery restores it only after
its visibility timeout) holds no slot, nor does the leftover message of a job canceled meanwhile.

Every change is one script (shared/lua/create.lua, take.lua, position.lua, readmit.lua), so API processes
and any number of dispatchers can act at once: a job is taken by one dispatch only, and the worker queue never
holds more than its target. The job's transitions (shared/lua/transition.lua) remove it from `pending`,
`dispatched` and `active` as its state changes, so a job canceled while it waits can never be dispatched.
Scripts that visit every tenant of a ring are passed the ring's tenants' keys by the caller, who reads the
ring first (and asks again in the rare case a tenant joined meanwhile): no script builds a key name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared import lua
from shared.errors import RateLimited
from shared.idempotency import IdempotentCreate
from shared.keys import BROKER_UNACKED, text
from shared.schemas import JobRecord
from shared.settings import QuotaSettings
from shared.store import JobStore

RETRY = b"retry"


@dataclass(frozen=True)
class Placement:
    """A queued job's place in line and what its start estimate needs (from `create`, or `aplace` for a GET)."""

    admitted: bool
    waiting: int
    position: int | None
    live_workers: int
    mean_duration_s: float | None

    @classmethod
    def from_script(cls, reply: Sequence[Any], *, admitted: bool = True, waiting: int = 0) -> Placement:
        """From position.lua's answer: place (-1: not waiting), live workers, recent durations."""
        place, live, durations = reply
        values = [float(v) for v in durations]
        return cls(
            admitted=admitted,
            waiting=waiting,
            position=None if int(place) < 0 else int(place),
            live_workers=int(live),
            mean_duration_s=sum(values) / len(values) if values else None,
        )

    def estimated_start_at(self, now: float) -> int | None:
        """Jobs ahead drain across the live workers; the running ones are assumed half done."""
        if self.position is None or not self.live_workers or self.mean_duration_s is None:
            return None
        return int(now + self.mean_duration_s * (self.position // self.live_workers + 0.5))


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
        self.keys = store.keys
        self.redis = store.redis
        self.quotas = quotas
        self.models = list(models)
        self.backlog = backlog
        self.worker_ttl_s = worker_ttl_s
        self._scripts = {name: lua.load(self.redis, name) for name in ("create", "position", "take", "readmit")}
        self._ascripts = {name: lua.load_async(aclient, name) for name in ("create", "position")} if aclient else {}
        self._aclient = aclient
        overrides = quotas.tenants.items()
        self._caps = {t: q.max_running_jobs for t, q in overrides if q.max_running_jobs is not None}
        self._weights = {t: q.weight for t, q in overrides if q.weight is not None}
        self._rings: dict[str, list[str]] = {}
        """The ring's tenants per model as last seen: the first guess of scripts that visit them."""

    # Creating jobs ------------------------------------------------------------------------------
    def create(self, record: JobRecord, idempotency: IdempotentCreate | None = None) -> Placement:
        """Stores a new job and puts it in its tenant's queue, atomically; raises RateLimited if that queue
        is full (then nothing was stored). Sent again after a lost answer, it changes nothing."""
        return self.create_many([record], idempotency)[0]

    async def acreate(self, record: JobRecord, idempotency: IdempotentCreate | None = None) -> Placement:
        """`create` through redis.asyncio, on the API's event loop (needs `aclient`)."""
        return (await self.acreate_many([record], idempotency))[0]

    def create_many(self, records: Sequence[JobRecord], idempotency: IdempotentCreate | None = None) -> list[Placement]:
        """The n jobs of one request (one tenant, one model), all or none in one script: raises RateLimited if the
        tenant's queue has no room for all n (then nothing was stored). Their places in line, in `records`' order."""
        keys, args = self._create_call(records, idempotency)
        admitted, waiting = self._scripts["create"](keys=keys, args=args)
        self._refuse_if_full(records, int(admitted), int(waiting))
        return [self._placement(record, self._position, waiting=int(waiting)) for record in records]

    async def acreate_many(self, records: Sequence[JobRecord], idempotency: IdempotentCreate | None = None) -> list[Placement]:
        """`create_many` through redis.asyncio (needs `aclient`): the create and the n places in line go in one
        round trip (a pipeline), unless a tenant joined the ring unseen."""
        assert self._aclient is not None, "FairQueue was built without an asyncio client"
        keys, args = self._create_call(records, idempotency)
        pipe = self._aclient.pipeline(transaction=False)
        await self._ascripts["create"](keys=keys, args=args, client=pipe)
        tenants = self._guess(records[0])
        for record in records:
            await self._ascripts["position"](*self._position_call(record, tenants), client=pipe)
        (admitted, waiting), *replies = await pipe.execute()
        self._refuse_if_full(records, int(admitted), int(waiting))
        placements = []
        for record, reply in zip(records, replies, strict=True):
            while reply and reply[0] == RETRY:
                reply = await self._ascripts["position"](*self._position_call(record, self._seen(record.spec.model, reply)))
            placements.append(Placement.from_script(reply, waiting=int(waiting)))
        return placements

    def _create_call(self, records: Sequence[JobRecord], idempotency: IdempotentCreate | None) -> tuple[list[str], list[str]]:
        if not records:
            raise ValueError("create_many needs at least one record")
        first = records[0]
        keys, model, tenant = self.keys, first.spec.model, first.tenant
        if any(r.tenant != tenant or r.spec.model != model for r in records):
            raise ValueError("the jobs of one create_many share their tenant and model")
        return (
            [
                keys.tenant_jobs(tenant),
                keys.all_jobs,
                keys.queued(model),
                keys.pending(model, tenant),
                keys.ring(model),
                keys.passes(model),
                keys.vtime(model),
                keys.tenants,
                idempotency.key if idempotency else keys.idempotency(tenant, "-"),
                *(keys.job(r.id) for r in records),
                *(keys.pending(m, tenant) for m in self.models),
            ],
            lua.argv(
                ids=[r.id for r in records],
                records=[r.model_dump_json() for r in records],
                created_at=[r.created_at for r in records],
                tenant=tenant,
                max_waiting=self.quotas.for_tenant(tenant).max_queued_jobs,
                idempotency=idempotency.entry if idempotency else False,
                idempotency_ttl=idempotency.ttl_s if idempotency else 0,
                wake=self.keys.wake,
                model=model,
            ),
        )

    def _refuse_if_full(self, records: Sequence[JobRecord], admitted: int, waiting: int) -> None:
        if not admitted:
            tenant, model = records[0].tenant, records[0].spec.model
            limit = self.quotas.for_tenant(tenant).max_queued_jobs
            raise queue_full(tenant, waiting, limit, self.retry_hint(model), n=len(records))

    # A queued job's place in line ----------------------------------------------------------------
    def place(self, record: JobRecord) -> Placement:
        """Its 0-based place in the model's dispatch order (if nobody else submits and no cap intervenes), with the
        live workers and mean duration for the start estimate."""
        return self._placement(record, self._position)

    def _position(self, keys: list[str], args: list[str]) -> Any:
        return self._scripts["position"](keys=keys, args=args)

    async def aplace(self, record: JobRecord) -> Placement:
        """A queued job's place in line, live workers and mean duration, usually in one round trip (needs `aclient`)."""
        assert self._aclient is not None, "FairQueue was built without an asyncio client"
        tenants = self._guess(record)
        while True:
            reply = await self._ascripts["position"](*self._position_call(record, tenants))
            if not reply or reply[0] != RETRY:
                return Placement.from_script(reply)
            tenants = self._seen(record.spec.model, reply)

    def _placement(self, record: JobRecord, call: Callable[[list[str], list[str]], Any], *, waiting: int = 0) -> Placement:
        tenants = self._guess(record)
        while True:
            reply = call(*self._position_call(record, tenants))
            if not reply or reply[0] != RETRY:
                return Placement.from_script(reply, waiting=waiting)
            tenants = self._seen(record.spec.model, reply)

    def _position_call(self, record: JobRecord, tenants: list[str]) -> tuple[list[str], list[str]]:
        keys, model = self.keys, record.spec.model
        return (
            [
                keys.dispatched(model),
                keys.pending(model, record.tenant),
                keys.ring(model),
                keys.vtime(model),
                keys.workers(model),
                keys.durations(model),
                *(keys.pending(model, t) for t in tenants),
            ],
            lua.argv(
                id=record.id,
                tenant=record.tenant,
                tenants=tenants,
                weights=self._weights,
                weight=self.quotas.weight,
                live_since=time.time() - self.worker_ttl_s,
            ),
        )

    def _guess(self, record: JobRecord) -> list[str]:
        seen = self._rings.get(record.spec.model, [])
        return seen if record.tenant in seen else [*seen, record.tenant]

    def _seen(self, model: str, reply: Sequence[Any]) -> list[str]:
        """A script's 'retry' answer carries the ring's members: remember them as the next guess."""
        self._rings[model] = [text(t) for t in reply[1:]]
        return self._rings[model]

    # The dispatcher's side -----------------------------------------------------------------------
    def take(self, model: str, target: int) -> Taken | None:
        """Takes the next job to send to `model`'s worker queue, if it has room below `target`."""
        keys = self.keys
        tenants = self._rings.get(model, [])
        while True:
            reply = self._scripts["take"](
                keys=[
                    keys.dispatched(model),
                    keys.journal(model),
                    keys.broker_queue(model),
                    keys.ring(model),
                    keys.passes(model),
                    keys.vtime(model),
                    keys.dseq(model),
                    *(k for t in tenants for k in (keys.pending(model, t), keys.active(t))),
                ],
                args=lua.argv(
                    tenants=tenants,
                    target=target,
                    caps=self._caps,
                    cap=self.quotas.max_running_jobs,
                    weights=self._weights,
                    weight=self.quotas.weight,
                    now=time.time(),
                ),
            )
            if not reply or reply[0] != RETRY:
                break
            tenants = self._seen(model, reply)
        if not reply:
            return None
        job_id, tenant = (text(v) for v in reply)
        return Taken(job_id, tenant)

    def sent(self, job_id: str, model: str) -> None:
        """The job's message is in the worker queue: nothing to recover for it."""
        self.redis.hdel(self.keys.journal(model), job_id)

    def unsent(self, older_than_s: float) -> list[tuple[str, str]]:
        """(job id, model) taken for dispatch longer ago than `older_than_s` whose send was never confirmed."""
        now = time.time()
        stale = []
        for model in self.models:
            for job_id, taken_at in self.redis.hgetall(self.keys.journal(model)).items():
                if now - float(text(taken_at)) > older_than_s:
                    stale.append((text(job_id), model))
        return stale

    def readmit(self, record: JobRecord) -> bool:
        """Puts a queued job that no queue holds back into its tenant's queue (the reconciler's repair); checked
        again atomically: False if the job is queued somewhere after all, or no longer queued."""
        keys, model, tenant = self.keys, record.spec.model, record.tenant
        return bool(
            self._scripts["readmit"](
                keys=[
                    keys.job(record.id),
                    keys.pending(model, tenant),
                    keys.ring(model),
                    keys.passes(model),
                    keys.vtime(model),
                    keys.dispatched(model),
                    keys.journal(model),
                    keys.broker_queue(model),
                    BROKER_UNACKED,
                    keys.tenants,
                    keys.active(tenant),
                ],
                args=lua.argv(id=record.id, wake=self.keys.wake, model=model),
            )
        )

    def target(self, live_workers: int) -> int:
        """Jobs that may wait in a model's worker queue. With no live worker still `backlog`, so that
        a queue-length autoscaler sees demand and starts one."""
        return self.backlog * max(1, live_workers)

    # Views -------------------------------------------------------------------------------------
    def waiting_count(self, tenant: str) -> int:
        """The tenant's jobs waiting for dispatch, all models together (its `max_queued_jobs` count)."""
        pipe = self.redis.pipeline(transaction=False)
        for model in self.models:
            pipe.zcard(self.keys.pending(model, tenant))
        return sum(int(n) for n in pipe.execute())

    def retry_hint(self, model: str) -> int:
        """Seconds until a queue slot is likely to free: the model's mean job time (5 s if unknown)."""
        mean = self.store.mean_duration(model)
        return 5 if mean is None else min(600, max(1, math.ceil(mean)))

    def tenants(self) -> list[str]:
        return sorted(text(t) for t in self.redis.smembers(self.keys.tenants))

    def depth(self, model: str, live_workers: int) -> dict[str, Any]:
        """Queue depth of one model, per tenant: waiting for dispatch, in the worker queue, running."""
        tenants = self.tenants()
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zcard(self.keys.pending(model, tenant))
            pipe.smembers(self.keys.active(tenant))
        pipe.zrange(self.keys.ring(model), 0, -1, withscores=True)
        pipe.llen(self.keys.broker_queue(model))
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


def queue_full(tenant: str, waiting: int, limit: int, retry_after_s: int, *, n: int = 1) -> RateLimited:
    """The refusal of a request of `n` jobs that the tenant's queue has no room for (all or none)."""
    if n == 1:
        message = f"tenant {tenant!r} has {waiting} jobs waiting, the limit of its queue (quota max_queued_jobs = {limit})"
    else:
        message = (
            f"tenant {tenant!r} has {waiting} jobs waiting: {n} more would pass the limit of its queue "
            f"(quota max_queued_jobs = {limit}); none of the {n} was created"
        )
    hint = "retry when some have started or cancel some" if n == 1 or n <= limit else f"ask for at most {limit} at once"
    return RateLimited(f"{message}; {hint}", retry_after_s=retry_after_s, param="max_queued_jobs")
