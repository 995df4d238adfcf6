"""Job creation below the routes: the one place a new `JobRecord` is built, the Idempotency-Key around a create,
and the atomic admission of a request's jobs with the answer that says where they stand.

A route turns its body into records (api/video_jobs.py for videos; images build theirs from their specs) and
hands them here: `create_once` runs the route's `make` at most once per key and body, and `admit` stores the
records with their queue entries (shared/fairqueue.py), all or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Header, Response

from api import jobs
from api.deps import Principal
from api.services import Services
from shared.errors import Conflict, IdempotencyMismatch, RateLimited
from shared.fairqueue import Placement
from shared.idempotency import MAX_KEY_LENGTH, IdempotentCreate, fingerprint
from shared.schemas import GenerationSpec, JobRecord
from shared.video import Video

POLL_AFTER_MS = "1000"

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=MAX_KEY_LENGTH,
        description="Retries with the same key and body return the first job; keys expire after 24 h (WANQ_JOBS_IDEMPOTENCY_TTL_S).",
    ),
]


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


def new_record(
    job_id: str,
    tenant: str,
    spec: GenerationSpec,
    *,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    remixed_from: str | None = None,
) -> JobRecord:
    """A job as it is created: queued, at step 0 of its spec's steps."""
    return JobRecord(
        id=job_id,
        tenant=tenant,
        spec=spec,
        total_steps=spec.num_inference_steps,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        remixed_from=remixed_from,
    )


@dataclass(frozen=True)
class Idempotency:
    """The request's Idempotency-Key and its body's fingerprint: what its jobs' creation writes to the key."""

    tenant: str
    key: str
    print_: str

    def completion(self, services: Services, job_ids: Sequence[str]) -> IdempotentCreate:
        return services.idempotency.completion(self.tenant, self.key, self.print_, job_ids)


Make = Callable[[Idempotency | None], Awaitable[Response]]


async def create_once(
    services: Services,
    principal: Principal,
    fields: dict[str, Any],
    upload: bytes | None,
    idempotency_key: str | None,
    make: Make,
) -> Response:
    """`make` creates the request's jobs; with an Idempotency-Key, only once per key and body (a retry replays)."""
    if idempotency_key is None:
        return await make(None)
    keys = services.idempotency
    tenant = principal.tenant
    print_ = fingerprint(fields, upload)
    claim = await asyncio.to_thread(keys.begin, tenant, idempotency_key, print_)
    if claim.outcome == "mismatch":
        raise IdempotencyMismatch("this Idempotency-Key was already used with a different request body", param="Idempotency-Key")
    if claim.outcome == "in_flight":
        raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly", param="Idempotency-Key")
    if claim.outcome == "replay" and claim.job_id:
        # The first of the request's jobs that still exists (a deleted first one must not make the retry create
        # the whole request again while the others stand).
        for job_id in claim.job_ids or [claim.job_id]:
            record = await asyncio.to_thread(services.store.get, job_id)
            if record is not None:
                video = await jobs.avideo_object(services, record, **_with_ids(claim.job_ids))
                return created(video, replayed=True)
    try:
        # The jobs' creation also writes the key's entry, in the same step (shared/idempotency.py).
        return await make(Idempotency(tenant, idempotency_key, print_))
    except BaseException:
        # Free the key for a retry, unless the job exists after all (then the key names it: a retry replays it).
        # If Redis cannot say, the key's short in-flight lease runs out by itself.
        with contextlib.suppress(redis.RedisError, OSError):
            if await asyncio.to_thread(keys.job_of, tenant, idempotency_key) is None:
                await asyncio.to_thread(keys.abandon, tenant, idempotency_key)
        raise


def created(video: Video, *, replayed: bool = False) -> Response:
    """The 202 of a create: the first job's video object (with `video_ids` if there are more), `Location` naming it."""
    headers = {"Location": f"/v1/videos/{video.id}", "openai-poll-after-ms": POLL_AFTER_MS}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(content=json.dumps(video.dump()), status_code=202, media_type="application/json", headers=headers)


def _with_ids(ids: Sequence[str]) -> dict[str, Any]:
    """`video_ids` for the answer of a request of more than one job."""
    return {"video_ids": list(ids)} if len(ids) > 1 else {}


async def place(services: Services, records: Sequence[JobRecord], idempotency: Idempotency | None = None) -> Placement | None:
    """The records and their queue entries, all or none in one script (their images, if any, are stored already);
    the first one's place in line, or None where the answer was lost but the jobs were created."""
    ids = [record.id for record in records]
    completion = None if idempotency is None else idempotency.completion(services, ids)
    try:
        # Into the tenant's queue; the dispatcher moves them to the model's worker queue (shared/fairqueue.py).
        placements = await services.fairq.acreate_many(records, completion)
    except RateLimited:
        # The tenant's queue filled up since the early check: the jobs never existed.
        await forget_images(services, records)
        raise
    except (redis.RedisError, OSError):
        # The answer may have been lost after Redis ran the script: look before saying the create failed.
        if not await _landed(services, records):
            raise
        return None
    return placements[0]


async def admit(services: Services, records: Sequence[JobRecord], idempotency: Idempotency | None = None) -> Response:
    """`place`, answered with the first job's video object (its place in line, `video_ids` for more than one)."""
    placement = await place(services, records, idempotency)
    extra = _with_ids([record.id for record in records])
    if placement is not None:
        extra.update(queue_position=placement.position, estimated_start_at=placement.estimated_start_at(time.time()))
    return created(Video.of(records[0], **extra))


async def _landed(services: Services, records: Sequence[JobRecord]) -> bool:
    """Whether a create whose answer never came did create the jobs. Cleans up behind one that did not;
    if Redis cannot say, the answer is an error (503) and an uploaded image may stay behind."""
    try:
        landed = bool(await services.aioredis.exists(services.store.keys.job(records[0].id)))
    except (redis.RedisError, OSError):
        return False
    if not landed:
        await forget_images(services, records)
    return landed


async def forget_images(services: Services, records: Sequence[JobRecord]) -> None:
    """The stored inputs of jobs that were never created."""
    for record in records:
        if record.spec.image_key is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(services.storage.delete_prefix, services.storage.job_prefix(record.id))
