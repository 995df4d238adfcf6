"""API keys: made here, shown once, stored only as their SHA-256, each owned by one tenant.

Layout (prefix `wanq`):
  wanq:key:{sha256}   the key's record, JSON: id, tenant, admin, prefix, created_at, revoked, source
  wanq:keys           sorted set of the records' sha256 by creation time (listing)

A key is `wq_` + 43 random URL-safe characters (256 bits), so a plain SHA-256 is enough: there is
nothing to brute-force and the lookup by hash needs no constant-time comparison. Keys seeded by the
deployment (`WANQ_AUTH_KEYS`) live in the settings, not in Redis; revoking one writes a revoked
record under its hash, which wins over the seed. The key itself never reaches Redis or a log line:
records carry the `id` (from the hash) and the display `prefix` (first 8 characters) only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Literal

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from shared.errors import InvalidRequest, NotFound
from shared.settings import TENANT_PATTERN, AuthSettings

KEY_PREFIX = "wq_"
DISPLAY_CHARS = 8


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key_hash: str) -> str:
    """A stable public name for a key: the start of its hash (48 bits), never the key."""
    return f"key_{key_hash[:12]}"


class KeyRecord(BaseModel):
    id: str
    tenant: str
    admin: bool = False
    prefix: str
    """The key's first characters, to recognise it in listings ("wq_AbCdE")."""
    created_at: float
    revoked: bool = False
    revoked_at: float | None = None
    source: Literal["redis", "settings"] = "redis"
    name: str = ""

    def public(self) -> dict[str, object]:
        return {"object": "api_key", **self.model_dump()}


class KeyStore:
    def __init__(self, client: redis.Redis, auth: AuthSettings, *, prefix: str = "wanq") -> None:
        self.redis = client
        self.prefix = prefix
        # Seeded keys by hash; a record in Redis under the same hash (a revocation) takes precedence.
        self._seeds: dict[str, KeyRecord] = {}
        for seed in auth.keys:
            digest = seed.key_sha256 or hash_key(seed.key.get_secret_value() if seed.key else "")
            shown = seed.key.get_secret_value()[:DISPLAY_CHARS] if seed.key else ""
            self._seeds[digest] = KeyRecord(
                id=key_id(digest), tenant=seed.tenant, admin=seed.admin, prefix=shown, created_at=0.0, source="settings"
            )

    def _record_key(self, digest: str) -> str:
        return f"{self.prefix}:key:{digest}"

    def _index_key(self) -> str:
        return f"{self.prefix}:keys"

    def create(self, tenant: str, *, admin: bool = False, name: str = "") -> tuple[str, KeyRecord]:
        """Makes a key for `tenant`; returns the key (shown once, never stored) and its record."""
        if not re.match(TENANT_PATTERN, tenant):
            raise InvalidRequest(
                f"invalid 'tenant' {tenant!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                param="tenant",
            )
        if len(name) > 200:
            raise InvalidRequest(f"'name' is {len(name)} characters; at most 200", param="name")
        key = generate_key()
        digest = hash_key(key)
        record = KeyRecord(
            id=key_id(digest), tenant=tenant, admin=admin, prefix=key[:DISPLAY_CHARS], created_at=time.time(), name=name
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._record_key(digest), record.model_dump_json(), nx=True)
        pipe.zadd(self._index_key(), {digest: record.created_at})
        pipe.execute()
        return key, record

    async def alookup(self, client: aioredis.Redis, key: str) -> KeyRecord | None:
        """The live record of a presented key, or None if it is unknown or revoked. On the API's event loop:
        every request makes one, so no thread hop for it."""
        digest = hash_key(key)
        raw = await client.get(self._record_key(digest))
        record = KeyRecord.model_validate_json(raw) if raw else self._seeds.get(digest)
        if record is None or record.revoked:
            return None
        return record

    def records(self) -> list[KeyRecord]:
        digests = self._digests()
        raws = self.redis.mget([self._record_key(d) for d in digests]) if digests else []
        stored = {d: KeyRecord.model_validate_json(r) for d, r in zip(digests, raws, strict=True) if r}
        seeds = [self._seeds[d] for d in self._seeds if d not in stored]
        return seeds + list(stored.values())

    def revoke(self, ref: str) -> KeyRecord:
        """Revokes by id (`key_...`), display prefix (if unambiguous) or the key itself."""
        digest = self._resolve(ref)
        record = self._stored_or_seed(digest)
        revoked = record.model_copy(update={"revoked": True, "revoked_at": time.time()})
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._record_key(digest), revoked.model_dump_json())
        pipe.zadd(self._index_key(), {digest: revoked.created_at})
        pipe.execute()
        return revoked

    def _digests(self) -> list[str]:
        return [d.decode() if isinstance(d, bytes) else str(d) for d in self.redis.zrange(self._index_key(), 0, -1)]

    def _stored_or_seed(self, digest: str) -> KeyRecord:
        raw = self.redis.get(self._record_key(digest))
        if raw:
            return KeyRecord.model_validate_json(raw)
        return self._seeds[digest]

    def _resolve(self, ref: str) -> str:
        if ref.startswith(KEY_PREFIX) and len(ref) > 20:
            digest = hash_key(ref)
            if self.redis.exists(self._record_key(digest)) or digest in self._seeds:
                return digest
            raise NotFound("no such API key", param="key")
        matches = set()
        for digest in [*self._seeds, *self._digests()]:
            record = self._stored_or_seed(digest)
            if ref in (record.id, record.prefix) and ref:
                matches.add(digest)
        if not matches:
            raise NotFound(f"no API key with id or prefix {ref!r}", param="key")
        if len(matches) > 1:
            raise InvalidRequest(f"prefix {ref!r} matches {len(matches)} keys; give the key id (key_...)", param="key")
        return matches.pop()
