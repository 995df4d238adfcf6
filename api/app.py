"""Builds the FastAPI app from one Settings object. No torch anywhere under api/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI

from api.auth import warn_if_open
from api.deps import Services, get_principal
from api.errors import install_error_handlers
from api.routes import admin, health, models, videos
from shared.apikeys import KeyStore
from shared.fairqueue import FairQueue
from shared.queue import make_celery
from shared.quotas import Quotas
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The embedded dispatcher (see shared/dispatcher.py); several API processes may each run one.
        dispatcher = None
        if settings.dispatch.in_api:
            from shared.dispatcher import start_in_thread

            dispatcher = start_in_thread(settings)
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()

    app = FastAPI(
        title="wanq",
        version="0.1.0",
        description="Self-hosted Wan2.2 video generation, OpenAI Videos API compatible.",
        lifespan=lifespan,
    )
    store = JobStore.from_url(settings.redis.url, prefix=settings.redis.key_prefix, record_ttl_s=settings.jobs.record_ttl_s)
    fairq = FairQueue(store, settings.quotas, settings.models, backlog=settings.dispatch.backlog)
    app.state.services = Services(
        settings=settings,
        store=store,
        storage=Storage(settings.s3),
        celery=make_celery(settings),
        aioredis=aioredis.Redis.from_url(settings.redis.url),
        keys=KeyStore(store.redis, settings.auth, prefix=settings.redis.key_prefix),
        fairq=fairq,
        quotas=Quotas(settings.quotas, store.redis, fairq, url=settings.redis.url, prefix=settings.redis.key_prefix),
    )
    warn_if_open(app.state.services)
    if settings.s3.create_bucket:
        app.state.services.storage.ensure_bucket()
    install_error_handlers(app)
    # Everything but health (and FastAPI's /docs, /redoc, /openapi.json) needs an API key.
    authenticated = [Depends(get_principal)]
    app.include_router(health.router)
    app.include_router(models.router, dependencies=authenticated)
    app.include_router(videos.router, dependencies=authenticated)
    app.include_router(admin.router, dependencies=authenticated)
    return app
