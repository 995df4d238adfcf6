"""Extensions through the real stack: a completed video continued from its last frame by an image-to-video
model, delivered as one MP4 of the whole video (POST /v1/videos/extensions, or `extend_video_id` on POST
/v1/videos).

Exactness: the extension's MP4 carries the source's H.264 stream unchanged (worker/extension.py), so its first
frames must decode to *exactly* the source's decoded frames (tolerance 0), and the frame the worker conditioned on
must be exactly the source's last decoded frame. The new part is checked exactly too: the same tiny pipeline, run
here on that frame with the job's spec, gives frames whose MP4 encoding decodes to exactly the extension's new part.
"""

from __future__ import annotations

import base64
import io
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from shared.storage import Storage
from shared.store import JobStore
from tests.clips import extend, frames_of, make_video
from tests.conftest import LATE, png_bytes, wait_for_status
from tests.records import rewrite
from tests.tenants import client, make_key
from wanq.stack import Stack
from worker import export


def conditioned_on(storage: Storage, video_id: str) -> np.ndarray:
    """The frame the worker continued from, as it stored it beside the job (a PNG: lossless)."""
    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(storage.key(video_id, "image")))).convert("RGB"))


def test_an_extension_is_the_source_then_new_frames_continued_from_its_last(
    stack: Stack, api: httpx.Client, storage: Storage, tmp_path: Path
) -> None:
    source = make_video(api)
    assert source["status"] == "completed", source
    created = extend(api, source["id"], model="tiny-i2v-a14b", seconds=1)  # 1 s at 8 fps -> 9 new frames
    assert created.status_code == 202, created.text
    assert created.headers["location"] == f"/v1/videos/{created.json()['id']}"
    ext = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    assert ext["status"] == "completed", ext

    # The record: its parent, the source's size, fps and negative prompt, seed + 1; the whole video's duration.
    assert ext["extended_from_video_id"] == source["id"] and ext["remixed_from_video_id"] is None
    assert (ext["model"], ext["size"], ext["fps"], ext["seed"]) == ("tiny-i2v-a14b", "64x64", 8, 6)
    assert ext["negative_prompt"] == source["negative_prompt"] and ext["has_image"] is True
    assert ext["source_frames"] == 9 and ext["num_frames"] == 9 and ext["seconds"] == "2.125"  # (9 + 9 - 1) / 8
    assert "fetching_source" in ext["timings"]

    # The MP4: source frames + new frames - 1, the first ones exactly the source's decoded frames.
    src, whole = frames_of(api, source["id"], tmp_path), frames_of(api, ext["id"], tmp_path)
    assert len(src) == 9 and len(whole) == 9 + 9 - 1
    assert np.array_equal(whole[:9], src)
    info = export.probe_mp4(tmp_path / f"{ext['id']}.mp4")
    assert info["size"] == (64, 64) and float(info["fps"]) == 8 and "h264" in str(info["codec"])  # type: ignore[arg-type]

    # The frame the worker conditioned on is exactly the source's last decoded frame...
    start = conditioned_on(storage, ext["id"])
    assert np.array_equal(start, src[-1])

    # ...and the new part is the model's continuation of it: the same pipeline on that frame with the job's spec,
    # its first frame left out, encodes to exactly the extension's new part (one torch thread, as the workers run).
    from worker.engine import WanEngine

    record_spec = GenerationSpec.model_validate(
        {k: ext[k] for k in ("model", "prompt", "negative_prompt", "num_frames", "fps", "num_inference_steps", "seed")}
        | {"width": 64, "height": 64, "guidance_scale": ext["guidance_scale"], "guidance_scale_2": ext["guidance_scale_2"]}
        | {"flow_shift": ext["flow_shift"]}
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = WanEngine(stack.model_paths["tiny-i2v-a14b"], EngineSettings(device="cpu"), model_id="tiny-i2v-a14b")
        generated = engine.generate(record_spec, Image.fromarray(start)).frames
    finally:
        torch.set_num_threads(threads)
    part = export.write_mp4(generated[1:], 8, tmp_path / "part.mp4")
    assert np.array_equal(whole[9:], np.stack(list(export.read_frames(part))))

    # Thumbnail and spritesheet of the whole video: 16 tiles of 64x64 in a 4x4 grid.
    thumb = api.get(f"/v1/videos/{ext['id']}/content", params={"variant": "thumbnail"})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    sheet = api.get(f"/v1/videos/{ext['id']}/content", params={"variant": "spritesheet"})
    assert sheet.status_code == 200 and Image.open(io.BytesIO(sheet.content)).size == (256, 256)


def test_a_chain_of_three_extensions_each_continues_the_previous_whole_video(api: httpx.Client, tmp_path: Path) -> None:
    source = make_video(api, model="tiny-ti2v-5b")
    assert source["status"] == "completed", source
    chain = [source]
    for link, new in enumerate((5, 9, 5)):
        if link == 1:  # the same, as a field of POST /v1/videos
            response = api.post(
                "/v1/videos", json={"prompt": f"link {link}", "extend_video_id": chain[-1]["id"], "num_frames": new}
            )
        else:
            response = extend(api, chain[-1]["id"], f"link {link}", num_frames=new)
        assert response.status_code == 202, response.text
        ext = wait_for_status(api, response.json()["id"], {"completed", "failed"})
        assert ext["status"] == "completed", ext
        assert ext["extended_from_video_id"] == chain[-1]["id"] and ext["model"] == "tiny-ti2v-5b"
        assert ext["seed"] == chain[-1]["seed"] + 1 and ext["num_inference_steps"] == 2  # the source's, same model
        chain.append(ext)
    totals = [9, 9 + 4, 13 + 8, 21 + 4]
    decoded = [frames_of(api, video["id"], tmp_path) for video in chain]
    assert [len(d) for d in decoded] == totals
    assert [v.get("source_frames") for v in chain[1:]] == totals[:-1]
    for before, after in itertools.pairwise(decoded):
        assert np.array_equal(after[: len(before)], before)
    assert chain[-1]["seconds"] == "3.125"  # 25 frames at 8 fps


@pytest.mark.parametrize(
    ("fields", "status", "param", "says"),
    [
        ({}, 400, "model", "tiny-i2v-a14b, tiny-ti2v-5b"),  # the source's model, tiny-t2v-a14b, takes no image
        ({"model": "tiny-t2v-a14b"}, 400, "model", "text-to-video only"),
        ({"model": "tiny-i2v-a14b", "size": "128x128"}, 400, "size", "64x64"),
        ({"model": "tiny-i2v-a14b", "fps": 16}, 400, "fps", "source's fps (8)"),
        ({"model": "tiny-i2v-a14b", "num_frames": 8}, 400, "num_frames", "4k+1"),
        ({"model": "tiny-i2v-a14b", "image_url": "data:image/png;base64,AAAA"}, 400, "image_url", "image_url"),
    ],
)
def test_bad_extensions_are_refused_naming_the_field(
    api: httpx.Client, finished: dict[str, Any], fields: dict[str, Any], status: int, param: str, says: str
) -> None:
    response = extend(api, finished["id"], **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.fixture(scope="module")
def finished(stack: Stack) -> dict[str, Any]:
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=stack.admin_headers()) as api:
        video = make_video(api)
    assert video["status"] == "completed", video
    return video


def test_sources_that_cannot_be_extended(stack: Stack, api: httpx.Client, store: JobStore) -> None:
    # Unknown, and not given at all.
    missing = extend(api, "video_doesnotexist", model="tiny-i2v-a14b")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "video"
    unnamed = api.post("/v1/videos/extensions", json={"prompt": "x"})
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "video"

    # Not completed: a job that waits (no worker serves LATE), then canceled.
    waiting = api.post("/v1/videos", json={"prompt": "waits", "model": LATE, "size": "64x64", "num_frames": 5})
    assert waiting.status_code == 202, waiting.text
    refused = extend(api, waiting.json()["id"], model="tiny-i2v-a14b")
    assert refused.status_code == 409 and "queued" in refused.json()["error"]["message"], refused.text
    api.post(f"/v1/videos/{waiting.json()['id']}/cancel")
    canceled = extend(api, waiting.json()["id"], model="tiny-i2v-a14b")
    assert canceled.status_code == 409 and "canceled" in canceled.json()["error"]["message"]

    # Another tenant's: 404 to that tenant, exactly as an unknown id; an admin that sees it is told whose it is.
    with client(stack, make_key(api, "extend-a")) as tenant_a, client(stack, make_key(api, "extend-b")) as tenant_b:
        theirs = make_video(tenant_a)
        assert theirs["status"] == "completed", theirs
        hidden = extend(tenant_b, theirs["id"], model="tiny-i2v-a14b")
        assert hidden.status_code == 404 and theirs["id"] in hidden.json()["error"]["message"]
        admin = extend(api, theirs["id"], model="tiny-i2v-a14b")
        assert admin.status_code == 403 and "extend-a" in admin.json()["error"]["message"]
        assert extend(tenant_a, theirs["id"], model="tiny-i2v-a14b").status_code == 202  # its own tenant may

    # Expired: its outputs are gone (upkeep deletes them once expires_at passes).
    old = make_video(api)
    rewrite(store, old["id"], expires_at=time.time() - 1)
    expired = extend(api, old["id"], model="tiny-i2v-a14b")
    assert expired.status_code == 410 and "expired" in expired.json()["error"]["message"]

    # An uploaded file instead of an id: wanq extends the videos it made.
    upload = api.post(
        "/v1/videos/extensions", data={"prompt": "x", "seconds": "4"}, files={"video": ("a.mp4", b"mp4", "video/mp4")}
    )
    assert upload.status_code == 400 and "video[id]" in upload.json()["error"]["message"]


def test_a_source_deleted_while_the_extension_waits_fails_it_cleanly(api: httpx.Client, storage: Storage) -> None:
    source = make_video(api)
    # Keep the image-to-video worker busy so that the extension waits in the queue.
    image = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
    busy = {"prompt": "busy", "model": "tiny-i2v-a14b", "image_url": image, "size": "64x64", "num_inference_steps": 100}
    blocker = api.post("/v1/videos", json=busy).json()
    api_wait_running(api, blocker["id"])
    created = extend(api, source["id"], model="tiny-i2v-a14b").json()
    assert api.get(f"/v1/videos/{created['id']}").json()["status"] == "queued"
    assert api.delete(f"/v1/videos/{source['id']}").status_code == 200
    api.post(f"/v1/videos/{blocker['id']}/cancel")

    failed = wait_for_status(api, created["id"], {"completed", "failed"})
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "invalid_request"
    assert source["id"] in failed["error"]["message"] and "since this extension was created" in failed["error"]["message"]
    assert storage.list_keys(storage.job_prefix(created["id"])) == []  # nothing stored for it


def api_wait_running(api: httpx.Client, video_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = api.get(f"/v1/videos/{video_id}").json()
        if video["status"] == "in_progress" and video["stage"] == "denoising":
            return
        time.sleep(0.05)
    raise AssertionError(f"{video_id} never started denoising")
