"""What the API answers besides the video object (shared/video.py): the response models of the other routes,
the error shape, and the OpenAPI extras (links, file and event-stream bodies).

Every route declares its `response_model`, so each answer is checked against its schema as it is made, and
tests/api/test_openapi_fuzz.py runs schemathesis on the live API against the same schemas. The error shape
of every 4xx and of 503 is declared once per router (api/app.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.video import Video


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong, naming the field and the value.")
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(description="The field, header or quota concerned.")
    code: str = Field(description="Stable machine-readable code (shared/errors.py).")


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused; `error.message` says why."},
    503: {
        "model": ErrorResponse,
        "description": "The job store or object store is unreachable; retry after `Retry-After` seconds.",
        "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}},
    },
}


class ModelDefaults(BaseModel):
    """What a job of this model gets for each field it leaves out (the model's official config)."""

    size: str = Field(description="`WIDTHxHEIGHT`.", examples=["1280x704"])
    num_frames: int = Field(description="Frames (4k+1).")
    fps: int = Field(description="Frames per second.")
    num_inference_steps: int = Field(description="Denoising steps.")
    guidance_scale: float = Field(description="Classifier-free guidance.")
    guidance_scale_2: float | None = Field(description="Guidance of the low-noise expert (A14B); null otherwise.")
    flow_shift: float = Field(description="Shift of the flow-matching schedule.")


class ModelInfo(BaseModel):
    """A model this service accepts (OpenAI's model object plus wanq's fields)."""

    id: str = Field(description="The id to pass as `model`.", examples=["wan2.2-ti2v-5b"])
    object: Literal["model"] = Field(description="Always `model`.")
    created: int = Field(description="Always 0 (OpenAI's field; wanq's models have no creation time).")
    owned_by: str = Field(description="Always `wanq`.")
    variant: str = Field(description="The architecture: t2v-a14b, i2v-a14b or ti2v-5b.")
    image_input: str = Field(description="none, required (image-to-video only) or optional.")
    defaults: ModelDefaults = Field(description="The value of each field a request leaves out.")
    size_multiple: int = Field(description="Width and height must be multiples of this.")
    live_workers: int = Field(description="Workers serving it now (beating in Redis).")
    queued: int = Field(description="Its jobs waiting to start.")


class ModelList(BaseModel):
    object: Literal["list"] = Field(description="Always `list`.")
    data: list[ModelInfo] = Field(description="Every model this service accepts, the default first.")


class WebhookEndpoint(BaseModel):
    object: Literal["webhook_endpoint"]
    tenant: str
    url: str | None
    events: list[str]
    status: Literal["none", "enabled", "disabled"]
    disabled_at: float | None
    disabled_reason: str | None
    created_at: float | None
    updated_at: float | None
    secret_hint: str | None
    previous_secret_expires_at: float | None
    secret: str | None = Field(default=None, description="The signing secret, in the answer that created it only.")


class WebhookEndpointDeleted(BaseModel):
    object: Literal["webhook_endpoint.deleted"]
    tenant: str
    deleted: bool


class DeliveryAttempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: float | None


class WebhookDelivery(BaseModel):
    object: Literal["webhook_delivery"]
    id: str
    job_id: str
    event: str
    target: Literal["job", "tenant"]
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: float
    max_attempts: int
    attempts: list[DeliveryAttempt]
    next_attempt_at: float | None
    error: str | None


class DeliveryList(BaseModel):
    object: Literal["list"]
    data: list[WebhookDelivery]


class ApiKey(BaseModel):
    object: Literal["api_key"]
    id: str
    tenant: str
    admin: bool
    prefix: str
    created_at: float
    revoked: bool
    revoked_at: float | None
    source: Literal["redis", "settings"]
    name: str
    key: str | None = Field(default=None, description="The key itself, in the answer that created it only.")


class ApiKeyList(BaseModel):
    object: Literal["list"]
    data: list[ApiKey]


class QueueDepth(BaseModel):
    model: str
    live_workers: int
    target: int
    broker_queue_length: int
    waiting: int
    dispatched: int
    running: int
    tenants: dict[str, dict[str, Any]]


class QueueList(BaseModel):
    object: Literal["list"]
    data: list[QueueDepth]


class QueueDrained(BaseModel):
    object: Literal["queue.drained"]
    model: str
    tenant: str | None
    canceled: int
    ids: list[str]


class GeneratedImage(BaseModel):
    b64_json: str | None = Field(default=None, description="The image in output_format (PNG by default), base64.")
    url: str | None = Field(default=None, description="Where to GET the PNG (response_format url).")
    revised_prompt: None = Field(default=None, description="Always null: the prompt is used as given.")
    id: str = Field(description="The image's job: GET /v1/videos/{id}; its /content is this PNG until it expires.")
    seed: int = Field(description="The seed it was made with.")


class ImagesResponse(BaseModel):
    """OpenAI's images answer (200): every image done within WANQ_IMAGES_WAIT_S."""

    created: int = Field(description="Unix seconds.")
    data: list[GeneratedImage]
    size: str = Field(description="`WIDTHxHEIGHT`.")
    output_format: Literal["png", "jpeg", "webp"] = Field(description="The encoding of the b64_json images.")


class ImagesPending(BaseModel):
    """202: not every image was done within WANQ_IMAGES_WAIT_S. Their jobs go on: poll GET /v1/videos/{id} for
    each id, then GET /v1/videos/{id}/content (the PNG)."""

    created: int = Field(description="Unix seconds.")
    status: Literal["in_progress"]
    data: list[GeneratedImage] = Field(description="Always empty: nothing is delivered in this answer.")
    ids: list[str] = Field(description="The images' jobs, in order.")
    waited_s: float = Field(description="How long the request waited (WANQ_IMAGES_WAIT_S).")


class LoraDefaultsOut(BaseModel):
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    expert: Literal["both", "high_noise", "low_noise"] | None = None


class Lora(BaseModel):
    """A LoRA of the tenant's library (or a shared one)."""

    id: str
    object: Literal["lora"]
    name: str
    model: str = Field(description="The model id or model family (wan2.2-a14b: T2V- and I2V-A14B) it is for.")
    shared: bool = Field(description="Published by an admin to every tenant.")
    size_bytes: int
    sha256: str
    rank: int = Field(description="Its highest module rank.")
    format: Literal["diffusers", "original", "musubi"] = Field(description="The key format of the file.")
    modules: list[str] = Field(description="The block layers it touches (attn1.to_q, ..., ffn.net.2).")
    blocks: list[int] = Field(description="The transformer blocks it touches.")
    num_modules: int
    scale: float = Field(description="Its alpha / rank: the file's own multiplier, on top of a job's strength.")
    dtype: str
    created_at: int
    defaults: LoraDefaultsOut = Field(description="What a job naming it inherits for the fields it leaves out.")


class LoraList(BaseModel):
    object: Literal["list"]
    data: list[Lora]


class LoraDeleted(BaseModel):
    id: str
    object: Literal["lora.deleted"]
    name: str
    deleted: bool


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A request model's JSON schema to put inline in a route's `openapi_extra`: its nested models (pydantic's
    `$defs`, which mean nothing at that place in an OpenAPI document) are written in where they are used."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)  # type: ignore[no-any-return]


def _job_link(path: str, method: str) -> dict[str, Any]:
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": {"video_id": "$response.body#/id"}}


# The created job's id leads to every route of that job (OpenAPI links; schemathesis follows them).
CREATED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": Video,
        "description": "The job, queued. `Location` names it.",
        "links": {
            "retrieve": _job_link("/v1/videos/{video_id}", "get"),
            "cancel": _job_link("/v1/videos/{video_id}/cancel", "post"),
            "delete": _job_link("/v1/videos/{video_id}", "delete"),
            "content": _job_link("/v1/videos/{video_id}/content", "get"),
            "events": _job_link("/v1/videos/{video_id}/events", "get"),
            "webhook_deliveries": _job_link("/v1/videos/{video_id}/webhook_deliveries", "get"),
        },
    }
}

CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file: an MP4, a WebP thumbnail, a JPEG spritesheet or an image job's PNG (by `variant`).",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("video/mp4", "image/webp", "image/jpeg", "image/png")
        },
    },
    302: {"description": "With WANQ_S3_PRESIGNED_CONTENT=true: a presigned URL of the file, in `Location`."},
}

IMAGES: dict[int | str, dict[str, Any]] = {
    200: {"model": ImagesResponse, "description": "Every image, done within WANQ_IMAGES_WAIT_S."},
    202: {"model": ImagesPending, "description": "Not all done within WANQ_IMAGES_WAIT_S: the job ids, to follow."},
}

EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `event: video` with the Video object as `data`, until it ends; the change "
        "that brings a new preview (its `preview_step`) comes as `event: video.preview` instead, with the same data. "
        "If the server must end the stream early (its job store became unreachable), the last event is "
        '`event: interrupted` with an OpenAI-style `{"error": {...}}` as `data` and a `retry` hint: '
        "reconnect, and the stream starts again from the current state.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "description": "One event: `event: video`, `data`: the Video object as JSON "
                    "(or, last, `event: interrupted`, `data`: an error object).",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"enum": ["video", "video.preview", "interrupted"]},
                        "id": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                }
            }
        },
    }
}
