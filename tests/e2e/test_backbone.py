"""End to end through the real stack: API -> Redis -> Celery worker (tiny model) -> S3 -> download."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LATE, SMALL, png_bytes, wait_for_status
from wanq.stack import Stack
from worker.export import probe_mp4


def _check_mp4(data: bytes, tmp_path: Path, *, frames: int, width: int, height: int, fps: float) -> None:
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    info = probe_mp4(path)
    assert info["codec"] is not None and "h264" in str(info["codec"]), info
    assert info["size"] == (width, height), info
    assert info["frames"] == frames, info
    assert abs(float(info["fps"]) - fps) < 0.01, info
    assert data[4:8] == b"ftyp"
    # +faststart puts the index (moov) before the media data (mdat).
    assert data.index(b"moov") < data.index(b"mdat")


@pytest.mark.parametrize(
    ("model", "image"),
    [("tiny-t2v-a14b", False), ("tiny-i2v-a14b", True), ("tiny-ti2v-5b", False), ("tiny-ti2v-5b", True)],
)
def test_each_variant_generates_a_valid_mp4(api: httpx.Client, tmp_path: Path, model: str, image: bool) -> None:
    fields = {
        "prompt": f"a lighthouse in a storm ({model})",
        "model": model,
        "size": "64x64",
        "num_frames": "9",
        "num_inference_steps": "3",
        "fps": "8",
        "seed": "7",
    }
    if image:
        response = api.post("/v1/videos", data=fields, files={"input_reference": ("first.png", png_bytes(), "image/png")})
    else:
        response = api.post("/v1/videos", json=fields | {"num_frames": 9, "num_inference_steps": 3, "fps": 8, "seed": 7})
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/videos/{created['id']}"
    assert created["object"] == "video" and created["status"] == "queued" and created["model"] == model
    assert created["size"] == "64x64" and created["num_frames"] == 9 and created["seed"] == 7
    assert created["has_image"] is image

    video = wait_for_status(api, created["id"], {"completed", "failed"})
    assert video["status"] == "completed", video
    assert video["progress"] == 100 and video["completed_at"] >= video["created_at"]
    assert video["expires_at"] > video["completed_at"]
    assert {"encoding_prompt", "denoising", "decoding", "encoding_video", "uploading", "total"} <= set(video["timings"])
    assert video["seconds"] == "1.125"  # 9 frames at 8 fps

    content = api.get(f"/v1/videos/{created['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    _check_mp4(content.content, tmp_path, frames=9, width=64, height=64, fps=8)


def test_a_jobs_step_cache_is_taken_shown_and_run(api: httpx.Client) -> None:
    """`cache` per job (cache-dit DBCache, lossy) as JSON or as a form field; false means none for the job."""
    fields = {"prompt": "a cached lighthouse", "model": "tiny-t2v-a14b", **SMALL, "num_inference_steps": 6, "seed": 3}
    cached = api.post("/v1/videos", json=fields | {"cache": {"rdt": 1.0, "warmup": 1}})
    assert cached.status_code == 202, cached.text
    assert cached.json()["cache"] == {"warmup": 1, "rdt": 1.0}
    off = api.post("/v1/videos", data={k: str(v) for k, v in fields.items()} | {"cache": "false"})
    assert off.status_code == 202, off.text
    assert off.json()["cache"] is False
    default = api.post("/v1/videos", json=fields | {"cache": None}).json()
    assert default["cache"] is None  # the worker's configured default
    empty = api.post("/v1/videos", json=fields | {"cache": {}}).json()
    assert empty["cache"] == {}  # the worker's cache settings, cache on
    for created in (cached.json(), off.json(), default, empty):
        video = wait_for_status(api, created["id"], {"completed", "failed"})
        assert video["status"] == "completed", video
        assert video["cache"] == created["cache"]  # as stored in Redis and read back
    first, second, third = (api.get(f"/v1/videos/{v['id']}/content").content for v in (cached.json(), off.json(), default))
    assert second == third != first  # no cache and the (uncached) default agree; the cached job differs


def test_two_jobs_submitted_together_both_complete(api: httpx.Client) -> None:
    ids = [api.post("/v1/videos", json={"prompt": f"twin {n}", "model": "tiny-t2v-a14b", **SMALL}).json()["id"] for n in range(2)]
    assert ids[0] != ids[1]
    results = [wait_for_status(api, i, {"completed", "failed"}) for i in ids]
    assert [r["status"] for r in results] == ["completed", "completed"]
    keys = [api.get(f"/v1/videos/{i}/content").content for i in ids]
    assert all(k[4:8] == b"ftyp" for k in keys)


def test_defaults_come_from_the_model(api: httpx.Client) -> None:
    video = api.post("/v1/videos", json={"prompt": "defaults", "model": "tiny-ti2v-5b"}).json()
    models = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    defaults = models["tiny-ti2v-5b"]["defaults"]
    assert video["size"] == defaults["size"] and video["num_frames"] == defaults["num_frames"]
    assert video["num_inference_steps"] == defaults["num_inference_steps"] and video["fps"] == defaults["fps"]
    assert video["guidance_scale_2"] is None and video["flow_shift"] == defaults["flow_shift"]
    assert video["negative_prompt"]  # Wan's own default negative prompt
    assert wait_for_status(api, video["id"], {"completed", "failed"})["status"] == "completed"


def test_seconds_become_4k_plus_1_frames(api: httpx.Client) -> None:
    video = api.post(
        "/v1/videos",
        json={"prompt": "seconds", "model": "tiny-t2v-a14b", "seconds": "2", "fps": 8, "size": "64x64", "num_inference_steps": 1},
    ).json()
    assert video["num_frames"] == 17 and video["seconds"] == "2.125"
    both = api.post(
        "/v1/videos",
        json={
            "prompt": "both",
            "model": "tiny-t2v-a14b",
            "seconds": 4,
            "num_frames": 9,
            "size": "64x64",
            "num_inference_steps": 1,
        },
    ).json()
    assert both["num_frames"] == 9  # num_frames wins over seconds


def test_job_waits_for_a_worker_then_completes(stack: Stack, api: httpx.Client) -> None:
    models = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert models[LATE]["live_workers"] == 0
    created = api.post("/v1/videos", json={"prompt": "patience", "model": LATE, **SMALL, "guidance_scale_2": 2.0})
    assert created.status_code == 202, created.text
    video_id = created.json()["id"]
    time.sleep(1.5)
    queued = api.get(f"/v1/videos/{video_id}").json()
    assert queued["status"] == "queued" and queued["queue_position"] == 0
    worker = stack.start_worker(LATE)
    try:
        video = wait_for_status(api, video_id, {"completed", "failed"}, timeout=180)
        assert video["status"] == "completed", video
    finally:
        worker.stop()


def test_models_lists_configured_models_with_live_workers(api: httpx.Client) -> None:
    data = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert {"tiny-t2v-a14b", "tiny-i2v-a14b", "tiny-ti2v-5b", LATE} == set(data)
    assert all(data[m]["live_workers"] >= 1 for m in ("tiny-t2v-a14b", "tiny-i2v-a14b", "tiny-ti2v-5b"))
    assert data[LATE]["defaults"]["size"] == "1280x720" and data[LATE]["defaults"]["num_inference_steps"] == 40
    assert data["tiny-i2v-a14b"]["image_input"] == "required"


def test_health_and_readiness(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok", "deployment": "ok"}


def test_unknown_video_is_404(api: httpx.Client) -> None:
    response = api.get("/v1/videos/video_doesnotexist")
    assert response.status_code == 404
    assert "video_doesnotexist" in response.json()["error"]["message"]
