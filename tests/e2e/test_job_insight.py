"""What a job tells about itself while and after it runs: what the step cache skipped (the video object, `wanq status`,
the page) and the time left (`eta_s`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from shared.store import JobStore
from tests.api.test_web_page import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from tests.conftest import LATE, SMALL, wait_for_status
from tests.faulty import Workers
from wanq.stack import DEV_ADMIN_KEY_ENV, Stack

CACHED = {"prompt": "a cached lighthouse", "model": "tiny-t2v-a14b", **SMALL, "num_inference_steps": 8, "seed": 5}


def test_cache_true_means_the_workers_settings(api: httpx.Client) -> None:
    as_json = api.post("/v1/videos", json=CACHED | {"cache": True})
    assert as_json.status_code == 202, as_json.text
    assert as_json.json()["cache"] == {}
    as_form = api.post("/v1/videos", data={k: str(v) for k, v in CACHED.items()} | {"cache": "true"})
    assert as_form.status_code == 202, as_form.text
    assert as_form.json()["cache"] == {}
    refused = api.post("/v1/videos", json=CACHED | {"cache": "sometimes"})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "cache" and "true or false" in error["message"], error
    for created in (as_json.json(), as_form.json()):
        assert wait_for_status(api, created["id"], {"completed", "failed"})["status"] == "completed"


@pytest.fixture(scope="module")
def cached_video(stack: Stack) -> dict[str, Any]:
    """A completed job that ran with a cache that skips much: warmup 1, at most 2 reused steps in a row."""
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=stack.admin_headers()) as api:
        created = api.post("/v1/videos", json=CACHED | {"cache": {"rdt": 1.0, "warmup": 1, "mc": 2}}).json()
        assert created["cache_stats"] is None  # nothing denoised yet
        video = wait_for_status(api, created["id"], {"completed", "failed"})
    assert video["status"] == "completed", video
    return video


def wanq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANQ_API_KEY": stack.env[DEV_ADMIN_KEY_ENV]}
    return subprocess.run(
        [sys.executable, "-m", "wanq", *args, "--url", stack.api_url], capture_output=True, text=True, timeout=60, env=env
    )


def test_the_video_object_says_what_the_cache_skipped(api: httpx.Client, cached_video: dict[str, Any]) -> None:
    stats = cached_video["cache_stats"]
    assert set(stats["steps"]) == {"transformer", "transformer_2"} and sum(stats["steps"].values()) == 8, stats
    # Each expert computes its first step, then reuses at most 2 in a row.
    for expert, reused in stats["steps_reused"].items():
        assert 0 < reused < stats["steps"][expert], stats
    assert 0 < stats["blocks_skipped_share"] < 1, stats
    plain = api.post("/v1/videos", json=CACHED | {"cache": False}).json()
    uncached = wait_for_status(api, plain["id"], {"completed", "failed"})
    assert uncached["status"] == "completed" and uncached["cache_stats"] is None, uncached


def test_wanq_status_shows_the_cache_statistics(stack: Stack, cached_video: dict[str, Any]) -> None:
    shown = wanq(stack, "status", cached_video["id"])
    assert shown.returncode == 0, shown.stderr
    stats = cached_video["cache_stats"]
    share, reused = f"{stats['blocks_skipped_share']:.0%}", stats["steps_reused"]["transformer"]
    assert f"step cache skipped {share} of block computations, reused {reused} of " in shown.stdout, shown.stdout


def test_wanq_submit_takes_a_cache(stack: Stack, api: httpx.Client) -> None:
    base = ("submit", "a flagged lighthouse", "--model", "tiny-t2v-a14b", "--size", "64x64", "--steps", "2")
    for flag, expected in (("on", {}), ("off", False), ('{"rdt": 0.5}', {"rdt": 0.5})):
        done = wanq(stack, *base, "--cache", flag)
        assert done.returncode == 0, done.stderr
        assert api.get(f"/v1/videos/{done.stdout.strip()}").json()["cache"] == expected, flag
        api.post(f"/v1/videos/{done.stdout.strip()}/cancel")  # its run is not this test's business
    wrong = wanq(stack, *base, "--cache", "sometimes")
    assert wrong.returncode == 2 and "argument --cache: 'sometimes': say on, off or settings as a JSON object" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@needs_chromium
def test_the_page_shows_the_cache_statistics_on_the_card(stack: Stack, cached_video: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.add_init_script(f"localStorage.setItem('wanq.apiKey', {json.dumps(stack.env[DEV_ADMIN_KEY_ENV])})")
            page.goto(f"{stack.api_url}/")
            meta = f'li[data-id="{cached_video["id"]}"] .meta'
            page.wait_for_selector(meta, timeout=60_000)
            stats = cached_video["cache_stats"]
            share = round(stats["blocks_skipped_share"] * 100)
            reused = stats["steps_reused"]["transformer"], stats["steps"]["transformer"]
            assert f"step cache skipped {share}% (reused {reused[0]}/{reused[1]} steps of transformer" in page.inner_text(meta)
        finally:
            browser.close()


def _follow(api: httpx.Client, video_id: str) -> list[tuple[float, dict[str, Any]]]:
    """Every answer about the job until it ends, each with the moment it came."""
    seen: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        video = api.get(f"/v1/videos/{video_id}").json()
        seen.append((time.time(), video))
        if video["status"] in ("completed", "failed", "canceled"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not end: {seen[-1]}")


def test_the_time_left_comes_from_the_runs_own_steps(workers: Workers, api: httpx.Client, store: JobStore) -> None:
    workers.start()
    # Steps of 0.5 s at least (fault injection), at a size no other test runs.
    job = {"model": LATE, "prompt": "[[fault:sleep@1]] a slow fox", "size": "80x48", "num_frames": 5, "num_inference_steps": 8}
    first = api.post("/v1/videos", json=job).json()
    seen = _follow(api, first["id"])
    assert seen[-1][1]["status"] == "completed", seen[-1]
    # The first run at this size: nothing to go by before its first step, then its own steps alone (what follows
    # them is unknown until a run has finished).
    stepping = [v for _, v in seen if v["status"] == "in_progress" and v["stage"] == "denoising" and 1 <= v["step"] < 8]
    assert stepping and all(v["eta_s"] is not None for v in stepping), stepping
    assert all(v["eta_s"] is None for _, v in seen if v["status"] == "in_progress" and v["stage"] != "denoising")

    second = api.post("/v1/videos", json=job | {"seed": 2}).json()
    seen = _follow(api, second["id"])
    assert seen[-1][1]["status"] == "completed", seen[-1]
    record = store.get(second["id"])
    assert record is not None and record.completed_at is not None
    running = [(t, v) for t, v in seen if v["status"] == "in_progress"]
    assert running and all(v["eta_s"] is not None for _, v in running), running
    mid = [(t, v) for t, v in running if v["stage"] == "denoising" and 2 <= v["step"] <= 6]
    assert mid, running
    for t, video in mid:
        # Within 3 s of the real end, or 60% of the time that was really left: on two shared cores one run's tail
        # (decode, export, upload) and its first steps differ from the last run's by seconds. The old estimate,
        # scaled from another job whatever its size, was off by minutes. The arithmetic itself is checked exactly
        # in tests/shared/test_estimate.py.
        left = record.completed_at - t
        assert abs(t + video["eta_s"] - record.completed_at) < max(3.0, 0.6 * left), (video["step"], video["eta_s"], left)
    assert all(v["eta_s"] is None for _, v in seen if v["status"] != "in_progress")
