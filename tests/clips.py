"""Videos made, extended and decoded over the API, for the tests of extensions and remixes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.conftest import wait_for_status
from worker import export

SOURCE = {"size": "64x64", "num_frames": 9, "fps": 8, "num_inference_steps": 2, "seed": 5}


def make_video(api: httpx.Client, model: str = "tiny-t2v-a14b", **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse at dusk", "model": model, **SOURCE, **fields}
    response = api.post("/v1/videos", json=body)
    assert response.status_code == 202, response.text
    return wait_for_status(api, response.json()["id"], {"completed", "failed"})


def extend(api: httpx.Client, video_id: str, prompt: str = "the light turns", **fields: Any) -> httpx.Response:
    return api.post("/v1/videos/extensions", json={"video": {"id": video_id}, "prompt": prompt, **fields})


def frames_of(api: httpx.Client, video_id: str, tmp_path: Path) -> np.ndarray:
    response = api.get(f"/v1/videos/{video_id}/content")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4", response.text
    path = tmp_path / f"{video_id}.mp4"
    path.write_bytes(response.content)
    return np.stack(list(export.read_frames(path)))
