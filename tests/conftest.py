"""The test session's real stack: redis-server on a free port, moto's S3 server over HTTP, tiny
Wan2.2 pipelines of the real diffusers classes, the API process and one Celery worker process per
model. Nothing here is eager or in-memory; tests talk to it over HTTP like any client.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from tests.tenants import TENANT_QUOTAS
from wanq.stack import AWS_TEST_ENV, Stack

TINY = ("tiny-t2v-a14b", "tiny-i2v-a14b", "tiny-ti2v-5b")
# A real model id served by a tiny pipeline: its worker is started only by the test that needs it.
LATE = "wan2.2-t2v-a14b"
SMALL = {"size": "64x64", "num_frames": 9, "num_inference_steps": 3}
IMAGES_WAIT_S = 8

for key, value in AWS_TEST_ENV.items():
    os.environ.setdefault(key, value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The log scan (tests/e2e/test_secrets_in_logs.py) reads what every other test made the stack log: it runs last.
    last = [item for item in items if item.path.name == "test_secrets_in_logs.py"]
    items[:] = [item for item in items if item not in last] + last


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    stack = Stack(root)
    stack.env.update(
        {
            "WANQ_MODELS": '["' + '","'.join((*TINY, LATE)) + '"]',
            "WANQ_S3_BUCKET": "wanq-test",
            # Several workers share 2 cores: one torch thread each contends less (benchmarks/scaling.py).
            "OMP_NUM_THREADS": "1",
            "WANQ_S3_CREATE_BUCKET": "true",
            "WANQ_S3_UPLOAD_BACKOFF_S": "0.2",
            "WANQ_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
            "WANQ_WORKER_HEARTBEAT_TTL_S": "3",
            "WANQ_MAINTENANCE_INTERVAL_S": "0.5",
            "WANQ_JOBS_FETCH_ALLOWLIST": '["127.0.0.1/32"]',
            # Webhooks: a short schedule, and the tests' receiver on 127.0.0.1 admitted.
            "WANQ_WEBHOOKS_RETRY_SCHEDULE_S": "[0, 0.3, 0.3, 0.5, 1]",
            "WANQ_WEBHOOKS_ALLOWLIST": '["127.0.0.1/32"]',
            "WANQ_WEBHOOKS_TIMEOUT_S": "3",
            "WANQ_WEBHOOKS_POLL_INTERVAL_S": "0.1",
            "WANQ_WEBHOOKS_PROGRESS_INTERVAL_S": "0.2",
            "WANQ_QUOTAS_TENANTS": json.dumps(TENANT_QUOTAS),
            "WANQ_DISPATCH_IN_API": "false",  # the dispatcher runs as its own process, as in production
            # POST /v1/images/generations: tiny images take well under a second; a job no worker serves waits this out.
            "WANQ_IMAGES_WAIT_S": str(IMAGES_WAIT_S),
            # LoRA (tests/e2e/test_loras.py): small limits, so that the refusals are cheap to provoke; every worker's
            # file cache in the session's folder.
            "WANQ_LORAS_MAX_BYTES": str(4 * 1024 * 1024),
            "WANQ_LORAS_MAX_HEADER_BYTES": str(256 * 1024),
            "WANQ_LORAS_MAX_RANK": "16",
            "WANQ_LORAS_CACHE_DIR": str(root / "lora-cache"),
        }
    )
    stack.seed_admin_key()  # every process gets its hash; the `api` fixture sends it
    try:
        stack.start_redis()
        stack.start_s3()
        stack.build_tiny_models(list(TINY), root / "models")
        stack.model_paths[LATE] = stack.model_paths["tiny-t2v-a14b"]
        stack.start_api()
        stack.start_webhooks()
        stack.start_dispatcher()
        for model in TINY:
            stack.start_worker(model)
        for model in TINY:
            stack.wait_for_workers(model, 1, timeout=240)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    """The settings the stack's processes run with, for tests that read Redis or S3 directly."""
    saved = dict(os.environ)
    os.environ.update(stack.env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


@pytest.fixture(scope="session")
def storage(settings: Settings) -> Storage:
    return Storage(settings.s3)


@pytest.fixture(scope="session")
def redis_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url)


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A redis-server of its own (not the stack's), for tests of scripts and loops that need nothing else."""
    own = Stack(tmp_path_factory.mktemp("own-redis"))
    try:
        yield redis.Redis.from_url(own.start_redis())
    finally:
        own.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=stack.admin_headers()) as client:
        yield client


def wait_for_status(api: httpx.Client, video_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    video: dict[str, Any] = {}
    while time.monotonic() < deadline:
        video = api.get(f"/v1/videos/{video_id}").json()
        if video.get("status") in statuses:
            return video
        time.sleep(0.1)
    raise AssertionError(f"video {video_id} did not reach {statuses} within {timeout} s; last: {video}")


def png_bytes(width: int = 96, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def artifacts() -> Path:
    path = Path(os.environ.get("WANQ_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
