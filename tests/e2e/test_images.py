"""POST /v1/images/generations through the real stack: single Wan2.2 frames on the video models' queues and
workers, stored like videos (expiry included), answered inline within WANQ_IMAGES_WAIT_S, else 202 with the ids."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.store import JobStore
from tests.conftest import IMAGES_WAIT_S, LATE
from tests.records import rewrite
from tests.tenants import SMALL, TENANT_QUOTAS, client, make_key
from wanq.stack import Stack

TINY = {"size": "64x64", "num_inference_steps": 2}


def generate(api: httpx.Client, **fields: Any) -> httpx.Response:
    return api.post(
        "/v1/images/generations", json={"prompt": "a red kite over a hill", "model": "tiny-ti2v-5b", **TINY, **fields}
    )


def png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_b64_images_are_stored_as_image_jobs(api: httpx.Client, store: JobStore) -> None:
    started = time.monotonic()
    response = generate(api, n=2, seed=3, response_format="b64_json")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < IMAGES_WAIT_S
    body = response.json()
    assert body["size"] == "64x64" and body["output_format"] == "png" and len(body["data"]) == 2
    assert [d["seed"] for d in body["data"]] == [3, 4]
    images = [png(base64.b64decode(d["b64_json"])) for d in body["data"]]
    assert all(i.shape == (64, 64, 3) for i in images) and not np.array_equal(images[0], images[1])

    # Each is a job: one frame, kind image, stored until it expires; /content serves the PNG by default.
    first = body["data"][0]["id"]
    video = api.get(f"/v1/videos/{first}").json()
    assert (video["kind"], video["num_frames"], video["status"], video["seed"]) == ("image", 1, "completed", 3)
    assert video["expires_at"] > video["completed_at"]
    content = api.get(f"/v1/videos/{first}/content")
    assert content.headers["content-type"] == "image/png" and np.array_equal(png(content.content), images[0])
    assert np.array_equal(png(api.get(f"/v1/videos/{first}/content", params={"variant": "image"}).content), images[0])
    thumb = api.get(f"/v1/videos/{first}/content", params={"variant": "thumbnail"})
    assert Image.open(io.BytesIO(thumb.content)).format == "WEBP"
    no_mp4 = api.get(f"/v1/videos/{first}/content", params={"variant": "video"})
    assert no_mp4.status_code == 404 and "image" in no_mp4.json()["error"]["message"]

    # An image is no video to extend; a remix of it is another image with its seed.
    extend = api.post("/v1/videos/extensions", json={"video": {"id": first}, "prompt": "x", "model": "tiny-ti2v-5b"})
    assert extend.status_code == 400 and "is an image" in extend.json()["error"]["message"]
    remixed = api.post(f"/v1/videos/{first}/remix", json={"prompt": "a blue kite over a hill"}).json()
    assert (remixed["kind"], remixed["num_frames"], remixed["seed"]) == ("image", 1, 3)

    # The same seed gives the same image; the expiry of an image is a video's.
    again = generate(api, seed=3).json()["data"][0]
    assert np.array_equal(png(base64.b64decode(again["b64_json"])), images[0])
    rewrite(store, first, expires_at=time.time() - 1)
    assert api.get(f"/v1/videos/{first}/content").status_code == 410


def test_url_images_point_at_their_content(api: httpx.Client) -> None:
    response = generate(api, model="tiny-t2v-a14b", response_format="url")
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert item["b64_json"] is None and item["url"].endswith(f"/v1/videos/{item['id']}/content")
    fetched = api.get(item["url"])
    assert fetched.status_code == 200 and png(fetched.content).shape == (64, 64, 3)


def test_images_that_take_longer_than_the_wait_answer_202_with_their_ids(api: httpx.Client) -> None:
    # No worker serves LATE: the job waits in the queue past the request's wait limit.
    started = time.monotonic()
    response = api.post("/v1/images/generations", json={"prompt": "patience", "model": LATE, "n": 2, **TINY})
    waited = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert IMAGES_WAIT_S <= waited < IMAGES_WAIT_S + 5
    body = response.json()
    assert body["status"] == "in_progress" and body["data"] == [] and body["waited_s"] == IMAGES_WAIT_S
    assert len(body["ids"]) == 2
    for job_id in body["ids"]:
        video = api.get(f"/v1/videos/{job_id}").json()
        assert video["status"] == "queued" and video["kind"] == "image"
        assert api.post(f"/v1/videos/{job_id}/cancel").status_code == 200  # leave nothing queued for LATE


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"n": 5}, "n", "WANQ_IMAGES_MAX_N"),
        ({"n": 0}, "n", "between 1"),
        ({"model": "tiny-i2v-a14b"}, "model", "tiny-t2v-a14b"),
        ({"model": "gpt-image-1"}, "model", "tiny-ti2v-5b"),
        ({"response_format": "jpeg"}, "response_format", "b64_json"),
        ({"num_frames": 1}, "num_frames", "num_frames"),
        ({"size": "100x100"}, "size", "multiples of 32"),
    ],
)
def test_bad_image_requests_are_refused_naming_the_field(
    api: httpx.Client, fields: dict[str, Any], param: str, says: str
) -> None:
    response = generate(api, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_images_over_the_queue_limit_are_refused_whole_and_nothing_is_created(
    stack: Stack, api: httpx.Client, store: JobStore
) -> None:
    limit = int(TENANT_QUOTAS[SMALL]["max_queued_jobs"])
    with client(stack, make_key(api, SMALL)) as tenant:
        listed = len(tenant.get("/v1/videos", params={"limit": 100}).json()["data"])
        before = sum(1 for _ in store.redis.scan_iter(match=store.keys.job("*"), count=1000))
        refused = tenant.post(
            "/v1/images/generations", json={"prompt": "three kites", "model": "tiny-ti2v-5b", **TINY, "n": limit + 1}
        )
        assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_queued_jobs", refused.text
        assert sum(1 for _ in store.redis.scan_iter(match=store.keys.job("*"), count=1000)) == before
        assert len(tenant.get("/v1/videos", params={"limit": 100}).json()["data"]) == listed  # not even canceled ones
