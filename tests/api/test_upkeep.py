"""Upkeep (api/daemons/upkeep.py) against a redis-server of its own, with real Celery messages in it: it puts a
dead worker's job back without ever stranding it, and its reconciler repairs each way the queue invariant can
break ("every non-terminal job is in exactly one of: its tenant's queue, the dispatch journal, the Celery
queue, running on a live worker")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from api.daemons.dispatcher import Dispatcher
from api.daemons.upkeep import Upkeep, message_job
from shared import jobstate
from shared.fairqueue import FairQueue
from shared.keys import BROKER_UNACKED, Keys
from shared.queue import enqueue, make_celery
from shared.schemas import JobRecord, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from tests.records import job_record, rewrite, store_job

MODEL = "tiny-t2v-a14b"


class Loop:
    """Upkeep and the dispatcher of one test, over a fresh key prefix and model queue."""

    def __init__(self, client: redis.Redis) -> None:
        url = client.connection_pool.connection_kwargs
        prefix = f"u{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            models=[MODEL],
            redis={"url": f"redis://{url['host']}:{url['port']}/0", "key_prefix": prefix},
            worker={"heartbeat_ttl_s": 1.0},
            dispatch={"recover_after_s": 0.2},
        )
        self.store = JobStore(client, keys=Keys(prefix))
        self.fairq = FairQueue(self.store, self.settings.quotas, [MODEL])
        self.celery = make_celery(self.settings)
        self.sends = 0
        self.fail_sends = False
        self.upkeep = Upkeep(self.settings, self.store, Storage(self.settings.s3), self.fairq, self.send)
        self.broker = self.store.keys.broker_queue(MODEL)
        client.delete(self.broker, BROKER_UNACKED)

    def send(self, job_id: str, model: str) -> None:
        self.sends += 1
        if self.fail_sends:
            raise ConnectionError("the broker is away (or this process dies here)")
        enqueue(self.celery, job_id, model)

    def messages(self) -> list[str | None]:
        return [message_job(m) for m in self.store.redis.lrange(self.broker, 0, -1)]

    def job(self, tenant: str = "t") -> JobRecord:
        record = job_record(MODEL, tenant)
        store_job(self.store, record)
        return record

    def running_on(self, record: JobRecord, worker: str, *, lists_it: bool = True, alive: bool = True) -> JobRecord:
        claimed = jobstate.claim(self.store, record, worker=worker, deadline_at=time.time() + 600)
        assert claimed.ok and claimed.record is not None
        rewrite(self.store, record.id, attempt_started_at=time.time() - 10)  # past upkeep's grace
        if alive:
            self.store.heartbeat(worker, MODEL, {"jobs": [record.id] if lists_it else []}, ttl_s=30)
        return self.store.get(record.id)  # type: ignore[return-value]


@pytest.fixture
def loop(own_redis: redis.Redis) -> Iterator[Loop]:
    yield Loop(own_redis)


def test_a_dead_workers_job_is_never_stranded_when_its_message_cannot_be_sent(loop: Loop) -> None:
    """Issue 16's stranded job: upkeep made the job `queued` and listed it as dispatched, then the send failed
    (or the process died): no message, no journal entry, and no recovery path ever looked at it again. Now the
    requeue writes the journal in the same step, and the dispatcher sends what the journal holds."""
    record = loop.running_on(loop.job(), "dead-worker", alive=False)
    loop.fail_sends = True
    assert [r.kind for r in loop.upkeep.requeue_orphans()] == ["requeued"]
    assert loop.sends == 1 and loop.messages() == []
    requeued = loop.store.get(record.id)
    assert requeued is not None and requeued.status is JobStatus.queued
    loop.fail_sends = False
    time.sleep(0.3)  # past recover_after_s
    dispatcher = Dispatcher(loop.settings, send=loop.send)
    dispatcher.store, dispatcher.fairq = loop.store, loop.fairq
    dispatcher._resend_unsent()
    assert loop.messages() == [record.id]
    assert loop.fairq.unsent(0) == []


def test_a_queued_job_in_no_queue_is_put_back_on_the_second_look(loop: Loop) -> None:
    record = loop.job()
    taken = loop.fairq.take(MODEL, target=1)
    assert taken is not None and taken.job_id == record.id
    loop.fairq.sent(record.id, MODEL)  # "sent": but the message never reached the broker (lost)
    assert loop.upkeep.reconcile() == []  # first look: maybe between two steps of a dispatch
    assert [r.kind for r in loop.upkeep.reconcile()] == ["readmitted"]
    assert loop.store.redis.zscore(loop.store.keys.pending(MODEL, "t"), record.id) is not None
    assert loop.fairq.take(MODEL, target=1) == taken  # and it is dispatched again


def test_a_lost_message_holds_no_running_place_of_its_tenant(loop: Loop) -> None:
    """With max_running_jobs 1, a job whose message was lost must not count as the tenant's running job once it is
    back in the tenant's queue: the tenant's other jobs, and the job itself, are dispatched again."""
    loop.settings.quotas.max_running_jobs = 1
    fairq = FairQueue(loop.store, loop.settings.quotas, [MODEL])
    lost, second = loop.job(), loop.job()
    assert (taken := fairq.take(MODEL, target=5)) is not None and taken.job_id == lost.id
    fairq.sent(lost.id, MODEL)  # its message never reached the broker
    assert fairq.take(MODEL, target=5) is None  # the tenant's one running place is taken
    loop.upkeep.reconcile()
    assert [r.kind for r in loop.upkeep.reconcile()] == ["readmitted"]
    assert not loop.store.redis.sismember(loop.store.keys.active("t"), lost.id)
    again = fairq.take(MODEL, target=5)
    assert again is not None and again.job_id == lost.id  # dispatched again, in its place ahead of `second`
    assert loop.store.redis.zscore(loop.store.keys.pending(MODEL, "t"), second.id) is not None  # next in line


def test_a_job_whose_message_waits_or_was_delivered_is_left_alone(loop: Loop) -> None:
    waiting, delivered = loop.job(), loop.job()
    for record in (waiting, delivered):
        assert loop.fairq.take(MODEL, target=5) is not None
        loop.send(record.id, MODEL)
        loop.fairq.sent(record.id, MODEL)
    # A worker took one message and has not acknowledged it yet (kombu keeps it in its unacked hash).
    raw = loop.store.redis.rpop(loop.broker)
    assert raw is not None and message_job(raw) == waiting.id
    loop.store.redis.hset(BROKER_UNACKED, "tag", b"[" + raw + b', "", "wanq.tiny-t2v-a14b"]')
    for _ in range(3):
        assert loop.upkeep.reconcile() == []


def test_a_job_waiting_for_dispatch_that_was_already_sent_waits_no_more(loop: Loop) -> None:
    record = loop.job()
    loop.send(record.id, MODEL)  # a message exists, yet the job also waits in its tenant's queue
    assert [r.kind for r in loop.upkeep.reconcile()] == ["dequeued"]
    assert loop.store.redis.zscore(loop.store.keys.pending(MODEL, "t"), record.id) is None
    assert loop.fairq.take(MODEL, target=5) is None


def test_running_jobs_go_back_only_when_their_worker_is_dead_or_lost_them(loop: Loop) -> None:
    healthy = loop.running_on(loop.job(), "alive-and-busy")
    lost = loop.running_on(loop.job(), "alive-but-forgot", lists_it=False)
    dead = loop.running_on(loop.job(), "dead", alive=False)
    overran = loop.running_on(loop.job(), "dead-late", alive=False)
    rewrite(loop.store, overran.id, deadline_at=time.time() - 1)
    repairs = {r.job_id: r.kind for r in loop.upkeep.requeue_orphans()}
    assert repairs == {lost.id: "requeued", dead.id: "requeued", overran.id: "timed_out"}
    assert sorted(loop.messages()) == sorted([lost.id, dead.id])  # type: ignore[type-var]
    statuses = {r.id: r.status.value for r in loop.store.get_many([healthy.id, lost.id, dead.id, overran.id])}
    assert statuses == {healthy.id: "in_progress", lost.id: "queued", dead.id: "queued", overran.id: "failed"}


def test_a_dead_workers_job_with_a_cancel_pending_is_canceled_not_requeued(loop: Loop) -> None:
    record = loop.running_on(loop.job(), "dead", alive=False)
    assert jobstate.request_cancel(loop.store, record).ok
    assert [r.kind for r in loop.upkeep.requeue_orphans()] == ["canceled"]
    ended = loop.store.get(record.id)
    assert ended is not None and ended.status is JobStatus.canceled and ended.error is not None
    assert ended.error.code == "canceled" and loop.messages() == [] and loop.sends == 0
    assert not loop.store.redis.sismember(loop.store.keys.active("t"), record.id)


def test_an_ended_job_left_in_the_indexes_is_taken_out(loop: Loop) -> None:
    record = loop.job()
    assert jobstate.cancel_queued(loop.store, record, "test").ok
    keys = loop.store.keys
    # As if a crash or a hand edit had left it behind everywhere.
    loop.store.redis.zadd(keys.pending(MODEL, "t"), {record.id: 1})
    loop.store.redis.zadd(keys.dispatched(MODEL), {record.id: 1})
    loop.store.redis.hset(keys.journal(MODEL), record.id, "1")
    loop.store.redis.sadd(keys.active("t"), record.id)
    loop.store.redis.zadd(keys.running, {record.id: 1})
    kinds = [r.kind for r in loop.upkeep.reconcile()]
    assert kinds == ["dropped", "dropped", "dropped"]  # the queues, the running count, the running index
    for zset in (keys.pending(MODEL, "t"), keys.dispatched(MODEL), keys.running):
        assert loop.store.redis.zscore(zset, record.id) is None, zset
    assert not loop.store.redis.hexists(keys.journal(MODEL), record.id)
    assert not loop.store.redis.sismember(keys.active("t"), record.id)
