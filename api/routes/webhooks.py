"""Webhook routes: the tenant's default endpoint and signing secret, and each job's delivery log. What a job's
own `webhook_url` must pass is in api/webhook_checks.py; delivery itself is a process of its own
(api/daemons/webhooks.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Principal, PrincipalDep, ServicesDep
from api.jobs import JobDep
from api.openapi import DeliveryList, WebhookEndpoint, WebhookEndpointDeleted
from api.webhook_checks import check_url, webhook_store
from shared.errors import NotFound
from shared.webhook_store import endpoint_dump
from shared.webhooks import check_events

router = APIRouter(tags=["webhooks"])

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


def _tenant(principal: Principal, tenant: str | None) -> str:
    if tenant is None or tenant == principal.tenant:
        return principal.tenant
    if principal.admin:
        return tenant
    raise NotFound(f"no tenant {tenant!r}", param="tenant")  # as if it did not exist


@router.get(
    "/v1/webhook_endpoint",
    response_model=WebhookEndpoint,
    response_model_exclude_unset=True,
    summary="The tenant's default webhook endpoint",
)
def get_endpoint(services: ServicesDep, principal: PrincipalDep, tenant: TenantQuery = None) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    store = webhook_store(services)
    return endpoint_dump(name, store.endpoint(name), store.secrets(name))


@router.put(
    "/v1/webhook_endpoint",
    response_model=WebhookEndpoint,
    response_model_exclude_unset=True,
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
    response_model=WebhookEndpointDeleted,
    summary="Remove the tenant's default endpoint (the signing secret stays)",
)
def delete_endpoint(services: ServicesDep, principal: PrincipalDep, tenant: TenantQuery = None) -> dict[str, Any]:
    name = _tenant(principal, tenant)
    return {"object": "webhook_endpoint.deleted", "tenant": name, "deleted": webhook_store(services).delete_endpoint(name)}


@router.post(
    "/v1/webhook_endpoint/rotate_secret",
    response_model=WebhookEndpoint,
    response_model_exclude_unset=True,
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
    response_model=DeliveryList,
    summary="Every webhook delivery of a job, with its attempts",
)
def list_deliveries(record: JobDep, services: ServicesDep) -> dict[str, Any]:
    data = [d.public() for d in webhook_store(services).deliveries_for_job(record.id)]
    return {"object": "list", "data": data}
