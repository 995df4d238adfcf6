"""`/v1/images/generations`: OpenAI's images request, made by Wan2.2 as single frames on the video models' queues.

Each image is a job like a video (`kind` "image", one frame): it has an id, shows in GET /v1/videos, and its
`/content` is the PNG until it expires. The request waits for its jobs up to WANQ_IMAGES_WAIT_S: all done, 200 with
the PNGs; otherwise 202 with their ids, and the jobs go on.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from api.bodies import json_body_schema, read_job_body
from api.creation import new_job_id, new_record, place
from api.deps import PrincipalDep, ServicesDep
from api.openapi import IMAGES, GeneratedImage, ImagesPending, ImagesResponse
from api.services import Services
from shared.errors import Conflict, InvalidRequest, WanqError
from shared.image_specs import ImageFormat, ImageRequest, image_format, resolve_images
from shared.schemas import JobRecord, JobStatus
from shared.specs import parse_fields

router = APIRouter(prefix="/v1/images", tags=["images"])

POLL_S = 0.2
_schema = json_body_schema(ImageRequest)


@router.post(
    "/generations",
    responses=IMAGES,
    openapi_extra=_schema,
    summary="Generate images (single Wan2.2 frames) in OpenAI's images shape; 202 if they take longer than the wait",
)
async def generate_images(request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    settings = services.settings
    # 1. Read and check the request; one spec per image
    fields, _ = await read_job_body(request, file_field="")
    req = parse_fields(ImageRequest, fields)
    specs = resolve_images(req, settings.catalog(), settings.default_model, settings.jobs, max_n=settings.images.max_n)
    services.quotas.check_sizes(principal.tenant, specs)

    # 2. One job each, into the tenant's queue, all or none (api/creation.py)
    records = [new_record(new_job_id(), principal.tenant, spec) for spec in specs]
    await place(services, records)

    # 3. Wait for them, up to the limit
    finals = await _wait(services, [r.id for r in records], settings.images.wait_s)
    if finals is None:
        pending = ImagesPending(
            created=int(time.time()), status="in_progress", data=[], ids=[r.id for r in records], waited_s=settings.images.wait_s
        )
        return JSONResponse(pending.model_dump(mode="json"), status_code=202)
    for final in finals:
        if final.status is not JobStatus.completed:
            raise _failure(final)

    # 4. The images, inline (in the asked format) or as URLs of the PNGs
    url_form = req.response_format == "url"
    fmt = image_format(req)
    data = []
    for final in finals:
        key = final.outputs["image"]
        if url_form:
            image = GeneratedImage(url=_url(services, request, final.id, key), id=final.id, seed=final.spec.seed)
        else:
            png = await asyncio.to_thread(services.storage.get_bytes, key)
            encoded = png if fmt == "png" else await asyncio.to_thread(_reencode, png, fmt, req.output_compression)
            image = GeneratedImage(b64_json=base64.b64encode(encoded).decode(), id=final.id, seed=final.spec.seed)
        data.append(image)
    answer = ImagesResponse(created=int(time.time()), data=data, size=specs[0].size, output_format=fmt)
    return JSONResponse(answer.model_dump(mode="json"))


async def _wait(services: Services, ids: list[str], wait_s: float) -> list[JobRecord] | None:
    """The jobs once all have ended, or None if some have not within `wait_s`."""
    deadline = time.monotonic() + wait_s
    keys = [services.store.keys.job(job_id) for job_id in ids]
    while True:
        raws = await services.aioredis.mget(keys)
        records = [JobRecord.model_validate_json(raw) for raw in raws if raw]
        if len(records) < len(ids):
            raise Conflict("an image's job was deleted while its request waited", param="n")
        if all(r.status.is_terminal() for r in records):
            return records
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(POLL_S, remaining))


def _failure(record: JobRecord) -> WanqError:
    error = record.error
    why = f"{error.code}: {error.message}" if error else record.status.value
    message = f"image job {record.id} {record.status.value} ({why})"
    if record.status is JobStatus.canceled:
        return Conflict(message, param="n")
    if error is not None and error.code == InvalidRequest.code:
        return InvalidRequest(message)
    return WanqError(message)


def _reencode(png: bytes, fmt: ImageFormat, compression: int | None) -> bytes:
    """The stored PNG as JPEG or WebP; OpenAI's output_compression (default 100) is the encoder's quality."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format=fmt.upper(), quality=100 if compression is None else compression)
    return out.getvalue()


def _url(services: Services, request: Request, job_id: str, key: str) -> str:
    if services.settings.s3.presigned_content:
        return services.storage.presigned_url(key)
    return f"{str(request.base_url).rstrip('/')}/v1/videos/{job_id}/content"
