"""Idempotency-Key for job creation (IETF httpapi draft).

Same key and same request -> the first job; same key, other request -> 422; a retry while the
first request is still being handled -> 409. Keys are scoped to the tenant and expire after
`jobs.idempotency_ttl_s` (24 h by default), counted from the job's creation.

The key's entry gets its job id in the same atomic step that creates the job (shared/lua/create.lua), so
"the job exists" and "the key names it" never disagree: a retry after an answer lost on the way
replays that job. A first request that never got as far holds its key for at most `IN_FLIGHT_S`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import redis

from shared.keys import Keys

Outcome = Literal["new", "replay", "mismatch", "in_flight"]
MAX_KEY_LENGTH = 255
IN_FLIGHT_S = 120  # longest a request may hold its key before creating the job (image fetches included)


def fingerprint(fields: dict[str, Any], image: bytes | None) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(hashlib.sha256(image or b"").digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class IdempotentCreate:
    """The key's entry that the job's creation writes, in the same step (shared/lua/create.lua)."""

    key: str
    entry: str
    ttl_s: int


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    job_id: str | None = None


class IdempotencyKeys:
    def __init__(self, client: redis.Redis, *, keys: Keys, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s

    def _key(self, tenant: str, key: str) -> str:
        return self.keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())

    def begin(self, tenant: str, key: str, print_: str) -> Claim:
        name = self._key(tenant, key)
        if self.redis.set(name, json.dumps({"fp": print_, "job_id": None}), nx=True, ex=min(IN_FLIGHT_S, self.ttl_s)):
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

    def completion(self, tenant: str, key: str, print_: str, job_id: str) -> IdempotentCreate:
        """What the job's creation writes to the key: its fingerprint and the job, for `ttl_s`."""
        return IdempotentCreate(self._key(tenant, key), json.dumps({"fp": print_, "job_id": job_id}), self.ttl_s)

    def job_of(self, tenant: str, key: str) -> str | None:
        """The job the key names, once created."""
        raw = self.redis.get(self._key(tenant, key))
        return json.loads(raw).get("job_id") if raw else None

    def abandon(self, tenant: str, key: str) -> None:
        self.redis.delete(self._key(tenant, key))
