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
    size: str
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    flow_shift: float


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    variant: str
    image_input: str
    defaults: ModelDefaults
    size_multiple: int
    live_workers: int
    queued: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelInfo]


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
        "description": "The file: an MP4, a WebP thumbnail or a JPEG spritesheet (by `variant`).",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for media in ("video/mp4", "image/webp", "image/jpeg")
        },
    },
    302: {"description": "With WANQ_S3_PRESIGNED_CONTENT=true: a presigned URL of the file, in `Location`."},
}

EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `event: video` with the Video object as `data`, until it ends. "
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
                        "event": {"enum": ["video", "interrupted"]},
                        "id": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                }
            }
        },
    }
}
