"""Post-processing through the real stack: `interpolate` and `upscale` on POST /v1/videos, run by the tiny models'
workers with the tiny RIFE and compact x2 upscaler `wanq tiny-model` writes beside each pipeline (no flags).

The generated frames sit at positions i x k of an interpolated MP4. Both MP4s are H.264 (crf 18) encodes, and
x264 codes a frame differently among other neighbours, so "unchanged" is checked up to the encode's tolerance:
a mean absolute difference of at most MEAN_TOLERANCE 8-bit levels per frame against the same job without
interpolation (measured: 1.9 to 6.7; the tiny models' random-weight frames are noise, x264's worst case), while
every interpolated frame between differs from its neighbours by more. Bit-exactness before the encode is
tested on the frames themselves (tests/worker/test_postprocess.py)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from shared.schemas import LAST_FRAME
from shared.settings import EngineSettings
from shared.storage import Storage
from shared.store import JobStore
from tests.clips import SOURCE, extend, frames_of, make_video
from tests.conftest import wait_for_status
from wanq.stack import Stack
from worker import export
from worker.engine import WanEngine

MEAN_TOLERANCE = 8.0


def _mp4(api: httpx.Client, video: dict[str, Any], tmp_path: Path) -> dict[str, object]:
    response = api.get(f"/v1/videos/{video['id']}/content")
    assert response.status_code == 200, response.text
    path = tmp_path / f"{video['id']}.mp4"
    path.write_bytes(response.content)
    return export.probe_mp4(path)


@pytest.mark.parametrize(("interpolate", "upscale"), [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_frames_fps_and_size_of_each_combination(api: httpx.Client, tmp_path: Path, interpolate: int, upscale: int) -> None:
    video = make_video(api, interpolate=interpolate, upscale=upscale)
    assert video["status"] == "completed", video
    frames, fps, side = (SOURCE["num_frames"] - 1) * interpolate + 1, SOURCE["fps"] * interpolate, 64 * upscale
    probe = _mp4(api, video, tmp_path)
    assert (probe["frames"], probe["fps"], probe["size"]) == (frames, fps, (side, side))
    assert video["interpolate"] == interpolate and video["upscale"] == upscale
    assert (video["total_frames"], video["fps"], video["size"]) == (frames, fps, f"{side}x{side}")
    assert video["num_frames"] == SOURCE["num_frames"]  # the generated ones
    for stage, factor in (("interpolating", interpolate), ("upscaling", upscale)):
        assert (stage in video["timings"]) == (factor > 1), video["timings"]


def test_generated_frames_are_kept_at_i_times_k(api: httpx.Client, tmp_path: Path) -> None:
    plain = make_video(api)
    smooth = make_video(api, interpolate=2)
    assert plain["status"] == smooth["status"] == "completed"
    base = frames_of(api, plain["id"], tmp_path).astype(np.float64)
    both = frames_of(api, smooth["id"], tmp_path).astype(np.float64)
    assert len(both) == (len(base) - 1) * 2 + 1
    kept = np.abs(both[::2] - base).mean(axis=(1, 2, 3))
    assert kept.max() <= MEAN_TOLERANCE, kept
    between = np.abs(both[1::2] - base[:-1]).mean(axis=(1, 2, 3))
    assert between.min() > kept.max(), (between, kept)


def test_remix_keeps_the_post_processing_unless_it_says(api: httpx.Client, tmp_path: Path) -> None:
    parent = make_video(api, interpolate=2, upscale=2)
    assert parent["status"] == "completed", parent
    same = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "a boat"})
    plain = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "a boat", "interpolate": 1})
    assert same.status_code == plain.status_code == 202, (same.text, plain.text)
    same_done = wait_for_status(api, same.json()["id"], {"completed", "failed"})
    plain_done = wait_for_status(api, plain.json()["id"], {"completed", "failed"})
    assert (same_done["interpolate"], same_done["upscale"], same_done["size"]) == (2, 2, "128x128")
    assert (plain_done["interpolate"], plain_done["upscale"]) == (1, 2)
    assert _mp4(api, plain_done, tmp_path)["frames"] == SOURCE["num_frames"]


def test_multipart_takes_the_fields(api: httpx.Client) -> None:
    fields = {"prompt": "a kite", "model": "tiny-t2v-a14b", **{k: str(v) for k, v in SOURCE.items()}}
    response = api.post("/v1/videos", data=fields | {"interpolate": "2"})
    assert response.status_code == 202, response.text
    assert response.json()["interpolate"] == 2 and response.json()["fps"] == SOURCE["fps"] * 2


def test_the_openai_sdk_sends_them_in_extra_body(stack: Stack, tmp_path: Path) -> None:
    key = stack.env.get("WANQ_DEV_ADMIN_KEY", "unused-key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=key, max_retries=0)
    extra = {"num_frames": 9, "num_inference_steps": 2, "interpolate": 2, "upscale": 2}
    video = client.videos.create_and_poll(
        prompt="a boat", model="tiny-t2v-a14b", size="64x64", poll_interval_ms=200, extra_body=extra
    )
    assert video.status == "completed" and video.size == "128x128", video
    path = tmp_path / "sdk.mp4"
    client.videos.download_content(video.id).write_to_file(path)
    assert export.probe_mp4(path)["frames"] == 17


def test_refusals(api: httpx.Client) -> None:
    def refused(body: dict[str, Any], param: str, words: str) -> None:
        response = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-t2v-a14b", **SOURCE, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error

    refused({"interpolate": 3}, "interpolate", "must be one of 1, 2, 4")
    refused({"upscale": True}, "upscale", "not true or false")
    # The tiny workers' upscaler is x2: no live worker can upscale by 4
    refused({"upscale": 4}, "upscale", "no live worker of model 'tiny-t2v-a14b' can upscale by 4")
    # Over WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES (2560 x 1440 x 241): 2560x2560 x 481 frames
    big = {"size": "1280x1280", "num_frames": 241, "interpolate": 2, "upscale": 2}
    refused(big, "upscale", "WANQ_JOBS_MAX_OUTPUT_PIXEL_FRAMES")


def test_an_extension_keeps_its_sources_interpolation_and_joins_at_its_fps(api: httpx.Client, tmp_path: Path) -> None:
    source = make_video(api, interpolate=2)
    assert source["status"] == "completed", source
    created = extend(api, source["id"], model="tiny-ti2v-5b", num_frames=5)
    assert created.status_code == 202, created.text
    ext = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    assert ext["status"] == "completed", ext
    generated = SOURCE["num_frames"] + 5 - 1
    assert (ext["interpolate"], ext["fps"], ext["total_frames"]) == (2, SOURCE["fps"] * 2, (generated - 1) * 2 + 1)
    assert ext["timings"]["interpolating"] > 0
    probe = _mp4(api, ext, tmp_path)
    assert (probe["frames"], probe["fps"]) == ((generated - 1) * 2 + 1, SOURCE["fps"] * 2)
    whole, first = frames_of(api, ext["id"], tmp_path), frames_of(api, source["id"], tmp_path)
    assert np.array_equal(whole[: len(first)], first)  # the source's stream, copied


def _extend_and_wait(api: httpx.Client, source_id: str, **fields: Any) -> dict[str, Any]:
    created = extend(api, source_id, model="tiny-ti2v-5b", num_frames=5, **fields)
    assert created.status_code == 202, created.text
    return wait_for_status(api, created.json()["id"], {"completed", "failed"})


def _png(storage: Storage, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(key))).convert("RGB"))


@pytest.mark.parametrize("interpolate", [1, 2])
def test_an_extension_of_an_upscaled_video_continues_its_last_generated_frame(
    stack: Stack, api: httpx.Client, store: JobStore, storage: Storage, tmp_path: Path, interpolate: int
) -> None:
    source = make_video(api, interpolate=interpolate, upscale=2)
    assert source["status"] == "completed", source
    ext = _extend_and_wait(api, source["id"])
    assert ext["status"] == "completed", ext

    # The joined video: the source's size and fps, (generated - 1) x k + 1 frames, the source's stream first.
    generated = SOURCE["num_frames"] + 5 - 1
    frames, fps = (generated - 1) * interpolate + 1, SOURCE["fps"] * interpolate
    assert (ext["upscale"], ext["interpolate"], ext["size"], ext["fps"]) == (2, interpolate, "128x128", fps)
    assert ext["total_frames"] == frames and ext["timings"]["upscaling"] > 0
    probe = _mp4(api, ext, tmp_path)
    assert (probe["frames"], probe["fps"], probe["size"]) == (frames, fps, (128, 128))
    whole, first = frames_of(api, ext["id"], tmp_path), frames_of(api, source["id"], tmp_path)
    assert np.array_equal(whole[: len(first)], first)

    # The conditioning frame: exactly the source's kept last frame, which is exactly the last frame its pipeline
    # generates (the same tiny pipeline run here with the source's spec, one torch thread as the workers run).
    source_record, ext_record = store.get(source["id"]), store.get(ext["id"])
    assert source_record is not None and ext_record is not None
    kept = _png(storage, source_record.outputs[LAST_FRAME])
    start = _png(storage, storage.key(ext["id"], "image"))
    assert start.shape == (64, 64, 3) and np.array_equal(start, kept)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = WanEngine(stack.model_paths["tiny-t2v-a14b"], EngineSettings(device="cpu"), model_id="tiny-t2v-a14b")
        generated_frames = engine.generate(source_record.spec).frames
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(start, generated_frames[-1])
    # ...and the extension keeps its own, for the next link of a chain.
    assert _png(storage, ext_record.outputs[LAST_FRAME]).shape == (64, 64, 3)


def test_an_extension_of_an_extension_of_an_upscaled_video(api: httpx.Client, tmp_path: Path) -> None:
    source = make_video(api, upscale=2)
    assert source["status"] == "completed", source
    first = _extend_and_wait(api, source["id"])
    second = _extend_and_wait(api, first["id"])
    assert second["status"] == "completed", second
    frames = SOURCE["num_frames"] + 2 * (5 - 1)
    assert _mp4(api, second, tmp_path) == {**_mp4(api, first, tmp_path), "frames": frames}
    assert np.array_equal(frames_of(api, second["id"], tmp_path)[: frames - 4], frames_of(api, first["id"], tmp_path))


def test_extensions_refuse_other_post_processing(api: httpx.Client) -> None:
    smooth = make_video(api, interpolate=2)
    upscaled = make_video(api, upscale=2)

    def refused(source: dict[str, Any], field: str, value: int, words: str) -> None:
        response = extend(api, source["id"], model="tiny-ti2v-5b", num_frames=5, **{field: value})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and words in error["message"], error

    refused(smooth, "interpolate", 4, "keeps its source's interpolate (2), so that its parts join at one fps (16)")
    refused(smooth, "upscale", 2, "keeps its source's upscale (1), so that its parts join at one size (64x64)")
    refused(upscaled, "upscale", 1, "keeps its source's upscale (2), so that its parts join at one size (128x128)")
