"""What the API checks about webhook URLs (a job's own `webhook_url`, a tenant's endpoint), and its handle on the
webhook state in Redis. Used by the video and webhook routes.
"""

from __future__ import annotations

from api.services import Services
from shared.errors import InvalidRequest
from shared.netguard import parse_allowlist, resolve_public
from shared.webhook_store import WebhookStore
from shared.webhooks import check_events

MAX_URL_CHARS = 2048


def webhook_store(services: Services) -> WebhookStore:
    return WebhookStore(services.store.redis, keys=services.store.keys, ttl_s=services.settings.jobs.record_ttl_s)


def check_url(services: Services, url: str, param: str) -> None:
    """http(s), resolving only to public addresses (or allowlisted ones); raises naming the field."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"invalid '{param}' {url[:60]!r}...: at most {MAX_URL_CHARS} characters", param=param)
    resolve_public(url, allowlist=parse_allowlist(services.settings.webhooks.allowlist), param=param)


def check_job_webhook(services: Services, tenant: str, url: str | None, events: list[str] | None) -> None:
    """What `POST /v1/videos` checks about a job's own webhook: known events, a safe URL, a secret to sign with."""
    check_events(events)
    if url is None:
        return
    check_url(services, url, "webhook_url")
    if webhook_store(services).secrets(tenant) is None:
        raise InvalidRequest(
            f"invalid 'webhook_url': tenant {tenant!r} has no webhook signing secret yet; create one with "
            "POST /v1/webhook_endpoint/rotate_secret (or `wanq webhooks rotate-secret`) and verify deliveries with it",
            param="webhook_url",
        )
