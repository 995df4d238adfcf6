"""Previews of an extension through the real stack (API, Redis, moto S3, the session's image-to-video workers on
tiny models with their tiny decoders beside them): a job `extend_from` a completed video with `preview_every`
previews its own new part (the frames it denoises; the source's are already made) after the expected step, kept
as its `preview` variant beside the whole video. One preview per job (after step 2 of 4): the session's workers
run at full speed, and a second preview due while the first is still uploading would be skipped by design
(worker/previews.py); tests/e2e/test_job_previews.py covers several in step order on a slowed worker.
Random weights: the pictures mean nothing; steps, counts and sizes are what is asserted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.clips import SOURCE, extend, make_video
from tests.conftest import wait_for_status
from worker.export import probe_mp4


def probe(api: httpx.Client, video_id: str, variant: str, tmp_path: Path) -> dict[str, object]:
    answer = api.get(f"/v1/videos/{video_id}/content", params={"variant": variant})
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4", answer.text
    path = tmp_path / f"{video_id}-{variant}.mp4"
    path.write_bytes(answer.content)
    return probe_mp4(path)


@pytest.mark.parametrize("model", ["tiny-i2v-a14b", "tiny-ti2v-5b"])
def test_an_extension_previews_its_new_part(api: httpx.Client, tmp_path: Path, model: str) -> None:
    source = make_video(api)
    assert source["status"] == "completed", source
    created = extend(api, source["id"], model=model, seconds=1, num_inference_steps=4, preview_every=2)
    assert created.status_code == 202, created.text
    assert created.json()["preview_every"] == 2 and created.json()["preview_step"] is None
    ext = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    assert ext["status"] == "completed", ext
    assert ext["extended_from_video_id"] == source["id"]
    # 4 steps, a preview every 2: after step 2 only (none after the last; the video follows at once).
    assert ext["preview_step"] == 2, ext
    # The preview: the 9 new frames are 3 latent frames, one preview frame each, at half of 64x64 (both models).
    shown = probe(api, ext["id"], "preview", tmp_path)
    assert (shown["frames"], shown["size"]) == (3, (32, 32)), shown
    # The video: the source's frames, then the new ones but the first (the source's last frame again).
    whole = probe(api, ext["id"], "video", tmp_path)
    assert (whole["frames"], whole["size"]) == (SOURCE["num_frames"] + 9 - 1, (64, 64)), whole
    # The source made no previews (it asked for none): its content says so.
    assert source["preview_step"] is None
    assert api.get(f"/v1/videos/{source['id']}/content", params={"variant": "preview"}).status_code == 404
