"""Webhook delivery (`wanq webhook-delivery`): the process that sends job events to receivers. It runs
apart from the GPU workers, which only append events to a Redis stream (inside the job store's
transition), so a slow or dead receiver never delays a job.

Two loops share the process:
1. The event reader consumes `wanq:job-events` as a member of a consumer group: an event read but not
   yet turned into a delivery when the process dies stays pending and is handled after the restart
   (or taken over by another delivery process). Each event becomes at most one delivery in Redis.
2. The dispatcher takes due deliveries from a sorted set and runs each attempt on a thread pool, so a
   receiver that hangs holds one thread for at most its timeout. Retries are rescheduled in the same
   sorted set: pending work lives in Redis, never in this process' memory (and never in Celery
   countdowns, which the Redis broker handles badly).

Delivery is at-least-once: a process killed between a receiver's 2xx and recording it sends again,
with the same `webhook-id`, which receivers use to drop duplicates.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import httpcore
import redis

from shared import redisconn
from shared.errors import InvalidRequest
from shared.keys import Keys
from shared.netguard import GuardedBackend, parse_allowlist
from shared.schemas import JobRecord
from shared.settings import Settings
from shared.video import Video
from shared.webhook_store import GROUP, Attempt, Delivery, WebhookStore
from shared.webhooks import (
    LIFECYCLE_EVENTS,
    PROGRESS_EVENT,
    RETRY_STATUSES,
    SUPERSEDED_EVENTS,
    event_body,
    headers,
    next_delay_s,
    retry_after_s,
)

log = logging.getLogger("wanq.webhooks")

MAX_ANSWER_BYTES = 64 * 1024
"""Read at most this much of a receiver's answer (only its status matters)."""


class Answer(NamedTuple):
    """What one attempt came to: an HTTP status, or an error where there was none."""

    status: int | None
    error: str | None
    retriable: bool = False
    retry_after: float | None = None


