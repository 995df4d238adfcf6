"""Webhooks: the tenant's default endpoint and signing secret, each job's delivery log, and the checks a
job's own `webhook_url` must pass. Delivery itself runs in `wanq webhooks` (wanq/webhookd.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Principal, PrincipalDep, Services, ServicesDep
from api.openapi import DeliveryList, WebhookEndpoint, WebhookEndpointDeleted, ok
from shared.errors import InvalidRequest, NotFound
from shared.netguard import parse_allowlist, resolve_public
from shared.webhook_store import WebhookStore, endpoint_dump
from shared.webhooks import check_events

router = APIRouter(tags=["webhooks"])

MAX_URL_CHARS = 2048
TenantQuery = Annotated[str | None, Query(max_length=200, description="Admins only: act for this tenant.")]


class EndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL that receives the tenant's events (jobs without their own webhook_url).")
    events: list[str] | None = Field(default=None, description="Event filter; default: the lifecycle events.")


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_secret_valid_s: int | None = Field(
        default=None, ge=0, le=7 * 24 * 3600, description="How long the old secret keeps signing; default: the server's window."
    )


def webhook_store(services: Services) -> WebhookStore:
    return WebhookStore(services.store.redis, prefix=services.store.prefix, ttl_s=services.settings.jobs.record_ttl_s)


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


def _tenant(principal: Principal, tenant: str | None) -> str:
    if tenant is None or tenant == principal.tenant:
        return principal.tenant
    if principal.admin:
        return tenant
    raise NotFound(f"no tenant {tenant!r}", param="tenant")  # as if it did not exist


@router.get(
    "/v1/webhook_endpoint", response_model=None, responses=ok(WebhookEndpoint), summary="The tenant's default webhook endpoint"
)
def get_endpoint(services: ServicesDep, principal: PrincipalDep, tenant: TenantQuery = None) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    store = webhook_store(services)
    return endpoint_dump(name, store.endpoint(name), store.secrets(name))


@router.put(
    "/v1/webhook_endpoint",
    response_model=None,
    responses=ok(WebhookEndpoint),
    summary="Set the tenant's default webhook endpoint (re-enables a disabled one)",
)
def put_endpoint(
    body: EndpointRequest, services: ServicesDep, principal: PrincipalDep, tenant: TenantQuery = None
) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    check_url(services, body.url, "url")
    events = check_events(body.events, "events")
    store = webhook_store(services)
    # The secret comes first: an endpoint must never exist without something to sign with.
    secret = store.create_secret_if_missing(name)
    endpoint = store.set_endpoint(name, body.url, events)
    out = endpoint_dump(name, endpoint, store.secrets(name))
    if secret is not None:
        out["secret"] = secret  # shown this once
    return out


@router.delete(
    "/v1/webhook_endpoint",
    response_model=None,
    responses=ok(WebhookEndpointDeleted),
    summary="Remove the tenant's default endpoint (the signing secret stays)",
)
def delete_endpoint(services: ServicesDep, principal: PrincipalDep, tenant: TenantQuery = None) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    return {"object": "webhook_endpoint.deleted", "tenant": name, "deleted": webhook_store(services).delete_endpoint(name)}


@router.post(
    "/v1/webhook_endpoint/rotate_secret",
    response_model=None,
    responses=ok(WebhookEndpoint),
    summary="Create or rotate the tenant's signing secret; shown once",
)
def rotate_secret(
    services: ServicesDep, principal: PrincipalDep, body: RotateRequest | None = None, tenant: TenantQuery = None
) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    window = services.settings.webhooks.rotation_window_s
    if body is not None and body.previous_secret_valid_s is not None:
        window = body.previous_secret_valid_s
    store = webhook_store(services)
    secrets = store.rotate_secret(name, window)
    return {**endpoint_dump(name, store.endpoint(name), secrets), "secret": secrets.current}


@router.get(
    "/v1/videos/{video_id}/webhook_deliveries",
    response_model=None,
    responses=ok(DeliveryList),
    summary="Every webhook delivery of a job, with its attempts",
)
def list_deliveries(video_id: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    from api.routes.videos import load_job  # here: videos.py imports this module for check_job_webhook

    record = load_job(services, principal, video_id)
    data = [d.public() for d in webhook_store(services).deliveries_for_job(record.id)]
    return {"object": "list", "data": data}
