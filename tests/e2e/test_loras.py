"""LoRA jobs through the whole stack: LoRA files made locally with peft, uploaded through the API, run by the real
Celery worker of the tiny T2V-A14B model (2 adapter slots per expert), MP4s from moto's S3 decoded frame by frame.

The reference is plain diffusers in this process: a fresh pipeline from the worker's model directory, each LoRA
loaded with `load_lora_weights` (into both experts, or the one the job names), `set_adapters` with the job's
strengths, the same prompt, seed and parameters; its frames go through the worker's own MP4 writer.
Tolerance: decoded frames within 1 level (of 255) on average and 8 at most. The worker runs one torch thread and
pads each LoRA to the slots' rank, which moves latents by about 1e-6 (tests/worker/test_lora_slots.py), so a frame
may round the other way at a few pixels; two strengths differ by tens of levels.
A job without LoRAs decodes to exactly the frames of the same job before any LoRA job.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg
import numpy as np
import openai
import pytest
import torch
from diffusers import WanPipeline
from PIL import Image

from tests.conftest import wait_for_status
from tests.lora_maker import make_lora, to_original_format
from wanq.stack import Stack
from worker.export import probe_mp4, write_mp4

MODEL = "tiny-t2v-a14b"
JOB = {"model": MODEL, "prompt": "a lighthouse in a storm", "size": "64x64", "num_frames": 9, "fps": 8, "num_inference_steps": 3, "seed": 21}  # fmt: skip


def frames_of(data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    """Decodes an MP4: every frame, as uint8 [F, H, W, 3] (and checks it is the H.264 file the job asked for)."""
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(data)
    info = probe_mp4(path)
    assert "h264" in str(info["codec"]) and info["size"] == (64, 64) and info["frames"] == 9, info
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader])


def run(api: httpx.Client, tmp_path: Path, name: str, **fields: Any) -> tuple[dict[str, Any], np.ndarray]:
    """A job (fields given as None are left out), its final video object and its decoded MP4."""
    body = {k: v for k, v in {**JOB, **fields}.items() if v is not None}
    created = api.post("/v1/videos", json=body)
    assert created.status_code == 202, created.text
    video = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    assert video["status"] == "completed", video
    return video, frames_of(api.get(f"/v1/videos/{video['id']}/content").content, tmp_path, name)


def reference(
    model_path: Path, tmp_path: Path, loras: list[tuple[Path, float, str]], flow_shift: float | None = None, **fields: Any
) -> np.ndarray:
    """Plain diffusers with the LoRAs loaded the usual way; its frames through the worker's MP4 writer, decoded."""
    job = {**JOB, **fields}
    pipe: Any = WanPipeline.from_pretrained(model_path)
    pipe.set_progress_bar_config(disable=True)
    if flow_shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)
    names = []
    for n, (path, _, expert) in enumerate(loras):
        if expert in ("both", "high_noise"):
            pipe.load_lora_weights(str(path), adapter_name=f"l{n}")
        if expert in ("both", "low_noise"):
            pipe.load_lora_weights(str(path), adapter_name=f"l{n}", load_into_transformer_2=True)
        names.append(f"l{n}")
    if names:
        pipe.set_adapters(names, [strength for _, strength, _ in loras])
    with torch.no_grad():
        video = pipe(
            prompt=job["prompt"],
            negative_prompt=job.get("negative_prompt", pipe_default_negative()),
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=job["num_inference_steps"],
            guidance_scale=job.get("guidance_scale", 4.0),
            guidance_scale_2=job.get("guidance_scale_2", 3.0),
            generator=torch.Generator("cpu").manual_seed(job["seed"]),
            output_type="pt",
            max_sequence_length=512,
        ).frames[0]
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    path = write_mp4(frames, 8, tmp_path / f"reference-{len(list(tmp_path.iterdir()))}.mp4")
    return frames_of(path.read_bytes(), tmp_path, path.stem + "-decoded")


def pipe_default_negative() -> str:
    from shared.catalog import WAN_NEGATIVE_PROMPT

    return WAN_NEGATIVE_PROMPT


def close(a: np.ndarray, b: np.ndarray) -> bool:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return bool(diff.mean() <= 1.0 and diff.max() <= 8)


