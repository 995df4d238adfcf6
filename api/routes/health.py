"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: Redis and storage reachable, and Redis
still holds this deployment's data: shared/deployment.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.openapi import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Redis and the object store are reachable"
)
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, Any] = {}

    def redis_ok() -> None:
        services.store.redis.ping()

    for name, probe in (("redis", redis_ok), ("storage", services.storage.ping)):
        try:
            await asyncio.wait_for(asyncio.to_thread(probe), timeout=5)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    if checks["redis"] == "ok" and checks["storage"] == "ok":
        try:
            problem = await asyncio.wait_for(asyncio.to_thread(services.deployment.problem), timeout=5)
            checks["deployment"] = problem or "ok"
        except Exception as exc:
            checks["deployment"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503)
