"""Turns a create request (OpenAI's fields plus Wan's) into a validated `GenerationSpec`.

Rules, applied in this order:
- Omitted fields take the model's own defaults (shared/catalog.py).
- Duration: `num_frames` wins when given; else `seconds` becomes the 4k+1 frame count nearest to
  seconds x fps (4 s at 16 fps -> 65 frames); else the model's default frame count. The reported
  `seconds` is always num_frames / fps.
- Every check names the field and the value it refused.
- An extension (`resolve_extension`) takes its source's size, fps, negative prompt and, with the same model and no
  `loras` of its own, its LoRAs and sampling parameters; its seed, unless given, is the source's + 1; its duration is
  the new part's.
- A remix (`remix_spec`) is its parent's spec with a new prompt (and its post-processing, unless the remix says).
- Post-processing (`interpolate`, `upscale`): the delivered MP4's width x height x frames at most
  WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES. An extension keeps its source's `interpolate` and `upscale`: its parts are
  joined by copying their H.264 streams, which needs one size and one fps (a different factor is a 400 naming it).
- An image (`kind="image"`) is one frame; only images may have fewer than 5 frames.
"""

from __future__ import annotations

import difflib
import json
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from shared.catalog import ModelSpec
from shared.errors import Conflict, Forbidden, Gone, InvalidRequest, ModelNotAvailable, NotFound
from shared.fields import (
    DECODER_DESCRIPTION,
    FLOW_SHIFT,
    FPS,
    GUIDANCE_SCALE,
    GUIDANCE_SCALE_2,
    INTERPOLATE,
    JOB_NUMBERS,
    MAX_SEED,
    NUM_FRAMES,
    NUM_INFERENCE_STEPS,
    PREVIEW_EVERY,
    SECONDS,
    SEED,
    UPSCALE,
    Decoder,
    Fields,
    no_booleans,
    parse,
    seeds_from,
    short,
)
from shared.loras import LoraRecord, LoraRequest, resolve_job_loras
from shared.schemas import LAST_FRAME, CacheOptions, GenerationSpec, JobCache, JobRecord, JobStatus, RequestCache
from shared.settings import JobSettings, LoraSettings

# The request's numeric generation fields (each refuses a JSON boolean); `wanq generate` takes the same ones.
NUMBER_FIELDS = (*(field.name for field in JOB_NUMBERS), INTERPOLATE.name, UPSCALE.name)


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
    seconds: float | None = SECONDS.request()
    negative_prompt: str | None = Field(default=None, description="What to avoid; default: the model's (Wan's own list).")
    num_frames: int | None = NUM_FRAMES.request()
    fps: int | None = FPS.request()
    num_inference_steps: int | None = NUM_INFERENCE_STEPS.request()
    guidance_scale: float | None = GUIDANCE_SCALE.request()
    guidance_scale_2: float | None = GUIDANCE_SCALE_2.request()
    seed: int | None = SEED.request()
    flow_shift: float | None = FLOW_SHIFT.request()
    interpolate: int | None = INTERPOLATE.request()
    upscale: int | None = UPSCALE.request()
    image_url: str | None = Field(
        default=None,
        description="https:// or data: URL of the first frame (image-to-video); or send the file as `input_reference` "
        "(multipart). Scaled to cover the size and centre-cropped.",
    )
    # bool, not Literal[False]: the schema says that true is taken (the validator makes it {}).
    cache: RequestCache = Field(
        default=None,
        description="Step cache for this job (cache-dit DBCache; lossy, faster): an object of settings, each optional "
        '(fn, bn, warmup, rdt, mc, taylorseer, ts_order; e.g. {"rdt": 0.3}; omitted ones are the worker\'s), '
        "true for the worker's settings (the same as {}), or false for none; default: the worker's configured cache "
        "(WANQ_ENGINE_CACHE, none unless set).",
    )
    preview_every: int | None = PREVIEW_EVERY.request()
    decoder: Decoder | None = Field(default=None, description=DECODER_DESCRIPTION)
    webhook_url: str | None = Field(
        default=None, description="http(s) URL told of this job's events, signed with the tenant's webhook secret."
    )
    webhook_events: list[str] | None = Field(
        default=None,
        description="Events sent to webhook_url: video.started, video.completed, video.failed, video.canceled "
        "(default: these four), video.progress, video.preview (each new preview: see preview_every).",
    )
    extend_video_id: str | None = Field(
        default=None,
        max_length=200,
        description="Continue this completed video of yours from its last frame (as POST /v1/videos/extensions): "
        "`seconds`/`num_frames` are the new part's; size, fps and, with the same model, the other parameters are "
        "the source's unless given; the seed is the source's + 1 unless given. Needs an image-to-video model.",
    )
    n: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1},
        description="wanq's extension (OpenAI's videos API has no n): make n videos, at most WANQ_VIDEOS_MAX_N (4), in "
        "one atomic step (all or none). Each is an ordinary video; their seeds are seed, seed+1, ... (or `seeds`); "
        "the answer is the first one's object with `video_ids`, all n ids in seed order. Default: 1, or len(seeds).",
    )
    seeds: list[int] | None = Field(
        default=None,
        description="wanq's extension: the seed of each of the n videos, in order (its length is n); instead of "
        "seed, seed+1, ... In a multipart form: the list as JSON text, or repeated seeds[] fields.",
    )
    loras: list[LoraRequest] | None = Field(
        default=None,
        description="Adapters from your LoRA library (GET /v1/loras), at most WANQ_LORAS_MAX_PER_JOB (4): "
        '[{"name": "...", "strength": 1.0, "expert": "both" | "high_noise" | "low_noise"}]. Fields you leave out '
        "(num_inference_steps, guidance_scale, guidance_scale_2, flow_shift) take the LoRAs' recommended values. "
        "In a multipart form: one field holding this list as JSON.",
    )

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_as_json_text(cls, value: Any) -> Any:
        # A multipart form field is text: the list as JSON.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON list of {name, strength, expert} objects") from None
        return value

    _numbers = no_booleans(*NUMBER_FIELDS, "n", PREVIEW_EVERY.name)

    def job_cache(self) -> JobCache:
        """`cache` as the job keeps it: its type (RequestCache) has already made true `{}`."""
        return CacheOptions() if self.cache is True else self.cache

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        # A multipart form field is text: the list as JSON.
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON list of integer seeds") from None
            value = [value] if isinstance(value, int) else value
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            raise ValueError("must be integer seeds, not true or false")
        return value


class VideoReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="The id of a completed video of yours.")


class ExtensionRequest(VideoRequest):
    """The body of `POST /v1/videos/extensions` (the `openai` SDK's `client.videos.extend`): the fields of
    `POST /v1/videos`, the source named in `video`. `seconds` / `num_frames` are the new part's; size and fps are
    the source's; the seed, unless given, the source's + 1; with the same model and no `loras` of its own, its
    LoRAs and other parameters the source's."""

    video: VideoReference = Field(
        description='The completed video to continue from its last frame: {"id": "video_..."} (multipart: the form '
        "field video[id])."
    )
    # Not for extensions (they continue from the source's last frame): refused if sent, absent from the schema.
    image_url: SkipJsonSchema[None] = None
    extend_video_id: SkipJsonSchema[None] = None


class RemixRequest(BaseModel):
    """The body of `POST /v1/videos/{id}/remix` (the `openai` SDK's `client.videos.remix`): a new prompt for the
    video's parameters, seed and image."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the remix shows (at most WANQ_JOBS_MAX_PROMPT_CHARS, 4000, characters).")
    webhook_url: str | None = Field(default=None, description="As for POST /v1/videos.")
    webhook_events: list[str] | None = Field(default=None, description="As for POST /v1/videos.")
    interpolate: int | None = Field(
        default=None, json_schema_extra={"enum": list(INTERPOLATE.choices)}, description="Default: the video's."
    )
    upscale: int | None = Field(
        default=None, json_schema_extra={"enum": list(UPSCALE.choices)}, description="Default: the video's."
    )

    decoder: Decoder | None = Field(
        default=None, description='As for POST /v1/videos; default: the remixed video\'s (a draft may ask for "full").'
    )
    preview_every: int | None = PREVIEW_EVERY.request("As for POST /v1/videos; default: the remixed video's.")

    _numbers = no_booleans(INTERPOLATE.name, UPSCALE.name, PREVIEW_EVERY.name)


def parse_request(data: dict[str, Any]) -> VideoRequest:
    """Validates types; the first problem becomes an InvalidRequest naming the field and value."""
    return parse_fields(VideoRequest, data)


def parse_fields(model: type[Fields], data: dict[str, Any]) -> Fields:
    """`data` as `model` (a request body); the first problem becomes an InvalidRequest naming the field and value
    (an unknown field with the likely one it meant)."""
    return parse(model, data, did_you_mean=_did_you_mean)


# Names people reach for, from other APIs and CLIs (diffusers' call arguments, `wanq submit`'s flags).
_LIKELY = {
    "steps": "num_inference_steps",
    "num_steps": "num_inference_steps",
    "frames": "num_frames",
    "duration": "seconds",
    "length": "seconds",
    "image": "image_url",
    "first_frame": "image_url",
    "guidance": "guidance_scale",
    "cfg": "guidance_scale",
    "shift": "flow_shift",
    "negative": "negative_prompt",
    "width": "size",
    "height": "size",
    "resolution": "size",
    "frame_rate": "fps",
}


def _did_you_mean(field: str) -> str:
    """`; did you mean 'num_inference_steps'?` for a field that is probably one of ours, else ''."""
    known = [*VideoRequest.model_fields, "input_reference"]
    guess = _LIKELY.get(field.lower()) or next(iter(difflib.get_close_matches(field, known, n=1, cutoff=0.75)), None)
    return f"; did you mean '{guess}'?" if guess else ""


def _check(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise InvalidRequest(f"invalid '{field}' {short(value)}: {why}", param=field)


def parse_size(size: str, multiple: int) -> tuple[int, int]:
    parts = size.lower().split("x")
    _check(len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts), "size", size, 'expected "WIDTHxHEIGHT"')
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
    kind: Literal["video", "image"] = "video",
    loras: Mapping[str, LoraRecord | None] | None = None,
    lora_limits: LoraSettings | None = None,
) -> GenerationSpec:
    """`loras`: the records of the LoRAs the request names, as the tenant sees them (shared/loras.py)."""
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
    FPS.check(fps)
    if req.seconds is not None:  # checked even where num_frames wins: an absurd value is a client bug
        SECONDS.check(req.seconds)
    if kind == "image":
        frames = 1  # an image request has neither seconds nor num_frames
    elif req.num_frames is not None:
        frames = req.num_frames
        _check(frames % 4 == 1, "num_frames", frames, "must be 4k+1 (e.g. 17, 49, 81, 121)")
    elif req.seconds is not None:
        frames = frames_for_seconds(min(req.seconds, 1e6), fps)
        _check(frames <= limits.max_frames, "seconds", req.seconds, f"at most {limits.max_frames} frames at {fps} fps")
    else:
        frames = model.num_frames
    if kind == "video":
        NUM_FRAMES.check(frames, maximum=limits.max_frames)

    # 5. LoRAs: each resolved to its file; the fields the request leaves out take what they recommend
    job_loras, recommended = resolve_job_loras(req.loras or [], loras or {}, model, lora_limits or LoraSettings())

    def given(field: str, model_default: Any) -> Any:
        value = getattr(req, field)
        return value if value is not None else recommended.get(field, model_default)

    # 6. Sampling
    steps = given("num_inference_steps", model.num_inference_steps)
    NUM_INFERENCE_STEPS.check(steps, maximum=limits.max_steps)
    guidance = GUIDANCE_SCALE.check(given("guidance_scale", model.guidance_scale))
    if model.guidance_scale_2 is None and req.guidance_scale_2 is not None:
        raise InvalidRequest(
            f"invalid 'guidance_scale_2' {req.guidance_scale_2!r}: model {model.id!r} has a single expert",
            param="guidance_scale_2",
        )
    guidance_2 = None
    if model.guidance_scale_2 is not None:
        # diffusers' Wan pipelines run classifier-free guidance for both experts or for neither, as guidance_scale
        # says: with it at 1 or less, guidance_scale_2 follows it unless given (and must then be <= 1 too).
        guidance_2 = GUIDANCE_SCALE_2.check(given("guidance_scale_2", guidance if guidance <= 1 else model.guidance_scale_2))
        _check(
            guidance > 1 or guidance_2 <= 1,
            "guidance_scale_2",
            guidance_2,
            f"guidance_scale {guidance:g} turns classifier-free guidance off for both experts (diffusers' Wan pipelines "
            "guide both or neither); set guidance_scale above 1, or guidance_scale_2 to 1 or less",
        )
    shift = FLOW_SHIFT.check(given("flow_shift", model.flow_shift))
    seed = random.randint(0, MAX_SEED) if req.seed is None else SEED.check(req.seed)
    preview_every = None if req.preview_every is None else PREVIEW_EVERY.check(req.preview_every, maximum=steps)

    spec = GenerationSpec(
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
        kind=kind,
        loras=job_loras,
        cache=req.job_cache(),
        preview_every=preview_every,
        decoder=req.decoder or "full",
    )
    return post_processed(spec, req.interpolate, req.upscale, limits)


def post_processed(spec: GenerationSpec, interpolate: int | None, upscale: int | None, limits: JobSettings) -> GenerationSpec:
    """`spec` with the factors given (None: kept), checked against WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES."""
    update: dict[str, int] = {}
    if interpolate is not None:
        update["interpolate"] = INTERPOLATE.check(interpolate)
    if upscale is not None:
        update["upscale"] = UPSCALE.check(upscale)
    if not update:
        return spec
    done = spec.model_copy(update=update)
    if done.output_pixel_frames > limits.max_output_pixel_frames:
        field = UPSCALE.name if done.upscale > 1 else INTERPOLATE.name
        raise InvalidRequest(
            f"invalid '{field}' {getattr(done, field)}: the video would be {done.output_size} x {done.output_frames} "
            f"frames, over {limits.max_output_pixel_frames} pixels x frames (WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES)",
            param=field,
        )
    return done


# Extensions and remixes ------------------------------------------------------------------------------


def check_source(source: JobRecord | None, source_id: str, tenant: str, now: float, *, param: str = "video") -> JobRecord:
    """The video an extension continues, if it can be continued: the same tenant's (others' are 404, as unknown
    ids are), completed, a video (not an image), its outputs still stored. Raises NotFound, Forbidden (an admin
    naming another tenant's video), Conflict (not completed) or Gone (expired, outputs deleted)."""
    if source is None:
        raise NotFound(f"no video with id {source_id!r} to extend", param=param)
    if source.tenant != tenant:
        raise Forbidden(
            f"video {source_id} belongs to tenant {source.tenant!r}; an extension continues a video of its own tenant",
            param=param,
        )
    if source.status is not JobStatus.completed:
        raise Conflict(f"video {source_id} is {source.status.value}; only a completed video can be extended", param=param)
    if source.spec.kind != "video":
        raise InvalidRequest(f"video {source_id} is an image, not a video; animate it with POST /v1/videos", param=param)
    if (source.expires_at is not None and source.expires_at <= now) or "video" not in source.outputs:
        raise Gone(f"the outputs of video {source_id} expired or were deleted; it can no longer be extended", param=param)
    return source


def image_models(catalog: dict[str, ModelSpec]) -> list[str]:
    """The served models that can start from a frame (image-to-video): the ones that can extend a video."""
    return [m.id for m in catalog.values() if m.image != "none"]


def resolve_extension(
    req: VideoRequest,
    source: JobRecord,
    catalog: dict[str, ModelSpec],
    default_model: str,
    limits: JobSettings,
    *,
    image_key: str,
    loras: Mapping[str, LoraRecord | None] | None = None,
    lora_limits: LoraSettings | None = None,
) -> GenerationSpec:
    """An extension's spec: the request's fields, and its source's where the request leaves them out (see the
    module's rules). `source` passed check_source; `image_key` is where the worker stores the frame it continues
    from; `loras` as for resolve_spec."""
    base = source.spec
    model_id = req.model or base.model
    model = catalog.get(model_id)
    if model is not None and model.image == "none":
        able = image_models(catalog)
        names = ", ".join(able) if able else "none is served here"
        raise InvalidRequest(
            f"model {model_id!r} is text-to-video only and cannot continue a video from its last frame; "
            f"extend with an image-to-video model ('model'): {names}",
            param="model",
        )
    if req.image_url is not None:
        raise InvalidRequest("an extension continues from its source's last frame: drop 'image_url'", param="image_url")
    interpolate, upscale = extension_post_processing(req.interpolate, req.upscale, base)
    if base.upscale != 1 and LAST_FRAME not in source.outputs:
        raise InvalidRequest(
            f"video {source.id} was upscaled by a wanq that did not keep its last generated frame, which an extension "
            "continues from; it cannot be extended (a video made since can)",
            param="video",
        )
    if req.size is not None and req.size.lower() != base.size:
        raise InvalidRequest(
            f"invalid 'size' {req.size!r}: an extension keeps its source's size ({base.size}); leave it out", param="size"
        )
    if req.fps is not None and req.fps != base.fps:
        raise InvalidRequest(
            f"invalid 'fps' {req.fps!r}: an extension keeps its source's fps ({base.fps}); leave it out", param="fps"
        )
    inherited: dict[str, Any] = {
        "model": model_id,
        "size": base.size,
        "fps": base.fps,
        "negative_prompt": base.negative_prompt,
        "seed": seeds_from(base.seed, 2)[1],
        # a draft's extension is a draft too (one decoder's frames in the joined video), unless it asks for "full"
        "decoder": base.decoder,
    }
    if extension_inherits_loras(req, base):
        # Sampling parameters are tuned per model and per LoRA (a step-distilled one above all): taken over, with the
        # source's LoRAs, only where the model stays the same and the request names no LoRAs of its own.
        inherited["loras"] = inherited_loras(base)
        inherited.update(
            num_inference_steps=base.num_inference_steps,
            guidance_scale=base.guidance_scale,
            guidance_scale_2=base.guidance_scale_2,
            flow_shift=base.flow_shift,
        )
    given = req.model_dump(exclude_none=True)
    filled = req.model_copy(update={**{k: v for k, v in inherited.items() if k not in given}})
    try:
        spec = resolve_spec(
            filled, catalog, default_model, limits, has_image=True, image_key=image_key, loras=loras, lora_limits=lora_limits
        )
    except InvalidRequest as exc:
        if "loras" not in inherited or not (exc.param or "").startswith("loras"):
            raise
        raise InvalidRequest(
            f"the LoRAs of video {source.id}, which an extension keeps: {exc.message}; send 'loras' (or [] for none) "
            "to extend it without them",
            param="loras",
        ) from None
    whole = spec.model_copy(update={"extend_from": source.id, "source_frames": base.total_frames})
    return post_processed(whole, interpolate, upscale, limits)


def extension_post_processing(interpolate: int | None, upscale: int | None, base: GenerationSpec) -> tuple[int, int]:
    """An extension's (`interpolate`, `upscale`): its source's. The parts are joined by copying their H.264 streams
    (worker/extension.py), which needs one fps and one size; re-encoding the source instead would lose quality at
    every link of a chain. The new part is generated at the source's generated size, conditioned on the source's
    last generated frame (never an interpolated or upscaled one), then post-processed with these factors."""
    for field, given, kept, what in (
        ("interpolate", interpolate, base.interpolate, f"fps ({base.output_fps})"),
        ("upscale", upscale, base.upscale, f"size ({base.output_size})"),
    ):
        if given is not None and given != kept:
            raise InvalidRequest(
                f"invalid '{field}' {given!r}: an extension keeps its source's {field} ({kept}), so that its parts "
                f"join at one {what}; leave it out",
                param=field,
            )
    return base.interpolate, base.upscale


def extension_inherits_loras(req: VideoRequest, base: GenerationSpec) -> bool:
    """An extension runs with its source's LoRAs (and sampling) unless it names a model or LoRAs of its own."""
    return req.loras is None and (req.model or base.model) == base.model


def inherited_loras(base: GenerationSpec) -> list[LoraRequest]:
    """A video's LoRAs as a request names them (an extension's or a remix's: resolved again by name)."""
    return [LoraRequest(name=lora.name, strength=lora.strength, expert=lora.expert) for lora in base.loras]


def remix_spec(
    parent: GenerationSpec,
    prompt: str,
    catalog: dict[str, ModelSpec],
    limits: JobSettings,
    *,
    image_key: str | None,
    interpolate: int | None = None,
    upscale: int | None = None,
    decoder: Decoder | None = None,
    preview_every: int | None = None,
) -> GenerationSpec:
    """A remix: the parent's parameters and seed with a new prompt; `image_key` is the remix's own copy of the
    parent's stored image (or the key where an extension's worker stores the frame it continues from). `decoder`
    and `preview_every`, when given, replace the parent's (a remix of a draft may ask for the full decoder)."""
    if parent.model not in catalog:
        raise ModelNotAvailable(
            f"model {parent.model!r} of the remixed video is no longer served here; available: {', '.join(catalog)}",
            param="model",
        )
    _check(bool(prompt.strip()), "prompt", prompt, "must not be empty")
    _check(
        len(prompt) <= limits.max_prompt_chars,
        "prompt",
        f"<{len(prompt)} characters>",
        f"at most {limits.max_prompt_chars} characters",
    )
    update: dict[str, Any] = {"prompt": prompt, "image_key": image_key}
    if decoder is not None:
        update["decoder"] = decoder
    if preview_every is not None:
        update["preview_every"] = PREVIEW_EVERY.check(preview_every, maximum=parent.num_inference_steps)
    if parent.extend_from is not None:
        extension_post_processing(interpolate, upscale, parent)
    return post_processed(parent.model_copy(update=update), interpolate, upscale, limits)
