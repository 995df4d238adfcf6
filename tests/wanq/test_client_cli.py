"""The `wanq` client commands as a person runs them: real subprocesses against the real stack, reading what they
print. Plus the progress bar's arithmetic on a scripted clock."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanq.client import Client
from wanq.client_cli import ProgressBar
from wanq.stack import Stack
from worker.export import probe_mp4


def wanq(*args: str, key: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WANQ_URL", "WANQ_API_KEY")}
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
    assert status.returncode == 0 and f"{video_id}  completed  100%" in status.stdout, status
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


def test_cancel_from_the_command_line(stack: Stack, api_key: str | None) -> None:
    submitted = wanq(
        *("submit", "long enough to cancel", "--model", "tiny-t2v-a14b", "--size", "64x64", "--num-frames", "9"),
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


def test_remaining_time_comes_from_the_step_rate() -> None:
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar(out, clock=lambda: now[0])

    def event(status: str, stage: str, progress: int, step: int = 0, **extra: Any) -> dict[str, Any]:
        return {"status": status, "stage": stage, "progress": progress, "step": step, "total_steps": 10, **extra}

    bar.update(event("queued", "queued", 0, queue_position=1))
    now[0] = 130.0  # 30 s in the queue and loading: no part of the estimate
    bar.update(event("in_progress", "encoding_prompt", 2))
    now[0] = 131.0
    bar.update(event("in_progress", "denoising", 13, step=1))
    bar.update(event("in_progress", "denoising", 13, step=1))  # unchanged: no new line off a terminal
    now[0] = 133.0
    bar.update(event("in_progress", "denoising", 21, step=2))  # 2 s a step, 10 steps over 83 % of the bar
    now[0] = 150.0
    bar.update(event("completed", "done", 100))
    bar.close()

    lines = out.getvalue().splitlines()
    assert lines == [
        "  0%  queued (position 2)  0s",
        "  2%  encoding prompt  30s",
        " 13%  denoising 1/10  31s",
        # (100 - 21) % x (2 s x 10 steps / 83 %) = 19.04 s
        " 21%  denoising 2/10  33s, ~19s left",
        "100%  completed  50s",
    ]


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
