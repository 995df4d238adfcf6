"""Prometheus metrics of a worker process: job and stage durations, seconds per denoising step,
GPU memory, model load time and jobs in flight.

Served by the Celery child that holds the model (the process that runs the jobs) on
`WANQ_WORKER_METRICS_PORT`; a child that dies and is replaced starts from zero, which Prometheus'
`rate()` and `increase()` treat as a counter reset.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.schemas import JobRecord, Stage

log = logging.getLogger("wanq.worker")

REGISTRY = CollectorRegistry()
_LONG = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))

JOBS = Counter("wanq_worker_jobs", "Jobs this worker ended, by outcome", ["model", "outcome"], registry=REGISTRY)
JOB_SECONDS = Histogram(
    "wanq_worker_job_duration_seconds", "Claim to recorded outcome", ["model", "outcome"], buckets=_LONG, registry=REGISTRY
)
TIMED_STAGES: tuple[str, ...] = tuple(s.value for s in Stage if s not in (Stage.queued, Stage.loading, Stage.done))
"""The stages a job's timings record when it runs them (the post-processing ones only for a job that asks)."""
PREPARATIONS = ("fetching_source", "fetching_loras", "loading_loras")
"""The job's other timings, before the denoising: an extension's source, its LoRA files, their adapter slots."""
STAGE_HELP = f"Time per stage ({', '.join(TIMED_STAGES)}; and {', '.join(PREPARATIONS)} where a job has them)"

STAGE_SECONDS = Histogram(
    "wanq_worker_stage_duration_seconds",
    STAGE_HELP,
    ["model", "stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, float("inf")),
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "wanq_worker_step_seconds",
    "Seconds per denoising step",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, float("inf")),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("wanq_worker_jobs_in_flight", "Jobs claimed and not yet recorded", ["model"], registry=REGISTRY)
LOAD_SECONDS = Gauge("wanq_worker_model_load_seconds", "How long loading the pipeline took", ["model"], registry=REGISTRY)
GPU_PEAK_BYTES = Gauge(
    "wanq_worker_gpu_max_memory_allocated_bytes", "Peak CUDA memory allocated during the last job", ["model"], registry=REGISTRY
)
GPU_RESERVED_BYTES = Gauge(
    "wanq_worker_gpu_memory_reserved_bytes", "CUDA memory held by the caching allocator", ["model"], registry=REGISTRY
)


def serve(port: int) -> None:
    """Starts the `/metrics` HTTP server on a daemon thread; port 0 leaves it off."""
    if port:
        start_http_server(port, registry=REGISTRY)
        log.info("worker metrics on :%d/metrics", port)


def model_loaded(model: str, seconds: float) -> None:
    LOAD_SECONDS.labels(model).set(seconds)


def job_ended(model: str, outcome: str, record: JobRecord | None) -> None:
    """Counts the outcome and observes the recorded stage timings (from the job record, which the
    runner keeps up to date whichever way it splits the work)."""
    JOBS.labels(model, outcome).inc()
    if record is None:
        return
    timings = dict(record.timings)
    total = timings.pop("total", None)
    if total is not None:
        JOB_SECONDS.labels(model, outcome).observe(total)
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(model, stage).observe(seconds)


class MeteredEngine:
    """Wraps the engine: observes each step's seconds and the job's peak GPU memory; everything else
    passes through unchanged."""

    def __init__(self, engine: Any, model: str) -> None:
        self._engine = engine
        self._model = model

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        result = self._engine.generate(*args, **kwargs)
        for seconds in getattr(result, "step_times", ()):
            STEP_SECONDS.labels(self._model).observe(seconds)
        if cuda is not None:
            GPU_PEAK_BYTES.labels(self._model).set(cuda.max_memory_allocated())
            GPU_RESERVED_BYTES.labels(self._model).set(cuda.memory_reserved())
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _cuda() -> Any:
    import torch  # the worker child has it loaded already

    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None
