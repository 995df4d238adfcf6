"""Remix through the real stack (POST /v1/videos/{id}/remix): a new job with its parent's parameters, seed and
stored image, and a new prompt. The same prompt again gives the parent's frames exactly (same seed, same
parameters, a deterministic pipeline and encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.storage import Storage
from tests.clips import extend, frames_of, make_video
from tests.conftest import png_bytes, wait_for_status
from tests.tenants import client, make_key
from wanq.stack import Stack

INHERITED = ("model", "size", "num_frames", "fps", "seed", "negative_prompt", "num_inference_steps", "guidance_scale")
INHERITED += ("guidance_scale_2", "flow_shift", "has_image", "kind", "extended_from_video_id", "source_frames", "seconds")


def remix(api: httpx.Client, video_id: str, prompt: str) -> dict[str, Any]:
    response = api.post(f"/v1/videos/{video_id}/remix", json={"prompt": prompt})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/videos/{response.json()['id']}"
    return wait_for_status(api, response.json()["id"], {"completed", "failed"})


def test_remix_keeps_parameters_and_seed_and_the_same_prompt_gives_the_same_frames(api: httpx.Client, tmp_path: Path) -> None:
    parent = make_video(api, seed=1234, guidance_scale=3.0, negative_prompt="fog")
    assert parent["status"] == "completed", parent
    same = remix(api, parent["id"], parent["prompt"])
    other = remix(api, parent["id"], "a lighthouse under the northern lights")
    for child in (same, other):
        assert child["status"] == "completed", child
        assert child["remixed_from_video_id"] == parent["id"] and child["id"] != parent["id"]
        assert {k: child[k] for k in INHERITED} == {k: parent[k] for k in INHERITED}
    assert other["prompt"] == "a lighthouse under the northern lights"
    frames = {v["id"]: frames_of(api, v["id"], tmp_path) for v in (parent, same, other)}
    assert np.array_equal(frames[same["id"]], frames[parent["id"]])
    assert not np.array_equal(frames[other["id"]], frames[parent["id"]])


def test_remix_of_an_image_to_video_job_reuses_its_stored_image(api: httpx.Client, storage: Storage) -> None:
    image = png_bytes(64, 64, (20, 160, 220))
    fields = {"prompt": "the square spins", "model": "tiny-i2v-a14b", "size": "64x64", "num_frames": "9"}
    response = api.post("/v1/videos", data=fields | {"num_inference_steps": "2"}, files={"input_reference": ("a.png", image)})
    assert response.status_code == 202, response.text
    parent = wait_for_status(api, response.json()["id"], {"completed", "failed"})
    child = remix(api, parent["id"], "the square melts")
    assert child["status"] == "completed" and child["has_image"] is True, child
    # Its own copy of the parent's input (copied inside the bucket), so deleting the parent leaves it whole.
    stored = storage.get_bytes(storage.key(child["id"], "image"))
    assert stored == storage.get_bytes(storage.key(parent["id"], "image"))
    assert api.delete(f"/v1/videos/{parent['id']}").status_code == 200
    assert storage.get_bytes(storage.key(child["id"], "image")) == stored
    assert remix(api, child["id"], "and again")["status"] == "completed"


def test_remix_of_an_extension_extends_the_same_source_again(api: httpx.Client, tmp_path: Path) -> None:
    source = make_video(api)
    created = extend(api, source["id"], model="tiny-ti2v-5b", num_frames=5)
    assert created.status_code == 202, created.text
    ext = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    assert ext["status"] == "completed", ext
    again = remix(api, ext["id"], ext["prompt"])
    assert again["status"] == "completed", again
    assert again["extended_from_video_id"] == source["id"] and again["remixed_from_video_id"] == ext["id"]
    assert np.array_equal(frames_of(api, again["id"], tmp_path), frames_of(api, ext["id"], tmp_path))


def test_remix_refusals(stack: Stack, api: httpx.Client) -> None:
    assert api.post("/v1/videos/video_doesnotexist/remix", json={"prompt": "x"}).status_code == 404
    parent = make_video(api)
    empty = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "  "})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"
    extra = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "x", "seed": 3})
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "seed"
    with client(stack, make_key(api, "remix-other")) as other:
        hidden = other.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "x"})
        assert hidden.status_code == 404
