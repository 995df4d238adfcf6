"""Idempotency-Key for job creation (IETF httpapi draft).

Same key and same request -> the first job; same key, other request -> 422; a retry while the
first request is still being handled -> 409. Keys are scoped to the tenant and expire after
`jobs.idempotency_ttl_s` (24 h by default), counted from the first request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import redis

Outcome = Literal["new", "replay", "mismatch", "in_flight"]
MAX_KEY_LENGTH = 255


def fingerprint(fields: dict[str, Any], image: bytes | None) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(hashlib.sha256(image or b"").digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    job_id: str | None = None


class IdempotencyKeys:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    def begin(self, tenant: str, key: str, print_: str) -> Claim:
        name = self._key(tenant, key)
        if self.redis.set(name, json.dumps({"fp": print_, "job_id": None}), nx=True, ex=self.ttl_s):
            return Claim("new")
        raw = self.redis.get(name)
        if raw is None:  # expired between the two calls: treat as new
            return self.begin(tenant, key, print_)
        entry = json.loads(raw)
        if entry["fp"] != print_:
            return Claim("mismatch", entry.get("job_id"))
        if entry.get("job_id") is None:
            return Claim("in_flight")
        return Claim("replay", entry["job_id"])

    def complete(self, tenant: str, key: str, print_: str, job_id: str) -> None:
        self.redis.set(self._key(tenant, key), json.dumps({"fp": print_, "job_id": job_id}), keepttl=True)

    def abandon(self, tenant: str, key: str) -> None:
        self.redis.delete(self._key(tenant, key))
