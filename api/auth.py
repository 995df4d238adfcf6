"""Who is calling: `Authorization: Bearer <key>` -> the key's tenant, counted against its request rate.

Keys are looked up by their SHA-256 (shared/apikeys.py); the key itself is never logged nor echoed.
In open mode (`WANQ_AUTH_OPEN=true`, local development only) a request without a key, or with a key this server
does not know (the `openai` SDK always sends one: `api_key="wq_..."` as the README writes it), acts as the open
tenant with admin rights; a live key still acts as its own tenant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.services import Services
from shared.errors import Forbidden, Unauthorized

log = logging.getLogger("wanq.api")

# FastAPI's scheme only reads the header (auto_error=False: we answer 401 ourselves, in OpenAI's error
# shape); it also puts the "Authorize" button with a bearer field on /docs.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer wq_...`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose jobs they may see, and whether they may see everyone's."""

    tenant: str
    admin: bool = False


async def authenticate(services: Services, credentials: HTTPAuthorizationCredentials | None, client: str) -> Principal:
    """On the event loop, through redis.asyncio: every request passes here, so no thread hop for it."""
    auth = services.settings.auth
    if credentials is None:
        if auth.open:
            principal = Principal(tenant=auth.open_tenant, admin=True)
            await services.quotas.ahit_request(principal.tenant)
            return principal
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", param="authorization")
    record = await services.keys.alookup(services.aioredis, credentials.credentials)
    if record is None and auth.open:
        _warn_unknown_key_once(auth.open_tenant, client)
        principal = Principal(tenant=auth.open_tenant, admin=True)
        await services.quotas.ahit_request(principal.tenant)
        return principal
    if record is None:
        log.info("authentication failed: unknown or revoked key", extra={"client": client})
        raise Unauthorized("invalid or revoked API key", param="authorization")
    await services.quotas.ahit_request(record.tenant)
    return Principal(tenant=record.tenant, admin=record.admin)


_warned_unknown_key = False


def _warn_unknown_key_once(tenant: str, client: str) -> None:
    global _warned_unknown_key
    if not _warned_unknown_key:
        _warned_unknown_key = True
        log.warning(
            "AUTHENTICATION IS OFF (WANQ_AUTH_OPEN=true): a request with a key this server does not know acts as tenant "
            "%r with admin rights, as every such request will (this is said once per process)",
            tenant,
            extra={"client": client},
        )


def require_admin(principal: Principal) -> Principal:
    if not principal.admin:
        raise Forbidden("this route needs an admin API key", param="authorization")
    return principal


def warn_if_open(services: Services) -> None:
    auth = services.settings.auth
    if auth.open:
        log.warning(
            "AUTHENTICATION IS OFF (WANQ_AUTH_OPEN=true): every request without a key, or with a key this server does "
            "not know, acts as tenant %r with admin rights. For local development only; never expose this server.",
            auth.open_tenant,
        )
