"""Many requests in flight at once against one API process. A request that finds every pooled Redis connection
busy waits for one (WANQ_REDIS_MAX_CONNECTIONS, WANQ_REDIS_POOL_TIMEOUT_S) instead of answering 503 while Redis
is healthy; a wait that runs out is a 503 that says so; live event streams hold no pooled connection (they
share the API's one pub/sub connection). The burst is benchmarks/service_load.py's `mixed_burst`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from benchmarks.service_load import UNSERVED, mixed_burst
from tests.api_process import api_process
from tests.conftest import LATE
from tests.private_stack import ADMIN_UNLIMITED
from tests.reliability_report import record
from tests.tenants import TINY_JOB
from wanq.stack import Stack


def pool_api(stack: Stack, env: dict[str, str]) -> AbstractContextManager[str]:
    """One more API process of `stack`, with `env` on top of the stack's."""
    return api_process(stack, "api-pool", {"WANQ_MAINTENANCE_ENABLED": "false", **env})


@pytest.fixture
def queued_video(api: httpx.Client) -> Iterator[str]:
    """A job no worker takes (LATE), so that its event streams stay open."""
    video = api.post("/v1/videos", json={"prompt": "a lighthouse, held", "model": LATE, **TINY_JOB})
    assert video.status_code == 202, video.text
    yield video.json()["id"]
    api.post(f"/v1/videos/{video.json()['id']}/cancel")


def test_a_burst_over_a_small_pool_waits_for_connections_with_streams_open(stack: Stack, queued_video: str) -> None:
    # 200 requests and 30 open streams over 10 connections: the old pool answered 503 past its 100th. Were a
    # stream to hold a pooled connection, ten of them would hold all ten until the end, and the GETs would wait
    # out the pool timeout into 503s.
    with pool_api(stack, {"WANQ_REDIS_MAX_CONNECTIONS": "10"}) as url:
        burst = asyncio.run(mixed_burst(url, stack.admin_headers(), gets=200, posts=0, streams=30, video_id=queued_video))
    assert burst["status_counts"] == {"200": 230}, burst


def test_a_pool_wait_that_runs_out_is_a_503_naming_the_settings(stack: Stack, queued_video: str) -> None:
    async def burst(url: str) -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=stack.admin_headers(), timeout=30) as client:
            answers = await asyncio.gather(*(client.get("/v1/videos") for _ in range(100)))
            return answers, await client.get("/v1/videos")

    with pool_api(stack, {"WANQ_REDIS_MAX_CONNECTIONS": "1", "WANQ_REDIS_POOL_TIMEOUT_S": "0.001"}) as url:
        answers, alone = asyncio.run(burst(url))
    assert alone.status_code == 200, alone.text  # one at a time, the one connection serves
    refused = [a for a in answers if a.status_code != 200]
    assert refused and {a.status_code for a in refused} == {503}, [a.status_code for a in answers]
    error = refused[0].json()["error"]
    assert "WANQ_REDIS_MAX_CONNECTIONS" in error["message"] and "overloaded" in error["message"], error
    assert refused[0].headers["retry-after"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_thousand_concurrent_gets_posts_and_streams_answer_no_5xx(tmp_path: Path) -> None:
    """One API process at its default pool (100 connections), Redis and S3; no worker: the jobs stay queued."""
    stack = Stack(tmp_path)
    stack.env.update(
        {
            "WANQ_MODELS": json.dumps([UNSERVED]),
            "WANQ_S3_CREATE_BUCKET": "true",
            "WANQ_QUOTAS_TENANTS": json.dumps(ADMIN_UNLIMITED),
            "WANQ_DISPATCH_IN_API": "false",
        }
    )
    stack.seed_admin_key()
    try:
        stack.start_redis()
        stack.start_s3()
        stack.start_api()
        with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30) as api:
            video = api.post("/v1/videos", json={"prompt": "followed by many", "model": UNSERVED, **TINY_JOB})
            assert video.status_code == 202, video.text
            burst = asyncio.run(
                mixed_burst(stack.api_url, stack.admin_headers(), gets=334, posts=333, streams=333, video_id=video.json()["id"])
            )
            assert api.get("/v1/videos", params={"limit": 1}).status_code == 200
    finally:
        stack.stop()
    record(
        "hostile_input",
        {"concurrent_requests": burst["requests"], "concurrent_5xx": burst["5xx"], "concurrent_p99_ms": round(burst["p99_ms"])},
    )
    assert burst["requests"] == 1000 and burst["5xx"] == 0 and burst["dropped"] == 0, burst
    assert burst["status_counts"] == {"200": 667, "202": 333}, burst
