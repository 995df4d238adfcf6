"""The public video object: what every route, event stream and webhook says about a job (OpenAI's Video shape
plus wanq's own fields). One pydantic model, used to build the answers and to generate their OpenAPI schema.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.fields import (
    DECODER_DESCRIPTION,
    FLOW_SHIFT,
    FPS,
    GUIDANCE_SCALE,
    GUIDANCE_SCALE_2,
    INTERPOLATE,
    NUM_INFERENCE_STEPS,
    PREVIEW_EVERY,
    SEED,
    UPSCALE,
    Decoder,
)
from shared.schemas import CacheStats, Expert, JobCache, JobRecord, JobStatus, Stage


class VideoError(BaseModel):
    code: str = Field(
        description="Stable machine-readable code: invalid_request, model_not_available, out_of_memory, timeout, "
        "canceled, storage_unavailable, internal_error."
    )
    message: str = Field(description="What happened, in words.")


class VideoLora(BaseModel):
    name: str = Field(description="The LoRA's name in the library (GET /v1/loras).")
    sha256: str = Field(description="Of the file used: with the seed and parameters, what reproduces the video.")
    strength: float = Field(description="Its multiplier.")
    expert: Expert = Field(description="Which transformer(s) it went into: both, high_noise or low_noise (A14B).")


class Video(BaseModel):
    """A video job. Fields after `remixed_from_video_id` are wanq's own."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The job's id, `video_` and 32 hex digits.", examples=["video_4f1c0b8e2d7a4c1e9f3b6a5d8c2e1f0a"])
    object: Literal["video"] = Field(default="video", description="Always `video`.")
    model: str = Field(description="The model id that makes it (GET /v1/models).")
    status: JobStatus = Field(description="queued -> in_progress -> completed, failed or canceled.")
    progress: int = Field(ge=0, le=100, description="Percent done, weighted by stage; denoising moves with each step.")
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = Field(default=None, description="Unix seconds, once it ended (any outcome).")
    expires_at: int | None = Field(
        default=None, description="Unix seconds: when its files are deleted (completion + WANQ_JOBS_RETENTION_S)."
    )
    error: VideoError | None = Field(default=None, description="Why it failed or was canceled.")
    seconds: str = Field(
        description="Duration of the delivered video, total_frames / fps, as a decimal string (e.g. `5.0625`); for an "
        "extension, the whole video's.",
        examples=["5"],
    )
    size: str = Field(
        description="`WIDTHxHEIGHT` of the delivered MP4: the generated size times `upscale`.", examples=["1280x704"]
    )
    prompt: str = Field(description="What the video shows.")
    remixed_from_video_id: str | None = Field(default=None, description="The job this one remixes, if any.")
    stage: Stage = Field(
        description="queued, loading, encoding_prompt, denoising (see step), decoding, interpolating and upscaling (when the job asks for them), encoding_video, uploading, done."
    )
    step: int = Field(ge=0, description="Denoising steps done.")
    total_steps: int = Field(ge=1, description="Denoising steps in all (num_inference_steps).")
    num_frames: int = Field(
        ge=1,
        description="Frames this job generates, as the request's num_frames: 4k+1 (17, 49, 81, 121, ...); 1 for an "
        "image; for an extension, the new part's (total_frames is the whole video's).",
    )
    total_frames: int = Field(
        ge=1,
        description="Frames of the delivered video: num_frames, or for an extension the whole video's, "
        "source_frames + num_frames - 1; with `interpolate` k, (that - 1) x k + 1; seconds is total_frames / fps.",
    )
    fps: int = Field(
        ge=FPS.minimum,
        le=(FPS.maximum or 60) * max(INTERPOLATE.choices),
        description="Frames per second of the MP4: the generated fps times `interpolate`.",
    )
    seed: int = SEED.value("The seed used: the same seed, prompt and parameters give the same video.")
    negative_prompt: str = Field(description="What the video avoids (the model's default if none was given).")
    num_inference_steps: int = NUM_INFERENCE_STEPS.value("Denoising steps.")
    guidance_scale: float = GUIDANCE_SCALE.value("Classifier-free guidance; 1 or less runs no unconditional branch.")
    guidance_scale_2: float | None = GUIDANCE_SCALE_2.value(
        "Guidance of the low-noise expert (A14B models); null for single-expert models.", optional=True
    )
    flow_shift: float = FLOW_SHIFT.value("Shift of the flow-matching noise schedule.")
    has_image: bool = Field(
        description="Whether it animates an input image (image-to-video; an extension animates its source's last frame)."
    )
    kind: Literal["video", "image"] = Field(
        default="video", description="`image`: one frame, made by POST /v1/images/generations; its content is a PNG."
    )
    extended_from_video_id: str | None = Field(
        default=None, description="The video this one extends: its video is that one's, then the new frames."
    )
    source_frames: int | None = Field(
        default=None,
        ge=1,
        description="An extension's frames taken from its source; its MP4 has total_frames = source_frames + "
        "num_frames - 1 (the new part's first frame repeats the source's last and is left out).",
    )
    loras: list[VideoLora] = Field(default_factory=list, description="The LoRAs it runs with, in the order named.")
    interpolate: int = INTERPOLATE.value(
        "Frame interpolation factor k (1: none): the generated frames are at positions i x k of the MP4."
    )
    upscale: int = UPSCALE.value("Upscaling factor (1: none): size is the generated size times it.")
    cache: JobCache = Field(
        default=None,
        description="The step cache the job asked for (cache-dit DBCache settings), false for none, "
        "null for the worker's configured default.",
    )
    cache_stats: CacheStats | None = Field(
        default=None,
        description="What the step cache skipped in its latest run, once denoised; null when it ran without one.",
    )
    preview_every: int | None = PREVIEW_EVERY.value(
        "A preview every this many steps, as the job asked (0: none); null: the worker's default.", optional=True
    )
    preview_step: int | None = Field(
        default=None,
        ge=0,
        description="Steps done at the latest preview (GET /v1/videos/{id}/content?variant=preview, an MP4 at half the "
        "size, one frame per latent frame); null until one is made. Each new one is a `video.preview` SSE event.",
    )
    decoder: Decoder = Field(default="full", description=DECODER_DESCRIPTION)
    started_at: int | None = Field(default=None, description="Unix seconds: when its first run started.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage of the latest run.")
    attempts: int = Field(ge=0, description="Runs that started (a worker that died mid-job makes one more).")
    cancel_requested: bool = Field(default=False, description="A cancel is pending: it stops at its next denoising step.")
    queue_position: int | None = Field(
        default=None, ge=0, description="Only while queued: jobs ahead of it in the fair dispatch order."
    )
    estimated_start_at: int | None = Field(
        default=None, description="Only while queued: a rough start time (Unix seconds) from recent run times."
    )
    eta_s: float | None = Field(
        default=None,
        ge=0,
        description="Only while in progress: seconds until it completes, from this run's own step times once a step "
        "has run, before that from the last finished run of the same model at the same size; null when there is "
        "nothing to go by (the first run at a size has no estimate before it ends).",
    )
    tenant: str | None = Field(default=None, description="Admin listings only: whose job it is.")
    video_ids: list[str] | None = Field(
        default=None,
        description="Only in the answer to a create with n > 1 (wanq's extension): all n ids, in seed order; this "
        "object is the first's.",
    )

    @classmethod
    def of(cls, record: JobRecord, **extra: Any) -> Video:
        """The public object of a job record; `extra`: queue_position, estimated_start_at, tenant."""
        spec = record.spec
        return cls(
            id=record.id,
            object="video",
            model=spec.model,
            status=record.status,
            progress=record.progress,
            created_at=int(record.created_at),
            completed_at=int(record.completed_at) if record.completed_at else None,
            expires_at=int(record.expires_at) if record.expires_at else None,
            error=VideoError(code=record.error.code, message=record.error.message) if record.error else None,
            seconds=spec.seconds,
            size=spec.output_size,
            prompt=spec.prompt,
            remixed_from_video_id=record.remixed_from,
            stage=record.stage,
            step=record.step,
            total_steps=record.total_steps or spec.num_inference_steps,
            num_frames=spec.num_frames,
            total_frames=spec.output_frames,
            fps=spec.output_fps,
            seed=spec.seed,
            negative_prompt=spec.negative_prompt,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            guidance_scale_2=spec.guidance_scale_2,
            flow_shift=spec.flow_shift,
            has_image=spec.image_key is not None,
            kind=spec.kind,
            extended_from_video_id=spec.extend_from,
            source_frames=spec.source_frames if spec.extend_from else None,
            loras=[VideoLora(name=x.name, sha256=x.sha256, strength=x.strength, expert=x.expert) for x in spec.loras],
            cache=spec.cache,
            interpolate=spec.interpolate,
            upscale=spec.upscale,
            cache_stats=record.cache_stats,
            preview_every=spec.preview_every,
            preview_step=record.preview_step,
            decoder=spec.decoder,
            started_at=int(record.started_at) if record.started_at else None,
            timings=record.timings,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            eta_s=_seconds_left(record),
            **extra,
        )

    def dump(self) -> dict[str, Any]:
        """As JSON-ready data: every field `of` sets; queue_position, estimated_start_at and tenant only where they
        were given (routes answer with `response_model_exclude_unset=True`, the same)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _seconds_left(record: JobRecord) -> float | None:
    if record.status is not JobStatus.in_progress or record.estimated_completed_at is None:
        return None
    return round(max(0.0, record.estimated_completed_at - time.time()), 1)


class VideoList(BaseModel):
    object: Literal["list"] = Field(description="Always `list`.")
    data: list[Video] = Field(description="The jobs of this page, in the order asked for (newest first by default).")
    first_id: str | None = Field(description="The first id of this page: `before` for the previous page.")
    last_id: str | None = Field(description="The last id of this page: `after` for the next page.")
    has_more: bool = Field(description="Whether a page follows this one (ask with `after=last_id`).")


class VideoDeleted(BaseModel):
    id: str = Field(description="The deleted job's id.")
    object: Literal["video.deleted"] = Field(description="Always `video.deleted`.")
    deleted: bool = Field(description="True: the record and its stored files are gone.")
