"""What routes depend on, as `Annotated` aliases so that route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import Principal, authenticate, bearer_scheme, require_admin
from api.services import Services


# Dependencies are `async def` even where they await nothing: FastAPI runs a plain `def` one on its
# thread pool, a hop that costs more than the work here.
async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, from its API key (api/auth.py). Every router but health's depends on it."""
    return await authenticate(services, credentials, request.client.host if request.client else "")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    return require_admin(principal)


AdminDep = Annotated[Principal, Depends(get_admin)]
