"""Turns a create request (OpenAI's fields plus Wan's) into a validated `GenerationSpec`.

Rules, applied in this order:
- Omitted fields take the model's own defaults (shared/catalog.py).
- Duration: `num_frames` wins when given; else `seconds` becomes the 4k+1 frame count nearest to
  seconds x fps (4 s at 16 fps -> 65 frames); else the model's default frame count. The reported
  `seconds` is always num_frames / fps.
- Every check names the field and the value it refused.
"""

from __future__ import annotations

import math
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest, ModelNotAvailable
from shared.schemas import GenerationSpec, JobCache, parse_job_cache
from shared.settings import JobSettings

MAX_SEED = 2**32 - 1


# The request's numeric generation fields (each refuses a JSON boolean); `wanq generate` takes the same ones.
NUMBER_FIELDS = (
    "seconds",
    "num_frames",
    "fps",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "seed",
    "flow_shift",
)


class VideoRequest(BaseModel):
    """The body of `POST /v1/videos` (JSON or multipart form fields). Omitted fields take the model's own
    defaults (GET /v1/models lists them); limits named WANQ_JOBS_* are the deployment's (defaults shown)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
    # Ranges are in the schema only (json_schema_extra): resolve_spec checks them, with messages that name the
    # field, the value and the rule, and with the deployment's own limits.

    prompt: str = Field(description="What the video shows (at most WANQ_JOBS_MAX_PROMPT_CHARS, 4000, characters).")
    model: str | None = Field(
        default=None, description="A model id from GET /v1/models; default: the first one the deployment serves."
    )
    size: str | None = Field(
        default=None,
        description='"WIDTHxHEIGHT", e.g. "1280x720"; multiples of 16 (TI2V-5B: 32), at most WANQ_JOBS_MAX_PIXELS '
        "(1280x1280) pixels; default: the model's (TI2V-5B 1280x704, A14B 1280x720).",
        examples=["1280x704"],
    )
    seconds: float | None = Field(
        default=None,
        json_schema_extra={"exclusiveMinimum": 0},
        description="Duration; becomes the 4k+1 frame count nearest to seconds x fps (4 s at 16 fps -> 65 frames). "
        'num_frames wins if both are given. OpenAI\'s SDK types it as the string "4", "8" or "12"; any number is taken.',
    )
    negative_prompt: str | None = Field(default=None, description="What to avoid; default: the model's (Wan's own list).")
    num_frames: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 5},
        description="Frames, 4k+1 (17, 49, 81, 121...), at most WANQ_JOBS_MAX_FRAMES (241); default: the model's "
        "(A14B 81, TI2V-5B 121).",
    )
    fps: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1, "maximum": 60},
        description="Frames per second; default: the model's (A14B 16, TI2V-5B 24).",
    )
    num_inference_steps: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1},
        description="Denoising steps, at most WANQ_JOBS_MAX_STEPS (100); default: the model's (A14B 40, TI2V-5B 50).",
    )
    guidance_scale: float | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": 30},
        description="Classifier-free guidance; 1 or less runs no unconditional branch (one forward per step); "
        "default: the model's (T2V-A14B 4.0, I2V-A14B 3.5, TI2V-5B 5.0).",
    )
    guidance_scale_2: float | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": 30},
        description="Guidance of the low-noise expert (A14B models only); default: the model's (T2V-A14B 3.0, I2V-A14B 3.5).",
    )
    seed: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": MAX_SEED},
        description="Seed; default: a random one (the video object shows it).",
    )
    flow_shift: float | None = Field(
        default=None,
        json_schema_extra={"minimum": 0.01, "maximum": 100},
        description="Shift of the flow-matching schedule; default: the model's (T2V-A14B 12.0, others 5.0).",
    )
    image_url: str | None = Field(
        default=None,
        description="https:// or data: URL of the first frame (image-to-video); or send the file as `input_reference` "
        "(multipart). Scaled to cover the size and centre-cropped.",
    )
    cache: JobCache = Field(
        default=None,
        description="Step cache for this job (cache-dit DBCache; lossy, faster): an object of settings, each optional "
        '(fn, bn, warmup, rdt, mc, taylorseer, ts_order; e.g. {"rdt": 0.3}; omitted ones are the worker\'s), '
        "or false for none; default: the worker's configured cache (WANQ_ENGINE_CACHE, none unless set).",
    )
    webhook_url: str | None = Field(
        default=None, description="http(s) URL told of this job's events, signed with the tenant's webhook secret."
    )
    webhook_events: list[str] | None = Field(
        default=None,
        description="Events sent to webhook_url: video.started, video.completed, video.failed, video.canceled "
        "(default: these four), video.progress.",
    )

    @field_validator(*NUMBER_FIELDS, mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1; a boolean where a number belongs is a client bug worth naming.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, value: Any) -> Any:
        return parse_job_cache(value)


def parse_request(data: dict[str, Any]) -> VideoRequest:
    """Validates types; the first problem becomes an InvalidRequest naming the field and value."""
    try:
        return VideoRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            raise InvalidRequest(f"unknown field '{field}'", param=field) from None
        if err["type"] == "missing":
            raise InvalidRequest(f"'{field}' is required", param=field) from None
        value = _short(err.get("input"))
        raise InvalidRequest(f"invalid '{field}' {value}: {err['msg']}", param=field) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise InvalidRequest(f"invalid '{field}' {_short(value)}: {why}", param=field)


def parse_size(size: str, multiple: int) -> tuple[int, int]:
    parts = size.lower().split("x")
    _check(len(parts) == 2 and all(p.isdigit() for p in parts), "size", size, 'expected "WIDTHxHEIGHT"')
    width, height = int(parts[0]), int(parts[1])
    _check(width > 0 and height > 0, "size", size, "width and height must be positive")
    _check(
        width % multiple == 0 and height % multiple == 0,
        "size",
        size,
        f"width and height must be multiples of {multiple} for this model "
        f"(e.g. {_round_to(width, multiple)}x{_round_to(height, multiple)})",
    )
    return width, height


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def frames_for_seconds(seconds: float, fps: int) -> int:
    """The 4k+1 frame count nearest to seconds x fps."""
    return 4 * max(1, round(seconds * fps / 4)) + 1


def resolve_spec(
    req: VideoRequest,
    catalog: dict[str, ModelSpec],
    default_model: str,
    limits: JobSettings,
    *,
    has_image: bool,
    image_key: str | None = None,
) -> GenerationSpec:
    # 1. Model
    model_id = req.model or default_model
    model = catalog.get(model_id)
    if model is None:
        raise ModelNotAvailable(f"model {model_id!r} is not served here; available: {', '.join(catalog)}", param="model")

    # 2. Prompt and image
    _check(bool(req.prompt.strip()), "prompt", req.prompt, "must not be empty")
    _check(
        len(req.prompt) <= limits.max_prompt_chars,
        "prompt",
        f"<{len(req.prompt)} characters>",
        f"at most {limits.max_prompt_chars} characters",
    )
    negative = model.negative_prompt if req.negative_prompt is None else req.negative_prompt
    _check(
        len(negative) <= limits.max_prompt_chars,
        "negative_prompt",
        f"<{len(negative)} characters>",
        f"at most {limits.max_prompt_chars} characters",
    )
    if model.image == "required" and not has_image:
        raise InvalidRequest(
            f"model {model.id!r} animates an image: send 'input_reference' (file) or 'image_url'",
            param="input_reference",
        )
    if model.image == "none" and has_image:
        raise InvalidRequest(
            f"model {model.id!r} is text-to-video only and takes no image; drop 'input_reference'/'image_url'",
            param="input_reference",
        )

    # 3. Size
    width, height = parse_size(req.size, model.size_multiple) if req.size else (model.width, model.height)
    _check(
        width * height <= limits.max_pixels,
        "size",
        req.size or model.size,
        f"at most {limits.max_pixels} pixels (width x height)",
    )

    # 4. Duration
    fps = model.fps if req.fps is None else req.fps
    _check(1 <= fps <= 60, "fps", fps, "must be between 1 and 60")
    if req.seconds is not None:  # checked even where num_frames wins: an absurd value is a client bug
        _check(math.isfinite(req.seconds) and req.seconds > 0, "seconds", req.seconds, "must be positive")
    if req.num_frames is not None:
        frames = req.num_frames
        _check(frames % 4 == 1, "num_frames", frames, "must be 4k+1 (e.g. 17, 49, 81, 121)")
    elif req.seconds is not None:
        frames = frames_for_seconds(min(req.seconds, 1e6), fps)
        _check(frames <= limits.max_frames, "seconds", req.seconds, f"at most {limits.max_frames} frames at {fps} fps")
    else:
        frames = model.num_frames
    _check(5 <= frames <= limits.max_frames, "num_frames", frames, f"must be between 5 and {limits.max_frames}")

    # 5. Sampling
    steps = model.num_inference_steps if req.num_inference_steps is None else req.num_inference_steps
    _check(1 <= steps <= limits.max_steps, "num_inference_steps", steps, f"must be between 1 and {limits.max_steps}")
    guidance = model.guidance_scale if req.guidance_scale is None else req.guidance_scale
    _check(math.isfinite(guidance) and 0 <= guidance <= 30, "guidance_scale", guidance, "must be between 0 and 30")
    guidance_2 = model.guidance_scale_2 if req.guidance_scale_2 is None else req.guidance_scale_2
    if model.guidance_scale_2 is None and req.guidance_scale_2 is not None:
        raise InvalidRequest(
            f"invalid 'guidance_scale_2' {req.guidance_scale_2!r}: model {model.id!r} has a single expert",
            param="guidance_scale_2",
        )
    if guidance_2 is not None:
        _check(math.isfinite(guidance_2) and 0 <= guidance_2 <= 30, "guidance_scale_2", guidance_2, "must be between 0 and 30")
    shift = model.flow_shift if req.flow_shift is None else req.flow_shift
    _check(math.isfinite(shift) and 0.01 <= shift <= 100, "flow_shift", shift, "must be between 0.01 and 100")
    seed = random.randint(0, MAX_SEED) if req.seed is None else req.seed
    _check(0 <= seed <= MAX_SEED, "seed", seed, f"must be between 0 and {MAX_SEED}")

    return GenerationSpec(
        model=model.id,
        prompt=req.prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        num_frames=frames,
        fps=fps,
        num_inference_steps=steps,
        guidance_scale=guidance,
        guidance_scale_2=guidance_2,
        flow_shift=shift,
        seed=seed,
        image_key=image_key,
        cache=req.cache,
    )
