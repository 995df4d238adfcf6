"""`/v1/videos`: create, extend, remix, retrieve, list, cancel, delete, download and follow video jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from api import jobs
from api.deps import Principal, PrincipalDep, ServicesDep
from api.events import INTERRUPTED
from api.jobs import JobDep
from api.openapi import CONTENT, CREATED, EVENTS, body_schema
from api.services import Services
from api.webhook_checks import check_job_webhook
from shared import images
from shared.errors import (
    Conflict,
    Forbidden,
    Gone,
    IdempotencyMismatch,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from shared.idempotency import MAX_KEY_LENGTH, IdempotentCreate, fingerprint
from shared.loras import resolve_job_loras
from shared.schemas import GenerationSpec, JobRecord, JobStatus
from shared.specs import (
    ExtensionRequest,
    RemixRequest,
    VideoRequest,
    check_source,
    extension_inherits_loras,
    inherited_loras,
    parse_fields,
    parse_request,
    remix_spec,
    resolve_extension,
    resolve_spec,
)
from shared.storage import CONTENT_TYPES
from shared.video import Video, VideoDeleted, VideoList

router = APIRouter(prefix="/v1/videos", tags=["videos"])

Variant = Literal["video", "thumbnail", "spritesheet", "image"]
POLL_AFTER_MS = "1000"


def _request_body(model: type[BaseModel], form_fields: dict[str, Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request body of a create route: the model as JSON, or the same fields as a multipart form (every
    field a string there, `webhook_events` repeated) with the route's own form-only fields."""
    plain = {name: {"type": "string"} for name in model.model_fields if name not in (*skip, "webhook_events")}
    form = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {**plain, **form_fields, "webhook_events": {"type": "array", "items": {"type": "string"}}},
    }
    content = {"application/json": {"schema": body_schema(model)}, "multipart/form-data": {"schema": form}}
    return {"requestBody": {"required": True, "content": content}}


_create_schema = _request_body(
    VideoRequest,
    {
        "loras": {"type": "string", "description": "The `loras` list as JSON text."},
        "input_reference": {"type": "string", "format": "binary"},
    },
)
_extension_schema = _request_body(
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
_remix_schema = {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema(RemixRequest)}}}}


# ---------------------------------------------------------------------------------------------
# Helpers


