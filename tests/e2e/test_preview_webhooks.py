"""`video.preview` webhooks through the real stack: a fault-injected worker on a tiny model (its tiny decoder used
without a flag) -> the job store's event stream -> `wanq webhook-delivery` -> a receiver process, every request
verified with the `standardwebhooks` library. Only endpoints that ask for previews get them: a job's own
`webhook_events`, or a tenant endpoint's events for a job that names none; the default set has no previews.

Each job has 6 steps at 0.5 s each (the worker's `[[fault:sleep@1]]`) and a preview every 2 steps: previews after
steps 2 and 4 (none after the last: the video follows at once), a second apart, so they arrive in step order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import wait_for_status
from tests.faulty import TINY_JOB, Workers
from tests.tenants import client, make_key
from tests.webhook_receiver import Receiver
from wanq.stack import Stack

SLOW = "[[fault:sleep@1]]"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path_factory.mktemp("receiver"))
    yield receiver
    receiver.stop()


@pytest.fixture
def tenant(api: httpx.Client, stack: Stack) -> Iterator[tuple[httpx.Client, str]]:
    """A new tenant (its key's client) with a new signing secret and no default endpoint yet."""
    with client(stack, make_key(api, f"previews-{uuid.uuid4().hex[:10]}")) as http:
        response = http.post("/v1/webhook_endpoint/rotate_secret", json={"previous_secret_valid_s": 0})
        assert response.status_code == 200, response.text
        yield http, str(response.json()["secret"])


def submit(http: httpx.Client, name: str, **fields: Any) -> str:
    body = {**TINY_JOB, "num_frames": 9, "prompt": f"preview hooks {name} {SLOW}", "preview_every": 2, **fields}
    response = http.post("/v1/videos", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def events(receiver: Receiver, path: str, secret: str) -> list[dict[str, Any]]:
    """What the receiver got on `path`, in arrival order, each verified against the tenant's secret."""
    return [Webhook(secret).verify(r["body"], r["headers"]) for r in receiver.requests(path)]


def test_preview_webhooks_go_only_where_asked_for_in_step_order(
    api: httpx.Client, workers: Workers, receiver: Receiver, tenant: tuple[httpx.Client, str]
) -> None:
    http, secret = tenant
    workers.start(1)
    run = uuid.uuid4().hex[:8]
    asks, silent, endpoint = f"/asks-{run}", f"/silent-{run}", f"/endpoint-{run}"
    # 1. The tenant's endpoint asks for previews; a job with its own URL and no events gets the default set.
    answer = http.put(
        "/v1/webhook_endpoint", json={"url": receiver.url(endpoint), "events": ["video.preview", "video.completed"]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"] == ["video.preview", "video.completed"]
    jobs = {
        asks: submit(http, "asks", webhook_url=receiver.url(asks), webhook_events=["video.preview", "video.completed"]),
        silent: submit(http, "silent", webhook_url=receiver.url(silent)),
        endpoint: submit(http, "endpoint"),  # names no URL: the tenant's endpoint and its events
    }
    for path, video_id in jobs.items():
        assert wait_for_status(api, video_id, {"completed", "failed"})["status"] == "completed"
        receiver.wait_for(path, 1, where=lambda r: '"video.completed"' in r["body"])

    # 2. Those that asked: a preview after steps 2 and 4, in step order, each the video object at that preview.
    for path in (asks, endpoint):
        got = events(receiver, path, secret)
        previews = [e for e in got if e["type"] == "video.preview"]
        assert [e["data"]["preview_step"] for e in previews] == [2, 4], [(e["type"], e["data"]["preview_step"]) for e in got]
        assert all(e["data"]["id"] == jobs[path] and e["data"]["status"] == "in_progress" for e in previews)
        assert all(e["data"]["step"] >= e["data"]["preview_step"] for e in previews)
        assert got[-1]["type"] == "video.completed" and got[-1]["data"]["preview_step"] == 4
        tried = api.get(f"/v1/videos/{jobs[path]}/webhook_deliveries").json()["data"]
        assert [d["max_attempts"] for d in tried if d["event"] == "video.preview"] == [1, 1]  # superseded: one try

    # 3. The one that did not ask: its lifecycle events, no preview.
    assert [e["type"] for e in events(receiver, silent, secret)] == ["video.started", "video.completed"]
