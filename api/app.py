"""Builds the FastAPI app from one Settings object. No torch anywhere under api/."""

from __future__ import annotations

import redis.asyncio as aioredis
from fastapi import FastAPI

from api import web
from api.deps import Services
from api.errors import install_error_handlers
from api.routes import health, models, videos
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="wanq",
        version="0.1.0",
        description="Self-hosted Wan2.2 video generation, OpenAI Videos API compatible.",
    )
    app.state.services = Services(
        settings=settings,
        store=JobStore.from_url(settings.redis.url, prefix=settings.redis.key_prefix, record_ttl_s=settings.jobs.record_ttl_s),
        storage=Storage(settings.s3),
        celery=make_celery(settings),
        aioredis=aioredis.Redis.from_url(settings.redis.url),
    )
    if settings.s3.create_bucket:
        app.state.services.storage.ensure_bucket()
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(videos.router)
    web.install(app)
    return app
