"""The job as both sides see it: its status, stages, generation spec, record and public video object."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from shared.fields import Decoder, no_booleans


class JobStatus(StrEnum):
    queued = "queued"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.canceled})


class Stage(StrEnum):
    queued = "queued"
    loading = "loading"
    encoding_prompt = "encoding_prompt"
    denoising = "denoising"
    decoding = "decoding"
    interpolating = "interpolating"
    """The job's `interpolate` (RIFE), after the decode; skipped when it is 1."""
    upscaling = "upscaling"
    """The job's `upscale`, after the interpolation; skipped when it is 1."""
    encoding_video = "encoding_video"
    uploading = "uploading"
    done = "done"


# Share of the progress bar each stage covers, in order; denoising moves with its steps. The post-processing stages
# are seconds beside a denoise of minutes (benchmarks/gpu_postprocess.py), hence their small spans.
_STAGE_SPANS: dict[Stage, tuple[int, int]] = {
    Stage.queued: (0, 0),
    Stage.loading: (0, 2),
    Stage.encoding_prompt: (2, 5),
    Stage.denoising: (5, 88),
    Stage.decoding: (88, 92),
    Stage.interpolating: (92, 94),
    Stage.upscaling: (94, 96),
    Stage.encoding_video: (96, 98),
    Stage.uploading: (98, 99),
    Stage.done: (100, 100),
}


def progress_for(stage: Stage, step: int = 0, total_steps: int = 0) -> int:
    """Progress in percent: the stage's start, plus its share of steps while denoising."""
    start, end = _STAGE_SPANS[stage]
    if stage is Stage.denoising and total_steps > 0:
        return start + (end - start) * min(step, total_steps) // total_steps
    return start


Expert = Literal["both", "high_noise", "low_noise"]
"""Which transformer a LoRA goes into: A14B's high-noise expert (`transformer`), its low-noise one
(`transformer_2`), or both; single-transformer models (TI2V-5B) take `both` only."""


class JobLora(BaseModel):
    """One LoRA of a job, resolved by the API from the tenant's library (shared/loras.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sha256: str
    """Of the file: workers verify what they fetch, and cache files by it."""
    storage_key: str
    size_bytes: int
    strength: float
    expert: Expert


class CacheOptions(BaseModel):
    """A job's cache-dit DBCache settings (lossy: blocks are skipped on steps that barely change). Omitted fields
    take the worker's (WANQ_ENGINE_CACHE_*; SGLang-diffusion's defaults: fn 1, bn 0, warmup 4, rdt 0.24, mc 3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fn: int | None = Field(default=None, ge=1, le=64, description="First blocks always computed (the residual probe).")
    bn: int | None = Field(default=None, ge=0, le=64, description="Last blocks always computed.")
    warmup: int | None = Field(default=None, ge=0, le=1000, description="First steps of each expert always computed.")
    rdt: float | None = Field(
        default=None,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Residual-difference threshold: 0 never skips; higher skips more; >= 1 skips every step it may.",
    )
    mc: int | None = Field(default=None, ge=-1, le=1000, description="Most cached steps in a row (-1: no limit).")
    taylorseer: bool | None = Field(default=None, description="TaylorSeer: extrapolate the skipped blocks' residual.")
    ts_order: int | None = Field(default=None, ge=1, le=2, description="TaylorSeer order, 1 or 2.")

    _numbers = no_booleans("fn", "bn", "warmup", "rdt", "mc", "ts_order")

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # What the job gave, the same everywhere (in Redis, and in every answer about it): unset means the worker's.
        return {key: value for key, value in handler(self).items() if value is not None}

    def over(self, base: DBCacheSetting) -> DBCacheSetting:
        """The setting a job runs with: the fields it gave over `base` (the worker's)."""
        return base.model_copy(update=self.model_dump())


