"""The one typed configuration of wanq: every `WANQ_` variable, grouped by what it configures.

Built once at an entry point (`Settings()`), then passed down; nothing else reads the environment.
Variables map onto groups by their first word: `WANQ_REDIS_URL` -> `redis.url`,
`WANQ_S3_ENDPOINT_URL` -> `s3.endpoint_url`, `WANQ_ENGINE_OFFLOAD` -> `engine.offload`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.catalog import PRESETS, TINY_MODEL_IDS, ModelSpec

Offload = Literal["none", "model", "group", "sequential"]
CacheKind = Literal["none", "fbcache", "taylorseer"]


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    """Broker, job store and pub/sub. Use AOF persistence in production (deploy/ does)."""
    key_prefix: str = "wanq"


class S3Settings(BaseModel):
    endpoint_url: str = ""
    """Empty means AWS itself; otherwise MinIO, R2, moto... Credentials come from boto3's AWS_* variables."""
    bucket: str = "wanq"
    region: str = ""
    create_bucket: bool = False
    """Create the bucket at start if it does not exist (the dev stack does)."""
    key_prefix: str = "videos/"
    presigned_content: bool = False
    """False: `/content` streams the object through the API. True: 302 to a presigned GET URL."""
    presign_expiry_s: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    upload_attempts: int = Field(default=5, ge=1)
    upload_backoff_s: float = Field(default=1.0, ge=0)


class JobSettings(BaseModel):
    max_prompt_chars: int = Field(default=4000, ge=1)
    max_frames: int = Field(default=241, ge=5)
    max_pixels: int = Field(default=1280 * 1280, ge=64)
    """Largest width x height a job may ask for."""
    max_steps: int = Field(default=100, ge=1)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1024)
    retention_s: int = Field(default=7 * 24 * 3600, ge=1)
    """How long outputs are kept after completion (`expires_at`)."""
    record_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    """How long a job record is kept in Redis after it ends."""
    soft_time_limit_s: int = Field(default=3600, ge=1)
    hard_time_limit_s: int = Field(default=3900, ge=2)
    max_attempts: int = Field(default=3, ge=1)
    """A job is tried at most this often (crashes included) before it fails."""
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    fetch_allowlist: list[str] = Field(default_factory=list)
    """Networks (CIDR) that `image_url` may resolve to although they are not public."""

    @model_validator(mode="after")
    def _limits_ordered(self) -> JobSettings:
        if self.hard_time_limit_s <= self.soft_time_limit_s:
            raise ValueError(
                f"jobs.hard_time_limit_s ({self.hard_time_limit_s}) must exceed jobs.soft_time_limit_s "
                f"({self.soft_time_limit_s}): set WANQ_JOBS_HARD_TIME_LIMIT_S higher"
            )
        return self


class EngineSettings(BaseModel):
    """How a worker runs its pipeline. Mirrored by `wanq worker` / `wanq generate` flags."""

    device: str = "auto"
    """auto = cuda if available, else cpu."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto = bf16 on GPUs, fp32 on CPU (where bf16 matmuls are slow)."""
    attention_backend: str = ""
    """A diffusers attention backend name (e.g. native, _native_cudnn, flash); empty = diffusers' default."""
    compile: bool = False
    """Regional compile of the repeated transformer blocks (`compile_repeated_blocks`)."""
    warmup: bool = False
    """One small generation before taking jobs, so compile and allocator warm-up never land on a job."""
    offload: Offload = "none"
    text_encoder_cpu_offload: bool = False
    vae_cpu_offload: bool = False
    pin_cpu_memory: bool = False
    vae_tiling: bool = False
    num_gpus: int = Field(default=1, ge=1)
    ulysses_degree: int = Field(default=1, ge=1)
    ring_degree: int = Field(default=1, ge=1)
    cfg_parallel: bool = False
    cache: CacheKind = "none"
    cache_threshold: float = Field(default=0.05, gt=0)
    """fbcache: residual-difference threshold. taylorseer: ignored (see cache_interval)."""
    cache_interval: int = Field(default=3, ge=1)
    """taylorseer: compute every N-th step, predict the rest."""
    prompt_cache_size: int = Field(default=64, ge=0)
    """Prompt embeddings kept per worker (LRU, keyed by prompt, negative prompt and model)."""
    fault_injection: bool = False
    """Test-only: honours `_fault` markers in prompts. Never enable in production."""


class WorkerSettings(BaseModel):
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    load_timeout_s: float = Field(default=1800.0, gt=0)
    """How long a worker process may take to load its model before Celery gives up on it."""


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)


class WebhookSettings(BaseModel):
    """Webhook delivery (`wanq webhooks`, wanq/webhookd.py) and the checks the API makes on webhook URLs."""

    retry_schedule_s: list[float] = Field(default_factory=lambda: [0.0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400])
    """Delay before each attempt, counted from the previous one; its length is the number of attempts."""
    retry_jitter: float = Field(default=0.1, ge=0, le=1)
    """Each delay is stretched or shrunk by up to this fraction, so failed receivers are not hit in lockstep."""
    timeout_s: float = Field(default=15.0, gt=0)
    """Per attempt: connect, send and each read of the answer."""
    allowlist: list[str] = Field(default_factory=list)
    """Networks (CIDR) a webhook URL may resolve to although they are not public (trusted internal receivers)."""
    concurrency: int = Field(default=16, ge=1)
    """Attempts in flight at once in one delivery process; a slow receiver holds only one of them."""
    progress_interval_s: float = Field(default=10.0, ge=0)
    """At most one `video.progress` event per job per this many seconds."""
    rotation_window_s: int = Field(default=24 * 3600, ge=0)
    """After a secret rotation, the previous secret keeps signing (a second `v1,` entry) this long."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    """Longest sleep of the delivery loop between looks for due retries."""
    consumer_name: str = ""
    """This delivery process' name in the event stream's consumer group; empty = the host name. Keep it
    stable across restarts: a restarted process first finishes the events it had read but not handled."""
    claim_idle_s: float = Field(default=60.0, gt=0)
    """Events another delivery process read but left unhandled this long are taken over (it died)."""

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError(f"WANQ_WEBHOOKS_RETRY_SCHEDULE_S {value} must list at least one delay, none negative")
        return value

    @field_validator("allowlist")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"WANQ_WEBHOOKS_ALLOWLIST entry {entry!r} is not a network such as 10.0.0.0/8") from None
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WANQ_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    jobs: JobSettings = JobSettings()
    engine: EngineSettings = EngineSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    models: list[str] = Field(default_factory=lambda: [m for m in PRESETS if m not in TINY_MODEL_IDS])
    """Model ids the service accepts (`WANQ_MODELS='["wan2.2-ti2v-5b"]'`); the first is the default."""

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("WANQ_MODELS must name at least one model")
        unknown = [m for m in value if m not in PRESETS]
        if unknown:
            raise ValueError(f"WANQ_MODELS names unknown model(s) {unknown}; known: {sorted(PRESETS)}")
        return value

    def catalog(self) -> dict[str, ModelSpec]:
        return {m: PRESETS[m] for m in self.models}

    @property
    def default_model(self) -> str:
        return self.models[0]
