"""Invalid input is a 4xx that names the field and the value, and nothing invalid reaches a worker."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.store import JobStore
from tests.conftest import png_bytes

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"model": "tiny-t2v-a14b", "num_frames": 10}, "num_frames", "10"),
    ({"model": "tiny-t2v-a14b", "num_frames": 1001}, "num_frames", "1001"),
    ({"model": "tiny-t2v-a14b", "size": "100x64"}, "size", "100x64"),
    ({"model": "tiny-ti2v-5b", "size": "1280x720"}, "size", "1280x720"),
    ({"model": "tiny-t2v-a14b", "size": "big"}, "size", "big"),
    ({"model": "tiny-t2v-a14b", "size": "4096x4096"}, "size", "4096x4096"),
    ({"model": "tiny-t2v-a14b", "num_inference_steps": 0}, "num_inference_steps", "0"),
    ({"model": "tiny-t2v-a14b", "num_inference_steps": 1000}, "num_inference_steps", "1000"),
    ({"model": "tiny-t2v-a14b", "guidance_scale": -1}, "guidance_scale", "-1"),
    ({"model": "tiny-ti2v-5b", "guidance_scale_2": 3.0}, "guidance_scale_2", "3.0"),
    ({"model": "tiny-t2v-a14b", "seed": -5}, "seed", "-5"),
    ({"model": "tiny-t2v-a14b", "seconds": -2}, "seconds", "-2"),
    ({"model": "tiny-t2v-a14b", "seconds": 1000}, "seconds", "1000"),
    ({"model": "tiny-t2v-a14b", "fps": 0}, "fps", "0"),
    ({"model": "tiny-t2v-a14b", "num_frames": "many"}, "num_frames", "many"),
    ({"model": "tiny-t2v-a14b", "flow_shift": 0}, "flow_shift", "0"),
    ({"model": "tiny-t2v-a14b", "frobnicate": 1}, "frobnicate", "frobnicate"),
    ({"model": "tiny-i2v-a14b"}, "input_reference", "image"),
    ({"model": "tiny-t2v-a14b", "image_url": "data:image/png;base64,AAAA"}, "input_reference", "text-to-video"),
    ({"model": "tiny-t2v-a14b", "image_url": "ftp://example.com/a.png"}, "image_url", "ftp"),
    ({"model": "tiny-t2v-a14b", "cache": {"rdt": -1}}, "cache", "rdt -1"),
    ({"model": "tiny-t2v-a14b", "cache": {"ts_order": 3}}, "cache", "ts_order 3"),
    ({"model": "tiny-t2v-a14b", "cache": {"fn": True}}, "cache", "fn True"),
    ({"model": "tiny-t2v-a14b", "cache": {"threshold": 0.1}}, "cache", "threshold"),
    ({"model": "tiny-t2v-a14b", "cache": 1}, "cache", "true or false"),  # true is taken: the worker's settings
]


@pytest.mark.parametrize(("fields", "param", "mentions"), BAD, ids=[f"{b[1]}={b[2]}" for b in BAD])
def test_bad_field_is_400_naming_field_and_value(
    api: httpx.Client, store: JobStore, fields: dict[str, Any], param: str, mentions: str
) -> None:
    before = store.queued_count(fields["model"])
    response = api.post("/v1/videos", json={"prompt": "x", **fields})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert param in error["message"] and mentions in error["message"], error
    assert store.queued_count(fields["model"]) == before


@pytest.mark.parametrize(
    ("field", "suggestion"),
    [
        ("steps", "num_inference_steps"),
        ("frames", "num_frames"),
        ("num_frame", "num_frames"),
        ("guidance_scale2", "guidance_scale_2"),
    ],
)
def test_an_unknown_field_suggests_the_likely_one(api: httpx.Client, field: str, suggestion: str) -> None:
    response = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-t2v-a14b", field: 8})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"unknown field '{field}'; did you mean '{suggestion}'?"
    unrelated = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-t2v-a14b", "frobnicate": 1})
    assert unrelated.json()["error"]["message"] == "unknown field 'frobnicate'"


def test_unknown_model_lists_the_configured_ones(api: httpx.Client) -> None:
    response = api.post("/v1/videos", json={"prompt": "x", "model": "sora-2"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_available" and error["param"] == "model"
    assert "sora-2" in error["message"] and "tiny-ti2v-5b" in error["message"]


def test_missing_and_empty_prompt(api: httpx.Client) -> None:
    missing = api.post("/v1/videos", json={"model": "tiny-t2v-a14b"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    empty = api.post("/v1/videos", json={"model": "tiny-t2v-a14b", "prompt": "   "})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"


def test_overlong_prompt(api: httpx.Client) -> None:
    response = api.post("/v1/videos", json={"model": "tiny-t2v-a14b", "prompt": "a" * 100_000})
    assert response.status_code == 400
    assert "100000 characters" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1,2]", "application/json"),
        (b"\xff\xfe\xfd", "application/json"),
        (b"prompt=x", "text/plain"),
    ],
)
def test_malformed_bodies(api: httpx.Client, body: bytes, content_type: str) -> None:
    response = api.post("/v1/videos", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_bad_images(api: httpx.Client) -> None:
    def post(data: bytes) -> httpx.Response:
        return api.post(
            "/v1/videos",
            data={"prompt": "x", "model": "tiny-i2v-a14b", "size": "64x64"},
            files={"input_reference": ("a.png", data, "image/png")},
        )

    not_image = post(b"this is not an image")
    assert not_image.status_code == 400 and "decodable" in not_image.json()["error"]["message"]
    truncated = post(png_bytes()[:60])
    assert truncated.status_code == 400
    # A decompression bomb: a tiny PNG whose header claims 30000x30000 pixels is refused before decoding.
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    bomb = post(buf.getvalue())
    assert bomb.status_code == 400 and "pixels" in bomb.json()["error"]["message"], bomb.text
