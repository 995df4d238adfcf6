"""Webhook state in Redis: tenants' endpoints and signing secrets, and every delivery with its attempts.

Keys (shared/keys.py): webhook-endpoint:{tenant} (the default endpoint; the job transition checks it exists
before it writes an event), webhook-secret:{tenant}, job-events (the stream the transitions write),
webhook-delivery:{id} (one delivery with its attempt log), webhook-due (pending delivery -> next attempt),
webhook-deliveries:{job}, webhook-gone:{job} (URLs that answered 410), webhook-progress:{job} (the throttle).

Signing secrets are stored as they are (HMAC needs them): protect Redis like any credential store.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from shared import lua
from shared.keys import Keys, text
from shared.webhooks import LIFECYCLE_EVENTS, new_secret, secret_hint

GROUP = "webhooks"
"""The delivery processes' consumer group on the job-events stream."""


class Endpoint(BaseModel):
    url: str
    events: list[str] | None = None
    """None: the lifecycle events (started, completed, failed, canceled)."""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    disabled_at: float | None = None
    disabled_reason: str | None = None


class Secrets(BaseModel):
    current: str
    previous: str | None = None
    previous_expires_at: float | None = None
    created_at: float = Field(default_factory=time.time)

    def signing(self, now: float) -> list[str]:
        """The secrets that sign now: the current one, and the previous one during its rotation window."""
        if self.previous and self.previous_expires_at and self.previous_expires_at > now:
            return [self.current, self.previous]
        return [self.current]


class Attempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    next_attempt_at: float | None = None


class Delivery(BaseModel):
    """One event to one URL. Its id is the `webhook-id` header, the same on every attempt."""

    id: str
    job_id: str
    tenant: str
    event: str
    target: Literal["job", "tenant"]
    """The job's own webhook_url, or the tenant's default endpoint."""
    url: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    created_at: float = Field(default_factory=time.time)
    max_attempts: int
    attempts: list[Attempt] = Field(default_factory=list)
    next_attempt_at: float | None = None
    error: str | None = None
    """Why a failed delivery stopped."""
    body: str

    def public(self) -> dict[str, Any]:
        return {"object": "webhook_delivery", **self.model_dump(exclude={"body", "tenant"})}


