"""The one typed configuration of wanq: every `WANQ_` variable, grouped by what it configures.

Built once at an entry point (`Settings()`), then passed down; nothing else reads the environment.
Variables map onto groups by their first word: `WANQ_REDIS_URL` -> `redis.url`,
`WANQ_S3_ENDPOINT_URL` -> `s3.endpoint_url`, `WANQ_ENGINE_OFFLOAD` -> `engine.offload`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.catalog import PRESETS, TINY_MODEL_IDS, ModelSpec
from shared.schemas import DBCacheSetting

_DBCACHE = DBCacheSetting()
"""The WANQ_ENGINE_CACHE_* defaults: DBCacheSetting's own (SGLang-diffusion's)."""

Offload = Literal["none", "model", "group", "sequential"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CacheKind = Literal["none", "dbcache"]
Quantization = Literal["none", "fp8"]


class RedisSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    url: str = "redis://127.0.0.1:6379/0"
    """Broker, job store and pub/sub. Use AOF persistence in production (deploy/ does)."""
    key_prefix: str = "wanq"
    """Prefix of every Redis key wanq writes (several deployments can share one Redis)."""
    max_connections: int = Field(default=100, ge=1)
    """Most connections each Redis client of a process keeps open; a command that finds them all busy waits for one
    (up to `WANQ_REDIS_POOL_TIMEOUT_S`) instead of failing. Live event streams share one pub/sub connection."""
    pool_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for a free pooled connection; past it the request answers 503 saying the pool is exhausted."""


class S3Settings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    endpoint_url: str = ""
    """Empty means AWS itself; otherwise MinIO, R2, moto... Credentials come from boto3's AWS_* variables."""
    bucket: str = "wanq"
    """Bucket holding outputs and input images."""
    region: str = ""
    """Region; empty = boto3's default (AWS_DEFAULT_REGION)."""
    create_bucket: bool = False
    """Create the bucket at start if it does not exist (the dev stack does)."""
    key_prefix: str = "videos/"
    """Objects are stored under `<prefix><job id>/`."""
    presigned_content: bool = False
    """False: `/content` streams the object through the API. True: 302 to a presigned GET URL."""
    presign_expiry_s: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    """Lifetime of presigned URLs."""
    lifecycle_rule: bool = True
    """Also set a bucket lifecycle rule expiring outputs after the retention (whole days), where allowed."""
    upload_attempts: int = Field(default=5, ge=1)
    """Tries of each S3 call (uploads, downloads, copies, deletes, listings) that meets a refused connection, a 5xx
    or a SlowDown, with exponential backoff, before it fails with `storage_unavailable`."""
    upload_backoff_s: float = Field(default=1.0, ge=0)
    """First backoff between those tries; doubles each time."""


class JobSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    max_prompt_chars: int = Field(default=4000, ge=1)
    """Longest prompt or negative prompt accepted."""
    max_frames: int = Field(default=241, ge=5)
    """Most frames a job may ask for."""
    max_pixels: int = Field(default=1280 * 1280, ge=64)
    """Largest width x height a job may ask for."""
    max_steps: int = Field(default=100, ge=1)
    """Most denoising steps a job may ask for."""
    max_output_pixel_frames: int = Field(default=2560 * 1440 * 241, ge=64)
    """Largest delivered video after post-processing (`interpolate`, `upscale`): width x height x frames of the MP4."""
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    """Largest input image, in bytes."""
    max_image_pixels: int = Field(default=40_000_000, ge=1024)
    """Largest input image, in pixels (refused from the header, before decoding)."""
    retention_s: int = Field(default=7 * 24 * 3600, ge=1)
    """How long outputs are kept after completion (`expires_at`)."""
    record_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    """How long a job record is kept in Redis after it ends."""
    soft_time_limit_s: int = Field(default=3600, ge=1)
    """A job running longer fails with `timeout`."""
    hard_time_limit_s: int = Field(default=3900, ge=2)
    """Past this the worker process is killed and replaced; the broker visibility timeout is set above it."""
    max_attempts: int = Field(default=3, ge=1)
    """A job is tried at most this often (crashes included) before it fails."""
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    """How long an Idempotency-Key is remembered."""
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

    model_config = ConfigDict(use_attribute_docstrings=True)

    device: str = "auto"
    """auto = cuda if available, else cpu."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto = bf16 on GPUs, fp32 on CPU (where bf16 matmuls are slow)."""
    attention_backend: str = ""
    """A diffusers attention backend name (e.g. native, _native_cudnn, flash), fa4 (FlashAttention-4 from the
    locally installed flash-attn-4 package, `wanq[fa4]`; Hopper or newer), or fa3 / fa3-fp8 (FlashAttention-3,
    exact / on FP8 inputs (lossy); Hopper only; deploy/docker/build-fa3.sh); empty = diffusers' default."""
    quantization: Quantization = "none"
    """fp8: dynamic FP8 rowwise (torchao) for the transformer blocks' linear layers (lossy; Ada/Hopper or newer)."""
    compile: bool = False
    """Regional compile of the repeated transformer blocks (`compile_repeated_blocks`)."""
    warmup: bool = False
    """One small generation before taking jobs, so compile and allocator warm-up never land on a job."""
    offload: Offload = "none"
    """none, or one of diffusers' offload hooks: model, group (CUDA streams), sequential."""
    text_encoder_cpu_offload: bool = False
    """Keep the UMT5 text encoder on the CPU."""
    vae_cpu_offload: bool = False
    """Keep the VAE on the CPU."""
    pin_cpu_memory: bool = False
    """Pinned host memory for group offload (faster transfers, more RAM)."""
    vae_tiling: bool = False
    """Decode in tiles (less memory at high resolution)."""
    num_gpus: int = Field(default=1, ge=1)
    """GPUs one worker drives (one NCCL process group)."""
    ulysses_degree: int = Field(default=1, ge=1)
    """Ulysses (all-to-all) context-parallel degree."""
    ring_degree: int = Field(default=1, ge=1)
    """Ring-attention context-parallel degree."""
    cfg_parallel: bool = False
    """Conditional and unconditional branches on two GPU groups."""
    fused_ffn: bool | None = None
    """The transformer's feed-forward: its first product, bias and tanh GELU as one cuBLASLt product with a GELU
    epilogue (worker/fused_ffn.py): the same function, one rounding instead of two, none of the [tokens, ffn]
    tensor's extra round trip. Runs on a CUDA GPU, on plain bf16/fp16 weights (not FP8) and while a LoRA slot on the
    layer is off; elsewhere the stock path. Unset: on where a CUDA GPU runs the transformer without FP8 or
    `--offload sequential` (1.6-1.9% faster TI2V-5B step on an H100), off elsewhere."""
    cfg_batch: bool = False
    """One GPU: the conditional and unconditional branches as one batch-2 forward (worker/cfg_batch.py); more
    activation memory. Jobs that run the step cache keep two forwards."""
    cache: CacheKind = "none"
    """Worker default for jobs that do not say: none, or dbcache (cache-dit's DBCache, lossy: skips the middle
    blocks on steps whose first-block residual barely moved). A job's `cache` field overrides it."""
    cache_fn: int = Field(default=_DBCACHE.fn, ge=1)
    """dbcache: first blocks always computed (the residual probe). SGLang's SGLANG_CACHE_DIT_FN."""
    cache_bn: int = Field(default=_DBCACHE.bn, ge=0)
    """dbcache: last blocks always computed. SGLANG_CACHE_DIT_BN."""
    cache_warmup: int = Field(default=_DBCACHE.warmup, ge=0)
    """dbcache: first steps of each expert always computed. SGLANG_CACHE_DIT_WARMUP."""
    cache_rdt: float = Field(default=_DBCACHE.rdt, ge=0)
    """dbcache: residual-difference threshold; 0 never skips, >= 1 skips every step allowed. SGLANG_CACHE_DIT_RDT."""
    cache_mc: int = Field(default=_DBCACHE.mc, ge=-1)
    """dbcache: most cached steps in a row (-1 = no limit). SGLANG_CACHE_DIT_MC."""
    cache_taylorseer: bool = _DBCACHE.taylorseer
    """dbcache: TaylorSeer calibrator (extrapolates the skipped blocks' residual). SGLANG_CACHE_DIT_TAYLORSEER."""
    cache_ts_order: int = Field(default=_DBCACHE.ts_order, ge=1, le=2)
    """dbcache: TaylorSeer order (1 or 2). SGLANG_CACHE_DIT_TS_ORDER."""
    fuse_lora: str = ""
    """A LoRA file fused into the transformer's weights at start (worker/fused_lora.py): every job runs with it at no
    cost per step (a step-distilled LoRA a worker serves on every job). T2V-A14B: both experts, unless
    `fuse_lora_2` names the low-noise expert's own file. Jobs may still name LoRAs of their own."""
    fuse_lora_2: str = ""
    """T2V-A14B: the low-noise expert's LoRA file to fuse (Wan2.2-Lightning ships one per expert)."""
    fuse_lora_strength: float = 1.0
    """The strength the fused LoRAs are fused at."""
    vae_path: str = ""
    """A VAE to use instead of the model's own: a diffusers directory (with config.json, or a `vae/` subfolder)
    or a single .safetensors/.pth file. Its latent channels must match the transformer's."""
    interpolator_path: str = ""
    """A RIFE IFNet v4.x state dict (.safetensors, or a plain PyTorch file read with weights_only=True): jobs may ask
    for `interpolate` 2 or 4. Empty: none (a tiny model's own, written beside it by `wanq tiny-model`, if any)."""
    upscaler_path: str = ""
    """An upscaler (compact Real-ESRGAN built in; other Real-ESRGAN-class files through spandrel): jobs may ask for
    `upscale` equal to its scale, read from the file. Empty: none (a tiny model's own x2, if any)."""
    vae_compile: bool = False
    """torch.compile the VAE decoder (one graph per video size; the first decode at a size pays for it)."""
    vae_channels_last: bool | None = None
    """The VAE in channels-last (NDHWC) memory format for cuDNN's conv3d kernels. Unset: on where the VAE decodes on
    a CUDA GPU (7% faster decode at 720p on an H100, frames at most 4 levels of 255 from the stock layout's; set
    false for the stock layout's exact frames), off on the CPU."""
    vae_fused: bool | None = None
    """The VAE decoder's RMS norm + SiLU as one kernel (compiled on a GPU) and its spatial padding done by the
    convolutions (worker/vae_fused.py); frames differ from the stock decoder's only by rounding on a GPU, not at all
    on a CPU. Unset: on where the VAE decodes on a CUDA GPU without offload hooks (TI2V-5B's 720p decode 18-19%
    faster on an H100, frames at most 4 levels of 255 from the stock decoder's), off elsewhere."""
    cudnn_benchmark: bool = False
    """torch.backends.cudnn.benchmark: cuDNN times its conv algorithms per new shape (the VAE's conv3d) and keeps
    the fastest; process-wide; the first decode at a size pays for the search."""

    preview_vae_path: str = ""
    """A TAEHV checkpoint (taew2_1 for the A14B models, taew2_2 for TI2V-5B; .safetensors or a plain state dict):
    the tiny decoder of previews and of `decoder: "tiny"` jobs. Empty: a tiny model's own (taehv.safetensors
    beside it), else none. Refused at start if its latent channels are not the model's."""
    preview_every: int = Field(default=0, ge=0)
    """Default of jobs that do not say: a preview every this many denoising steps (0: none)."""

    prompt_cache_size: int = Field(default=64, ge=0)
    """Prompt embeddings kept per worker (LRU, keyed by prompt, negative prompt and model)."""
    fault_injection: bool = False
    """Test-only: honours `_fault` markers in prompts. Never enable in production."""

    @field_validator("cache", mode="before")
    @classmethod
    def _old_presets(cls, value: object) -> object:
        # diffusers' FirstBlockCache gave bit-identical latents to DBCache with fn 1, bn 0, no warmup and no limit on
        # cached steps in a row; diffusers' TaylorSeer preset has no counterpart.
        if value == "fbcache":
            raise ValueError(
                "fbcache is gone: use dbcache with cache_warmup 0, cache_mc -1 and cache_rdt <your threshold> (the same algorithm)"
            )
        if value == "taylorseer":
            raise ValueError("taylorseer is gone: use dbcache with cache_taylorseer true")
        return value


