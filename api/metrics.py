"""Prometheus metrics of the API and the queue, plus the per-model demand figure the autoscaler reads.

`/metrics` (Prometheus text): request latency by route, and the state of the jobs read from Redis at
scrape time (a handful of O(1) reads per model), so every API replica reports the same numbers:
aggregate them with `max by (...)`, not `sum`.
`/metrics/demand?model=M` (JSON): queued + running jobs of one model; KEDA's metrics-api trigger
scales that model's workers on it (deploy/k8s). Both name tenants, so both need an admin key
(`Authorization: Bearer`), which Prometheus and KEDA send from a Secret; in open mode (development) they
are open like every route.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ServicesDep, get_admin
from api.services import Services
from shared.errors import NotFound
from shared.keys import text
from shared.store import JobStore

router = APIRouter(tags=["metrics"], dependencies=[Depends(get_admin)])

FINISHED = ("completed", "failed", "canceled")


@dataclass
class ModelQueue:
    queued: int = 0
    """Jobs queued, wherever they wait: their tenant's dispatch queue or the worker queue."""
    running: int = 0
    messages: int = 0
    """Messages in the model's Celery queue (a Redis list): at most the dispatcher's backlog."""
    workers: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    """Queued jobs by tenant."""
    running_by_tenant: dict[str, int] = field(default_factory=dict)

    @property
    def demand(self) -> int:
        """Workers this model could keep busy now: every queued job plus every running one."""
        return self.queued + self.running


def read_queues(store: JobStore, models: list[str]) -> dict[str, ModelQueue]:
    """Per-model counts in one pipelined round trip, plus one read of the running jobs' records."""
    pipe = store.redis.pipeline(transaction=False)
    for model in models:
        pipe.zcard(store.keys.queued(model))
        pipe.llen(store.keys.broker_queue(model))
        pipe.hgetall(store.keys.finished(model))
    pipe.zrange(store.keys.running, 0, -1)
    replies = pipe.execute()
    queues: dict[str, ModelQueue] = {}
    for i, model in enumerate(models):
        queued, messages, finished = replies[3 * i : 3 * i + 3]
        queues[model] = ModelQueue(
            queued=int(queued), messages=int(messages), finished={text(k): int(v) for k, v in finished.items()}
        )
    for record in store.get_many(text(i) for i in replies[-1]):
        if record.spec.model in queues:
            queues[record.spec.model].running += 1
    return queues


def read_tenants(services: Services, queues: dict[str, ModelQueue]) -> None:
    """Adds live workers and the per-tenant split (the fair queue's own view) to each model."""
    for model, queue in queues.items():
        queue.workers = len(services.store.live_workers(model))
        depth = services.fairq.depth(model, queue.workers)
        for tenant, row in depth["tenants"].items():
            if row["waiting"] + row["dispatched"]:
                queue.pending[tenant] = int(row["waiting"]) + int(row["dispatched"])
            if row["running"]:
                queue.running_by_tenant[tenant] = int(row["running"])


class QueueCollector(Collector):
    """Reads the job counts from Redis at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wanq_store_up", "1 if the job store (Redis) answered this scrape")
        try:
            queues = read_queues(self.services.store, self.services.settings.models)
            read_tenants(self.services, queues)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("wanq_jobs", "Jobs queued or running now, by model and status", labels=["model", "status"])
        pending = GaugeMetricFamily("wanq_jobs_pending", "Queued jobs by model and tenant", labels=["model", "tenant"])
        running = GaugeMetricFamily("wanq_jobs_running", "Running jobs by model and tenant", labels=["model", "tenant"])
        finished = CounterMetricFamily("wanq_jobs_finished", "Jobs that ended, by model and status", labels=["model", "status"])
        messages = GaugeMetricFamily("wanq_queue_messages", "Messages in the model's Celery queue", labels=["model"])
        workers = GaugeMetricFamily("wanq_workers_live", "Workers with a live heartbeat", labels=["model"])
        demand = GaugeMetricFamily("wanq_demand", "Queued plus running jobs (what the autoscaler reads)", labels=["model"])
        for model, queue in queues.items():
            jobs.add_metric([model, "queued"], queue.queued)
            jobs.add_metric([model, "in_progress"], queue.running)
            for tenant, count in sorted(queue.pending.items()):
                pending.add_metric([model, tenant], count)
            for tenant, count in sorted(queue.running_by_tenant.items()):
                running.add_metric([model, tenant], count)
            for status in FINISHED:
                finished.add_metric([model, status], queue.finished.get(status, 0))
            messages.add_metric([model], queue.messages)
            workers.add_metric([model], queue.workers)
            demand.add_metric([model], queue.demand)
        yield from (jobs, pending, running, finished, messages, workers, demand)


class RequestTimer:
    """ASGI middleware: time to the response's first byte, by method, route template and status.
    The first byte, not the last: an SSE stream stays open for minutes and is not slow."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            route = scope.get("route")
            # The template, never the raw path: one series per route, not one per video id.
            path = getattr(route, "path", "unmatched")
            self.histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not observed:
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not observed:
                observe(500)


class EventStreamCollector(Collector):
    """This API process's live event streams and the Redis subscriptions behind them (api/events.py)."""

    def __init__(self, services: Services) -> None:
        self.hub = services.events

    def collect(self) -> Iterator[Metric]:
        streams = GaugeMetricFamily("wanq_event_streams", "Open GET /v1/videos/{id}/events streams in this API process")
        streams.add_metric([], self.hub.streams)
        channels = GaugeMetricFamily("wanq_event_subscriptions", "Job channels this API process subscribes to in Redis")
        channels.add_metric([], self.hub.channels)
        yield from (streams, channels)


def install(app: FastAPI, services: Services) -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "wanq_http_request_duration_seconds",
        "API request latency to the first response byte",
        ["method", "route", "status"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=registry,
    )
    registry.register(QueueCollector(services))
    registry.register(EventStreamCollector(services))
    app.state.metrics_registry = registry
    app.add_middleware(RequestTimer, histogram=latency)
    app.include_router(router)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/demand", summary="Queued plus running jobs of one model (for the autoscaler)", include_in_schema=False)
def model_demand(services: ServicesDep, model: Annotated[str, Query(max_length=200)]) -> dict[str, Any]:
    if model not in services.settings.models:
        raise NotFound(f"unknown model {model!r}; configured: {services.settings.models}", param="model")
    queue = read_queues(services.store, [model])[model]
    return {
        "model": model,
        "queued": queue.queued,
        "running": queue.running,
        "workers": len(services.store.live_workers(model)),
        "demand": queue.demand,
    }
