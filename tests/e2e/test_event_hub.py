"""Event streams share one Redis subscription per job in an API process (api/events.py), not one Redis
connection per stream: several clients following the same jobs cost one subscription per job, and
each still gets every change and its own end."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from tests.conftest import LATE
from tests.sse import Follower
from wanq.stack import Stack


def _subscribers(redis_client: redis.Redis, *channels: str) -> list[int]:
    counts: list[Any] = redis_client.pubsub_numsub(*channels)  # type: ignore[assignment]
    return [int(n) for _, n in counts]


def _gauge(stack: Stack, name: str) -> float:
    metrics = httpx.get(f"{stack.api_url}/metrics", headers=stack.admin_headers()).text
    return float(next(line.split()[1] for line in metrics.splitlines() if line.startswith(f"{name} ")))


def test_streams_of_the_same_jobs_share_one_subscription_each(stack: Stack, api: httpx.Client, redis_client: redis.Redis) -> None:
    # No worker serves LATE here: both jobs stay queued until canceled.
    ids = []
    for n in range(2):
        created = api.post("/v1/videos", json={"prompt": f"followed {n}", "model": LATE, "size": "64x64", "num_frames": 5})
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    channels = [f"wanq:events:{video_id}" for video_id in ids]
    streams = [Follower(stack, video_id) for video_id in ids for _ in range(3)]  # three clients per job
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.opened.wait(30) and stream.statuses == ["queued"], (stream.statuses, stream.error)

    # Six streams, two jobs: one subscriber (the API process's hub) per job channel.
    assert _subscribers(redis_client, *channels) == [1, 1]
    # The API's metrics count them (other tests' streams may still be closing: at least ours).
    assert _gauge(stack, "wanq_event_streams") >= 6 and _gauge(stack, "wanq_event_subscriptions") >= 2

    # Each stream still gets its job's change and ends there; the other job's streams stay open.
    assert api.post(f"/v1/videos/{ids[0]}/cancel").json()["status"] == "canceled"
    for stream in streams[:3]:
        stream.join(30)
        assert not stream.is_alive() and stream.error is None and stream.statuses == ["queued", "canceled"]
    assert all(stream.is_alive() for stream in streams[3:])
    deadline = time.monotonic() + 10
    while _subscribers(redis_client, *channels) != [0, 1]:  # the last stream of a job unsubscribes it
        assert time.monotonic() < deadline, _subscribers(redis_client, *channels)
        time.sleep(0.05)

    api.delete(f"/v1/videos/{ids[1]}")  # deleting cancels it too: its streams end with `canceled`
    for stream in streams[3:]:
        stream.join(30)
        assert not stream.is_alive() and stream.statuses[-1] == "canceled", stream.statuses
    api.delete(f"/v1/videos/{ids[0]}")
