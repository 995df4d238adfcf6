"""The one typed configuration of wanq: every `WANQ_` variable, grouped by what it configures.

Built once at an entry point (`Settings()`), then passed down; nothing else reads the environment.
Variables map onto groups by their first word: `WANQ_REDIS_URL` -> `redis.url`,
`WANQ_S3_ENDPOINT_URL` -> `s3.endpoint_url`, `WANQ_ENGINE_OFFLOAD` -> `engine.offload`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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


TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Tenant names become parts of Redis key names: letters, digits, `_`, `.`, `-`; at most 64."""


class SeedKey(BaseModel):
    """An API key given by the deployment (`WANQ_AUTH_KEYS`), as the key itself or its SHA-256."""

    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    admin: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> SeedKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("each WANQ_AUTH_KEYS entry needs exactly one of 'key' or 'key_sha256'")
        if self.key is not None and len(self.key.get_secret_value()) < 20:
            # The message never repeats the key: configuration errors are printed.
            raise ValueError(f"the WANQ_AUTH_KEYS entry of tenant {self.tenant!r} has a key shorter than 20 characters")
        return self


class AuthSettings(BaseModel):
    open: bool = False
    """Development only: requests without a key act as `open_tenant` with admin rights (logged loudly)."""
    open_tenant: str = Field(default="default", pattern=TENANT_PATTERN)
    keys: list[SeedKey] = Field(default_factory=list)
    """Keys seeded by the deployment, besides those made with `wanq keys create` (which live in Redis)."""


class TenantQuota(BaseModel):
    """One tenant's overrides; unset fields take the defaults of `QuotaSettings`."""

    model_config = ConfigDict(extra="forbid")

    max_queued_jobs: int | None = Field(default=None, ge=0)
    max_running_jobs: int | None = Field(default=None, ge=1)
    max_pixel_frames: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    weight: float | None = Field(default=None, gt=0, le=1000)


class QuotaSettings(BaseModel):
    max_queued_jobs: int = Field(default=100, ge=0)
    """Jobs a tenant may have waiting for dispatch (all models together)."""
    max_running_jobs: int = Field(default=4, ge=1)
    """Jobs a tenant may have handed to workers at once: running, or next in a worker queue."""
    max_pixel_frames: int = Field(default=1280 * 720 * 121, ge=1)
    """Largest width x height x frames of one job."""
    requests_per_minute: int = Field(default=600, ge=1)
    """Authenticated requests per tenant in any sliding minute."""
    weight: float = Field(default=1.0, gt=0, le=1000)
    """Share of dispatches when several tenants wait for the same model (2 = twice as many as 1)."""
    tenants: dict[str, TenantQuota] = Field(default_factory=dict)
    """Per-tenant overrides: `WANQ_QUOTAS_TENANTS='{"acme": {"max_queued_jobs": 500, "weight": 2}}'`."""

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantQuota]) -> dict[str, TenantQuota]:
        bad = [t for t in value if not re.match(TENANT_PATTERN, t)]
        if bad:
            raise ValueError(f"WANQ_QUOTAS_TENANTS names invalid tenant(s) {bad}: use letters, digits, '_', '.', '-'")
        return value

    def for_tenant(self, tenant: str) -> TenantPolicy:
        override = self.tenants.get(tenant)
        values = {name: getattr(self, name) for name in TenantQuota.model_fields}
        if override is not None:
            values.update(override.model_dump(exclude_none=True))
        return TenantPolicy(**values)


class TenantPolicy(BaseModel):
    """A tenant's quotas and weight with the defaults applied."""

    model_config = ConfigDict(frozen=True)

    max_queued_jobs: int
    max_running_jobs: int
    max_pixel_frames: int
    requests_per_minute: int
    weight: float


class DispatchSettings(BaseModel):
    """The fair dispatcher that feeds each model's worker queue from per-tenant queues."""

    in_api: bool = True
    """Run a dispatcher inside each API process. Any number may run at once (dispatch is atomic)."""
    backlog: int = Field(default=1, ge=1, le=100)
    """Jobs that may wait in a model's worker queue per live worker: 1 keeps workers busy between jobs;
    more hides dispatcher pauses but lets a newcomer wait behind more jobs (see the fairness bound)."""
    interval_s: float = Field(default=0.5, gt=0, le=60)
    """Longest pause between dispatch passes; job events wake the dispatcher sooner."""
    recover_after_s: float = Field(default=30.0, gt=0)
    """A job taken for dispatch whose message was never sent (dispatcher died) is sent again after this."""


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
    auth: AuthSettings = AuthSettings()
    quotas: QuotaSettings = QuotaSettings()
    dispatch: DispatchSettings = DispatchSettings()
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