class LoraSettings(BaseModel):
    """Per-request LoRA: the tenants' LoRA library (API) and the adapter slots and file cache of each worker.

    Both sides read the same values: the API refuses what the workers could not run."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    """Largest LoRA file accepted (`POST /v1/loras`); a rank-64 A14B expert LoRA is about 0.6 GB in bf16."""
    max_header_bytes: int = Field(default=16 * 1024**2, ge=1024)
    """Largest safetensors header (the JSON before the tensors) accepted; a 400-module LoRA has about 100 KB."""
    max_per_job: int = Field(default=4, ge=0)
    """Most LoRAs one job may name."""
    max_resident: int = Field(default=2, ge=0)
    """Adapter slots per transformer (expert) of each worker: the LoRAs held in the pipeline, reused by later jobs
    without a load, evicted least recently used. Also the most LoRAs of one job on one expert. 0: no LoRA."""
    max_rank: int = Field(default=64, ge=1, le=1024)
    """Rank of every slot: the highest LoRA rank accepted (lower ranks are zero-padded). Slot memory grows with it:
    per slot and rank, 9.1 MiB per A14B expert and 4.8 MiB for TI2V-5B in bf16."""
    max_strength: float = Field(default=4.0, gt=0)
    """A job's LoRA strengths must lie in [-max_strength, max_strength]."""
    max_scale: float = Field(default=16.0, gt=0)
    """Largest alpha/rank a file's own metadata or alpha tensors may set (a multiplier on top of the strength)."""
    cache_dir: str = ""
    """Worker: folder of the LoRA file cache (files named by sha256; processes of one host may share it).
    Empty: `wanq-loras` in the system's temporary folder."""
    cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    """Worker: size of the LoRA file cache; least recently used files go first (never those of the running job)."""
    key_prefix: str = "loras/"
    """Where LoRA files are stored in the bucket: `<prefix><tenant>/<lora id>.safetensors`."""


class WorkerSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """How often a worker reports itself alive."""
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    """A worker silent this long is dead: its running job is requeued."""
    overlap_export: bool = True
    """Encode and upload job N's MP4 on a background thread while job N+1 takes the GPU."""
    load_timeout_s: float = Field(default=1800.0, gt=0)
    """How long a worker process may take to load its model before Celery gives up on it."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the worker's Prometheus `/metrics` (served by the process that holds the model); 0 = off."""
    redis_retry_s: float = Field(default=120.0, ge=0)
    """How long a running job waits for an unreachable Redis (a restart) before it gives up on recording its progress."""
    run_log: str = ""
    """A file the worker appends one JSON line to per run event (claimed, dropped, uploaded, ended): an audit trail
    of every run; the fault suite counts runs from it. Empty = off."""


class MaintenanceSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    enabled: bool = True
    """Requeue jobs of dead workers and delete expired outputs (one API replica at a time)."""
    interval_s: float = Field(default=5.0, gt=0)
    """How often upkeep runs."""
    orphan_grace_s: float = Field(default=3600.0, ge=300)
    """Age past which a stored object no record names (a job's input image or outputs, a LoRA file) is deleted; at
    least 300 s, so an object stored just before its record is written is never taken for an orphan."""
    orphan_sweep_interval_s: float = Field(default=600.0, gt=0)
    """How often upkeep lists the bucket for such orphans."""
    fresh_start: bool = False
    """Redis was emptied on purpose: write a new deployment marker instead of refusing to serve (`/readyz` 503)
    the data Redis lost. Set it for one start only."""


class ApiSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address `wanq api` listens on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port `wanq api` listens on."""
    workers: int = Field(default=1, ge=1, le=64)
    """API processes sharing the port (uvicorn's workers); each runs its own dispatcher when `dispatch.in_api`.
    One process uses about one core: past ~600 POST/s on one core, add processes (or replicas)."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest request body, on every route; past it the answer is 413 (bodies sent chunked included)."""
    log_level: LogLevel = "INFO"
    """Log level of `wanq api`, in each of its processes; its `--loglevel` flag wins."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class VideoSettings(BaseModel):
    """`POST /v1/videos`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_n: int = Field(default=4, ge=1, le=64)
    """Most videos one request may make (`n`), created in one atomic step."""


class ImageSettings(BaseModel):
    """POST /v1/images/generations: single frames made on the video models' queues and workers."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    wait_s: float = Field(default=60.0, ge=0, le=600)
    """How long the request waits for its images. Done by then: 200 with the PNGs; otherwise 202 with the job ids
    (the jobs go on: GET /v1/videos/{id}, then its /content). Keep it under your proxies' read timeout."""
    max_n: int = Field(default=4, ge=1, le=16)
    """Most images (`n`) one request may ask for; each is a job of its own."""


class WebhookSettings(BaseModel):
    """Webhook delivery (`wanq webhook-delivery`, api/daemons/webhooks.py) and the checks the API makes on webhook URLs."""

    model_config = ConfigDict(use_attribute_docstrings=True)

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
    """Who may call the API: API keys (seeded here or made with `wanq keys create`), or open mode for development."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    open: bool = False
    """Development only: requests without a key, or with one this server does not know, act as `open_tenant` with admin
    rights (logged loudly); a live key still acts as its own tenant."""
    open_tenant: str = Field(default="default", pattern=TENANT_PATTERN)
    """The tenant that requests without a (known) key act as in open mode."""
    keys: list[SeedKey] = Field(default_factory=list)
    """Keys seeded by the deployment, besides those made with `wanq keys create` (which live in Redis):
    `[{"key_sha256": "...", "tenant": "acme", "admin": false}]`, or `"key"` instead of its hash."""


class TenantQuota(BaseModel):
    """One tenant's overrides; unset fields take the defaults of `QuotaSettings`."""

    model_config = ConfigDict(extra="forbid")

    max_queued_jobs: int | None = Field(default=None, ge=0)
    max_running_jobs: int | None = Field(default=None, ge=1)
    max_pixel_frames: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    weight: float | None = Field(default=None, gt=0, le=1000)


class QuotaSettings(BaseModel):
    """Every tenant's quotas and dispatch weight; `tenants` overrides them per tenant."""

    model_config = ConfigDict(use_attribute_docstrings=True)

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

    model_config = ConfigDict(use_attribute_docstrings=True)

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
        use_attribute_docstrings=True,
    )

    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    jobs: JobSettings = JobSettings()
    engine: EngineSettings = EngineSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    webhooks: WebhookSettings = WebhookSettings()
    videos: VideoSettings = VideoSettings()
    images: ImageSettings = ImageSettings()
    auth: AuthSettings = AuthSettings()
    quotas: QuotaSettings = QuotaSettings()
    dispatch: DispatchSettings = DispatchSettings()
    loras: LoraSettings = LoraSettings()
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

    @model_validator(mode="after")
    def _lora_files_outside_the_outputs(self) -> Settings:
        # Outputs expire (upkeep's sweep and the bucket's lifecycle rule, which filter on WANQ_S3_KEY_PREFIX); the
        # LoRA library must never lie under that prefix, nor the outputs under its own.
        videos, loras = self.s3.key_prefix, self.loras.key_prefix
        for name, prefix in (("WANQ_S3_KEY_PREFIX", videos), ("WANQ_LORAS_KEY_PREFIX", loras)):
            if prefix and not prefix.endswith("/"):
                # The deployment marker lies beside the prefix ('videos.deployment' for 'videos/'): without the
                # slash it would lie under it, where the lifecycle rule expires it and the sweep looks.
                raise ValueError(f"{name} {prefix!r} must end with '/' (e.g. {prefix + '/'!r})")
        if videos.startswith(loras) or loras.startswith(videos):
            raise ValueError(
                f"WANQ_S3_KEY_PREFIX {videos!r} and WANQ_LORAS_KEY_PREFIX {loras!r} overlap: outputs expire by their "
                "prefix and would take the LoRA files with them; give each its own (e.g. 'videos/' and 'loras/')"
            )
        return self

    def catalog(self) -> dict[str, ModelSpec]:
        return {m: PRESETS[m] for m in self.models}

    @property
    def default_model(self) -> str:
        return self.models[0]


def variables() -> Iterator[tuple[str, FieldInfo]]:
    """Every WANQ_ variable with its field (`WANQ_REDIS_URL`, the `url` field of `RedisSettings`), in order."""
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            for sub, sub_field in group.model_fields.items():
                yield f"WANQ_{name.upper()}_{sub.upper()}", sub_field
        else:
            yield f"WANQ_{name.upper()}", field


def settings_table() -> str:
    """Every WANQ_ variable as a markdown table (docs/SETTINGS.md is generated from it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, field in variables():
        rows.append(f"| `{variable}` | `{_show(field.get_default(call_default_factory=True))}` | {_doc(field.description)} |")
    return "\n".join(rows)


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        import json

        return json.dumps(value)
    return "" if value == "" else str(value)


def _doc(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


if __name__ == "__main__":
    print(settings_table())
