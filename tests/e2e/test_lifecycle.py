"""The job lifecycle through the real stack: list, cancel, delete, progress, queue position,
live events, idempotency, image input, variants and expiry."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.storage import Storage
from shared.store import JobStore
from tests.conftest import SMALL, png_bytes, wait_for_status
from tests.records import rewrite

LONG = {"size": "64x64", "num_frames": 9, "num_inference_steps": 100}


def submit(api: httpx.Client, model: str = "tiny-t2v-a14b", **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/videos", json={"prompt": "lifecycle", "model": model, **SMALL, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_step(api: httpx.Client, video_id: str, step: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = api.get(f"/v1/videos/{video_id}").json()
        if video["status"] == "in_progress" and video["stage"] == "denoising" and video["step"] >= step:
            return video
        assert video["status"] in ("queued", "in_progress"), video
        time.sleep(0.05)
    raise AssertionError(f"{video_id} never reached step {step}")


def test_list_is_newest_first_with_cursor_pagination(api: httpx.Client) -> None:
    ids = [submit(api, prompt=f"list {n}", num_inference_steps=1)["id"] for n in range(5)]
    page = api.get("/v1/videos", params={"limit": 3}).json()
    assert page["object"] == "list" and len(page["data"]) == 3 and page["has_more"] is True
    assert [v["id"] for v in page["data"]] == ids[::-1][:3]
    assert page["first_id"] == ids[-1] and page["last_id"] == ids[-3]
    rest = api.get("/v1/videos", params={"limit": 2, "after": page["last_id"]}).json()
    assert [v["id"] for v in rest["data"]] == [ids[1], ids[0]]
    oldest_first = api.get("/v1/videos", params={"limit": 100, "order": "asc"}).json()["data"]
    positions = [next(i for i, v in enumerate(oldest_first) if v["id"] == job) for job in ids]
    assert positions == sorted(positions)
    bad = api.get("/v1/videos", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    for video_id in ids:
        wait_for_status(api, video_id, {"completed"})


def test_cancel_running_job_stops_at_next_step_and_worker_takes_next_job(api: httpx.Client) -> None:
    long = submit(api, **LONG)
    video = wait_for_step(api, long["id"], 2)
    canceled = api.post(f"/v1/videos/{long['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["cancel_requested"] is True
    stopped_at = video["step"]
    final = wait_for_status(api, long["id"], {"canceled", "completed", "failed"}, timeout=60)
    assert final["status"] == "canceled" and final["error"]["code"] == "canceled"
    # Cooperative: it stopped within a couple of steps of the request, far before the 100th.
    assert final["step"] <= stopped_at + 5, final
    again = api.post(f"/v1/videos/{long['id']}/cancel")
    assert again.status_code == 409 and "canceled" in again.json()["error"]["message"]
    after = submit(api)
    assert wait_for_status(api, after["id"], {"completed", "failed"})["status"] == "completed"


def test_queued_jobs_show_position_and_canceled_ones_never_start(api: httpx.Client) -> None:
    blocker = submit(api, model="tiny-ti2v-5b", **LONG)
    wait_for_step(api, blocker["id"], 1)
    queued = [submit(api, model="tiny-ti2v-5b", prompt=f"waiting {n}") for n in range(3)]
    positions = [api.get(f"/v1/videos/{q['id']}").json()["queue_position"] for q in queued]
    assert positions == [0, 1, 2]
    for q in queued[:2]:
        response = api.post(f"/v1/videos/{q['id']}/cancel").json()
        assert response["status"] == "canceled"
    assert api.get(f"/v1/videos/{queued[2]['id']}").json()["queue_position"] == 0
    api.post(f"/v1/videos/{blocker['id']}/cancel")
    last = wait_for_status(api, queued[2]["id"], {"completed", "failed"})
    assert last["status"] == "completed"
    for q in queued[:2]:
        video = api.get(f"/v1/videos/{q['id']}").json()
        assert video["status"] == "canceled" and video["attempts"] == 0 and video["started_at"] is None


def test_completed_job_cannot_be_canceled(api: httpx.Client) -> None:
    video = submit(api, num_inference_steps=1)
    wait_for_status(api, video["id"], {"completed"})
    response = api.post(f"/v1/videos/{video['id']}/cancel")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(api: httpx.Client, store: JobStore) -> None:
    for delay in (0.0, 0.3, 0.6, 0.9):
        video = submit(api, num_inference_steps=2)
        pubsub = store.redis.pubsub()
        pubsub.subscribe(store.keys.events(video["id"]))
        time.sleep(delay)
        answer = api.post(f"/v1/videos/{video['id']}/cancel")
        assert answer.status_code in (200, 409)
        final = wait_for_status(api, video["id"], {"completed", "canceled", "failed"})
        time.sleep(0.5)
        terminal = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None and json.loads(message["data"])["status"] in ("completed", "canceled", "failed"):
                terminal.append(json.loads(message["data"])["status"])
        pubsub.close()
        assert terminal == [final["status"]], (delay, terminal)
        assert final["status"] in ("completed", "canceled")
        if answer.status_code == 200:  # a cancel that was accepted wins, whichever step it arrived at
            assert final["status"] == "canceled", (delay, final)


def test_delete_removes_record_and_outputs(api: httpx.Client, storage: Storage) -> None:
    video = submit(api)
    wait_for_status(api, video["id"], {"completed"})
    assert storage.list_keys(storage.job_prefix(video["id"]))
    response = api.delete(f"/v1/videos/{video['id']}")
    assert response.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
    assert api.get(f"/v1/videos/{video['id']}").status_code == 404
    assert storage.list_keys(storage.job_prefix(video["id"])) == []
    assert api.delete(f"/v1/videos/{video['id']}").status_code == 404


def test_delete_of_a_running_job_cancels_it(api: httpx.Client, storage: Storage) -> None:
    video = submit(api, **LONG)
    wait_for_step(api, video["id"], 1)
    assert api.delete(f"/v1/videos/{video['id']}").json()["deleted"] is True
    time.sleep(2)
    assert api.get(f"/v1/videos/{video['id']}").status_code == 404
    assert storage.list_keys(storage.job_prefix(video["id"])) == []
    follow = submit(api)
    assert wait_for_status(api, follow["id"], {"completed", "failed"})["status"] == "completed"


def test_progress_moves_by_stage_and_step_and_timings_are_kept(api: httpx.Client) -> None:
    # A job ahead keeps the worker busy until the event stream is open, so every stage is seen live.
    blocker = submit(api, model="tiny-ti2v-5b", **LONG)
    wait_for_step(api, blocker["id"], 1)
    video = submit(api, model="tiny-ti2v-5b", num_inference_steps=6)
    seen: list[tuple[str, int, int]] = []
    with api.stream("GET", f"/v1/videos/{video['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if not seen:
                    assert event["status"] == "queued"
                    api.post(f"/v1/videos/{blocker['id']}/cancel")
                seen.append((event["stage"], event["step"], event["progress"]))
                if event["status"] in ("completed", "failed", "canceled"):
                    break
    stages = [s for s, _, _ in seen]
    steps = [st for s, st, _ in seen if s == "denoising"]
    progress = [p for _, _, p in seen]
    assert stages[-1] == "done" and progress[-1] == 100
    assert {"encoding_prompt", "denoising", "decoding", "encoding_video", "uploading"} <= set(stages), stages
    assert len(set(steps)) >= 5 and steps == sorted(steps), steps
    assert progress == sorted(progress), progress


def test_events_for_a_finished_job_give_the_current_state_and_end(api: httpx.Client) -> None:
    video = submit(api, num_inference_steps=1)
    wait_for_status(api, video["id"], {"completed"})
    with api.stream("GET", f"/v1/videos/{video['id']}/events") as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 1 and events[0]["status"] == "completed"


def test_idempotency_key(api: httpx.Client, store: JobStore) -> None:
    body = {"prompt": "idempotent", "model": "tiny-t2v-a14b", **SMALL}
    first = api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = api.post("/v1/videos", json={**body, "prompt": "something else"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["error"]["param"] == "Idempotency-Key"
    fresh = api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k-2"})
    assert fresh.json()["id"] != first.json()["id"]
    # A rejected request frees its key: the corrected retry is accepted.
    bad = api.post("/v1/videos", json={**body, "num_frames": 10}, headers={"Idempotency-Key": "k-3"})
    assert bad.status_code == 400
    assert api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k-3"}).status_code == 202
    # While the first request is still being handled, a retry is told so (409).
    from shared.idempotency import IdempotencyKeys

    keys = IdempotencyKeys(store.redis, keys=store.keys, ttl_s=60)
    assert keys.begin("admin", "k-busy", "fp").outcome == "new"  # the `api` fixture's key is tenant "admin"
    busy = api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k-busy"})
    assert busy.status_code in (409, 422)
    for job in (first, fresh):
        wait_for_status(api, job.json()["id"], {"completed"})


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_image_to_video_from_data_url_and_from_a_url(api: httpx.Client, storage: Storage) -> None:
    red = png_bytes(120, 90, (250, 10, 10))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(red)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from_data = submit(api, model="tiny-i2v-a14b", image_url=_data_url(red))
        from_url = submit(api, model="tiny-ti2v-5b", image_url=f"http://127.0.0.1:{server.server_port}/first.png")
    finally:
        server.shutdown()
    for video in (from_data, from_url):
        assert video["has_image"] is True
        done = wait_for_status(api, video["id"], {"completed", "failed"})
        assert done["status"] == "completed", done
        stored = Image.open(io.BytesIO(storage.get_bytes(storage.key(video["id"], "image"))))
        assert stored.size == (64, 64)  # fitted to the video's size: scaled to cover, centre-cropped
        assert stored.convert("RGB").getpixel((32, 32))[0] > 200
    private = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v-a14b", "image_url": "http://10.0.0.1/a.png"})
    assert private.status_code == 400 and "private" in private.json()["error"]["message"]


def test_variants_thumbnail_and_spritesheet(api: httpx.Client) -> None:
    video = submit(api)
    wait_for_status(api, video["id"], {"completed"})
    thumb = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    sheet = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "spritesheet"})
    assert sheet.headers["content-type"] == "image/jpeg"
    width, height = Image.open(io.BytesIO(sheet.content)).size
    assert width == 3 * 64 and height == 3 * 64  # 9 frames -> a 3x3 grid of 64x64 tiles
    unknown = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "gif"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "variant"


def test_content_before_completion_is_409(api: httpx.Client) -> None:
    video = submit(api, **LONG)
    response = api.get(f"/v1/videos/{video['id']}/content")
    assert response.status_code == 409
    api.post(f"/v1/videos/{video['id']}/cancel")
    wait_for_status(api, video["id"], {"canceled", "completed"})


def test_expired_outputs_answer_410_and_are_swept(api: httpx.Client, store: JobStore, storage: Storage) -> None:
    video = submit(api)
    done = wait_for_status(api, video["id"], {"completed"})
    assert done["expires_at"] > time.time()
    # Fast-forward: the retention ends now.
    rewrite(store, video["id"], expires_at=time.time() - 1)
    store.redis.zadd(store.keys.expiring, {video["id"]: time.time() - 1})
    response = api.get(f"/v1/videos/{video['id']}/content")
    assert response.status_code == 410 and response.json()["error"]["code"] == "expired"
    deadline = time.monotonic() + 10
    while storage.list_keys(storage.job_prefix(video["id"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert storage.list_keys(storage.job_prefix(video["id"])) == []


@pytest.mark.parametrize("variant", ["video", "thumbnail", "spritesheet"])
def test_presigned_redirect_mode_serves_the_same_bytes(
    api: httpx.Client, store: JobStore, storage: Storage, variant: str
) -> None:
    video = submit(api)
    wait_for_status(api, video["id"], {"completed"})
    streamed = api.get(f"/v1/videos/{video['id']}/content", params={"variant": variant}).content
    record = store.get(video["id"])
    assert record is not None
    url = storage.presigned_url(record.outputs[variant], expires_s=60)
    assert httpx.get(url).content == streamed
