"""A live event stream when Redis goes away (a stack of its own: its Redis is stopped): the stream says
why it ends and ends cleanly, never a cut connection; a new stream meanwhile is a 503 with Retry-After;
once Redis is back, reconnecting resumes with the job's current state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
import redis

from tests.private_stack import ADMIN_UNLIMITED, MODEL, redis_process
from tests.sse import sse_events
from wanq.client import Client
from wanq.stack import DEV_ADMIN_KEY_ENV, Stack


@pytest.mark.timeout(120)  # a stream that never ends is the failure this test looks for
def test_an_event_stream_ends_cleanly_when_redis_goes_away(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.env.update(
        {
            "WANQ_MODELS": json.dumps([MODEL]),  # no worker: the job stays queued
            "WANQ_S3_BUCKET": "wanq-outage",
            "WANQ_S3_CREATE_BUCKET": "true",
            "WANQ_QUOTAS_TENANTS": json.dumps(ADMIN_UNLIMITED),
        }
    )
    stack.seed_admin_key()
    try:
        stack.start_redis(appendonly=True)
        stack.start_s3()
        stack.start_api()
        api = httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30)
        created = api.post("/v1/videos", json={"prompt": "waits", "model": MODEL, "size": "64x64", "num_frames": 5})
        assert created.status_code == 202, created.text
        video_id = created.json()["id"]

        # wanq's own client follows the job throughout: it must ride out the outage and see the job end.
        seen: list[str] = []
        failure: list[BaseException] = []
        following = threading.Event()

        def follow() -> None:
            try:
                for video in Client(stack.api_url, api_key=stack.env[DEV_ADMIN_KEY_ENV]).events(video_id, timeout=90):
                    seen.append(video["status"])
                    following.set()
            except BaseException as exc:  # reported by the assertion below
                failure.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert following.wait(30), failure  # the client is connected before Redis goes away

        with api.stream("GET", f"/v1/videos/{video_id}/events") as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            before: list[str] = []
            for line in lines:
                before.append(line)
                if line.startswith("data: "):
                    break
            ((name, video),) = sse_events(before)
            assert name == "video" and video["id"] == video_id and video["status"] == "queued"
            port, server = redis_process(stack)
            server.stop()  # type: ignore[attr-defined]
            rest = list(lines)  # returns only when the server ends the stream
        ending = sse_events(rest)
        assert ending and ending[-1][0] == "interrupted", rest
        assert ending[-1][1]["error"]["code"] == "store_unavailable"
        assert "retry: 2000" in rest

        # Meanwhile a new stream (and any call) is refused plainly, with a hint when to come back.
        refused = api.get(f"/v1/videos/{video_id}/events")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text

        # Redis back (AOF): reconnecting starts with the job as it is, still queued.
        stack.start_redis(port, appendonly=True)
        with api.stream("GET", f"/v1/videos/{video_id}/events") as again:
            assert again.status_code == 200
            resumed: list[str] = []
            for line in again.iter_lines():
                resumed.append(line)
                if line.startswith("data: "):
                    break
        assert sse_events(resumed)[0][1]["id"] == video_id and sse_events(resumed)[0][1]["status"] == "queued"

        canceled = api.post(f"/v1/videos/{video_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
        follower.join(60)
        assert not follower.is_alive() and failure == [], failure
        assert seen[0] == "queued" and seen[-1] == "canceled", seen

        # Redis up, but the API's pub/sub connection dropped (CLIENT KILL): the stream must end and say so,
        # not reconnect in silence and miss what was published meanwhile (it could wait forever for an end).
        other = api.post("/v1/videos", json={"prompt": "also waits", "model": MODEL, "size": "64x64", "num_frames": 5})
        with api.stream("GET", f"/v1/videos/{other.json()['id']}/events") as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    break
            killed = redis.Redis.from_url(stack.redis_url).client_kill_filter(_type="pubsub")
            assert killed >= 1
            dropped = sse_events(list(lines))
        assert dropped and dropped[-1][0] == "interrupted", dropped
    finally:
        stack.stop()
