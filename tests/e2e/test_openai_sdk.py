"""The official `openai` package, unmodified, pointed at wanq with base_url."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import png_bytes
from wanq.stack import Stack
from worker.export import probe_mp4

WAN = {"num_frames": 9, "num_inference_steps": 2, "seed": 11}


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    key = stack.env.get("WANQ_DEV_ADMIN_KEY", "unused-key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=key, max_retries=0)


def test_create_and_poll_then_download_all_variants(client: openai.OpenAI) -> None:
    video = client.videos.create_and_poll(
        prompt="a paper boat on a river", model="tiny-t2v-a14b", size="64x64", seconds="4", poll_interval_ms=200, extra_body=WAN
    )
    assert video.status == "completed" and video.progress == 100 and video.model == "tiny-t2v-a14b"
    assert video.size == "64x64" and video.completed_at is not None and video.expires_at is not None
    mp4 = client.videos.download_content(video.id).read()
    assert mp4[4:8] == b"ftyp"
    thumb = client.videos.download_content(video.id, variant="thumbnail").read()
    assert Image.open(io.BytesIO(thumb)).format == "WEBP"
    sheet = client.videos.download_content(video.id, variant="spritesheet").read()
    assert Image.open(io.BytesIO(sheet)).format == "JPEG"
    retrieved = client.videos.retrieve(video.id)
    assert retrieved.id == video.id and retrieved.status == "completed"


def test_image_to_video_with_input_reference_file(client: openai.OpenAI) -> None:
    video = client.videos.create_and_poll(
        prompt="the red square starts to spin",
        model="tiny-i2v-a14b",
        size="64x64",
        input_reference=("first.png", png_bytes(), "image/png"),
        poll_interval_ms=200,
        extra_body=WAN,
    )
    assert video.status == "completed", video


def test_n_videos_through_extra_body_in_json_and_multipart(client: openai.OpenAI) -> None:
    """`n` and `seeds` are wanq's extension: the SDK sends them from extra_body (JSON, or form fields with a file)."""
    video = client.videos.create(prompt="two boats", model="tiny-t2v-a14b", size="64x64", extra_body={**WAN, "n": 2})
    ids = video.model_extra["video_ids"] if video.model_extra else None
    assert ids is not None and len(ids) == 2 and ids[0] == video.id, video
    assert [client.videos.retrieve(i).model_extra["seed"] for i in ids] == [WAN["seed"], WAN["seed"] + 1]  # type: ignore[index]
    framed = client.videos.create(
        prompt="two squares",
        model="tiny-i2v-a14b",
        size="64x64",
        input_reference=("first.png", png_bytes(), "image/png"),
        extra_body={"num_frames": 9, "num_inference_steps": 2, "seeds": [7, 3]},  # a form: seeds[]=7, seeds[]=3
    )
    framed_ids = framed.model_extra["video_ids"] if framed.model_extra else None
    assert framed_ids is not None and len(framed_ids) == 2, framed
    for video_id in [*ids, *framed_ids]:
        assert client.videos.poll(video_id, poll_interval_ms=200).status == "completed"
    assert [client.videos.retrieve(i).model_extra["seed"] for i in framed_ids] == [7, 3]  # type: ignore[index]


def test_list_auto_paginates_and_delete(client: openai.OpenAI) -> None:
    ids = [client.videos.create(prompt=f"page {n}", model="tiny-t2v-a14b", size="64x64", extra_body=WAN).id for n in range(3)]
    listed = [v.id for v in client.videos.list(limit=1)]
    assert all(i in listed for i in ids)
    assert listed.index(ids[2]) < listed.index(ids[1]) < listed.index(ids[0])  # newest first, across pages
    for video_id in ids:
        client.videos.poll(video_id, poll_interval_ms=200)
    deleted = client.videos.delete(ids[0])
    assert deleted.id == ids[0] and deleted.deleted is True and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(ids[0])


def test_errors_surface_as_sdk_exceptions_with_our_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="x", model="sora-2")
    assert "sora-2" in str(info.value) and "tiny-t2v-a14b" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="x", model="tiny-t2v-a14b", extra_body={"num_frames": 8})
    assert "num_frames" in str(info.value)


