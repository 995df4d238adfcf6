"""Idempotency-Key for job creation (IETF httpapi draft).

Same key and same request -> the first job; same key, other request -> 422; a retry while the
first request is still being handled -> 409. Keys are scoped to the tenant and expire after
`jobs.idempotency_ttl_s` (24 h by default), counted from the job's creation.

The key's entry gets its job ids in the same atomic step that creates the jobs (shared/lua/create.lua), so
"the jobs exist" and "the key names them" never disagree: a retry after an answer lost on the way
replays those jobs. A first request that never got as far holds its key for at most `IN_FLIGHT_S`.

A request of `n` videos names all n ids, in seed order: the entry is `{"fp", "job_id", "job_ids"}` with
`job_id` the first (what entries written before `n` carry alone, and still read: they replay one job).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    """The first job the key names (a replay or a mismatch of a completed key)."""
    job_ids: tuple[str, ...] = field(default=())
    """All the jobs the key names, in the order they were created (seed order)."""

    @classmethod
    def of(cls, outcome: Outcome, entry: dict[str, Any]) -> Claim:
        ids = _ids(entry)
        return cls(outcome, ids[0] if ids else None, ids)


def _ids(entry: dict[str, Any]) -> tuple[str, ...]:
    """The entry's job ids: `job_ids`, or the one `job_id` of an entry written before `n`; () while in flight."""
    if entry.get("job_ids"):
        return tuple(entry["job_ids"])
    return (entry["job_id"],) if entry.get("job_id") else ()


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
            return Claim.of("mismatch", entry)
        if not _ids(entry):
            return Claim("in_flight")
        return Claim.of("replay", entry)

    def completion(self, tenant: str, key: str, print_: str, job_ids: str | Sequence[str]) -> IdempotentCreate:
        """What the jobs' creation writes to the key: its fingerprint and the jobs (one id, or the n of a request
        in seed order), for `ttl_s`."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        if not ids:
            raise ValueError("an Idempotency-Key completes with at least one job id")
        entry = {"fp": print_, "job_id": ids[0], "job_ids": ids}
        return IdempotentCreate(self._key(tenant, key), json.dumps(entry), self.ttl_s)

    def job_of(self, tenant: str, key: str) -> str | None:
        """The (first) job the key names, once created."""
        ids = self.jobs_of(tenant, key)
        return ids[0] if ids else None

    def jobs_of(self, tenant: str, key: str) -> tuple[str, ...]:
        """All the jobs the key names, in seed order, once created; () before."""
        raw = self.redis.get(self._key(tenant, key))
        return _ids(json.loads(raw)) if raw else ()

    def abandon(self, tenant: str, key: str) -> None:
        self.redis.delete(self._key(tenant, key))