async def _read_body(
    request: Request, max_bytes: int, file_field: str = "input_reference"
) -> tuple[dict[str, Any], bytes | None]:
    """The create request's fields and the uploaded file (`file_field`: the image), from JSON or multipart/form-data."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds {max_bytes}", param="body")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" or content_type == "application/x-www-form-urlencoded":
        form = await request.form(max_files=1, max_fields=64)
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for key in set(form.keys()):
            values = form.getlist(key)
            if key == file_field and isinstance(values[0], UploadFile):
                image = await values[0].read(max_bytes + 1)
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise InvalidRequest(f"field '{key}' must not be a file", param=key)
            fields[key] = values if key == "webhook_events" else values[0]
        _gather_form_loras(fields, form)
        return fields, image
    if content_type in ("application/json", ""):
        raw = await request.body()
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"request body of {len(raw)} bytes exceeds {max_bytes}", param="body")
        try:
            data = json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:  # ValueError: also integers over 4300 digits; Recursion: deep nesting
            raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}", param="body") from None
        if not isinstance(data, dict):
            raise InvalidRequest("body must be a JSON object", param="body")
        try:
            # JSON may escape lone surrogates (\ud800), which no UTF-8 store can hold: refuse them here.
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidRequest("body holds invalid Unicode: a lone surrogate escape such as \\ud800", param="body") from None
        # OpenAI's JSON form of a reference: {"input_reference": {"image_url": "..."}}.
        ref = data.pop("input_reference", None)
        if isinstance(ref, dict) and isinstance(ref.get("image_url"), str) and "image_url" not in data:
            data["image_url"] = ref["image_url"]
        elif ref is not None:
            raise InvalidRequest('\'input_reference\' in JSON must be {"image_url": "..."}', param="input_reference")
        return data, None
    raise InvalidRequest(f"unsupported content type {content_type!r}; send JSON or multipart/form-data", param="content-type")


def _gather_form_loras(fields: dict[str, Any], form: Any) -> None:
    """The openai SDK sends `extra_body={"loras": [...]}` in a multipart request as `loras[][name]`,
    `loras[][strength]`, ... (its "brackets" format): the n-th value of each belongs to the n-th LoRA."""
    parts = {key[len("loras[][") : -1]: form.getlist(key) for key in fields if key.startswith("loras[][") and key.endswith("]")}
    if not parts:
        return
    for key in list(fields):
        if key.startswith("loras[]"):
            del fields[key]
    if "loras" in fields:
        raise InvalidRequest("send 'loras' once: as one JSON field or as loras[][name] fields", param="loras")
    counts = {len(values) for values in parts.values()}
    if len(counts) != 1:
        raise InvalidRequest(
            "in a multipart form every LoRA needs the same fields (loras[][name], loras[][strength], ...); "
            "or send 'loras' as one JSON field",
            param="loras",
        )
    fields["loras"] = [{name: values[i] for name, values in parts.items()} for i in range(counts.pop())]


def _image_bytes(services: Services, req: VideoRequest, upload: bytes | None) -> bytes | None:
    limits = services.settings.jobs
    if upload is not None and req.image_url is not None:
        raise InvalidRequest("send either 'input_reference' or 'image_url', not both", param="image_url")
    if upload is not None:
        return upload
    if req.image_url is None:
        return None
    if req.image_url.startswith("data:"):
        return images.decode_data_url(req.image_url, max_bytes=limits.max_image_bytes)
    if req.image_url.startswith("https://") or req.image_url.startswith("http://"):
        from shared.fetch import fetch_image  # imported lazily: most requests carry no URL

        return fetch_image(req.image_url, services.settings)
    raise InvalidRequest(f"invalid 'image_url' {req.image_url[:60]!r}: use an https:// or data: URL", param="image_url")


# ---------------------------------------------------------------------------------------------
# Routes


@router.post("", status_code=202, openapi_extra=_create_schema, responses=CREATED, summary="Create a video job")
async def create_video(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_KEY_LENGTH,
            description="Retries with the same key and body return the first job; keys expire after 24 h (WANQ_JOBS_IDEMPOTENCY_TTL_S).",
        ),
    ] = None,
) -> Response:
    settings = services.settings
    # 1. Read and type-check the body
    fields, upload = await _read_body(request, settings.api.max_body_bytes)
    return await _create_once(services, principal, fields, upload, idempotency_key)


IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=MAX_KEY_LENGTH,
        description="Retries with the same key and body return the first job; keys expire after 24 h (WANQ_JOBS_IDEMPOTENCY_TTL_S).",
    ),
]


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
    fields, upload = await _read_body(request, services.settings.api.max_body_bytes, file_field="video")
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
    return await _create_once(services, principal, fields, None, idempotency_key, source_param="video")


@router.post(
    "/{video_id}/remix",
    status_code=202,
    openapi_extra=_remix_schema,
    responses=CREATED,
    summary="Remix a video: a new job with its parameters, seed and image, and a new prompt",
)
async def remix_video(record: JobDep, request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    settings = services.settings
    fields, upload = await _read_body(request, settings.api.max_body_bytes)
    if upload is not None:
        raise InvalidRequest("a remix reuses its video's image; send no 'input_reference'", param="input_reference")
    req = parse_fields(RemixRequest, fields)
    if req.webhook_url is None:
        check_job_webhook(services, principal.tenant, None, req.webhook_events)
    else:
        await asyncio.to_thread(check_job_webhook, services, principal.tenant, req.webhook_url, req.webhook_events)
    if record.tenant != principal.tenant:
        raise Forbidden(
            f"video {record.id} belongs to tenant {record.tenant!r}; remix a video of your own tenant", param="video_id"
        )
    parent = record.spec
    job_id = f"video_{uuid.uuid4().hex}"
    image_key, copy_from = None, None
    if parent.extend_from is not None:
        # A remix of an extension extends the same source again: that source must still be there.
        await _extension_source(services, principal, parent.extend_from, "video_id")
        image_key = services.storage.key(job_id, "image")
    elif parent.image_key is not None:
        image_key, copy_from = services.storage.key(job_id, "image"), parent.image_key
    spec = remix_spec(parent, req.prompt, settings.catalog(), settings.jobs, image_key=image_key)
    if parent.loras:
        await _check_remix_loras(services, principal, record)
    services.quotas.check_size(principal.tenant, spec)
    new = JobRecord(
        id=job_id,
        tenant=principal.tenant,
        spec=spec,
        total_steps=spec.num_inference_steps,
        webhook_url=req.webhook_url,
        webhook_events=req.webhook_events,
        remixed_from=record.id,
    )
    if copy_from is not None and image_key is not None:
        # The parent's stored image, copied by the store itself: the remix keeps it if the parent is deleted.
        await asyncio.to_thread(services.quotas.check_room, principal.tenant, spec)
        try:
            await asyncio.to_thread(services.storage.copy, copy_from, image_key)
        except KeyError:
            raise Gone(f"the input image of video {record.id} is no longer stored", param="video_id") from None
    return await _admit(services, new)


async def _check_remix_loras(services: Services, principal: Principal, record: JobRecord) -> None:
    """A remix runs with its video's LoRAs, so each must still be there, as the same file, and allowed as a create
    would allow it (the limits may have changed): else 400 now, not a failed job later."""
    parent = record.spec
    named = inherited_loras(parent)
    records = await asyncio.to_thread(services.loras.visible, principal.tenant, [lora.name for lora in named])
    try:
        resolved, _ = resolve_job_loras(named, records, services.settings.catalog()[parent.model], services.settings.loras)
    except InvalidRequest as exc:
        raise InvalidRequest(f"video {record.id} cannot be remixed with its LoRAs: {exc.message}", param="video_id") from None
    for was, now in zip(parent.loras, resolved, strict=True):
        if now.sha256 != was.sha256:
            raise InvalidRequest(
                f"video {record.id} cannot be remixed with its LoRAs: LoRA {was.name!r} is another file now (sha256 "
                f"{now.sha256[:12]}..., was {was.sha256[:12]}...); create a new video naming it instead",
                param="video_id",
            )


async def _extension_source(services: Services, principal: Principal, video_id: str, param: str) -> JobRecord:
    """The video an extension continues, if the caller may continue it (shared/specs.py `check_source`)."""
    record = await asyncio.to_thread(services.store.get, video_id)
    if record is None or (record.tenant != principal.tenant and not principal.admin):
        raise NotFound(f"no video with id {video_id!r} to extend", param=param)
    return check_source(record, video_id, principal.tenant, time.time(), param=param)


async def _create_once(
    services: Services,
    principal: Principal,
    fields: dict[str, Any],
    upload: bytes | None,
    idempotency_key: str | None,
    *,
    source_param: str = "extend_video_id",
) -> Response:
    """Creates the job; with an Idempotency-Key, only once per key and body."""
    if idempotency_key is None:
        return await _create(services, principal, fields, upload, source_param=source_param)

    # 2. With an Idempotency-Key: the first request creates, a retry replays it
    keys = services.idempotency
    print_ = fingerprint(fields, upload)
    claim = await asyncio.to_thread(keys.begin, principal.tenant, idempotency_key, print_)
    if claim.outcome == "mismatch":
        raise IdempotencyMismatch("this Idempotency-Key was already used with a different request body", param="Idempotency-Key")
    if claim.outcome == "in_flight":
        raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly", param="Idempotency-Key")
    if claim.outcome == "replay" and claim.job_id:
        record = await asyncio.to_thread(services.store.get, claim.job_id)
        if record is not None:
            return _created(await jobs.avideo_object(services, record), replayed=True)
    try:
        # The job's creation also writes the key's job id, in the same step (shared/idempotency.py).
        return await _create(
            services, principal, fields, upload, idempotency=(idempotency_key, print_), source_param=source_param
        )
    except BaseException:
        # Free the key for a retry, unless the job exists after all (then the key names it: a retry replays it).
        # If Redis cannot say, the key's short in-flight lease runs out by itself.
        with contextlib.suppress(redis.RedisError, OSError):
            if await asyncio.to_thread(keys.job_of, principal.tenant, idempotency_key) is None:
                await asyncio.to_thread(keys.abandon, principal.tenant, idempotency_key)
        raise


def _created(video: Video, *, replayed: bool = False) -> Response:
    headers = {"Location": f"/v1/videos/{video.id}", "openai-poll-after-ms": POLL_AFTER_MS}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(content=json.dumps(video.dump()), status_code=202, media_type="application/json", headers=headers)


async def _create(
    services: Services,
    principal: Principal,
    fields: dict[str, Any],
    upload: bytes | None,
    *,
    idempotency: tuple[str, str] | None = None,
    source_param: str = "extend_video_id",
) -> Response:
    """The hot path: without an image or a job webhook, a create is the key lookup, the rate-limit hit
    and one atomic script (FairQueue.acreate), all on the event loop through redis.asyncio."""
    settings = services.settings
    req = parse_request(fields)
    if req.webhook_url is None:
        check_job_webhook(services, principal.tenant, None, req.webhook_events)  # no I/O without a URL
    else:
        await asyncio.to_thread(check_job_webhook, services, principal.tenant, req.webhook_url, req.webhook_events)
    if req.extend_video_id is not None and (upload is not None or req.image_url is not None):
        param = "image_url" if req.image_url is not None else "input_reference"
        raise InvalidRequest(f"an extension continues from its source's last frame: drop '{param}'", param=param)
    image_data = None
    if upload is not None or req.image_url is not None:
        image_data = await asyncio.to_thread(_image_bytes, services, req, upload)

    # An extension's source, then the LoRAs the job runs with (named, or its source's) as the tenant sees them (one
    # Redis round trip; none without LoRAs)
    source = None
    if req.extend_video_id is not None:
        source = await _extension_source(services, principal, req.extend_video_id, source_param)
    named = req.loras
    if source is not None and extension_inherits_loras(req, source.spec):
        named = inherited_loras(source.spec)
    lora_records = None
    if named:
        lora_records = await asyncio.to_thread(services.loras.visible, principal.tenant, [r.name for r in named])

    # Resolve against the model's defaults and limits (an extension: and its source's parameters)
    job_id = f"video_{uuid.uuid4().hex}"
    spec: GenerationSpec
    if source is not None:
        spec = resolve_extension(
            req,
            source,
            settings.catalog(),
            settings.default_model,
            settings.jobs,
            image_key=services.storage.key(job_id, "image"),
            loras=lora_records,
            lora_limits=settings.loras,
        )
    else:
        image_key = services.storage.key(job_id, "image") if image_data is not None else None
        spec = resolve_spec(
            req,
            settings.catalog(),
            settings.default_model,
            settings.jobs,
            has_image=image_data is not None,
            image_key=image_key,
            loras=lora_records,
            lora_limits=settings.loras,
        )
    services.quotas.check_size(principal.tenant, spec)

    # Store the fitted image beside the job (after an early look for room in the tenant's queue, so that
    # a full queue refuses before the upload), then the record and its queue entry, atomically.
    if image_data is not None and spec.image_key is not None:
        await asyncio.to_thread(services.quotas.check_room, principal.tenant, spec)
        png = await asyncio.to_thread(_fit_image, image_data, spec.width, spec.height, settings)
        await asyncio.to_thread(services.storage.put_bytes, png, spec.image_key, CONTENT_TYPES["image"])
    record = JobRecord(
        id=job_id,
        tenant=principal.tenant,
        spec=spec,
        total_steps=spec.num_inference_steps,
        webhook_url=req.webhook_url,
        webhook_events=req.webhook_events,
    )
    completion = None
    if idempotency is not None:
        completion = services.idempotency.completion(principal.tenant, *idempotency, job_id)
    return await _admit(services, record, completion)


async def _admit(services: Services, record: JobRecord, completion: IdempotentCreate | None = None) -> Response:
    """The record and its queue entry, atomically; its image (if any) is stored already."""
    try:
        # Into the tenant's queue; the dispatcher moves it to the model's worker queue (shared/fairqueue.py).
        created = await services.fairq.acreate(record, completion)
    except RateLimited:
        # The tenant's queue filled up since the early check: the job never existed.
        await _forget_image(services, record)
        raise
    except (redis.RedisError, OSError):
        # The answer may have been lost after Redis ran the script: look before saying the create failed.
        if not await _landed(services, record):
            raise
        return _created(Video.of(record))
    return _created(Video.of(record, queue_position=created.position, estimated_start_at=created.estimated_start_at(time.time())))


async def _landed(services: Services, record: JobRecord) -> bool:
    """Whether a create whose answer never came did create the job. Cleans up behind one that did not;
    if Redis cannot say, the answer is an error (503) and an uploaded image may stay behind."""
    try:
        landed = bool(await services.aioredis.exists(services.store.keys.job(record.id)))
    except (redis.RedisError, OSError):
        return False
    if not landed:
        await _forget_image(services, record)
    return landed


async def _forget_image(services: Services, record: JobRecord) -> None:
    if record.spec.image_key is not None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(services.storage.delete_prefix, services.storage.job_prefix(record.id))


def _fit_image(data: bytes, width: int, height: int, settings: Any) -> bytes:
    image = images.load_image(data, max_bytes=settings.jobs.max_image_bytes, max_pixels=settings.jobs.max_image_pixels)
    return images.to_png(images.fit_to(image, width, height))


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
    "/{video_id}/content", responses=CONTENT, summary="Download the MP4, its thumbnail or its spritesheet (an image: its PNG)"
)
def download_content(
    video_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    variant: Annotated[
        Variant | None,
        Query(
            description="video (MP4), thumbnail (WebP), spritesheet (JPEG), image (PNG, image jobs); default: video, an image job's image."
        ),
    ] = None,
) -> Response:
    record = jobs.load_job(services, principal, video_id)  # after the query is checked: a bad variant is a 400
    if variant is None:
        variant = "image" if record.spec.kind == "image" else "video"
    if record.status is not JobStatus.completed:
        raise Conflict(f"video {video_id} is {record.status.value}; content exists once it is completed", param="video_id")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise Gone(f"the outputs of video {video_id} expired at {int(record.expires_at)}", param="video_id")
    key = record.outputs.get(variant)
    if key is None:
        kinds = ", ".join(v for v in record.outputs)
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
    video_id = record.id
    channel = services.store.keys.events(video_id)
    # Subscribed (confirmed by Redis) before reading the current state, so no change can fall between the
    # two. Both happen before the 200 goes out: an unreachable Redis here is a plain 503, not a cut stream.
    updates = await services.events.subscribe(channel)
    try:
        current = await asyncio.to_thread(services.store.get, video_id) or record
        first = _sse(await jobs.avideo_object(services, current))
    except BaseException:
        await services.events.unsubscribe(channel, updates)
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield first
            # Messages published between the subscribe and the read above are older than what was sent.
            sent_version = current.version
            if current.status.is_terminal():
                return
            idle = 0.0
            while not await request.is_disconnected():
                try:
                    data = await asyncio.wait_for(updates.get(), timeout=1.0)
                except TimeoutError:
                    idle += 1.0
                    if idle >= 15.0:
                        idle = 0.0
                        yield b": keep-alive\n\n"
                    continue
                if data is INTERRUPTED:
                    # Redis went away mid-stream: end the stream cleanly and say why; the client reconnects
                    # (EventSource does by itself after `retry` ms) and first gets the state as it is then.
                    yield _sse_interrupted("store_unavailable", "The job store is unreachable; reconnect to resume.")
                    return
                idle = 0.0
                update = JobRecord.model_validate_json(data)
                if update.version <= sent_version:
                    continue
                sent_version = update.version
                yield _sse(Video.of(update))
                if update.status.is_terminal():
                    return
        finally:
            await services.events.unsubscribe(channel, updates)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse_interrupted(code: str, message: str) -> bytes:
    """The last event of a stream the server ends early: why, in OpenAI's error shape. (Not named `error`,
    which a browser's EventSource reserves for its own connection errors.)"""
    body = json.dumps({"error": {"code": code, "message": message}})
    return f"retry: 2000\nevent: interrupted\ndata: {body}\n\n".encode()


def _sse(video: Video) -> bytes:
    return f"event: video\nid: {video.status.value}-{video.progress}-{video.step}\ndata: {json.dumps(video.dump())}\n\n".encode()