def test_extend_and_remix(client: openai.OpenAI, tmp_path: Path) -> None:
    source = client.videos.create_and_poll(
        prompt="a kite on a beach", model="tiny-t2v-a14b", size="64x64", poll_interval_ms=200, extra_body=WAN
    )
    assert source.status == "completed", source
    # The SDK's `video` must be a file (its {"id": ...} form fails inside the SDK before sending): an empty one,
    # with the id as the form field video[id] (what extra_body={"video": {"id": ...}} becomes in a multipart body).
    extended = client.videos.extend(
        prompt="the kite flies off",
        seconds="4",
        video=b"",
        extra_body={"video": {"id": source.id}, "model": "tiny-i2v-a14b", "num_inference_steps": 2},
    )
    done = client.videos.poll(extended.id, poll_interval_ms=200)
    assert done.status == "completed", done
    extra = done.model_extra or {}
    assert extra["extended_from_video_id"] == source.id and extra["source_frames"] == 9
    total = 9 + extra["num_frames"] - 1  # 4 s at 8 fps: 33 new frames
    assert extra["num_frames"] == 33 and extra["total_frames"] == total  # the new part's and the MP4's (below)
    assert done.seconds == f"{total / 8:g}" and done.size == "64x64"
    path = tmp_path / "long.mp4"
    path.write_bytes(client.videos.download_content(done.id).read())
    assert probe_mp4(path)["frames"] == total == 41

    remixed = client.videos.remix(source.id, prompt="a kite on a snowfield")
    assert remixed.remixed_from_video_id == source.id and remixed.prompt == "a kite on a snowfield"
    remixed = client.videos.poll(remixed.id, poll_interval_ms=200)
    assert remixed.status == "completed" and (remixed.model_extra or {})["seed"] == 11


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_images_generate(client: openai.OpenAI, stack: Stack, response_format: str) -> None:
    result = client.images.generate(
        model="tiny-ti2v-5b",
        prompt="a lantern in the fog",
        n=2,
        size="64x64",
        response_format=response_format,  # type: ignore[arg-type]
        extra_body={"num_inference_steps": 2, "seed": 21},
    )
    assert result.data is not None and len(result.data) == 2 and result.size == "64x64"
    for image in result.data:
        if response_format == "b64_json":
            data = base64.b64decode(image.b64_json or "")
        else:
            assert image.url is not None and image.b64_json is None
            data = httpx.get(image.url, headers=stack.admin_headers(), timeout=30).content
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "PNG" and decoded.size == (64, 64)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_images_generate_takes_every_field_openai_documents(client: openai.OpenAI, output_format: str) -> None:
    # What a client written for OpenAI's images API sends: the fields a frame has no use for are ignored, size "auto"
    # is the model's default (64x64 for the tiny models), and jpeg or webp is what comes back.
    result = client.images.generate(
        model="tiny-ti2v-5b",
        prompt="a lantern in the fog",
        n=1,
        size="auto",
        quality="high",
        style="vivid",
        output_format=output_format,  # type: ignore[arg-type]
        output_compression=80,
        background="opaque",
        moderation="low",
        user="user-1234",
        safety_identifier="hashed-user",
        partial_images=0,
        complexity="low",
        response_format="b64_json",
        stream=False,
        extra_body={"num_inference_steps": 2, "seed": 21},
    )
    assert result.data is not None and len(result.data) == 1
    assert result.output_format == output_format and result.size == "64x64"
    decoded = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert decoded.format == output_format.upper() and decoded.size == (64, 64)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("background", "transparent"),
        ("output_format", "gif"),
        ("output_format", "svg"),
        ("frame_count", 9),
        ("stream", True),
        ("output_compression", 101),
    ],
)
def test_images_refuse_what_a_frame_cannot_be_naming_the_value(client: openai.OpenAI, field: str, value: object) -> None:
    fields: dict[str, Any] = {field: value}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="tiny-ti2v-5b", prompt="a lantern in the fog", **fields)
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == field, error
    assert str(value).lower() in error["message"].lower() and "unknown field" not in error["message"], error


def test_models_retrieve_and_list(client: openai.OpenAI) -> None:
    model = client.models.retrieve("tiny-ti2v-5b")
    assert model.id == "tiny-ti2v-5b" and model.object == "model" and model.owned_by == "wanq"
    assert model.model_extra and model.model_extra["variant"] == "ti2v-5b" and model.model_extra["defaults"]["fps"] == 8
    assert "tiny-ti2v-5b" in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("sora-2")
    assert info.value.body == {
        "message": f"no model 'sora-2' here; this server serves: {', '.join(('tiny-t2v-a14b', 'tiny-i2v-a14b', 'tiny-ti2v-5b', 'wan2.2-t2v-a14b'))}",
        "type": "invalid_request_error",
        "param": "model",
        "code": "not_found",
    }


def test_a_route_wanq_lacks_says_so_in_openais_shape(client: openai.OpenAI) -> None:
    # Not a bare 'Not Found': the SDK user learns which call wanq does not support.
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert info.value.body == {
        "message": "POST /v1/audio/speech is not supported by wanq: it has no such route (its routes are listed at /docs)",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    with pytest.raises(openai.NotFoundError) as info:
        client.files.list()
    assert "GET /v1/files is not supported by wanq" in info.value.message
    with pytest.raises(openai.APIStatusError) as info:
        client.get("/videos/video_0/cancel", cast_to=object)
    assert info.value.status_code == 405
    assert (
        info.value.message
        == "Error code: 405 - GET /v1/videos/video_0/cancel: this route does not take GET (it takes POST); see /docs"
    )
