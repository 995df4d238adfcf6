"""Webhooks through the real stack: worker -> job store stream -> `wanq webhook-delivery` -> a receiver process.

Every request the receiver gets is verified with the `standardwebhooks` library.

Each test runs as a tenant of its own (`tenant`): signing secrets and default endpoints are per tenant,
and the stack's admin tenant is shared by every test of the session. Jobs are submitted with the
tenant's key; waiting reads through the admin key (`api`), which sees every tenant's jobs and is not
bounded by a tenant's requests per minute.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.webhook_store import Delivery, WebhookStore
from shared.webhooks import event_body
from tests.conftest import LATE, SMALL, wait_for_status
from tests.tenants import client, make_key
from tests.webhook_receiver import Receiver
from wanq.stack import Stack, wait_until

MODEL = "tiny-t2v-a14b"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path_factory.mktemp("receiver"))
    yield receiver
    receiver.stop()


@dataclass
class Tenant:
    name: str
    http: httpx.Client
    """Sends the tenant's key."""
    secret: str
    """Its signing secret, with no previous one still signing."""


@pytest.fixture
def tenant(api: httpx.Client, stack: Stack) -> Iterator[Tenant]:
    """A new tenant with a new signing secret and no default endpoint: nothing another test did is seen."""
    name = f"hooks-{uuid.uuid4().hex[:10]}"
    with client(stack, make_key(api, name)) as http:
        response = http.post("/v1/webhook_endpoint/rotate_secret", json={"previous_secret_valid_s": 0})
        assert response.status_code == 200, response.text
        yield Tenant(name, http, str(response.json()["secret"]))


def path(name: str, query: str = "") -> str:
    return f"/{name}-{uuid.uuid4().hex[:8]}" + (f"?{query}" if query else "")