def delivery_id(job_id: str, entry_id: str) -> str:
    """The same for the same event however often it is handled, so a crash cannot create a second delivery."""
    return "msg_" + hashlib.sha256(f"{job_id}/{entry_id}".encode()).hexdigest()[:32]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Deliverer:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.config = settings.webhooks
        self.redis = client
        self.store = WebhookStore(client, keys=Keys(settings.redis.key_prefix), ttl_s=settings.jobs.record_ttl_s)
        self.consumer = self.config.consumer_name or socket.gethostname()
        self.http = httpcore.ConnectionPool(
            network_backend=GuardedBackend(parse_allowlist(self.config.allowlist)),
            max_connections=self.config.concurrency,
            keepalive_expiry=30.0,
        )
        # An attempt can take connect + write + read timeouts; a delivery claimed by a process that died
        # becomes due again after this lease.
        self.lease_s = 3 * self.config.timeout_s + 10
        self.wake = threading.Event()
        self.stop = threading.Event()

    # 1. Events -> deliveries ------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            # From the stream's start: events written while no delivery process ran are delivered too.
            self.redis.xgroup_create(self.store.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_events(self) -> None:
        backlog = True  # first what this consumer read before a crash but did not handle
        next_takeover = 0.0
        while not self.stop.is_set():
            try:
                if backlog:
                    entries = self._read("0", block_ms=None)
                    backlog = bool(entries)
                elif time.monotonic() >= next_takeover:
                    next_takeover = time.monotonic() + self.config.claim_idle_s / 2
                    entries = self._take_over_abandoned()
                else:
                    entries = self._read(">", block_ms=1000)
                for entry_id, fields in entries:
                    self.handle_event(entry_id, fields)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("reading the event stream failed")
                    self.stop.wait(1.0)
                self.ensure_group()  # the stream was deleted (e.g. Redis flushed): start over
            except redis.RedisError as exc:
                log.warning("redis unavailable while reading events: %s", exc)
                self.stop.wait(1.0)

    def _read(self, start: str, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        reply: Any = self.redis.xreadgroup(GROUP, self.consumer, {self.store.stream: start}, count=100, block=block_ms)
        entries = []
        for _, items in reply or []:
            for entry_id, fields in items:
                entries.append((_text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()}))
        return entries

    def _take_over_abandoned(self) -> list[tuple[str, dict[str, str]]]:
        reply: Any = self.redis.xautoclaim(
            self.store.stream, GROUP, self.consumer, min_idle_time=int(self.config.claim_idle_s * 1000), count=100
        )
        return [(_text(i), {_text(k): _text(v) for k, v in (f or {}).items()}) for i, f in reply[1]]

    def handle_event(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            if fields:  # empty: trimmed from the stream while pending
                self._deliveries_for(entry_id, fields)
        except Exception:
            # A malformed entry must not block the stream; it is logged and dropped.
            log.exception("could not handle event %s", entry_id)
        pipe = self.redis.pipeline()
        pipe.xack(self.store.stream, GROUP, entry_id)
        pipe.xdel(self.store.stream, entry_id)
        pipe.execute()

    def _deliveries_for(self, entry_id: str, fields: dict[str, str]) -> None:
        event, record = fields["type"], JobRecord.model_validate_json(fields["record"])
        target = self._target(record)
        if target is None:
            return
        kind, url, wanted = target
        if event not in wanted:
            return
        if event == PROGRESS_EVENT and not self.store.progress_slot(record.id, self.config.progress_interval_s):
            return
        if kind == "job" and self.store.is_gone(record.id, url):
            return
        happened_at = int(entry_id.split("-")[0]) / 1000
        now = time.time()
        schedule = self.config.retry_schedule_s
        delivery = Delivery(
            id=delivery_id(record.id, entry_id),
            job_id=record.id,
            tenant=record.tenant,
            event=event,
            target=kind,
            url=url,
            created_at=now,
            # Progress and previews are superseded by the next ones: one try. Lifecycle events follow the whole schedule.
            max_attempts=1 if event in SUPERSEDED_EVENTS else len(schedule),
            next_attempt_at=now + schedule[0],
            body=event_body(event, happened_at, Video.of(record).dump()).decode(),
        )
        if self.store.add_delivery(delivery):
            log.info("webhook queued", extra={"delivery": delivery.id, "job_id": record.id, "event": event, "target": kind})
            self.wake.set()

    def _target(self, record: JobRecord) -> tuple[Literal["job", "tenant"], str, list[str]] | None:
        """Where the job's events go: its own webhook_url, else the tenant's default endpoint."""
        if record.webhook_url:
            own = record.webhook_events if record.webhook_events is not None else list(LIFECYCLE_EVENTS)
            return "job", record.webhook_url, own
        endpoint = self.store.endpoint(record.tenant)
        if endpoint is None or endpoint.disabled_at is not None:
            return None
        wanted = record.webhook_events if record.webhook_events is not None else endpoint.events
        return "tenant", endpoint.url, wanted if wanted is not None else list(LIFECYCLE_EVENTS)

    # 2. Deliveries -> attempts ----------------------------------------------------------------
    def dispatch(self) -> None:
        running: set[Future[None]] = set()
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="webhook") as pool:
            while not self.stop.is_set():
                running = {f for f in running if not f.done()}
                free = self.config.concurrency - len(running)
                wait = self.config.poll_interval_s
                try:
                    if free > 0:
                        for did in self.store.claim_due(time.time(), free, self.lease_s):
                            future = pool.submit(self.attempt, did)
                            future.add_done_callback(lambda _: self.wake.set())
                            running.add(future)
                        if len(running) < self.config.concurrency:
                            next_due = self.store.next_due_at()
                            if next_due is not None:
                                wait = min(wait, max(0.0, next_due - time.time()))
                except redis.RedisError as exc:
                    log.warning("redis unavailable while dispatching: %s", exc)
                    wait = 1.0
                self.wake.wait(wait)
                self.wake.clear()
            # Attempts in flight finish (bounded by their timeouts); the pool's exit waits for them.

    def attempt(self, did: str) -> None:
        try:
            self._attempt(did)
        except Exception:
            log.exception("webhook attempt crashed; it runs again when its lease ends", extra={"delivery": did})

    def _attempt(self, did: str) -> None:
        delivery = self.store.get_delivery(did)
        if delivery is None or delivery.status != "pending":
            self.store.forget_due(did)
            return
        # 1. Is there still somewhere to send it, and something to sign with?
        now = time.time()
        stopped = self._stopped_reason(delivery)
        secrets = self.store.secrets(delivery.tenant)
        if stopped is None and secrets is None:
            stopped = f"tenant {delivery.tenant!r} has no webhook signing secret"
        if stopped is not None or secrets is None:
            self._finish(delivery, "failed", stopped)
            return

        # 2. Send, signed with every secret valid now (two during a rotation)
        body = delivery.body.encode()
        answer = self._send(delivery.url, headers(secrets.signing(now), did, body, now), body)

        # 3. Record the attempt and decide what comes next
        record = Attempt(
            attempt=len(delivery.attempts) + 1,
            at=round(now, 3),
            status_code=answer.status,
            error=answer.error,
            duration_ms=int((time.time() - now) * 1000),
        )
        delivery.attempts.append(record)
        log.info(
            "webhook attempt",
            extra={
                "delivery": did,
                "job_id": delivery.job_id,
                "event": delivery.event,
                "host": urlsplit(delivery.url).hostname,  # not the URL: it may carry the receiver's token
                "status": answer.status,
                "error": answer.error,
            },
        )
        if answer.status is not None and 200 <= answer.status < 300:
            self._finish(delivery, "delivered", None)
        elif answer.status == 410:
            self._disable(delivery)
            self._finish(delivery, "failed", "410 Gone: the endpoint is disabled")
        elif not answer.retriable:
            self._finish(delivery, "failed", answer.error or f"HTTP {answer.status}")
        else:
            delay = next_delay_s(
                self.config.retry_schedule_s, len(delivery.attempts), self.config.retry_jitter, answer.retry_after
            )
            if delay is None or len(delivery.attempts) >= delivery.max_attempts:
                self._finish(delivery, "failed", f"gave up after {len(delivery.attempts)} attempt(s)")
                return
            record.next_attempt_at = delivery.next_attempt_at = round(time.time() + delay, 3)
            self.store.save_delivery(delivery)

    def _send(self, url: str, hdrs: dict[str, str], body: bytes) -> Answer:
        """One POST with a timeout on each step; redirects are never followed (httpcore does not)."""
        timeout = self.config.timeout_s
        deadline = time.monotonic() + timeout
        try:
            with self.http.stream(
                "POST",
                url,
                headers=list(hdrs.items()),
                content=body,
                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
            ) as response:
                status = response.status
                got = {_text(k).lower(): _text(v) for k, v in response.headers}
                # Read a little so the connection can be reused; a huge or endless answer is cut off.
                seen = 0
                for chunk in response.iter_stream():
                    seen += len(chunk)
                    if seen > MAX_ANSWER_BYTES or time.monotonic() > deadline:
                        break
        except InvalidRequest as exc:  # the SSRF check at connect time
            return Answer(None, f"refused: {exc.message}", retriable=False)
        except httpcore.TimeoutException:
            return Answer(None, f"timeout after {timeout:g} s", retriable=True)
        except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
            return Answer(None, f"connection error: {type(exc).__name__}: {exc}"[:300], retriable=True)
        except httpcore.UnsupportedProtocol as exc:
            return Answer(None, f"unsupported URL: {exc}", retriable=False)
        if 300 <= status < 400:
            where = got.get("location")
            return Answer(status, f"redirect {status} to {where!r} not followed" if where else f"redirect {status} not followed")
        retriable = status in RETRY_STATUSES
        return Answer(status, None, retriable, retry_after_s(got.get("retry-after")) if retriable else None)

    def _stopped_reason(self, delivery: Delivery) -> str | None:
        if delivery.target == "job":
            return (
                "410 Gone earlier: the job's webhook_url is disabled"
                if self.store.is_gone(delivery.job_id, delivery.url)
                else None
            )
        endpoint = self.store.endpoint(delivery.tenant)
        if endpoint is None or endpoint.url != delivery.url:
            return "the tenant's webhook endpoint was removed or changed"
        if endpoint.disabled_at is not None:
            return f"the tenant's webhook endpoint is disabled ({endpoint.disabled_reason})"
        return None

    def _disable(self, delivery: Delivery) -> None:
        if delivery.target == "job":
            self.store.mark_gone(delivery.job_id, delivery.url)
        else:
            self.store.disable_endpoint(delivery.tenant, delivery.url, f"answered 410 Gone to delivery {delivery.id}")
        log.warning("webhook endpoint disabled after 410", extra={"delivery": delivery.id, "job_id": delivery.job_id})

    def _finish(self, delivery: Delivery, status: str, error: str | None) -> None:
        delivery.status = status  # type: ignore[assignment]
        delivery.error = error
        delivery.next_attempt_at = None
        self.store.save_delivery(delivery)

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.ensure_group()
        reader = threading.Thread(target=self.read_events, name="webhook-events", daemon=True)
        reader.start()
        log.info("webhook delivery running", extra={"consumer": self.consumer, "concurrency": self.config.concurrency})
        try:
            self.dispatch()
        finally:
            self.stop.set()
            reader.join(timeout=5)
            self.http.close()


def run(settings: Settings) -> None:
    """Delivers until SIGTERM or SIGINT; attempts in flight finish first."""
    deliverer = Deliverer(settings, redisconn.connect(settings.redis))

    def _stop(*_: object) -> None:
        deliverer.stop.set()
        deliverer.wake.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deliverer.run()
