"""Turns an OpenAI images request (`POST /v1/images/generations`) into one single-frame `GenerationSpec` per image.

Wan2.2 makes an image as a video of one frame (`num_frames` 1, `kind` "image"), on the same model queues and
workers as videos. Omitted fields take the model's defaults, as for videos (shared/specs.py). Seeds: with `seed`
given, image i of the request gets seed + i; without, each gets a random one (each job shows its seed).

Every field OpenAI's `images.generate` takes is accepted: a client written for OpenAI sends them. Those a Wan2.2
frame has no use for (`quality`, `style`, `moderation`, `user`, ...) are ignored, and say so in their description;
those asking for what a video model cannot make (a transparent background, GIF or SVG, a stream) answer 400 naming
the value.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest, ModelNotAvailable
from shared.fields import (
    FLOW_SHIFT,
    GUIDANCE_SCALE,
    GUIDANCE_SCALE_2,
    MAX_SEED,
    NUM_INFERENCE_STEPS,
    SEED,
    no_booleans,
    seeds_from,
)
from shared.schemas import GenerationSpec
from shared.settings import JobSettings
from shared.specs import VideoRequest, parse_fields, resolve_spec

_SAME_AS_VIDEOS = "as for POST /v1/videos"
_IGNORED = "Accepted and ignored"
ImageFormat = Literal["png", "jpeg", "webp"]


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
        default=None,
        description='"WIDTHxHEIGHT", as for videos (multiples of 16; TI2V-5B 32); "auto" or omitted: the model\'s.',
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None,
        description="b64_json (default): the image in the answer. url: where to GET the PNG (/v1/videos/{id}/content "
        "with your key, or a presigned URL with WANQ_S3_PRESIGNED_CONTENT=true).",
    )
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = Field(
        default=None,
        description="png (default), jpeg or webp: the encoding of b64_json images (url images are the stored PNG). "
        "gif and svg are refused: a Wan2.2 frame is a raster image.",
    )
    output_compression: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="jpeg and webp: the encoder's quality, 0-100 (default 100); png is lossless and ignores it.",
    )
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        default=None, description="auto or opaque: the frame is opaque. transparent is refused: video models make no alpha."
    )
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = Field(
        default=None, description=f"{_IGNORED}: set num_inference_steps for more or fewer denoising steps."
    )
    style: Literal["vivid", "natural"] | None = Field(default=None, description=f"{_IGNORED}: describe the style in the prompt.")
    complexity: Literal["low", "medium", "high"] | None = Field(default=None, description=f"{_IGNORED}.")
    moderation: Literal["low", "auto"] | None = Field(default=None, description=f"{_IGNORED}: wanq runs no moderation model.")
    user: str | None = Field(default=None, max_length=256, description=f"OpenAI's end-user tag; {_IGNORED.lower()}.")
    safety_identifier: str | None = Field(default=None, max_length=256, description=f"OpenAI's end-user tag; {_IGNORED.lower()}.")
    partial_images: int | None = Field(
        default=None,
        ge=0,
        le=3,
        description=f"{_IGNORED}: there is no stream, so no partial images.",
    )
    stream: bool | None = Field(default=None, description="false or omitted; true is refused: images come in one answer.")
    frame_count: int | None = Field(default=None, description="For GIF output, which wanq does not make: refused.")
    frame_duration_ms: int | None = Field(default=None, description="For GIF output, which wanq does not make: refused.")
    svg: dict[str, Any] | None = Field(default=None, description="For SVG output, which wanq does not make: refused.")
    negative_prompt: str | None = Field(default=None, description=f"What to avoid; {_SAME_AS_VIDEOS}.")
    num_inference_steps: int | None = NUM_INFERENCE_STEPS.request(_SAME_AS_VIDEOS)
    guidance_scale: float | None = GUIDANCE_SCALE.request(_SAME_AS_VIDEOS)
    guidance_scale_2: float | None = GUIDANCE_SCALE_2.request(_SAME_AS_VIDEOS)
    seed: int | None = SEED.request("Seed of the first image; image i gets seed + i. Default: random ones.")
    flow_shift: float | None = FLOW_SHIFT.request(_SAME_AS_VIDEOS)

    _numbers = no_booleans(
        "n",
        "num_inference_steps",
        "guidance_scale",
        "guidance_scale_2",
        "seed",
        "flow_shift",
        "output_compression",
        "partial_images",
    )


def resolve_images(
    req: ImageRequest, catalog: dict[str, ModelSpec], default_model: str, limits: JobSettings, *, max_n: int
) -> list[GenerationSpec]:
    """One spec per image, checked like a video's (shared/specs.py), with one frame."""
    _refuse_what_a_frame_cannot_be(req)
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
    if fields.get("size") == "auto":
        del fields["size"]  # OpenAI's "the model chooses": the model's default size
    first = resolve_spec(parse_fields(VideoRequest, fields), catalog, default_model, limits, has_image=False, kind="image")
    seeds = [random.randint(0, MAX_SEED) for _ in range(n)] if req.seed is None else seeds_from(req.seed, n)
    return [first.model_copy(update={"seed": seed}) for seed in seeds]


def image_format(req: ImageRequest) -> ImageFormat:
    """The encoding of the answer's b64_json images (checked by resolve_images: never gif or svg)."""
    if req.output_format == "jpeg" or req.output_format == "webp":
        return req.output_format
    return "png"


def _refuse_what_a_frame_cannot_be(req: ImageRequest) -> None:
    """OpenAI's fields whose value asks for something a Wan2.2 frame cannot be: a 400 naming the field and value."""
    if req.background == "transparent":
        raise InvalidRequest(
            "invalid 'background' 'transparent': Wan2.2 frames are opaque (video models make no alpha); use 'auto' or 'opaque'",
            param="background",
        )
    if req.output_format in ("gif", "svg"):
        raise InvalidRequest(
            f"invalid 'output_format' {req.output_format!r}: wanq makes raster frames; use 'png', 'jpeg' or 'webp'",
            param="output_format",
        )
    for name in ("frame_count", "frame_duration_ms", "svg"):
        if getattr(req, name) is not None:
            raise InvalidRequest(
                f"invalid '{name}' {getattr(req, name)!r}: it applies to GIF or SVG output, which wanq does not make",
                param=name,
            )
    if req.stream:
        raise InvalidRequest(
            "invalid 'stream' true: wanq answers with the finished images (or 202 and their job ids); omit stream",
            param="stream",
        )
    if req.response_format == "url" and req.output_format not in (None, "png"):
        raise InvalidRequest(
            f"invalid 'output_format' {req.output_format!r}: a url image is the stored PNG; "
            "use response_format 'b64_json' for jpeg or webp",
            param="output_format",
        )