def submit(api: httpx.Client, **fields: Any) -> str:
    response = api.post("/v1/videos", json={"prompt": "a kite over a beach", "model": MODEL, **SMALL, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def verified(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    return Webhook(secret).verify(request["body"], request["headers"])  # type: ignore[no-any-return]


def inject(redis_client: redis.Redis, tenant: Tenant, url: str, job_id: str | None = None) -> Delivery:
    """A delivery of `tenant` put straight into the due set, for the stack's delivery process to send (no
    job needed). It is signed with the tenant's secrets: a tenant without one gets nothing sent."""
    store = WebhookStore(redis_client)
    body = event_body("video.completed", time.time(), {"id": "video_injected", "object": "video", "status": "completed"})
    delivery = Delivery(
        id=f"msg_{uuid.uuid4().hex}", job_id=job_id or f"video_{uuid.uuid4().hex}", tenant=tenant.name, event="video.completed",
        target="job", url=url, max_attempts=5, body=body.decode(),
    )  # fmt: skip
    assert store.add_delivery(delivery)
    return delivery


def finished(redis_client: redis.Redis, delivery: Delivery, timeout: float = 120) -> Delivery:
    store = WebhookStore(redis_client)
    wait_until(lambda: getattr(store.get_delivery(delivery.id), "status", "pending") != "pending", timeout, "the delivery", 0.1)
    got = store.get_delivery(delivery.id)
    assert got is not None
    return got


def deliveries(api: httpx.Client, video_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/videos/{video_id}/webhook_deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def wait_for_deliveries(api: httpx.Client, video_id: str, done: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Waits until `done` deliveries of the job have finished (delivered or failed)."""

    def ended() -> bool:
        return sum(d["status"] != "pending" for d in deliveries(api, video_id)) >= done

    wait_until(ended, timeout, "webhook deliveries", 0.2)
    return deliveries(api, video_id)


def test_lifecycle_events_arrive_signed_per_standard_webhooks(api: httpx.Client, receiver: Receiver, tenant: Tenant) -> None:
    secret = tenant.secret
    hook = path("lifecycle")
    video_id = submit(tenant.http, webhook_url=receiver.url(hook))
    assert wait_for_status(api, video_id, {"completed", "failed"})["status"] == "completed"

    got = receiver.wait_for(hook, 2)
    events = {verified(secret, r)["type"]: verified(secret, r) for r in got}
    assert set(events) == {"video.started", "video.completed"}  # no progress: it is opt-in
    assert events["video.started"]["data"]["status"] == "in_progress"
    completed = events["video.completed"]
    assert completed["data"]["id"] == video_id and completed["data"]["status"] == "completed"
    assert completed["data"]["progress"] == 100 and completed["timestamp"].endswith("Z")
    assert len({r["headers"]["webhook-id"] for r in got}) == 2
    assert all(r["headers"]["content-type"] == "application/json" for r in got)

    listed = wait_for_deliveries(api, video_id, 2)
    assert {d["event"] for d in listed} == {"video.started", "video.completed"}
    assert all(d["status"] == "delivered" and d["attempts"][-1]["status_code"] == 200 for d in listed)
    assert {d["id"] for d in listed} == {r["headers"]["webhook-id"] for r in got}
    assert all(d["url"] == receiver.url(hook) and d["target"] == "job" for d in listed)


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    api: httpx.Client, receiver: Receiver, tenant: Tenant
) -> None:
    secret = tenant.secret
    hook = path("flaky", "codes=503,500,200")
    video_id = submit(tenant.http, webhook_url=receiver.url(hook), webhook_events=["video.completed"])

    got = receiver.wait_for(hook, 3)
    assert [r["status"] for r in got] == [503, 500, 200]
    assert len({r["headers"]["webhook-id"] for r in got}) == 1  # one event, retried under one id
    assert all(verified(secret, r)["type"] == "video.completed" for r in got)
    assert len({r["body"] for r in got}) == 1

    (delivery,) = wait_for_deliveries(api, video_id, 1)
    assert delivery["status"] == "delivered" and delivery["id"] == got[0]["headers"]["webhook-id"]
    attempts = delivery["attempts"]
    assert [a["status_code"] for a in attempts] == [503, 500, 200]
    assert attempts[0]["next_attempt_at"] is not None and attempts[1]["next_attempt_at"] is not None
    assert attempts[2]["next_attempt_at"] is None and delivery["next_attempt_at"] is None
    assert attempts[0]["at"] < attempts[1]["at"] < attempts[2]["at"]


def test_an_event_survives_a_killed_delivery_process(api: httpx.Client, receiver: Receiver, tenant: Tenant, stack: Stack) -> None:
    secret = tenant.secret
    # Retry-After 4 s parks the retry longer than the schedule would, leaving time to kill the process.
    hook = path("restart", "codes=503,200&retry_after=4")
    video_id = submit(tenant.http, webhook_url=receiver.url(hook), webhook_events=["video.completed"])
    wait_until(lambda: any(d["attempts"] for d in deliveries(api, video_id)), 120, "the first attempt", 0.2)
    first = deliveries(api, video_id)[0]["attempts"][0]
    assert first["status_code"] == 503 and first["next_attempt_at"] >= first["at"] + 4  # Retry-After honoured

    (process,) = [p for p in stack.processes if p.name.startswith("webhooks") and p.alive()]
    process.stop(signal.SIGKILL)
    try:
        # An event produced while no delivery process runs waits in the stream.
        later_hook = path("while-down")
        later_id = submit(tenant.http, webhook_url=receiver.url(later_hook), webhook_events=["video.completed"])
        assert wait_for_status(api, later_id, {"completed", "failed"})["status"] == "completed"
    finally:
        stack.start_webhooks()

    got = receiver.wait_for(hook, 2)
    assert [r["status"] for r in got] == [503, 200]
    assert got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"]
    assert got[1]["at"] >= got[0]["at"] + 4
    verified(secret, got[1])
    assert verified(secret, receiver.wait_for(later_hook, 1)[0])["data"]["id"] == later_id
    (delivery,) = wait_for_deliveries(api, video_id, 1)
    assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 2


def test_a_rotation_window_signs_with_the_old_and_the_new_secret(
    receiver: Receiver, tenant: Tenant, redis_client: redis.Redis
) -> None:
    secret = tenant.secret
    rotated = tenant.http.post("/v1/webhook_endpoint/rotate_secret").json()
    new = rotated["secret"]
    assert new != secret and rotated["previous_secret_expires_at"] is not None
    assert "secret" not in tenant.http.get("/v1/webhook_endpoint").json()  # shown once

    hook = path("rotation")
    submit(tenant.http, webhook_url=receiver.url(hook), webhook_events=["video.completed"])
    (request,) = receiver.wait_for(hook, 1)
    entries = request["headers"]["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    for key in (secret, new):
        assert verified(key, request)["type"] == "video.completed"
    # Each entry is a valid signature on its own, not just one of the two.
    for entry in entries:
        verified(
            secret if entry == entries[1] else new, {**request, "headers": {**request["headers"], "webhook-signature": entry}}
        )

    # Ending the window: only the newest secret signs.
    newest = tenant.http.post("/v1/webhook_endpoint/rotate_secret", json={"previous_secret_valid_s": 0}).json()["secret"]
    hook = path("after-rotation")
    inject(redis_client, tenant, receiver.url(hook))
    (request,) = receiver.wait_for(hook, 1)
    assert len(request["headers"]["webhook-signature"].split(" ")) == 1
    verified(newest, request)
    with pytest.raises(WebhookVerificationError):
        verified(new, request)


def test_the_tenant_endpoint_receives_jobs_without_their_own_url_and_a_410_disables_it(
    api: httpx.Client, receiver: Receiver, tenant: Tenant, redis_client: redis.Redis
) -> None:
    secret = tenant.secret
    hook = path("tenant", "codes=200,410")
    response = tenant.http.put("/v1/webhook_endpoint", json={"url": receiver.url(hook), "events": ["video.completed"]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "enabled" and "secret" not in response.json()  # the secret already existed

    first = submit(tenant.http)
    (request,) = receiver.wait_for(hook, 1)
    assert verified(secret, request)["data"]["id"] == first
    assert wait_for_deliveries(api, first, 1)[0]["target"] == "tenant"

    second = submit(tenant.http)
    receiver.wait_for(hook, 2)
    (delivery,) = wait_for_deliveries(api, second, 1)
    assert delivery["status"] == "failed" and "410" in delivery["error"]
    endpoint = tenant.http.get("/v1/webhook_endpoint").json()
    assert endpoint["status"] == "disabled" and "410" in endpoint["disabled_reason"]

    # Nothing more is sent there: once the stream is drained, a third job has no delivery.
    third = submit(tenant.http)
    assert wait_for_status(api, third, {"completed", "failed"})["status"] == "completed"
    wait_until(lambda: redis_client.xlen("wanq:job-events") == 0, 60, "the event stream to drain")
    assert deliveries(api, third) == [] and len(receiver.requests(hook)) == 2

    # Setting the endpoint again re-enables it.
    assert tenant.http.put("/v1/webhook_endpoint", json={"url": receiver.url(hook)}).json()["status"] == "enabled"


def test_redirects_are_not_followed(receiver: Receiver, tenant: Tenant, redis_client: redis.Redis) -> None:
    target = path("redirected-to")
    hook = path("redirect", f"codes=302&location={target}")
    delivery = finished(redis_client, inject(redis_client, tenant, receiver.url(hook)))
    assert delivery.status == "failed" and len(delivery.attempts) == 1
    assert delivery.attempts[0].status_code == 302 and "not followed" in str(delivery.attempts[0].error)
    assert receiver.requests(target) == []


def test_a_client_error_is_final_and_an_attempt_that_times_out_is_retried(
    receiver: Receiver, tenant: Tenant, redis_client: redis.Redis
) -> None:
    refused = inject(redis_client, tenant, receiver.url(path("bad-request", "codes=400")))
    # Longer than the stack's 3 s timeout, once.
    slow = inject(redis_client, tenant, receiver.url(path("slow", "sleep=6&slow=1")))
    refused = finished(redis_client, refused)
    assert refused.status == "failed" and [a.status_code for a in refused.attempts] == [400]
    slow = finished(redis_client, slow)
    assert slow.status == "delivered"
    first, second = slow.attempts
    assert first.status_code is None and str(first.error).startswith("timeout")
    assert second.status_code == 200


def test_a_410_from_a_jobs_own_url_stops_that_jobs_deliveries_there_only(
    receiver: Receiver, tenant: Tenant, redis_client: redis.Redis
) -> None:
    gone = path("job-gone", "codes=410,200")  # 410 to the first request, 200 to any later one
    job = f"video_{uuid.uuid4().hex}"
    first = finished(redis_client, inject(redis_client, tenant, receiver.url(gone), job_id=job))
    assert first.status == "failed" and [a.status_code for a in first.attempts] == [410] and "410" in str(first.error)
    # The same job's next event to that URL is not sent at all; another job's event to it still is.
    again = finished(redis_client, inject(redis_client, tenant, receiver.url(gone), job_id=job))
    assert again.status == "failed" and again.attempts == [] and "410 Gone earlier" in str(again.error)
    other = finished(redis_client, inject(redis_client, tenant, receiver.url(gone)))
    assert other.status == "delivered" and [a.status_code for a in other.attempts] == [200]
    assert [r["status"] for r in receiver.requests(gone)] == [410, 200]


def test_a_slow_receiver_holds_up_no_other_delivery(receiver: Receiver, tenant: Tenant, redis_client: redis.Redis) -> None:
    # Three receivers that hang past the stack's 3 s attempt timeout on their first request, then one that
    # answers at once: with the slow attempts in flight, the fast delivery must be done before any of them
    # has ended (a delivery process that sent one at a time would record a slow timeout first).
    hangs = [path(f"hang{n}", "sleep=6&slow=1") for n in range(3)]
    slow = [inject(redis_client, tenant, receiver.url(hang)) for hang in hangs]
    for hang in hangs:
        receiver.wait_for(hang, 1)  # all three attempts are now in flight, each held by its receiver
    fast = finished(redis_client, inject(redis_client, tenant, receiver.url(path("quick"))))
    assert fast.status == "delivered" and [a.status_code for a in fast.attempts] == [200]
    store = WebhookStore(redis_client)
    still = [store.get_delivery(d.id) for d in slow]
    assert all(d is not None and d.attempts == [] for d in still), [d.attempts if d else None for d in still]
    for delivery in slow:  # each times out once, then its retry is answered
        done = finished(redis_client, delivery)
        assert done.status == "delivered" and str(done.attempts[0].error).startswith("timeout")


def test_progress_events_are_opt_in(api: httpx.Client, receiver: Receiver, tenant: Tenant) -> None:
    secret = tenant.secret
    hook = path("progress")
    video_id = submit(tenant.http, webhook_url=receiver.url(hook), webhook_events=["video.progress", "video.completed"])
    receiver.wait_for(hook, 1, where=lambda r: '"video.completed"' in r["body"])
    receiver.wait_for(hook, 1, where=lambda r: '"video.progress"' in r["body"])
    events = [verified(secret, r) for r in receiver.requests(hook)]
    assert {e["type"] for e in events} == {"video.progress", "video.completed"}  # started was not asked for
    assert all(e["data"]["status"] == "in_progress" for e in events if e["type"] == "video.progress")
    assert all(d["max_attempts"] == 1 for d in deliveries(api, video_id) if d["event"] == "video.progress")


def test_canceling_a_queued_job_sends_only_video_canceled(api: httpx.Client, receiver: Receiver, tenant: Tenant) -> None:
    secret = tenant.secret
    # No worker serves LATE here, so the job is still queued when it is canceled.
    hook = path("canceled")
    video_id = submit(tenant.http, model=LATE, webhook_url=receiver.url(hook))
    assert tenant.http.post(f"/v1/videos/{video_id}/cancel").json()["status"] == "canceled"
    (request,) = receiver.wait_for(hook, 1)
    event = verified(secret, request)
    assert event["type"] == "video.canceled" and event["data"]["status"] == "canceled"
    assert [d["event"] for d in wait_for_deliveries(api, video_id, 1)] == ["video.canceled"]


def test_deliveries_of_an_unknown_video_are_404(api: httpx.Client) -> None:
    response = api.get("/v1/videos/video_nope/webhook_deliveries")
    assert response.status_code == 404 and "video_nope" in response.json()["error"]["message"]