class WebhookStore:
    def __init__(self, client: redis.Redis, *, keys: Keys | None = None, ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.ttl_s = ttl_s
        self._claim_due = lua.load(client, "claim_due")

    # Keys
    @property
    def stream(self) -> str:
        return self.keys.job_events

    def endpoint_key(self, tenant: str) -> str:
        return self.keys.webhook_endpoint(tenant)

    def secret_key(self, tenant: str) -> str:
        return self.keys.webhook_secret(tenant)

    def delivery_key(self, delivery_id: str) -> str:
        return self.keys.webhook_delivery(delivery_id)

    @property
    def due_key(self) -> str:
        return self.keys.webhook_due

    def job_deliveries_key(self, job_id: str) -> str:
        return self.keys.webhook_deliveries(job_id)

    # Endpoints ----------------------------------------------------------------------------------
    def endpoint(self, tenant: str) -> Endpoint | None:
        raw = self.redis.get(self.endpoint_key(tenant))
        return Endpoint.model_validate_json(raw) if raw else None

    def set_endpoint(self, tenant: str, url: str, events: list[str] | None) -> Endpoint:
        """Creates or replaces the endpoint; setting it again re-enables one a 410 disabled."""
        old = self.endpoint(tenant)
        endpoint = Endpoint(url=url, events=events, created_at=old.created_at if old else time.time())
        self.redis.set(self.endpoint_key(tenant), endpoint.model_dump_json())
        return endpoint

    def delete_endpoint(self, tenant: str) -> bool:
        return bool(self.redis.delete(self.endpoint_key(tenant)))

    def disable_endpoint(self, tenant: str, url: str, reason: str) -> None:
        """Disables the endpoint if it still points at `url` (it may have been changed meanwhile)."""
        key = self.endpoint_key(tenant)

        def update(pipe: Any) -> None:
            raw = pipe.get(key)
            if not raw:
                return
            endpoint = Endpoint.model_validate_json(raw)
            if endpoint.url != url or endpoint.disabled_at is not None:
                return
            endpoint.disabled_at, endpoint.disabled_reason = time.time(), reason
            pipe.multi()
            pipe.set(key, endpoint.model_dump_json())

        self.redis.transaction(update, key)

    # Secrets ------------------------------------------------------------------------------------
    def secrets(self, tenant: str) -> Secrets | None:
        raw = self.redis.get(self.secret_key(tenant))
        return Secrets.model_validate_json(raw) if raw else None

    def create_secret_if_missing(self, tenant: str) -> str | None:
        """A new secret if the tenant had none (shown once by the caller), else None."""
        secret = new_secret()
        created = self.redis.set(self.secret_key(tenant), Secrets(current=secret).model_dump_json(), nx=True)
        return secret if created else None

    def rotate_secret(self, tenant: str, previous_valid_s: float) -> Secrets:
        """A new current secret; the old one keeps signing for `previous_valid_s` seconds."""
        key = self.secret_key(tenant)
        result: list[Secrets] = []

        def update(pipe: Any) -> None:
            raw = pipe.get(key)
            now = time.time()
            old = Secrets.model_validate_json(raw) if raw else None
            keep_old = old is not None and previous_valid_s > 0
            new = Secrets(
                current=new_secret(),
                previous=old.current if keep_old and old else None,
                previous_expires_at=now + previous_valid_s if keep_old else None,
                created_at=now,
            )
            pipe.multi()
            pipe.set(key, new.model_dump_json())
            result[:] = [new]

        self.redis.transaction(update, key)
        return result[0]

    # Deliveries ---------------------------------------------------------------------------------
    def add_delivery(self, delivery: Delivery) -> bool:
        """Stores a new delivery, due now; False if it exists (an event handled twice after a crash)."""
        created = self.redis.set(self.delivery_key(delivery.id), delivery.model_dump_json(), nx=True, ex=self.ttl_s)
        if not created:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.due_key, {delivery.id: delivery.next_attempt_at or delivery.created_at})
        pipe.zadd(self.job_deliveries_key(delivery.job_id), {delivery.id: delivery.created_at})
        pipe.expire(self.job_deliveries_key(delivery.job_id), self.ttl_s)
        pipe.execute()
        return True

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.get(self.delivery_key(delivery_id))
        return Delivery.model_validate_json(raw) if raw else None

    def save_delivery(self, delivery: Delivery) -> None:
        """Writes the delivery and its place in the due set (none once it is finished), together."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.delivery_key(delivery.id), delivery.model_dump_json(), keepttl=True)
        if delivery.status == "pending" and delivery.next_attempt_at is not None:
            pipe.zadd(self.due_key, {delivery.id: delivery.next_attempt_at})
        else:
            pipe.zrem(self.due_key, delivery.id)
        pipe.execute()

    def forget_due(self, delivery_id: str) -> None:
        self.redis.zrem(self.due_key, delivery_id)

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[str]:
        ids = self._claim_due(keys=[self.due_key], args=lua.argv(now=now, limit=limit, lease_end=now + lease_s))
        return [text(i) for i in ids]

    def next_due_at(self) -> float | None:
        first = self.redis.zrange(self.due_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def deliveries_for_job(self, job_id: str) -> list[Delivery]:
        ids = [text(i) for i in self.redis.zrange(self.job_deliveries_key(job_id), 0, -1)]
        if not ids:
            return []
        raws = self.redis.mget([self.delivery_key(i) for i in ids])
        return [Delivery.model_validate_json(r) for r in raws if r]

    # Per-job state ------------------------------------------------------------------------------
    def mark_gone(self, job_id: str, url: str) -> None:
        key = self.keys.webhook_gone(job_id)
        pipe = self.redis.pipeline()
        pipe.sadd(key, url)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def is_gone(self, job_id: str, url: str) -> bool:
        return bool(self.redis.sismember(self.keys.webhook_gone(job_id), url))

    def progress_slot(self, job_id: str, interval_s: float) -> bool:
        """True at most once per `interval_s` per job: the throttle of `video.progress`."""
        if interval_s <= 0:
            return True
        return bool(self.redis.set(self.keys.webhook_progress(job_id), "1", nx=True, px=max(1, int(interval_s * 1000))))


def endpoint_dump(tenant: str, endpoint: Endpoint | None, secrets: Secrets | None) -> dict[str, Any]:
    """The public view of a tenant's webhook settings; secrets only as hints."""
    rotating = secrets is not None and len(secrets.signing(time.time())) > 1
    return {
        "object": "webhook_endpoint",
        "tenant": tenant,
        "url": endpoint.url if endpoint else None,
        "events": (endpoint.events if endpoint and endpoint.events is not None else list(LIFECYCLE_EVENTS)),
        "status": "none" if endpoint is None else ("disabled" if endpoint.disabled_at else "enabled"),
        "disabled_at": endpoint.disabled_at if endpoint else None,
        "disabled_reason": endpoint.disabled_reason if endpoint else None,
        "created_at": endpoint.created_at if endpoint else None,
        "updated_at": endpoint.updated_at if endpoint else None,
        "secret_hint": secret_hint(secrets.current) if secrets else None,
        "previous_secret_expires_at": secrets.previous_expires_at if secrets and rotating else None,
    }
