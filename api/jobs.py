"""What the routes do with jobs, below the HTTP layer: find the caller's job (`JobDep`), build the public video
object, page through a tenant's jobs, cancel. Routes in api/routes/ call these; nothing here knows a route.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends

from api.deps import Principal, PrincipalDep, ServicesDep
from api.services import Services
from shared import jobstate
from shared.errors import Conflict, NotFound
from shared.schemas import JobRecord, JobStatus
from shared.video import Video, VideoList


def visible(record: JobRecord | None, principal: Principal, job_id: str) -> JobRecord:
    """The caller's job, or 404 exactly as for an id that does not exist (another tenant's included)."""
    if record is None or (record.tenant != principal.tenant and not principal.admin):
        raise NotFound(f"no video with id {job_id!r}", param="video_id")
    return record


def load_job(services: Services, principal: Principal, job_id: str) -> JobRecord:
    return visible(services.store.get(job_id), principal, job_id)


async def get_job(services: ServicesDep, principal: PrincipalDep, video_id: str) -> JobRecord:
    """The job named in the path, if the caller may see it; read on the event loop."""
    raw = await services.aioredis.get(services.store.keys.job(video_id))
    return visible(JobRecord.model_validate_json(raw) if raw else None, principal, video_id)


JobDep = Annotated[JobRecord, Depends(get_job)]


def video_object(services: Services, record: JobRecord, **extra: Any) -> Video:
    """The public object; a queued job's carries its place in the fair dispatch order and a start estimate."""
    if record.status is JobStatus.queued:
        place = services.fairq.place(record)
        extra.update(queue_position=place.position, estimated_start_at=place.estimated_start_at(time.time()))
    return Video.of(record, **extra)


async def avideo_object(services: Services, record: JobRecord, **extra: Any) -> Video:
    """`video_object` on the event loop (what clients poll)."""
    if record.status is JobStatus.queued:
        place = await services.fairq.aplace(record)
        extra.update(queue_position=place.position, estimated_start_at=place.estimated_start_at(time.time()))
    return Video.of(record, **extra)


def video_page(
    services: Services, tenant: str | None, *, after: str | None, limit: int, order: str, with_tenant: bool = False
) -> VideoList:
    """One page of jobs in OpenAI's list shape; `tenant` None means every tenant's (admin listing)."""
    ids, has_more = services.store.list_ids(tenant, after=after, limit=limit, newest_first=order == "desc")
    records = services.store.get_many(ids)
    data = [video_object(services, r, **({"tenant": r.tenant} if with_tenant else {})) for r in records]
    return VideoList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


def cancel(services: Services, record: JobRecord) -> JobRecord:
    """A queued job ends now; a running one is flagged and stops at its next denoising step."""
    result = jobstate.cancel_queued(services.store, record, "canceled before it started")
    if result.ok and result.record:
        return result.record
    result = jobstate.request_cancel(services.store, result.record or record)
    if result.ok and result.record:
        return result.record
    current = result.record or record
    raise Conflict(f"video {record.id} is already {current.status.value} and cannot be canceled", param="video_id")


def delete(services: Services, record: JobRecord) -> None:
    """Cancels the job if it still runs, then deletes its record and stored files."""
    if not record.status.is_terminal():
        try:
            cancel(services, record)
        except Conflict:
            pass  # it ended meanwhile
    services.store.delete(record)
    services.storage.delete_prefix(services.storage.job_prefix(record.id))
