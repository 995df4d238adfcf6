"""`/v1/admin`: every tenant's jobs, queue depth per model and tenant, draining a model's queue, API keys.

Admin keys only (403 otherwise). Canceling any one job needs no route here: `POST
/v1/videos/{id}/cancel` serves admins for every tenant's jobs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.deps import ServicesDep, get_admin
from api.jobs import video_page
from api.openapi import ApiKey, ApiKeyList, QueueDrained, QueueList
from shared import jobstate
from shared.errors import NotFound
from shared.settings import TENANT_PATTERN
from shared.video import VideoList

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(get_admin)])

TenantQuery = Annotated[str | None, Query(pattern=TENANT_PATTERN)]


@router.get(
    "/jobs", response_model=VideoList, response_model_exclude_unset=True, summary="List every tenant's video jobs, newest first"
)
def list_all_jobs(
    services: ServicesDep,
    tenant: TenantQuery = None,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> VideoList:
    return video_page(services, tenant, after=after, limit=limit, order=order, with_tenant=True)


@router.get("/queues", response_model=QueueList, summary="Queue depth per model and tenant")
def queues(services: ServicesDep) -> dict[str, Any]:
    data = [services.fairq.depth(model, len(services.store.live_workers(model))) for model in services.settings.models]
    return {"object": "list", "data": data}


@router.post(
    "/models/{model}/drain",
    response_model=QueueDrained,
    summary="Cancel every queued job of a model (running ones go on)",
)
def drain(model: str, services: ServicesDep, tenant: TenantQuery = None) -> dict[str, Any]:
    if model not in services.settings.catalog():
        raise NotFound(f"no model {model!r}; configured: {services.settings.models}", param="model")
    store = services.store
    canceled = []
    for record in store.get_many(store.queued_ids(model)):
        if tenant is not None and record.tenant != tenant:
            continue
        if jobstate.cancel_queued(store, record, "canceled by an administrator (queue drained)").ok:
            canceled.append(record.id)
    return {"object": "queue.drained", "model": model, "tenant": tenant, "canceled": len(canceled), "ids": canceled}


class KeyRequest(BaseModel):
    tenant: str = Field(pattern=TENANT_PATTERN)
    admin: bool = False
    name: str = Field(default="", max_length=200)


@router.post(
    "/keys",
    status_code=201,
    response_model=ApiKey,
    response_model_exclude_unset=True,
    summary="Create an API key (the key is in this response only)",
)
def create_key(body: KeyRequest, services: ServicesDep) -> dict[str, Any]:
    key, record = services.keys.create(body.tenant, admin=body.admin, name=body.name)
    return {**record.public(), "key": key}


@router.get(
    "/keys",
    response_model=ApiKeyList,
    response_model_exclude_unset=True,
    summary="List API keys (ids and prefixes, never the keys)",
)
def list_keys(services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": [r.public() for r in services.keys.records()]}


@router.delete(
    "/keys/{key_ref}", response_model=ApiKey, response_model_exclude_unset=True, summary="Revoke an API key by id or prefix"
)
def revoke_key(key_ref: str, services: ServicesDep) -> dict[str, Any]:
    return services.keys.revoke(key_ref).public()
