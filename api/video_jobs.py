"""From a video request's fields to the jobs it creates: the spec resolved against the model's defaults and limits
(shared/specs.py), its image fetched, fitted and stored, an extension's source and a remix's parent checked, and the
LoRAs looked up as the tenant sees them. What comes out goes to api/creation.py to be admitted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Response

from api.creation import Idempotency, admit, forget_images, new_job_id, new_record
from api.deps import Principal
from api.services import Services
from api.webhook_checks import check_job_webhook
from shared import images
from shared.errors import Forbidden, Gone, InvalidRequest, NotFound
from shared.fields import POST_PROCESSING, seeds_from
from shared.loras import resolve_job_loras
from shared.schemas import GenerationSpec, JobRecord
from shared.settings import Settings
from shared.specs import (
    MAX_SEED,
    RemixRequest,
    VideoRequest,
    check_source,
    extension_inherits_loras,
    inherited_loras,
    parse_request,
    remix_spec,
    resolve_extension,
    resolve_spec,
)
from shared.storage import CONTENT_TYPES


async def check_webhook(services: Services, principal: Principal, url: str | None, events: list[str] | None) -> None:
    if url is None:
        check_job_webhook(services, principal.tenant, None, events)  # no I/O without a URL
    else:
        await asyncio.to_thread(check_job_webhook, services, principal.tenant, url, events)


async def create_videos(
    services: Services,
    principal: Principal,
    fields: dict[str, Any],
    upload: bytes | None,
    idempotency: Idempotency | None,
    *,
    source_param: str = "extend_video_id",
) -> Response:
    """The hot path: without an image or a job webhook, a create is the key lookup, the rate-limit hit
    and one atomic script (FairQueue.acreate), all on the event loop through redis.asyncio."""
    settings = services.settings
    req = parse_request(fields)
    n = request_size(req, settings.videos.max_n)  # before any I/O: a bad n or seeds costs nothing
    check_seeds(req, n)
    await check_webhook(services, principal, req.webhook_url, req.webhook_events)
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
        source = await extension_source(services, principal, req.extend_video_id, source_param)
    named = req.loras
    if source is not None and extension_inherits_loras(req, source.spec):
        named = inherited_loras(source.spec)
    lora_records = None
    if named:
        lora_records = await asyncio.to_thread(services.loras.visible, principal.tenant, [r.name for r in named])

    # Resolve against the model's defaults and limits (an extension: and its source's parameters)
    ids = [new_job_id() for _ in range(n)]
    spec: GenerationSpec
    if source is not None:
        spec = resolve_extension(
            req,
            source,
            settings.catalog(),
            settings.default_model,
            settings.jobs,
            image_key=services.storage.key(ids[0], "image"),
            loras=lora_records,
            lora_limits=settings.loras,
        )
    else:
        image_key = services.storage.key(ids[0], "image") if image_data is not None else None
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
    await check_capabilities(services, spec)
    specs = [_nth(services, spec, job_id, seed) for job_id, seed in zip(ids, seeds_of(req, spec.seed, n), strict=True)]
    services.quotas.check_sizes(principal.tenant, specs)

    # Store the fitted image beside each job (after an early look for room in the tenant's queue, so that
    # a full queue refuses before the upload), then the records and their queue entries, atomically.
    records = [
        new_record(job_id, principal.tenant, each, webhook_url=req.webhook_url, webhook_events=req.webhook_events)
        for job_id, each in zip(ids, specs, strict=True)
    ]
    if image_data is not None and spec.image_key is not None:
        await asyncio.to_thread(services.quotas.check_room, principal.tenant, spec, n)
        png = await asyncio.to_thread(_fit_image, image_data, spec.width, spec.height, settings)
        try:
            for each in specs:
                assert each.image_key is not None
                await asyncio.to_thread(services.storage.put_bytes, png, each.image_key, CONTENT_TYPES["image"])
        except BaseException:
            await forget_images(services, records)  # no record will ever name them: none is left behind
            raise
    return await admit(services, records, idempotency)


async def check_capabilities(services: Services, spec: GenerationSpec) -> None:
    """Refuses post-processing that no live worker of the model can run (their heartbeats list the factors they
    can; a worker of a release without post-processing, none). With no live worker at all the job is accepted and
    waits: a worker that starts without the stage fails it with the same sentence (worker/postprocess.py)."""
    wanted = [(f.name, getattr(spec, f.name)) for f in POST_PROCESSING if getattr(spec, f.name) != 1]
    if not wanted:
        return
    workers = await asyncio.to_thread(services.store.live_workers, spec.model)
    if not workers:
        return
    for field, factor in wanted:
        if not any(factor in w.get(field, [1]) for w in workers):
            raise InvalidRequest(
                f"invalid '{field}' {factor}: no live worker of model {spec.model!r} can {field} by {factor} "
                f"(they can: {sorted({x for w in workers for x in w.get(field, [1])})})",
                param=field,
            )


def request_size(req: VideoRequest, max_n: int) -> int:
    """How many videos the request makes: `n`, else as many as `seeds` names, else 1."""
    n = req.n if req.n is not None else len(req.seeds) if req.seeds is not None else 1
    if not 1 <= n <= max_n:
        param = "n" if req.n is not None else "seeds"
        raise InvalidRequest(f"invalid '{param}' {n}: must make between 1 and {max_n} videos (WANQ_VIDEOS_MAX_N)", param=param)
    return n


def seeds_of(req: VideoRequest, first: int, n: int) -> list[int]:
    """The n seeds in order: `seeds` as given, else first, first+1, ... (wrapping within the seed range)."""
    if req.seeds is None:
        return seeds_from(first, n)
    return check_seeds(req, n)


def check_seeds(req: VideoRequest, n: int) -> list[int]:
    """`seeds` as given, refused with a 400 naming it unless it has n seeds in range that agree with `seed`."""
    if req.seeds is None:
        return []
    if len(req.seeds) != n:
        raise InvalidRequest(f"invalid 'seeds': {len(req.seeds)} seeds for n={n}; send one per video", param="seeds")
    for seed in req.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"invalid 'seeds': {seed} must be between 0 and {MAX_SEED}", param="seeds")
    if req.seed is not None and req.seed != req.seeds[0]:
        raise InvalidRequest(
            f"invalid 'seeds': its first seed {req.seeds[0]} contradicts 'seed' {req.seed}; send one of the two", param="seeds"
        )
    return list(req.seeds)


def _nth(services: Services, spec: GenerationSpec, job_id: str, seed: int) -> GenerationSpec:
    """The spec of one of the request's videos: its seed, and its own image (stored under its own job)."""
    image_key = None if spec.image_key is None else services.storage.key(job_id, "image")
    return spec.model_copy(update={"seed": seed, "image_key": image_key})


