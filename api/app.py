"""Builds the FastAPI app from one Settings object. No torch anywhere under api/."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import metrics, web
from api.auth import warn_if_open
from api.body_limit import BodyLimit
from api.daemons.dispatcher import start_in_thread
from api.daemons.upkeep import Upkeep
from api.deps import get_principal
from api.errors import install_error_handlers
from api.events import EventHub
from api.openapi import ERRORS
from api.routes import admin, health, images, loras, models, videos, webhooks
from api.services import Services
from shared.apikeys import KeyStore
from shared.deployment import Deployment
from shared.fairqueue import FairQueue
from shared.idempotency import IdempotencyKeys
from shared.loras import LoraStore
from shared.queue import enqueue, make_celery
from shared.quotas import Quotas
from shared.redisconn import connect_async
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore

log = logging.getLogger("wanq.api")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = app.state.services
        stop = None
        if settings.maintenance.enabled:
            celery = services.celery
            stop = Upkeep(
                settings, services.store, services.storage, services.fairq, lambda job, model: enqueue(celery, job, model)
            ).start()
        # The embedded dispatcher (api/daemons/dispatcher.py); several API processes may each run one.
        dispatcher = start_in_thread(settings) if settings.dispatch.in_api else None
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()
            if stop is not None:
                stop.set()
            await services.events.close()
            await services.aioredis.aclose()

    app = FastAPI(
        title="wanq",
        version="0.1.0",
        description="Self-hosted Wan2.2 video generation, OpenAI Videos API compatible.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served from the package's own copies (api/web.py), no CDN
        redoc_url=None,
    )
    store = JobStore.from_settings(settings)
    aclient = connect_async(settings.redis)
    fairq = FairQueue(
        store,
        settings.quotas,
        settings.models,
        backlog=settings.dispatch.backlog,
        aclient=aclient,
        worker_ttl_s=settings.worker.heartbeat_ttl_s,
    )
    storage = Storage(settings.s3)
    app.state.services = Services(
        settings=settings,
        store=store,
        storage=storage,
        celery=make_celery(settings),
        aioredis=aclient,
        # Its own client, without the retry: a pub/sub connection that silently reconnected would have missed
        # whatever was published meanwhile, so a dropped connection must end the streams (they reconnect).
        events=EventHub(connect_async(settings.redis, retry=False)),
        idempotency=IdempotencyKeys(store.redis, keys=store.keys, ttl_s=settings.jobs.idempotency_ttl_s),
        keys=KeyStore(store.redis, settings.auth, prefix=settings.redis.key_prefix),
        fairq=fairq,
        quotas=Quotas(settings.quotas, fairq, aclient, prefix=settings.redis.key_prefix),
        loras=LoraStore(store.redis, store.keys),
        deployment=Deployment(store.redis, store.keys, storage, fresh_start=settings.maintenance.fresh_start),
    )
    services = app.state.services
    warn_if_open(services)
    if settings.s3.create_bucket:
        services.storage.ensure_bucket()
    if settings.s3.lifecycle_rule and not services.storage.ensure_lifecycle(settings.jobs.retention_s):
        log.warning("could not set the bucket lifecycle rule; expired outputs are deleted by the sweep only")
    try:
        services.deployment.problem()  # a first start writes the deployment marker; a lost one is logged (critical)
    except Exception as exc:  # Redis or S3 not there yet: /readyz looks again
        log.warning("could not check the deployment marker yet: %s", exc)
    install_error_handlers(app)
    # A LoRA upload may be as large as WANQ_LORAS_MAX_BYTES (plus the form's own few bytes); every other body is bounded
    # by WANQ_API_MAX_BODY_BYTES.
    upload_limit = max(settings.api.max_body_bytes, settings.loras.max_bytes + 64 * 1024)
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes, overrides={("POST", "/v1/loras"): upload_limit})
    # Everything but health (and FastAPI's /docs, /redoc, /openapi.json) needs an API key.
    authenticated = [Depends(get_principal)]
    app.include_router(health.router)
    metrics.install(app, services)  # /metrics, /metrics/demand: for Prometheus and KEDA, with an admin key
    app.include_router(models.router, dependencies=authenticated, responses=ERRORS)
    app.include_router(videos.router, dependencies=authenticated, responses=ERRORS)
    app.include_router(images.router, dependencies=authenticated, responses=ERRORS)
    app.include_router(webhooks.router, dependencies=authenticated, responses=ERRORS)
    app.include_router(loras.router, dependencies=authenticated, responses=ERRORS)
    app.include_router(admin.router, dependencies=authenticated, responses=ERRORS)
    web.install(app)
    return app
