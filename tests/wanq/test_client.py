"""The Python client against the real stack (API, Redis, Celery workers on tiny models, S3), and its errors against
a closed port and a real HTTP server that refuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import png_bytes
from wanq.client import APIError, Client, ServerUnreachable
from wanq.stack import Stack
from worker.export import probe_mp4


@pytest.fixture
def client(stack: Stack, api_key: str | None) -> Iterator[Client]:
    with Client(stack.api_url, api_key=api_key) as client:
        yield client


def test_submit_follow_events_and_download(client: Client, tmp_path: Path) -> None:
    video = client.submit(
        "a lighthouse at dusk", model="tiny-t2v-a14b", seed=5, size="64x64", num_frames=9, num_inference_steps=4
    )
    assert video["status"] == "queued" and video["model"] == "tiny-t2v-a14b" and video["seed"] == 5

    events = list(client.events(video["id"], timeout=120))
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100, events[-1]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress), progress  # never goes backwards
    assert {e["status"] for e in events} <= {"queued", "in_progress", "completed"}
    steps = [e["step"] for e in events if e["stage"] == "denoising"]
    assert steps == sorted(steps) and set(steps) <= {0, 1, 2, 3, 4} and 4 in steps, steps

    out = client.download(video["id"], tmp_path / "lighthouse.mp4")
    info = probe_mp4(out)
    assert info["size"] == (64, 64) and info["frames"] == 9, info
    assert not list(tmp_path.glob(".*.part"))  # the partial file became the output
    assert client.content(video["id"], variant="thumbnail")[8:12] == b"WEBP"

    # wait() on a finished job returns its final state at once.
    assert client.wait(video["id"], timeout=30)["status"] == "completed"
    assert client.get(video["id"])["progress"] == 100


def test_image_to_video_goes_as_multipart(client: Client, tmp_path: Path) -> None:
    image = tmp_path / "first.png"
    image.write_bytes(png_bytes(80, 64))
    video = client.submit(
        "the red square moves", model="tiny-i2v-a14b", image=image, size="64x64", num_frames=9, num_inference_steps=3
    )
    assert video["has_image"] is True and video["size"] == "64x64"
    assert client.wait(video["id"], timeout=120)["status"] == "completed"
    # An object and a boolean go as JSON text in the form, as the server reads them.
    for cache in ({"rdt": 0.3, "warmup": 1}, False):
        cached = client.submit("the red square", model="tiny-i2v-a14b", image=image, size="64x64", cache=cache)
        assert cached["cache"] == cache
        client.cancel(cached["id"])


def test_list_cancel_delete(client: Client) -> None:
    # 100 steps: long enough that the cancel lands while it is queued or running.
    video = client.submit("to be canceled", model="tiny-t2v-a14b", size="64x64", num_frames=9, num_inference_steps=100)
    assert video["id"] in [v["id"] for v in client.list(limit=50)["data"]]

    canceled = client.cancel(video["id"])
    assert canceled["status"] == "canceled" or canceled["cancel_requested"] is True, canceled
    final = client.wait(video["id"], timeout=120)
    assert final["status"] == "canceled" and final["error"]["code"] == "canceled", final

    with pytest.raises(APIError) as conflict:
        client.cancel(video["id"])
    assert conflict.value.status == 409 and "already canceled" in conflict.value.message

    assert client.delete(video["id"]) == {"id": video["id"], "object": "video.deleted", "deleted": True}
    with pytest.raises(APIError) as gone:
        client.get(video["id"])
    assert gone.value.status == 404 and gone.value.code == "not_found" and video["id"] in gone.value.message
    assert video["id"] not in [v["id"] for v in client.list(limit=50)["data"]]


def test_models_list_the_tiny_models_with_defaults(client: Client) -> None:
    models = {m["id"]: m for m in client.models()}
    assert models["tiny-t2v-a14b"]["defaults"]["size"] == "64x64"
    assert models["tiny-t2v-a14b"]["image_input"] == "none"


def test_unknown_model_is_an_api_error_naming_the_model(client: Client) -> None:
    with pytest.raises(APIError) as exc:
        client.submit("anything", model="wan9-imaginary")
    assert exc.value.status == 400 and exc.value.code == "model_not_available" and exc.value.param == "model"
    assert "wan9-imaginary" in exc.value.message and "tiny-t2v-a14b" in exc.value.message


def test_no_server(closed_url: str) -> None:
    with Client(closed_url) as client, pytest.raises(ServerUnreachable) as exc:
        client.list()
    assert closed_url in str(exc.value)


def test_refusals_carry_status_code_and_retry_after(refusing_server: Callable[..., Any]) -> None:
    server = refusing_server(401, "invalid_api_key", "Incorrect API key provided: wq_bad…")
    with Client(server.url, api_key="wq_bad") as client, pytest.raises(APIError) as exc:
        client.submit("x")
    assert (exc.value.status, exc.value.code) == (401, "invalid_api_key")
    assert exc.value.message == "Incorrect API key provided: wq_bad…"
    assert server.seen_authorization == ["Bearer wq_bad"]

    server = refusing_server(429, "quota_exceeded", "monthly quota of 100 videos used", {"Retry-After": "7"})
    with Client(server.url) as client, pytest.raises(APIError) as exc:
        list(client.events("video_x"))
    assert (exc.value.status, exc.value.code, exc.value.retry_after) == (429, "quota_exceeded", 7.0)
    assert server.seen_authorization == [None]  # no key given, no header sent
