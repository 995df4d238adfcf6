"""The `wanq` client commands as a person runs them: real subprocesses against the real stack, reading what they
print. Plus the progress bar's arithmetic on a scripted clock."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import IMAGES_WAIT_S, LATE
from wanq.client import Client
from wanq.client_cli import ProgressBar
from wanq.stack import Stack
from worker.export import probe_mp4


def wanq(
    *args: str, key: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k not in ("WANQ_URL", "WANQ_API_KEY")}, **(env or {})}
    if key:
        env["WANQ_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "wanq", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )


def test_submit_wait_shows_steps_going_by_and_writes_the_mp4(stack: Stack, api_key: str | None, tmp_path: Path) -> None:
    out = tmp_path / "clips" / "fox.mp4"
    # 8 steps and 17 frames: denoising lasts long enough for the stream to report several steps.
    done = wanq(
        *("submit", "a red fox in the snow", "--model", "tiny-t2v-a14b", "--size", "64x64", "--num-frames", "17"),
        *("--steps", "8", "--seed", "3", "--wait", "-o", str(out), "--url", stack.api_url),
        key=api_key,
    )
    assert done.returncode == 0, done.stderr
    video_id, path = done.stdout.split()
    assert video_id.startswith("video_") and Path(path) == out.resolve()
    info = probe_mp4(out)
    assert info["size"] == (64, 64) and info["frames"] == 17, info

    # Not a terminal: one plain line per change, e.g. " 46%  denoising 4/8  0s, ~1s left".
    lines = done.stderr.splitlines()
    steps = [int(m.group(1)) for line in lines if (m := re.search(r"denoising (\d)/8", line))]
    assert len(steps) >= 2 and steps == sorted(steps), done.stderr
    assert lines[-1].startswith("100%  completed"), done.stderr
    assert "\r" not in done.stderr

    # The same job through the other commands.
    status = wanq("status", video_id, "--url", stack.api_url, key=api_key)
    assert status.returncode == 0 and status.stdout.splitlines()[0] == f"{video_id}  completed  100%", status
    assert "seed 3" in status.stdout and "17 frames" in status.stdout
    listed = wanq("list", "--limit", "50", "--url", stack.api_url, key=api_key)
    assert any(line.startswith(video_id) and "completed" in line for line in listed.stdout.splitlines()), listed
    thumb = wanq("download", video_id, "--variant", "thumbnail", "--url", stack.api_url, key=api_key, cwd=tmp_path)
    assert thumb.returncode == 0, thumb.stderr
    assert (tmp_path / f"{video_id}.webp").read_bytes()[8:12] == b"WEBP"
    deleted = wanq("delete", video_id, "--url", stack.api_url, key=api_key)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"{video_id} deleted"
    missing = wanq("status", video_id, "--url", stack.api_url, key=api_key)
    assert missing.returncode == 1 and f"no video with id '{video_id}'" in missing.stderr and "wanq list" in missing.stderr


def test_extend_remix_and_image_from_the_command_line(stack: Stack, api_key: str | None, tmp_path: Path) -> None:
    url = ("--url", stack.api_url)
    source = wanq(
        *("submit", "a heron by a pond", "--model", "tiny-ti2v-5b", "--size", "64x64", "--num-frames", "9"),
        *("--steps", "2", "--fps", "8", "--wait", "-o", str(tmp_path / "short.mp4"), *url),
        key=api_key,
    )
    assert source.returncode == 0, source.stderr
    source_id = source.stdout.split()[0]

    # `wanq extend ID "prompt" --seconds S --wait -o long.mp4`: the whole video, source frames first.
    out = tmp_path / "long.mp4"
    done = wanq("extend", source_id, "the heron takes off", "--seconds", "1", "--wait", "-o", str(out), *url, key=api_key)
    assert done.returncode == 0, done.stderr
    ext_id, path = done.stdout.split()
    assert Path(path) == out.resolve() and done.stderr.splitlines()[-1].startswith("100%  completed")
    assert probe_mp4(out)["frames"] == 9 + 9 - 1  # 1 s at 8 fps: 9 new frames, the first repeating the source's last
    status = wanq("status", ext_id, "--json", *url, key=api_key)
    assert json.loads(status.stdout)["extended_from_video_id"] == source_id
    status = wanq("status", ext_id, *url, key=api_key)
    assert "17 frames (2.125 s)" in status.stdout and f"extends {source_id} by 8 frames" in status.stdout, status.stdout

    remixed = wanq("remix", source_id, "a heron in the rain", *url, key=api_key)
    assert remixed.returncode == 0, remixed.stderr
    with Client(stack.api_url, api_key=api_key) as client:
        video = client.wait(remixed.stdout.strip(), timeout=120)
    assert video["status"] == "completed" and video["remixed_from_video_id"] == source_id

    # `wanq image "prompt" -o out.png`; several: out-1.png, out-2.png.
    image = wanq(
        "image",
        "a heron, still",
        "--model",
        "tiny-ti2v-5b",
        "--size",
        "64x64",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "out.png"),
        *url,
        key=api_key,
    )
    assert image.returncode == 0, image.stderr
    assert Path(image.stdout.strip()) == (tmp_path / "out.png").resolve()
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = wanq(
        "image",
        "two herons",
        "--model",
        "tiny-t2v-a14b",
        "--size",
        "64x64",
        "--steps",
        "2",
        "-n",
        "2",
        "-o",
        str(tmp_path / "pair.png"),
        *url,
        key=api_key,
    )
    assert two.returncode == 0, two.stderr
    assert [Path(line).name for line in two.stdout.split()] == ["pair-1.png", "pair-2.png"]
    refused = wanq("extend", "video_doesnotexist", "x", *url, key=api_key)
    assert refused.returncode == 1 and "no video with id 'video_doesnotexist'" in refused.stderr


def test_an_image_that_outlasts_the_wait_is_followed_to_its_png(stack: Stack, api_key: str | None, tmp_path: Path) -> None:
    # No worker serves LATE until this test starts one: the server answers 202 after its wait, and the command
    # follows the job until the worker has made it.
    out = tmp_path / "late.png"
    command = [sys.executable, "-m", "wanq", "image", "a late heron", "--model", LATE, "--size", "64x64", "--steps", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("WANQ_URL", "WANQ_API_KEY")} | (
        {"WANQ_API_KEY": api_key} if api_key else {}
    )
    proc = subprocess.Popen(
        [*command, "-o", str(out), "--url", stack.api_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    worker = None
    try:
        time.sleep(IMAGES_WAIT_S)
        worker = stack.start_worker(LATE)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        if worker is not None:
            worker.stop()
    assert proc.returncode == 0, stderr
    assert "still running after" in stderr and Path(stdout.strip()) == out.resolve()
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_cancel_from_the_command_line(stack: Stack, api_key: str | None) -> None:
    submitted = wanq(
        # Long enough to be canceled: each of the 100 steps sees 61 latent frames of 256x256 (~16k tokens), so the job
        # runs for many seconds, however fast the CLI's own start is; canceled, it stops at its next step.
        *("submit", "long enough to cancel", "--model", "tiny-t2v-a14b", "--size", "256x256", "--num-frames", "241"),
        *("--steps", "100", "--url", stack.api_url),
        key=api_key,
    )
    assert submitted.returncode == 0, submitted.stderr
    video_id = submitted.stdout.strip()
    canceled = wanq("cancel", video_id, "--url", stack.api_url, key=api_key)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() in (f"{video_id} canceled", f"{video_id} stopping at its next step")
    with Client(stack.api_url, api_key=api_key) as client:
        assert client.wait(video_id, timeout=120)["status"] == "canceled"


def test_unknown_model_names_the_choices(stack: Stack, api_key: str | None) -> None:
    done = wanq("submit", "x", "--model", "wan9-imaginary", "--url", stack.api_url, key=api_key)
    assert done.returncode == 1 and done.stdout == ""
    assert "model 'wan9-imaginary' is not served here; available: " in done.stderr and "tiny-t2v-a14b" in done.stderr
    assert "wanq models" in done.stderr


def test_refusals_name_the_flags_not_the_api_fields(stack: Stack, api_key: str | None) -> None:
    def refusal(*args: str) -> str:
        done = wanq("submit", "a fox", "--url", stack.api_url, *args, key=api_key)
        assert done.returncode == 1 and done.stdout == "", done
        (line,) = done.stderr.splitlines()
        return line

    assert refusal("--model", "tiny-t2v-a14b", "--steps", "500") == "wanq: invalid --steps 500: must be between 1 and 100"
    assert refusal("--model", "tiny-t2v-a14b", "--num-frames", "10").startswith("wanq: invalid --num-frames 10: ")
    assert refusal("--model", "tiny-i2v-a14b") == "wanq: model 'tiny-i2v-a14b' animates an image: send --image"


def test_an_empty_list_says_so(stack: Stack, api: Any) -> None:
    from tests.tenants import make_key

    key = make_key(api, "cli-nothing-yet")
    done = wanq("list", "--url", stack.api_url, key=key)
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == 'wanq: no jobs yet; `wanq submit "a prompt"` makes one\n'
    as_json = wanq("list", "--json", "--url", stack.api_url, key=key)
    assert (as_json.stdout, as_json.stderr) == ("[]\n", "")


def test_no_server(closed_url: str) -> None:
    done = wanq("list", "--url", closed_url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"no server answers at {closed_url}" in done.stderr and "wanq dev" in done.stderr


def test_bad_or_missing_key_and_quota(refusing_server: Callable[..., Any]) -> None:
    server = refusing_server(401, "invalid_api_key", "Incorrect API key provided")
    bad = wanq("list", "--url", server.url, "--api-key", "wq_wrong")
    assert bad.returncode == 1 and "not authorized: Incorrect API key provided (check --api-key / WANQ_API_KEY)" in bad.stderr
    missing = wanq("status", "video_1", "--url", server.url)
    assert "this server needs a key: pass --api-key or set WANQ_API_KEY" in missing.stderr
    from_env = wanq("cancel", "video_1", "--url", server.url, key="wq_from_env")
    assert from_env.returncode == 1
    assert server.seen_authorization == ["Bearer wq_wrong", None, "Bearer wq_from_env"]

    server = refusing_server(429, "quota_exceeded", "daily quota of 20 videos used", {"Retry-After": "30"})
    quota = wanq("submit", "x", "--url", server.url, "--api-key", "wq_k")
    assert quota.returncode == 1 and "quota exceeded: daily quota of 20 videos used; retry in 30 s" in quota.stderr


def _event(status: str, stage: str, progress: int, step: int = 0, **extra: Any) -> dict[str, Any]:
    return {"status": status, "stage": stage, "progress": progress, "step": step, "total_steps": 10, **extra}


def test_the_time_left_is_the_servers_estimate() -> None:
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar(out, clock=lambda: now[0])
    bar.update(_event("queued", "queued", 0, queue_position=1))
    now[0] = 130.0
    bar.update(_event("in_progress", "encoding_prompt", 2, eta_s=None))  # nothing to go by: no number
    now[0] = 131.0
    bar.update(_event("in_progress", "denoising", 13, step=1, eta_s=33.4))
    bar.update(_event("in_progress", "denoising", 13, step=1, eta_s=33.0))  # unchanged step: no new line off a terminal
    now[0] = 149.0
    bar.update(_event("in_progress", "denoising", 88, step=10, eta_s=17.0))
    now[0] = 160.0
    bar.update(_event("in_progress", "encoding_video", 94, eta_s=0.4))  # under a second says nothing
    now[0] = 161.0
    bar.update(_event("completed", "done", 100, eta_s=None))
    bar.close()
    assert out.getvalue().splitlines() == [
        "  0%  queued (position 2)  0s",
        "  2%  encoding prompt  30s",
        " 13%  denoising 1/10  31s, ~33s left",
        " 88%  denoising 10/10  49s, ~17s left",
        " 94%  encoding video  1:00",
        "100%  completed  1:01",
    ]


def test_the_server_comes_from_wanq_url(closed_url: str) -> None:
    done = wanq("models", env={"WANQ_URL": closed_url})
    assert done.returncode == 1 and f"no server answers at {closed_url}" in done.stderr, done.stderr


def test_loras_upload_list_use_and_delete_from_the_command_line(stack: Stack, api_key: str | None, tmp_path: Path) -> None:
    from tests.lora_maker import make_lora
    from worker.tiny_model import build_tiny_pipeline

    lora = make_lora(build_tiny_pipeline("t2v-a14b").transformer, tmp_path / "cli.safetensors", rank=4, seed=9)
    url = ("--url", stack.api_url)
    uploaded = wanq(
        *(
            "loras",
            "upload",
            str(lora),
            "--name",
            "cli-lora",
            "--model",
            "tiny-t2v-a14b",
            "--steps",
            "2",
            "--guidance-scale",
            "1",
        ),
        *url,
        key=api_key,
    )
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.startswith("cli-lora  tiny-t2v-a14b  rank 4  20 modules  sha256 ")
    again = wanq("loras", "upload", str(lora), "--name", "cli-lora", "--model", "tiny-t2v-a14b", *url, key=api_key)
    assert again.returncode == 1 and "a LoRA named 'cli-lora' exists already" in again.stderr
    listed = wanq("loras", "list", *url, key=api_key)
    assert any(
        line.startswith("cli-lora ") and "num_inference_steps=2 guidance_scale=1.0" in line for line in listed.stdout.splitlines()
    )
    submitted = wanq(
        *("submit", "a fox", "--model", "tiny-t2v-a14b", "--size", "64x64", "--num-frames", "5", "--lora", "cli-lora:0.7"),
        *("--wait", "-o", str(tmp_path / "fox.mp4"), *url),
        key=api_key,
    )
    assert submitted.returncode == 0, submitted.stderr
    with Client(stack.api_url, api_key=api_key) as client:
        video = client.get(submitted.stdout.split()[0])
    assert video["loras"][0]["name"] == "cli-lora" and video["loras"][0]["strength"] == 0.7
    assert video["num_inference_steps"] == 2 and video["guidance_scale_2"] == 1.0  # the LoRA's recommendation
    assert probe_mp4(tmp_path / "fox.mp4")["frames"] == 5
    deleted = wanq("loras", "delete", "cli-lora", *url, key=api_key)
    assert deleted.returncode == 0 and deleted.stdout.strip() == "cli-lora deleted"
    gone = wanq("loras", "show", "cli-lora", *url, key=api_key)
    assert gone.returncode == 1 and "no LoRA named 'cli-lora'" in gone.stderr
