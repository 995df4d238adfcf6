"""GET /v1/videos/{id}/content?variant=X for a variant the video lacks: a 404 naming `variant` that lists what can
be downloaded instead, never the outputs a job keeps for the worker (LAST_FRAME: an upscaled video's last generated
frame, which an extension of it continues from)."""

from __future__ import annotations

import httpx

from shared.schemas import LAST_FRAME
from shared.store import JobStore
from tests.clips import make_video


def test_a_missing_variant_lists_the_downloadable_ones_only(api: httpx.Client, store: JobStore) -> None:
    video = make_video(api, upscale=2)
    assert video["status"] == "completed", video
    record = store.get(video["id"])
    assert record is not None and LAST_FRAME in record.outputs  # kept beside the MP4 for the worker
    for variant in ("preview", "image"):
        missing = api.get(f"/v1/videos/{video['id']}/content", params={"variant": variant})
        assert missing.status_code == 404, missing.text
        error = missing.json()["error"]
        assert error["param"] == "variant"
        assert error["message"] == f"video {video['id']} has no {variant}; it has: video, thumbnail, spritesheet"
    # Not a variant at all: refused as a bad query, naming the value
    internal = api.get(f"/v1/videos/{video['id']}/content", params={"variant": LAST_FRAME})
    assert internal.status_code == 400 and internal.json()["error"]["param"] == "variant", internal.text
    assert LAST_FRAME in internal.json()["error"]["message"]
