"""What routes depend on, as `Annotated` aliases so that route signatures read like prose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request

from shared.idempotency import IdempotencyKeys
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Storage
    celery: Celery
    aioredis: aioredis.Redis
    idempotency: IdempotencyKeys


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose jobs they may see, and whether they may see everyone's."""

    tenant: str
    admin: bool = False


def get_principal(request: Request) -> Principal:
    # Without authentication every caller acts for the single default tenant.
    return Principal(tenant="default", admin=False)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
