"""What one API process holds (built once by api/app.py, kept on `app.state`): the settings and every client."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from celery import Celery

from api.events import EventHub
from shared.apikeys import KeyStore
from shared.deployment import Deployment
from shared.fairqueue import FairQueue
from shared.idempotency import IdempotencyKeys
from shared.loras import LoraStore
from shared.quotas import Quotas
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
    events: EventHub
    idempotency: IdempotencyKeys
    keys: KeyStore
    fairq: FairQueue
    quotas: Quotas
    loras: LoraStore
    deployment: Deployment
