"""The job's sampling fields, each declared once (range and description), and the rules every model of a job shares.

A `Number` is one numeric field of a job: the request models (shared/specs.py `VideoRequest`, shared/image_specs.py
`ImageRequest`) take it optional, with the range in the schema only (`request()`; `check` then refuses a value
with a message naming the field, the value and the range, with the deployment's own limits); the stored and
public objects (shared/video.py `Video`, shared/loras.py `LoraDefaults`) enforce the range (`value()`).
Adding a sampling field is one `Number` here, and a line in each model that carries it.

Also here: the "not a boolean" rule of every numeric request field (`no_booleans`) and the translation of a
pydantic `ValidationError` into an `InvalidRequest` naming the field and value (`parse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.config import JsonDict

from shared.errors import InvalidRequest

MAX_SEED = 2**32 - 1


def seeds_from(first: int, n: int) -> list[int]:
    """The seeds of a request's n outputs: first, first+1, ..., wrapping within 0..MAX_SEED."""
    return [(first + i) % (MAX_SEED + 1) for i in range(n)]


Num = TypeVar("Num", int, float)


@dataclass(frozen=True)
class Number:
    """One numeric job field: its range ([minimum, maximum]; `maximum` None: a deployment limit, WANQ_JOBS_*)
    and what a request says about it."""

    name: str
    minimum: int | float
    maximum: int | float | None
    description: str
    exclusive_minimum: bool = False

    def _schema_range(self) -> JsonDict:
        bound: JsonDict = {"exclusiveMinimum" if self.exclusive_minimum else "minimum": self.minimum}
        return bound if self.maximum is None else {**bound, "maximum": self.maximum}

    def request(self, description: str | None = None) -> Any:
        """An optional request field (omitted: the model's default): the range in the schema only; `check`
        refuses what is out of it, with the deployment's limits."""
        return Field(default=None, json_schema_extra=self._schema_range(), description=description or self.description)

    def value(self, description: str, *, optional: bool = False) -> Any:
        """A field of a stored or public object, its range enforced by pydantic; `optional`: None when absent."""
        gt, ge = (self.minimum, None) if self.exclusive_minimum else (None, self.minimum)
        if optional:
            return Field(default=None, gt=gt, ge=ge, le=self.maximum, description=description)
        return Field(gt=gt, ge=ge, le=self.maximum, description=description)

    def check(self, value: Num, *, maximum: int | float | None = None) -> Num:
        """`value`, or an InvalidRequest naming the field, the value and the range (`maximum`: the deployment's)."""
        high = self.maximum if maximum is None else maximum
        low_ok = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        finite = not isinstance(value, float) or math.isfinite(value)  # isfinite overflows on a huge int
        if not (finite and low_ok and (high is None or value <= high)):
            if high is None:
                why = "must be positive" if self.exclusive_minimum and self.minimum == 0 else f"must be at least {self.minimum}"
            else:
                why = f"must be between {_number(self.minimum)} and {_number(high)}"
            raise InvalidRequest(f"invalid '{self.name}' {short(value)}: {why}", param=self.name)
        return value