class DBCacheSetting(BaseModel):
    """A whole DBCache setting, what a job runs with: the worker's (WANQ_ENGINE_CACHE_*, whose defaults are these,
    SGLang-diffusion's), with the job's `CacheOptions` over it (worker/cache.py `resolve`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fn: int = 1
    bn: int = 0
    warmup: int = 4
    rdt: float = 0.24
    mc: int = 3
    taylorseer: bool = False
    ts_order: int = 1


class CacheStats(BaseModel):
    """What the step cache skipped in a job's run; per expert: `transformer` (A14B's high-noise expert, TI2V-5B's
    only one) and `transformer_2` (A14B's low-noise expert)."""

    blocks_skipped_share: float = Field(
        ge=0, le=1, description="Share of the transformer block computations skipped (each guidance pass counted)."
    )
    steps: dict[str, int] = Field(description="Denoising steps each expert ran.")
    steps_reused: dict[str, int] = Field(
        description="Steps on which each expert skipped its middle blocks and reused their residual from an earlier step."
    )


def parse_job_cache(value: Any) -> CacheOptions | Literal[False] | None:
    """The `cache` field from JSON (an object, true or false) or a form field (the same as JSON text); true is `{}`:
    the cache on, with the worker's settings."""
    if isinstance(value, str):  # multipart/form-data sends every field as text
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('must be a JSON object such as {"rdt": 0.3}, true or false') from None
    # true: the cache on with the worker's settings; []: Redis' Lua cjson writes an empty object back as an empty array
    if value is True or value == []:
        value = {}
    if value is None or value is False or isinstance(value, CacheOptions):
        return value
    if not isinstance(value, dict):
        raise ValueError('must be an object such as {"rdt": 0.3}, true or false')
    try:
        return CacheOptions.model_validate(value)
    except ValidationError as exc:
        # Nested in the request's own error: "invalid 'cache' {...}: Value error, rdt -1: ..."
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where} {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}") from None


JobCache = Annotated[CacheOptions | Literal[False] | None, BeforeValidator(parse_job_cache)]
"""What a job says about caching: settings (`{}` = the worker's), False = none for this job, None = the worker's
default. Parsed (from JSON, a form field or a Redis record) by the type itself, wherever it is a field."""
RequestCache = Annotated[CacheOptions | bool | None, BeforeValidator(parse_job_cache)]
"""The request's `cache`: as JobCache (true becomes `{}`); typed with `bool` so that its schema says true is taken."""


_ADDED_SINCE_RELEASE: dict[str, Any] = {
    "kind": "video",
    "extend_from": None,
    "source_frames": 0,
    "loras": [],
    "cache": None,
    "interpolate": 1,
    "upscale": 1,
    "preview_every": None,
    "decoder": "full",
}
"""Spec fields a previous release's worker does not know, with the value that means "not used": left out when so."""


