"""The dispatcher: feeds each model's Celery queue from the per-tenant queues, fairly, as workers free up.

It keeps no state of its own (everything is in Redis, see shared/fairqueue.py), so it can stop and
start at any time, and any number may run at once: as `wanq dispatcher`, and inside each API process
unless `WANQ_DISPATCH_IN_API=false`. A pass runs whenever a job is submitted or changes state (it
listens to the store's events) and at least every `dispatch.interval_s`.

Taking a job and sending its message are two steps; a dispatcher that dies between them leaves the
job in the dispatch journal, and the next pass of any dispatcher sends it once `recover_after_s` has
passed (upkeep's requeue writes the journal too). A message sent twice is harmless: the worker's claim
is fenced (shared/jobstate.py), so the job runs once. Every other broken invariant of the queues is
upkeep's reconciler's to repair (api/daemons/upkeep.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared.fairqueue import FairQueue
from shared.queue import enqueue, make_celery
from shared.settings import Settings
from shared.store import JobStore

log = logging.getLogger("wanq.dispatcher")

RESEND_EVERY_S = 10.0
WORKERS_CACHE_S = 1.0


class Dispatcher:
    def __init__(self, settings: Settings, *, send: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.store = JobStore.from_settings(settings)
        self.fairq = FairQueue(self.store, settings.quotas, settings.models, backlog=settings.dispatch.backlog)
        if send is None:
            celery = make_celery(settings)

            def send(job_id: str, model: str) -> None:
                enqueue(celery, job_id, model)

        self._send = send
        self._stop = threading.Event()
        self._workers: dict[str, tuple[float, int]] = {}
        self._resent_at = 0.0

    def stop(self) -> None:
        self._stop.set()

    # -----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Dispatches until `stop()`; survives Redis outages by waiting and reconnecting."""
        interval = self.settings.dispatch.interval_s
        log.info(
            "dispatcher started", extra={"models": ",".join(self.settings.models), "backlog": self.settings.dispatch.backlog}
        )
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.store.keys.wake)
                pubsub.psubscribe(self.store.keys.events("*"))
                while not self._stop.is_set():
                    self.dispatch_once()
                    self._resend_unsent()
                    # Sleep until something happens (or the interval), then take every queued wake-up at once.
                    if pubsub.get_message(timeout=interval) is not None:
                        while pubsub.get_message(timeout=0) is not None:
                            pass
            except redis.RedisError as exc:
                log.warning("dispatcher: redis unavailable (%s); retrying", type(exc).__name__)
                self._stop.wait(min(interval * 4, 5.0))
            except Exception:
                # E.g. the broker refused a message: the job stays in the journal and is sent again later.
                log.exception("dispatcher: pass failed; retrying")
                self._stop.wait(min(interval * 4, 5.0))
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except redis.RedisError:
                        pass
        log.info("dispatcher stopped")

    def dispatch_once(self) -> int:
        """One pass over every model: send jobs while its worker queue has room. Returns how many."""
        sent = 0
        for model in self.settings.models:
            target = self.fairq.target(self._live_workers(model))
            while (taken := self.fairq.take(model, target)) is not None:
                self._send(taken.job_id, model)
                self.fairq.sent(taken.job_id, model)
                sent += 1
                log.info("dispatched", extra={"job_id": taken.job_id, "tenant": taken.tenant, "model": model})
        return sent

    def _live_workers(self, model: str) -> int:
        now = time.monotonic()
        cached = self._workers.get(model)
        if cached is None or now - cached[0] > WORKERS_CACHE_S:
            cached = (now, len(self.store.live_workers(model)))
            self._workers[model] = cached
        return cached[1]

    def _resend_unsent(self) -> None:
        now = time.monotonic()
        if now - self._resent_at < min(RESEND_EVERY_S, self.settings.dispatch.recover_after_s):
            return
        self._resent_at = now
        for job_id, model in self.fairq.unsent(self.settings.dispatch.recover_after_s):
            log.warning(
                "dispatcher: sending again a job whose dispatch was interrupted", extra={"job_id": job_id, "model": model}
            )
            self._send(job_id, model)
            self.fairq.sent(job_id, model)


def start_in_thread(settings: Settings) -> Dispatcher:
    """A dispatcher on a daemon thread (the API's embedded one); `stop()` ends it."""
    dispatcher = Dispatcher(settings)
    threading.Thread(target=dispatcher.run, name="wanq-dispatcher", daemon=True).start()
    return dispatcher
