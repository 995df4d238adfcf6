"""Previews and the draft decoder through the real stack (API, Redis, moto S3, a Celery worker on a tiny model
whose tiny TAEHV decoder sits beside it, used without a flag): `video.preview` events in step order on the SSE
stream, the `preview` variant while the job runs and after it ends, a canceled job's last preview, and a
`decoder: "tiny"` job's MP4. The worker is this test's fault-injected one (LATE): every step sleeps 0.5 s, so
that each preview is stored before the next is due (a late one would be skipped, never queued).
Random weights: the pictures mean nothing; counts, order, sizes and frames are what is asserted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_for_status
from tests.faulty import TINY_JOB, Workers
from worker.export import probe_mp4

SLOW = "[[fault:sleep@1]]"  # 0.5 s per step from step 1


def submit(api: httpx.Client, prompt: str, **fields: Any) -> dict[str, Any]:
    body = {**TINY_JOB, "num_frames": 9, "prompt": f"previews {prompt} {SLOW}", **fields}
    response = api.post("/v1/videos", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def probe(api: httpx.Client, video_id: str, variant: str, tmp_path: Path) -> dict[str, object]:
    answer = api.get(f"/v1/videos/{video_id}/content", params={"variant": variant})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4"
    path = tmp_path / f"{video_id}-{variant}.mp4"
    path.write_bytes(answer.content)
    return probe_mp4(path)


def events(api: httpx.Client, video_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the job's stream until it ends: (event name, video object)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with api.stream("GET", f"/v1/videos/{video_id}/events", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                video = json.loads(line[5:])
                seen.append((name, video))
                if video["status"] in ("completed", "failed", "canceled"):
                    break
    return seen


def test_previews_every_two_of_six_steps_on_the_stream_and_as_the_preview_variant(
    api: httpx.Client, workers: Workers, tmp_path: Path
) -> None:
    workers.start(1)
    video = submit(api, "every 2", preview_every=2)
    assert video["preview_every"] == 2 and video["preview_step"] is None and video["decoder"] == "full"
    seen = events(api, video["id"])
    # 6 steps, a preview every 2: after steps 2 and 4 (none after the last; the video follows at once).
    previews = [v["preview_step"] for name, v in seen if name == "video.preview"]
    assert previews == [2, 4], [(n, v["step"], v["preview_step"]) for n, v in seen]
    # Each announced with the denoising already past its step, and in step order with the other events.
    steps = [v["step"] for name, v in seen if name == "video.preview"]
    assert all(step >= preview for step, preview in zip(steps, previews, strict=True)), steps
    final = seen[-1][1]
    assert final["status"] == "completed" and final["preview_step"] == 4
    # Kept after the job ends: 9 frames are 3 latent frames, one preview frame each, at half of 64x64.
    shown = probe(api, video["id"], "preview", tmp_path)
    assert shown["frames"] == 3 and shown["size"] == (32, 32), shown
    full = probe(api, video["id"], "video", tmp_path)
    assert full["frames"] == 9 and full["size"] == (64, 64), full


def test_a_canceled_job_keeps_its_last_preview(api: httpx.Client, workers: Workers, tmp_path: Path) -> None:
    workers.start(1)
    video = submit(api, "canceled", preview_every=2, num_inference_steps=60)
    before = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "preview"})
    assert before.status_code == 409  # nothing to show yet
    deadline = time.monotonic() + 120
    while (current := api.get(f"/v1/videos/{video['id']}").json())["preview_step"] is None:
        assert time.monotonic() < deadline and current["status"] in ("queued", "in_progress"), current
        time.sleep(0.1)
    # Served while the job runs
    assert probe(api, video["id"], "preview", tmp_path)["frames"] == 3
    assert api.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    final = wait_for_status(api, video["id"], {"canceled", "completed", "failed"})
    assert final["status"] == "canceled" and final["preview_step"] >= 2, final
    kept = probe(api, video["id"], "preview", tmp_path)
    assert kept["frames"] == 3 and kept["size"] == (32, 32), kept
    # The other variants exist once a job completes only
    assert api.get(f"/v1/videos/{video['id']}/content").status_code == 409


def test_the_tiny_decoder_gives_an_mp4_of_the_jobs_frames_and_size(api: httpx.Client, workers: Workers, tmp_path: Path) -> None:
    workers.start(1)
    video = submit(api, "draft", decoder="tiny", num_inference_steps=2, size="96x64", num_frames=13)
    assert video["decoder"] == "tiny"
    final = wait_for_status(api, video["id"], {"completed", "failed"})
    assert final["status"] == "completed" and final["decoder"] == "tiny" and final["preview_step"] is None, final
    made = probe(api, video["id"], "video", tmp_path)
    assert made["frames"] == 13 and made["size"] == (96, 64), made
    missing = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "preview"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "variant"


def test_preview_every_and_decoder_are_checked_at_the_api(api: httpx.Client) -> None:
    too_many = api.post("/v1/videos", json={**TINY_JOB, "prompt": "x", "preview_every": 7})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "preview_every" and "between 0 and 6" in too_many.json()["error"]["message"]
    boolean = api.post("/v1/videos", json={**TINY_JOB, "prompt": "x", "preview_every": True})
    assert boolean.status_code == 400 and boolean.json()["error"]["param"] == "preview_every"
    unknown = api.post("/v1/videos", json={**TINY_JOB, "prompt": "x", "decoder": "medium"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "decoder"
    assert "'medium'" in unknown.json()["error"]["message"]


def test_a_remix_keeps_the_draft_decoder_unless_it_asks_for_full(api: httpx.Client, tmp_path: Path) -> None:
    body = {"model": "tiny-ti2v-5b", "size": "64x64", "num_frames": 9, "num_inference_steps": 2, "seed": 4}
    draft = api.post("/v1/videos", json={**body, "prompt": "a draft", "decoder": "tiny"}).json()
    assert wait_for_status(api, draft["id"], {"completed", "failed"})["status"] == "completed"
    again = api.post(f"/v1/videos/{draft['id']}/remix", json={"prompt": "a draft"}).json()
    full = api.post(f"/v1/videos/{draft['id']}/remix", json={"prompt": "a draft", "decoder": "full"}).json()
    assert again["decoder"] == "tiny" and full["decoder"] == "full"
    for video in (again, full):
        done = wait_for_status(api, video["id"], {"completed", "failed"})
        assert done["status"] == "completed" and done["seed"] == 4, done
        assert probe(api, video["id"], "video", tmp_path)["frames"] == 9
    # The same latents, the same decoder: the same MP4; the full decoder makes another one.
    files = {v: api.get(f"/v1/videos/{v}/content").content for v in (draft["id"], again["id"], full["id"])}
    assert files[draft["id"]] == files[again["id"]] and files[full["id"]] != files[draft["id"]]
    bad = api.post(f"/v1/videos/{draft['id']}/remix", json={"prompt": "x", "preview_every": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "preview_every"