class GenerationSpec(BaseModel):
    """Everything a worker needs to generate one video; resolved and validated by the API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    flow_shift: float
    seed: int
    image_key: str | None = None
    """Storage key of the conditioning image (already resized and cropped to width x height). An extension's is
    where its worker stores the source's last frame, the frame it continued from."""
    kind: Literal["video", "image"] = "video"
    """`image`: a single frame (POST /v1/images/generations), delivered as a PNG."""
    extend_from: str | None = None
    """An extension: the id of the completed video whose last frame it continues from (worker/extension.py)."""
    source_frames: int = 0
    """An extension: the frames of its source's whole video, which its own video keeps before the new ones."""
    loras: tuple[JobLora, ...] = ()
    """The adapters this job runs with, in the order named."""

    # A Lua script that rewrites the record turns an empty JSON array into an empty object (cjson cannot tell them apart).
    @field_validator("loras", mode="before")
    @classmethod
    def _empty_object_is_no_loras(cls, value: Any) -> Any:
        return () if value == {} else value

    # A job that uses none of the fields added since the previous release is stored exactly as before they existed,
    # so workers of the previous version (which refuse unknown fields) still read it during a rolling upgrade.
    @model_serializer(mode="wrap")
    def _no_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, default in _ADDED_SINCE_RELEASE.items():
            if name in data and (data[name] == default or (default == [] and data[name] == ())):
                del data[name]
        return data

    cache: JobCache = None
    """cache-dit settings for this job; False = none; None = the worker's default (WANQ_ENGINE_CACHE)."""
    interpolate: Literal[1, 2, 4] = 1
    """Frame interpolation after the decode: (F-1) x k + 1 frames at fps x k, the generated ones at i x k."""
    upscale: Literal[1, 2, 4] = 1
    """Upscaling after the interpolation: width and height times k."""
    preview_every: int | None = None
    """A preview every this many steps (0: none); None = the worker's default (WANQ_ENGINE_PREVIEW_EVERY)."""
    decoder: Decoder = "full"
    """`tiny`: the final latents decoded by the worker's TAEHV decoder (a draft) instead of the model's VAE."""

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def output_size(self) -> str:
        """`WIDTHxHEIGHT` of the delivered MP4 (after `upscale`)."""
        return f"{self.width * self.upscale}x{self.height * self.upscale}"

    @property
    def output_fps(self) -> int:
        """Frames per second of the delivered MP4 (after `interpolate`)."""
        return self.fps * self.interpolate

    @property
    def output_frames(self) -> int:
        """Frames of the delivered MP4: total_frames after `interpolate`, (total_frames - 1) x k + 1."""
        return (self.total_frames - 1) * self.interpolate + 1

    @property
    def output_pixel_frames(self) -> int:
        """width x height x frames of the delivered MP4 (WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES bounds it)."""
        return self.width * self.height * self.upscale**2 * self.output_frames

    @property
    def total_frames(self) -> int:
        """Frames of the delivered video: an extension's are its source's, then its own but the first (which
        repeats the source's last frame)."""
        return self.source_frames + self.num_frames - 1 if self.extend_from else self.num_frames

    @property
    def seconds(self) -> str:
        """Duration of the delivered video (an extension's: the whole video, its source's frames included)."""
        value = self.output_frames / self.output_fps
        return f"{value:g}" if value != int(value) else str(int(value))


LAST_FRAME = "last_frame"
"""The output an upscaled video keeps beside its MP4: its last generated frame as a PNG, before interpolation and
upscaling, which an extension of it continues from (worker/extension.py). Not a downloadable variant."""


class JobError(BaseModel):
    code: str
    message: str


class JobRecord(BaseModel):
    """What Redis holds for a job. State changes go through `JobStore` transitions only."""

    id: str
    tenant: str = "default"
    spec: GenerationSpec
    status: JobStatus = JobStatus.queued
    stage: Stage = Stage.queued
    progress: int = 0
    step: int = 0
    total_steps: int = 0
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    attempt_started_at: float | None = None
    generated_at: float | None = None
    """When the GPU part (encode, denoise, decode) of the attempt ended; export and upload follow."""
    deadline_at: float | None = None
    """The running attempt's time limit (set by the worker that claimed it)."""
    completed_at: float | None = None
    expires_at: float | None = None
    error: JobError | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    attempts: int = 0
    worker: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    """Variant name -> storage key."""
    cancel_requested: bool = False
    version: int = 0
    """Incremented by every transition (pub/sub messages may arrive after a newer read)."""
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    remixed_from: str | None = None
    """A remix: the job whose parameters, seed (and image) it reuses with a new prompt."""
    cache_stats: CacheStats | None = None
    """What the step cache skipped in the latest run (None: it ran without one, or has not denoised yet)."""
    estimated_completed_at: float | None = None
    preview_step: int | None = None
    """Steps done at the latest preview (`outputs["preview"]`); None: none made yet."""
    """The running attempt's estimate of when it completes (shared/estimate.py); None: nothing to go by yet."""

    # Redis' Lua cjson turns empty JSON objects into empty arrays; read them back as objects.
    @field_validator("timings", "outputs", mode="before")
    @classmethod
    def _empty_array_is_empty_object(cls, value: Any) -> Any:
        return {} if value == [] else value

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _empty_object_is_empty_array(cls, value: Any) -> Any:
        return [] if value == {} else value
