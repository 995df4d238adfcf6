"""Webhooks per the Standard Webhooks spec: event names, secrets, signatures, bodies and the retry rules.

Pure functions only; Redis lives in shared/webhook_store.py, sending in api/daemons/webhooks.py.
Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from shared.errors import InvalidRequest

LIFECYCLE_EVENTS = ("video.started", "video.completed", "video.failed", "video.canceled")
PROGRESS_EVENT = "video.progress"
PREVIEW_EVENT = "video.preview"
"""A new preview was stored (the video object's `preview_step`). Opt-in like progress: a preview every few steps
would flood endpoints that did not ask for it."""
EVENTS = (*LIFECYCLE_EVENTS, PROGRESS_EVENT, PREVIEW_EVENT)
SUPERSEDED_EVENTS = frozenset({PROGRESS_EVENT, PREVIEW_EVENT})
"""Events the next one of their kind replaces: one attempt each, no retries (the lifecycle ones follow the schedule)."""
SECRET_PREFIX = "whsec_"
MAX_RETRY_AFTER_S = 24 * 3600

# Answers worth another attempt; everything else that is not 2xx is final (3xx included: never followed).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


def check_events(events: Iterable[str] | None, param: str = "webhook_events") -> list[str] | None:
    """The event filter as given, if every name is known; None means the default set."""
    if events is None:
        return None
    names = list(events)
    unknown = [e for e in names if e not in EVENTS]
    if unknown:
        raise InvalidRequest(
            f"invalid '{param}' {names!r}: unknown event {unknown[0]!r}; known: {', '.join(EVENTS)}", param=param
        )
    return names


# Secrets and signatures ---------------------------------------------------------------------------


def new_secret(nbytes: int = 32) -> str:
    """`whsec_` + base64 of random bytes (the spec allows 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_hint(secret: str) -> str:
    """Enough to tell two secrets apart in a listing, not enough to sign."""
    return secret[: len(SECRET_PREFIX) + 4] + "…"


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def signature_header(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one entry per secret (two during a rotation)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode() for s in secrets_)


def headers(secrets_: Sequence[str], msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of one attempt: the id stays the same across retries, the timestamp is the attempt's."""
    timestamp = int(now if now is not None else time.time())
    return {
        "content-type": "application/json",
        "user-agent": "wanq-webhooks/0.1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, msg_id, timestamp, body),
    }


def event_body(event_type: str, at: float, video: dict[str, Any]) -> bytes:
    """`{type, timestamp (ISO 8601), data: <the video object>}`, fixed once so every retry sends the same bytes."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": video}, separators=(",", ":")).encode()


# Retries ------------------------------------------------------------------------------------------


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²" and "١"
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def next_delay_s(schedule: Sequence[float], attempts_made: int, jitter: float, retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts, or None when the schedule is spent.

    A receiver's Retry-After is honoured as a lower bound, capped at a day so that a hostile value
    cannot park a delivery forever.
    """
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made] * (1 + random.uniform(-jitter, jitter))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return max(0.0, delay)