def far(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def loras(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-loras")
    transformer = WanPipeline.from_pretrained(stack.model_paths[MODEL]).transformer
    style = make_lora(transformer, root / "style.safetensors", rank=4, seed=11, alpha=8)
    return {
        "style": style,
        "blocks": make_lora(transformer, root / "blocks.safetensors", rank=8, seed=12, blocks=[1]),
        "orig": to_original_format(
            make_lora(transformer, root / "o.safetensors", rank=2, seed=13), root / "orig.safetensors", alpha=1
        ),
        "fourth": make_lora(transformer, root / "fourth.safetensors", rank=16, seed=14),
        "fast": make_lora(transformer, root / "fast.safetensors", rank=4, seed=15, std=0.1),
        "tampered": make_lora(transformer, root / "tampered.safetensors", rank=4, seed=16),
    }


def upload(api: httpx.Client, path: Path, name: str, **fields: Any) -> dict[str, Any]:
    data = {"name": name, "model": MODEL, **{k: str(v) for k, v in fields.items()}}
    with path.open("rb") as fh:
        response = api.post("/v1/loras", data=data, files={"file": (path.name, fh, "application/octet-stream")})
    if response.status_code == 409:  # uploaded by an earlier run of this module against the same stack
        return api.get(f"/v1/loras/{name}").json()  # type: ignore[no-any-return]
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_lora_jobs_match_plain_diffusers_and_switch_cleanly(
    stack: Stack, api: httpx.Client, loras: dict[str, Path], tmp_path: Path
) -> None:
    model_path = stack.model_paths[MODEL]
    records = {name: upload(api, path, f"e2e-{name}") for name, path in loras.items() if name != "tampered"}

    # 1. Without LoRA first: the frames every later no-LoRA job must reproduce exactly
    _, base = run(api, tmp_path, "base")
    assert close(base, reference(model_path, tmp_path, []))

    # 2. One LoRA at two strengths; the video object names the LoRA by sha256
    video, style = run(api, tmp_path, "style", loras=[{"name": "e2e-style"}])
    assert video["loras"] == [{"name": "e2e-style", "sha256": records["style"]["sha256"], "strength": 1.0, "expert": "both"}]
    assert close(style, reference(model_path, tmp_path, [(loras["style"], 1.0, "both")]))
    _, half = run(api, tmp_path, "half", loras=[{"name": "e2e-style", "strength": 0.5}])
    assert close(half, reference(model_path, tmp_path, [(loras["style"], 0.5, "both")]))
    assert far(style, half) > 5 and far(style, base) > 5

    # 3. Only the high-noise expert; then two LoRAs of different ranks at once, one touching only block 1
    _, high = run(api, tmp_path, "high", loras=[{"name": "e2e-style", "expert": "high_noise"}])
    assert close(high, reference(model_path, tmp_path, [(loras["style"], 1.0, "high_noise")]))
    assert far(high, style) > 1
    two = [{"name": "e2e-blocks", "strength": 0.8}, {"name": "e2e-orig", "strength": -1.2}]
    _, pair = run(api, tmp_path, "pair", loras=two)
    assert close(pair, reference(model_path, tmp_path, [(loras["blocks"], 0.8, "both"), (loras["orig"], -1.2, "both")]))

    # 4. Without LoRA again: exactly the first frames
    _, again = run(api, tmp_path, "again")
    assert np.array_equal(again, base)

    # 5. The worker holds 2 LoRAs per expert: "fourth" and "fast" evict the others; "style" then loads again
    run(api, tmp_path, "fourth", loras=[{"name": "e2e-fourth"}, {"name": "e2e-fast"}])
    video, style_again = run(api, tmp_path, "style-again", loras=[{"name": "e2e-style"}])
    assert "loading_loras" in video["timings"] and "fetching_loras" in video["timings"]
    assert np.array_equal(style_again, style)


def test_a_step_distilled_style_lora_brings_its_defaults(
    stack: Stack, api: httpx.Client, loras: dict[str, Path], tmp_path: Path
) -> None:
    upload(api, loras["fast"], "e2e-fast-defaults", num_inference_steps=2, guidance_scale=1, flow_shift=3)
    video, frames = run(api, tmp_path, "fast", loras=[{"name": "e2e-fast-defaults"}], num_inference_steps=None)
    assert (video["num_inference_steps"], video["guidance_scale"], video["guidance_scale_2"], video["flow_shift"]) == (2, 1, 1, 3)
    assert video["total_steps"] == 2
    job = {"num_inference_steps": 2, "guidance_scale": 1.0, "guidance_scale_2": 1.0}
    assert close(frames, reference(stack.model_paths[MODEL], tmp_path, [(loras["fast"], 1.0, "both")], flow_shift=3.0, **job))
    # What the request gives wins over the recommendation
    video, _ = run(api, tmp_path, "fast-3", loras=[{"name": "e2e-fast-defaults"}], num_inference_steps=3)
    assert video["num_inference_steps"] == 3 and video["guidance_scale"] == 1


def test_a_lora_whose_stored_file_changed_fails_its_job_and_the_worker_goes_on(
    api: httpx.Client, storage: Any, loras: dict[str, Path], tmp_path: Path
) -> None:
    record = upload(api, loras["tampered"], "e2e-tampered")
    storage.put_bytes(loras["style"].read_bytes(), _key(storage, record), "application/octet-stream")  # another file
    created = api.post("/v1/videos", json={**JOB, "loras": [{"name": "e2e-tampered"}]}).json()
    failed = wait_for_status(api, created["id"], {"completed", "failed"})
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request", failed
    assert "sha256" in failed["error"]["message"] and "e2e-tampered" in failed["error"]["message"]
    run(api, tmp_path, "after", loras=[{"name": "e2e-style"}])  # the same worker, healthy


def _key(storage: Any, record: dict[str, Any]) -> str:
    keys = [k for k in storage.list_keys("loras/") if record["id"] in k]
    assert len(keys) == 1
    return keys[0]


def test_multipart_and_the_openai_sdk_send_loras(stack: Stack, api: httpx.Client, loras: dict[str, Path], tmp_path: Path) -> None:
    upload(api, loras["style"], "e2e-style")
    # A multipart form: the list as one JSON field
    form = {k: str(v) for k, v in JOB.items()} | {"loras": json.dumps([{"name": "e2e-style", "strength": 0.5}])}
    created = api.post("/v1/videos", data=form)
    assert created.status_code == 202, created.text
    assert created.json()["loras"][0]["strength"] == 0.5
    # The openai SDK: JSON with extra_body
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=stack.env.get("WANQ_DEV_ADMIN_KEY", "unused"), max_retries=0)
    extra = {k: v for k, v in JOB.items() if k not in ("model", "prompt", "size")}
    video = client.videos.create(
        prompt=str(JOB["prompt"]), model=MODEL, size="64x64",  # type: ignore[arg-type]
        extra_body={**extra, "loras": [{"name": "e2e-style", "strength": 0.5}]},
    )  # fmt: skip
    done = wait_for_status(api, video.id, {"completed", "failed"})
    assert done["status"] == "completed" and done["loras"][0]["strength"] == 0.5
    first = wait_for_status(api, created.json()["id"], {"completed", "failed"})
    sdk = frames_of(api.get(f"/v1/videos/{video.id}/content").content, tmp_path, "sdk")
    assert np.array_equal(sdk, frames_of(api.get(f"/v1/videos/{first['id']}/content").content, tmp_path, "form"))
    # The SDK's multipart form (with an input image) sends the list as loras[][name], loras[][strength] fields
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image, format="PNG")
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(
            prompt="a field", model="tiny-ti2v-5b", size="64x64",  # type: ignore[arg-type]
            input_reference=("first.png", image.getvalue(), "image/png"),
            extra_body={"num_frames": 9, "loras": [{"name": "e2e-style", "strength": 0.5}, {"name": "e2e-nope", "strength": 1}]},
        )  # fmt: skip
    error = (
        refused.value.body["error"]
        if isinstance(refused.value.body, dict) and "error" in refused.value.body
        else refused.value.body
    )
    assert isinstance(error, dict) and error["param"] == "loras[0].name", error  # e2e-style is a LoRA for tiny-t2v-a14b
    assert "not for tiny-ti2v-5b" in error["message"]


def test_a_remix_runs_with_its_videos_loras_and_is_refused_once_one_is_gone_or_replaced(
    api: httpx.Client, loras: dict[str, Path], tmp_path: Path
) -> None:
    record = upload(api, loras["fourth"], "e2e-remixed")
    parent, _ = run(api, tmp_path, "remix-parent", loras=[{"name": "e2e-remixed", "strength": 0.7}])
    child = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "the same storm"})
    assert child.status_code == 202, child.text
    assert child.json()["loras"] == [{"name": "e2e-remixed", "sha256": record["sha256"], "strength": 0.7, "expert": "both"}]
    assert wait_for_status(api, child.json()["id"], {"completed", "failed"})["status"] == "completed"

    assert api.delete("/v1/loras/e2e-remixed").status_code in (200, 204)
    gone = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "again"})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "video_id", gone.text
    assert "e2e-remixed" in gone.json()["error"]["message"]
    upload(api, loras["fast"], "e2e-remixed")  # the name again, another file
    replaced = api.post(f"/v1/videos/{parent['id']}/remix", json={"prompt": "again"})
    assert replaced.status_code == 400 and "another file" in replaced.json()["error"]["message"], replaced.text
