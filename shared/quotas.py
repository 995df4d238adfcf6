"""Per-tenant quotas checked by the API: requests per minute, the size of one job and the room in
the tenant's queue. (`max_running_jobs` is not refused at the door: the dispatcher holds a tenant's
extra jobs back until its running ones end; see shared/fairqueue.py.)

A job's size counts its post-processing too (interpolation, upscaling): each pixel-frame that writes counts a
fraction of a generated one (shared/estimate.py `job_pixel_frames`).

A request of `n` videos is checked as a whole: each of its jobs against the per-job size, and all n
against the room in the tenant's queue (`FairQueue.create_many` admits all n or none).

Requests per minute use the `limits` library's sliding-window counter in Redis, shared by every API
process. Every refusal is a RateLimited (HTTP 429) with Retry-After and a message naming the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from shared.errors import RateLimited
from shared.estimate import job_pixel_frames
from shared.fairqueue import FairQueue, queue_full
from shared.schemas import GenerationSpec
from shared.settings import QuotaSettings, TenantPolicy


class Quotas:
    def __init__(self, settings: QuotaSettings, fairq: FairQueue, aclient: aioredis.Redis, *, prefix: str = "wanq") -> None:
        self.settings = settings
        self.fairq = fairq
        # The counters go through the API's redis.asyncio client: every request makes one hit, on the event loop.
        storage = RedisStorage(
            "async+redis://",  # only picks the redis-py bridge: the connections come from `aclient`'s pool
            implementation="redispy",
            connection_pool=aclient.connection_pool,  # type: ignore[arg-type]  # passed on to redis.asyncio
            key_prefix=f"{prefix}:rpm",
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    def policy(self, tenant: str) -> TenantPolicy:
        return self.settings.for_tenant(tenant)

    async def ahit_request(self, tenant: str) -> None:
        """Counts one request of the tenant; raises RateLimited past its requests per minute."""
        limit = self.policy(tenant).requests_per_minute
        item = RateLimitItemPerMinute(limit)
        if await self._limiter.hit(item, tenant):
            return
        self._refuse(tenant, limit, (await self._limiter.get_window_stats(item, tenant)).reset_time)

    @staticmethod
    def _refuse(tenant: str, limit: int, reset_at: float) -> None:
        raise RateLimited(
            f"tenant {tenant!r} exceeded its {limit} requests per minute (quota requests_per_minute)",
            retry_after_s=max(1, math.ceil(reset_at - time.time())),
            param="requests_per_minute",
        )

    def check_size(self, tenant: str, spec: GenerationSpec) -> None:
        """Refuses a job larger than the tenant's per-job size (no I/O): the pixel-frames it generates, plus its
        post-processing's at a fraction each (shared/estimate.py `job_pixel_frames`)."""
        policy = self.policy(tenant)
        size = job_pixel_frames(spec)
        if size > policy.max_pixel_frames:
            generated = spec.width * spec.height * spec.num_frames
            post = f", plus {size - generated} for interpolate {spec.interpolate} and upscale {spec.upscale}," * (
                size != generated
            )
            raise RateLimited(
                f"{spec.width}x{spec.height} x {spec.num_frames} frames = {generated} pixel-frames{post} exceeds tenant "
                f"{tenant!r}'s per-job limit of {policy.max_pixel_frames} (quota max_pixel_frames); ask for a smaller "
                "size, fewer frames or less post-processing",
                retry_after_s=60,
                param="max_pixel_frames",
            )

    def check_sizes(self, tenant: str, specs: Sequence[GenerationSpec]) -> None:
        """`check_size` for each job of a request (its n videos, or images)."""
        for spec in specs:
            self.check_size(tenant, spec)

    def check_room(self, tenant: str, spec: GenerationSpec, n: int = 1) -> None:
        """An early answer, before an upload, when the tenant's queue has no room for the request's `n` jobs;
        `FairQueue.create_many` checks again atomically."""
        policy = self.policy(tenant)
        waiting = self.fairq.waiting_count(tenant)
        if waiting + n > policy.max_queued_jobs:
            raise queue_full(tenant, waiting, policy.max_queued_jobs, self.fairq.retry_hint(spec.model), n=n)