def _number(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


SECONDS = Number(
    "seconds",
    0,
    None,
    "Duration; becomes the 4k+1 frame count nearest to seconds x fps (4 s at 16 fps -> 65 frames). "
    'num_frames wins if both are given. OpenAI\'s SDK types it as the string "4", "8" or "12"; any number is taken.',
    exclusive_minimum=True,
)
NUM_FRAMES = Number(
    "num_frames",
    5,
    None,
    "Frames, 4k+1 (17, 49, 81, 121...), at most WANQ_JOBS_MAX_FRAMES (241); default: the model's (A14B 81, TI2V-5B 121).",
)
FPS = Number("fps", 1, 60, "Frames per second; default: the model's (A14B 16, TI2V-5B 24).")
NUM_INFERENCE_STEPS = Number(
    "num_inference_steps",
    1,
    None,
    "Denoising steps, at most WANQ_JOBS_MAX_STEPS (100); default: the model's (A14B 40, TI2V-5B 50).",
)
GUIDANCE_SCALE = Number(
    "guidance_scale",
    0,
    30,
    "Classifier-free guidance; 1 or less runs no unconditional branch (one forward per step); "
    "default: the model's (T2V-A14B 4.0, I2V-A14B 3.5, TI2V-5B 5.0).",
)
GUIDANCE_SCALE_2 = Number(
    "guidance_scale_2",
    0,
    30,
    "Guidance of the low-noise expert (A14B models only); default: the model's (T2V-A14B 3.0, I2V-A14B 3.5).",
)
SEED = Number("seed", 0, MAX_SEED, "Seed; default: a random one (the video object shows it).")
FLOW_SHIFT = Number(
    "flow_shift", 0.01, 100, "Shift of the flow-matching schedule; default: the model's (T2V-A14B 12.0, others 5.0)."
)


@dataclass(frozen=True)
class Factor:
    """One post-processing factor of a job (1, 2 or 4; 1 = the stage does not run)."""

    name: str
    description: str
    choices: tuple[int, ...] = (1, 2, 4)

    def request(self) -> Any:
        """An optional request field (omitted: 1, or a remix's source's); `check` refuses any other value."""
        return Field(default=None, json_schema_extra={"enum": list(self.choices)}, description=self.description)

    def value(self, description: str) -> Any:
        return Field(default=1, json_schema_extra={"enum": list(self.choices)}, description=description)

    def check(self, value: int) -> int:
        if value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise InvalidRequest(f"invalid '{self.name}' {short(value)}: must be one of {allowed}", param=self.name)
        return value


INTERPOLATE = Factor(
    "interpolate",
    "Frame interpolation (RIFE) after the decode: the MP4 has (F-1) x k + 1 frames at fps x k, the generated frames "
    "kept exactly at positions i x k; 1 (default) = none. Needs a worker with an interpolator (--interpolator-path).",
)
UPSCALE = Factor(
    "upscale",
    "Upscaling (Real-ESRGAN class) after the interpolation: width and height times k; 1 (default) = none. Needs a "
    "worker whose upscaler (--upscaler-path) enlarges by k.",
)
POST_PROCESSING = (INTERPOLATE, UPSCALE)
"""A job's post-processing factors, in the order the export applies them."""


PREVIEW_EVERY = Number(
    "preview_every",
    0,
    None,
    "A preview of the video every this many denoising steps (0: none), at most num_inference_steps: a short MP4 at "
    "half the size and one frame per 4, the content variant `preview`, replaced each time and kept after the job "
    "ends; default: the worker's (WANQ_ENGINE_PREVIEW_EVERY, 0 unless set). Needs a worker with a tiny decoder.",
)

Decoder = Literal["full", "tiny"]
"""Which VAE decodes a job's final latents: the model's own (full), or the tiny TAEHV decoder (a fast draft)."""
DECODER_DESCRIPTION = (
    'Which decoder makes the video: "full" (the model\'s VAE) or "tiny" (the worker\'s TAEHV decoder: a draft, '
    'about 10x faster to decode, softer); default "full". Needs a worker with a tiny decoder.'
)

JOB_NUMBERS = (SECONDS, NUM_FRAMES, FPS, NUM_INFERENCE_STEPS, GUIDANCE_SCALE, GUIDANCE_SCALE_2, SEED, FLOW_SHIFT)
"""A video request's numeric fields, in the order `wanq generate` and the request schema list them."""
SAMPLING = (NUM_INFERENCE_STEPS, GUIDANCE_SCALE, GUIDANCE_SCALE_2, FLOW_SHIFT)
"""The fields a LoRA may recommend (LoraDefaults) and an extension takes over from its source."""


# -- rules every request model shares ----------------------------------------------------------------


def refuse_boolean(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; a boolean where a number belongs is a client bug worth naming.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def no_booleans(*fields: str) -> Any:
    """A model's validator refusing true/false in these numeric fields: `_numbers = no_booleans("n", "seed")`."""
    return field_validator(*fields, mode="before")(refuse_boolean)


Fields = TypeVar("Fields", bound=BaseModel)


def parse(model: type[Fields], data: Any, *, did_you_mean: Callable[[str], str] = lambda _: "") -> Fields:
    """`data` as `model` (a request body); its first problem becomes an InvalidRequest naming the field and value.
    `did_you_mean(field)`: a hint for an unknown field ("; did you mean 'seed'?"), or ''."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc, did_you_mean=did_you_mean) from None


def invalid_request(exc: ValidationError, *, did_you_mean: Callable[[str], str] = lambda _: "") -> InvalidRequest:
    """The first problem of a ValidationError, naming the field (dotted path) and the value it refused."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "extra_forbidden":
        return InvalidRequest(f"unknown field '{field}'{did_you_mean(field)}", param=field)
    if err["type"] == "missing":
        return InvalidRequest(f"'{field}' is required", param=field)
    return InvalidRequest(f"invalid '{field}' {short(err.get('input'))}: {err['msg']}", param=field)


def short(value: Any) -> str:
    """repr(value), cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
