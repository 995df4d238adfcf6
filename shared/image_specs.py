"""Turns an OpenAI images request (`POST /v1/images/generations`) into one single-frame `GenerationSpec` per image.

Wan2.2 makes an image as a video of one frame (`num_frames` 1, `kind` "image"), on the same model queues and
workers as videos. Omitted fields take the model's defaults, as for videos (shared/specs.py). Seeds: with `seed`
given, image i of the request gets seed + i; without, each gets a random one (each job shows its seed).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest, ModelNotAvailable
from shared.schemas import GenerationSpec
from shared.settings import JobSettings
from shared.specs import MAX_SEED, VideoRequest, resolve_spec

_SAME_AS_VIDEOS = "as for POST /v1/videos"


class ImageRequest(BaseModel):
    """The body of `POST /v1/images/generations`: OpenAI's fields, plus Wan's own sampling fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the image shows (at most WANQ_JOBS_MAX_PROMPT_CHARS, 4000, characters).")
    model: str | None = Field(
        default=None, description="A text-to-image capable model id from GET /v1/models (T2V-A14B, TI2V-5B); default: the first."
    )
    n: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1},
        description="How many images, each a job of its own; at most WANQ_IMAGES_MAX_N (4). Default 1.",
    )
    size: str | None = Field(
        default=None, description='"WIDTHxHEIGHT", as for videos (multiples of 16; TI2V-5B 32); default: the model\'s.'
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None,
        description="b64_json (default): the PNG in the answer. url: where to GET it (/v1/videos/{id}/content with "
        "your key, or a presigned URL with WANQ_S3_PRESIGNED_CONTENT=true).",
    )
    output_format: Literal["png"] | None = Field(default=None, description="Always png.")
    user: str | None = Field(default=None, max_length=256, description="OpenAI's end-user tag; accepted and ignored.")
    negative_prompt: str | None = Field(default=None, description=f"What to avoid; {_SAME_AS_VIDEOS}.")
    num_inference_steps: int | None = Field(default=None, json_schema_extra={"minimum": 1}, description=_SAME_AS_VIDEOS)
    guidance_scale: float | None = Field(
        default=None, json_schema_extra={"minimum": 0, "maximum": 30}, description=_SAME_AS_VIDEOS
    )
    guidance_scale_2: float | None = Field(
        default=None, json_schema_extra={"minimum": 0, "maximum": 30}, description=_SAME_AS_VIDEOS
    )
    seed: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": MAX_SEED},
        description="Seed of the first image; image i gets seed + i. Default: random ones.",
    )
    flow_shift: float | None = Field(
        default=None, json_schema_extra={"minimum": 0.01, "maximum": 100}, description=_SAME_AS_VIDEOS
    )

    @field_validator("n", "num_inference_steps", "guidance_scale", "guidance_scale_2", "seed", "flow_shift", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value


def resolve_images(
    req: ImageRequest, catalog: dict[str, ModelSpec], default_model: str, limits: JobSettings, *, max_n: int
) -> list[GenerationSpec]:
    """One spec per image, checked like a video's (shared/specs.py), with one frame."""
    n = 1 if req.n is None else req.n
    if not 1 <= n <= max_n:
        raise InvalidRequest(f"invalid 'n' {n}: must be between 1 and {max_n} (WANQ_IMAGES_MAX_N)", param="n")
    model_id = req.model or default_model
    model = catalog.get(model_id)
    if model is None:
        raise ModelNotAvailable(f"model {model_id!r} is not served here; available: {', '.join(catalog)}", param="model")
    if model.image == "required":
        able = ", ".join(m.id for m in catalog.values() if m.image != "required") or "none is served here"
        raise InvalidRequest(
            f"model {model_id!r} animates an input image and makes no image from text; use one of: {able}", param="model"
        )
    fields = req.model_dump(include=set(VideoRequest.model_fields) & set(ImageRequest.model_fields), exclude_none=True)
    first = resolve_spec(VideoRequest.model_validate(fields), catalog, default_model, limits, has_image=False, kind="image")
    seeds = (
        [random.randint(0, MAX_SEED) for _ in range(n)]
        if req.seed is None
        else [(req.seed + i) % (MAX_SEED + 1) for i in range(n)]
    )
    return [first.model_copy(update={"seed": seed}) for seed in seeds]
