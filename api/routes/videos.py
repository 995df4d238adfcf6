"""`/v1/videos`: create, extend, remix, retrieve, list, cancel, delete, download and follow video jobs.

The routes only: bodies are read by api/bodies.py, turned into jobs by api/video_jobs.py and admitted (with the
Idempotency-Key) by api/creation.py; the event stream is api/sse.py.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from api import jobs, sse, video_jobs
from api.bodies import job_body_schema, json_body_schema, read_job_body
from api.creation import POLL_AFTER_MS, Idempotency, IdempotencyKey, create_once
from api.deps import Principal, PrincipalDep, ServicesDep
from api.jobs import JobDep
from api.openapi import CONTENT, CREATED, EVENTS
from api.services import Services
from shared.errors import Conflict, Gone, InvalidRequest, NotFound
from shared.schemas import JobStatus
from shared.specs import ExtensionRequest, RemixRequest, VideoRequest, parse_fields
from shared.storage import CONTENT_TYPES
from shared.video import Video, VideoDeleted, VideoList

router = APIRouter(prefix="/v1/videos", tags=["videos"])

Variant = Literal["video", "thumbnail", "spritesheet", "image", "preview"]
VARIANTS: tuple[str, ...] = get_args(Variant)
"""The outputs a client may download, in the order a missing one's message lists them; a job's other outputs
(LAST_FRAME) are kept for the worker."""

_create_schema = job_body_schema(
    VideoRequest,
    {
        "loras": {"type": "string", "description": "The `loras` list as JSON text."},
        "input_reference": {"type": "string", "format": "binary"},
    },
)
_extension_schema = job_body_schema(
    ExtensionRequest,
    {
        "video[id]": {"type": "string", "description": "The id of the completed video to extend."},
        "video": {
            "type": "string",
            "description": "The id (as a plain field); a file here is ignored when video[id] names the video.",
        },
    },
    skip=("video", "image_url", "extend_video_id"),  # refused there, as in the JSON schema
)
_remix_schema = json_body_schema(RemixRequest)


@router.post("", status_code=202, openapi_extra=_create_schema, responses=CREATED, summary="Create a video job")
async def create_video(
    request: Request, services: ServicesDep, principal: PrincipalDep, idempotency_key: IdempotencyKey = None
) -> Response:
    fields, upload = await read_job_body(request)
    return await _create(services, principal, fields, upload, idempotency_key, "extend_video_id")


@router.post(
    "/extensions",
    status_code=202,
    openapi_extra=_extension_schema,
    responses=CREATED,
    summary="Extend a completed video: a new part continued from its last frame, delivered as one whole video",
)
async def extend_video(
    request: Request, services: ServicesDep, principal: PrincipalDep, idempotency_key: IdempotencyKey = None
) -> Response:
    fields, upload = await read_job_body(request, file_field="video")
    if "image_url" in fields or "input_reference" in fields:
        param = "image_url" if "image_url" in fields else "input_reference"
        raise InvalidRequest(f"an extension continues from its source's last frame: drop '{param}'", param=param)
    # The source, however it came: JSON {"video": {"id": ...}}, the form field video[id], or video as a plain field.
    reference = fields.pop("video", None)
    named = fields.pop("video[id]", None)
    if named is not None:
        reference = {"id": named}  # a file sent beside it (the openai SDK insists on one) is ignored
    elif isinstance(reference, str):
        reference = {"id": reference}
    elif reference is None and upload:
        raise InvalidRequest(
            "wanq extends videos it made, named by id, not uploaded files: send the form field video[id] "
            '(openai SDK: video=b"", extra_body={"video": {"id": "video_..."}}) or JSON {"video": {"id": "video_..."}}',
            param="video",
        )
    req = parse_fields(ExtensionRequest, {**fields, **({"video": reference} if reference is not None else {})})
    fields["extend_video_id"] = req.video.id
    return await _create(services, principal, fields, None, idempotency_key, "video")


async def _create(
    services: Services, principal: Principal, fields: dict[str, Any], upload: bytes | None, key: str | None, source_param: str
) -> Response:
    async def make(idempotency: Idempotency | None) -> Response:
        return await video_jobs.create_videos(services, principal, fields, upload, idempotency, source_param=source_param)

    return await create_once(services, principal, fields, upload, key, make)


@router.post(
    "/{video_id}/remix",
    status_code=202,
    openapi_extra=_remix_schema,
    responses=CREATED,
    summary="Remix a video: a new job with its parameters, seed and image, and a new prompt",
)
async def remix_video(record: JobDep, request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    fields, upload = await read_job_body(request)
    if upload is not None:
        raise InvalidRequest("a remix reuses its video's image; send no 'input_reference'", param="input_reference")
    return await video_jobs.remix(services, principal, record, parse_fields(RemixRequest, fields))


@router.get("", response_model=VideoList, response_model_exclude_unset=True, summary="List video jobs, newest first")
def list_videos(
    services: ServicesDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> VideoList:
    return jobs.video_page(services, principal.tenant, after=after, limit=limit, order=order)


@router.get("/{video_id}", response_model=Video, response_model_exclude_unset=True, summary="Retrieve a video job")
async def retrieve_video(record: JobDep, services: ServicesDep, response: Response) -> Video:
    # Clients poll this: on the event loop, one read for the record, one script for a queued job's place in line.
    if not record.status.is_terminal():
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return await jobs.avideo_object(services, record)


@router.post(
    "/{video_id}/cancel", response_model=Video, response_model_exclude_unset=True, summary="Cancel a queued or running video job"
)
def cancel_video(record: JobDep, services: ServicesDep) -> Video:
    return jobs.video_object(services, jobs.cancel(services, record))


@router.delete("/{video_id}", response_model=VideoDeleted, summary="Delete a video job and its outputs")
def delete_video(record: JobDep, services: ServicesDep) -> VideoDeleted:
    jobs.delete(services, record)
    return VideoDeleted(id=record.id, object="video.deleted", deleted=True)


@router.get(
    "/{video_id}/content",
    responses=CONTENT,
    summary="Download the MP4, its thumbnail, spritesheet or latest preview (an image: its PNG)",
)
def download_content(
    video_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    variant: Annotated[
        Variant | None,
        Query(
            description="video (MP4), thumbnail (WebP), spritesheet (JPEG), image (PNG, image jobs), preview (the latest "
            "preview MP4, while the job runs and after it ends: see preview_step); default: video, an image job's image."
        ),
    ] = None,
) -> Response:
    record = jobs.load_job(services, principal, video_id)  # after the query is checked: a bad variant is a 400
    if variant is None:
        variant = "image" if record.spec.kind == "image" else "video"
    if record.status is not JobStatus.completed and not (variant == "preview" and "preview" in record.outputs):
        raise Conflict(f"video {video_id} is {record.status.value}; content exists once it is completed", param="video_id")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise Gone(f"the outputs of video {video_id} expired at {int(record.expires_at)}", param="video_id")
    key = record.outputs.get(variant)
    if key is None:
        kinds = ", ".join(v for v in VARIANTS if v in record.outputs)
        raise NotFound(f"{record.spec.kind} {video_id} has no {variant}; it has: {kinds or 'nothing stored'}", param="variant")
    if services.settings.s3.presigned_content:
        return RedirectResponse(services.storage.presigned_url(key), status_code=302)
    try:
        chunks, length = services.storage.open_stream(key)
    except KeyError:
        raise Gone(f"the outputs of video {video_id} are no longer stored", param="video_id") from None
    headers = {"Content-Disposition": f'inline; filename="{video_id}.{key.rsplit(".", 1)[-1]}"'}
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(chunks, media_type=CONTENT_TYPES[variant], headers=headers)


@router.get("/{video_id}/events", responses=EVENTS, summary="Server-Sent Events: every status and progress change")
async def video_events(record: JobDep, request: Request, services: ServicesDep) -> StreamingResponse:
    return await sse.video_events(record, request, services)