async def remix(services: Services, principal: Principal, parent_record: JobRecord, req: RemixRequest) -> Response:
    """A new job with the parent's parameters, seed and image (its own copy) and a new prompt."""
    settings = services.settings
    await check_webhook(services, principal, req.webhook_url, req.webhook_events)
    if parent_record.tenant != principal.tenant:
        raise Forbidden(
            f"video {parent_record.id} belongs to tenant {parent_record.tenant!r}; remix a video of your own tenant",
            param="video_id",
        )
    parent = parent_record.spec
    job_id = new_job_id()
    image_key, copy_from = None, None
    if parent.extend_from is not None:
        # A remix of an extension extends the same source again: that source must still be there.
        await extension_source(services, principal, parent.extend_from, "video_id")
        image_key = services.storage.key(job_id, "image")
    elif parent.image_key is not None:
        image_key, copy_from = services.storage.key(job_id, "image"), parent.image_key
    spec = remix_spec(
        parent,
        req.prompt,
        settings.catalog(),
        settings.jobs,
        image_key=image_key,
        interpolate=req.interpolate,
        upscale=req.upscale,
        decoder=req.decoder,
        preview_every=req.preview_every,
    )
    await check_capabilities(services, spec)
    if parent.loras:
        await _check_remix_loras(services, principal, parent_record)
    services.quotas.check_size(principal.tenant, spec)
    new = new_record(
        job_id,
        principal.tenant,
        spec,
        webhook_url=req.webhook_url,
        webhook_events=req.webhook_events,
        remixed_from=parent_record.id,
    )
    if copy_from is not None and image_key is not None:
        # The parent's stored image, copied by the store itself: the remix keeps it if the parent is deleted.
        await asyncio.to_thread(services.quotas.check_room, principal.tenant, spec)
        try:
            await asyncio.to_thread(services.storage.copy, copy_from, image_key)
        except KeyError:
            raise Gone(f"the input image of video {parent_record.id} is no longer stored", param="video_id") from None
    return await admit(services, [new])


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


async def extension_source(services: Services, principal: Principal, video_id: str, param: str) -> JobRecord:
    """The video an extension continues, if the caller may continue it (shared/specs.py `check_source`)."""
    record = await asyncio.to_thread(services.store.get, video_id)
    if record is None or (record.tenant != principal.tenant and not principal.admin):
        raise NotFound(f"no video with id {video_id!r} to extend", param=param)
    return check_source(record, video_id, principal.tenant, time.time(), param=param)


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


def _fit_image(data: bytes, width: int, height: int, settings: Settings) -> bytes:
    image = images.load_image(data, max_bytes=settings.jobs.max_image_bytes, max_pixels=settings.jobs.max_image_pixels)
    return images.to_png(images.fit_to(image, width, height))
