"""Previews from the client side, through the real stack: the Python client's `previews`, `download_preview` and
`content_url`; `wanq submit --preview-every N --wait` saying where each preview is and `--preview-dir` saving each;
the flags' bad values refused in one line; an extension of a draft asking for `preview_every` and the full decoder.

The worker is this test's fault-injected one on a tiny model (its tiny decoder used without a flag): 6 steps at
0.5 s each (`[[fault:sleep@1]]`), so that each preview is stored before the next is due. A preview every 2 steps
gives two: after steps 2 and 4 (none after the last: the video follows at once). Random weights: the pictures mean
nothing; counts, order, frames and sizes are what is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for_status
from tests.faulty import TINY_JOB, Workers
from wanq.client import APIError, Client
from wanq.stack import DEV_ADMIN_KEY_ENV, Stack
from worker.export import probe_mp4

SLOW = "[[fault:sleep@1]]"
TINY_FLAGS = ("--model", TINY_JOB["model"], "--size", "64x64", "--num-frames", "9", "--steps", "6")


def wanq(*args: str, stack: Stack | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    if stack is not None:
        env["WANQ_URL"] = stack.api_url
        if stack.env.get(DEV_ADMIN_KEY_ENV):
            env["WANQ_API_KEY"] = stack.env[DEV_ADMIN_KEY_ENV]
    return subprocess.run([sys.executable, "-m", "wanq", *args], capture_output=True, text=True, timeout=240, env=env, cwd=cwd)


def test_the_client_streams_previews_and_downloads_each(stack: Stack, workers: Workers, tmp_path: Path) -> None:
    workers.start(1)
    with Client(stack.api_url, api_key=stack.env.get(DEV_ADMIN_KEY_ENV)) as client:
        video = client.submit(
            f"client previews {SLOW}", **{**TINY_JOB, "num_frames": 9, "preview_every": 2, "guidance_scale_2": 2.0}
        )
        assert video["preview_every"] == 2
        with pytest.raises(APIError) as early:  # nothing to show before the first preview
            client.download_preview(video["id"], tmp_path / "early.mp4")
        assert early.value.status == 409
        saved = []
        for shown in client.previews(video["id"], timeout=180):
            saved.append((shown["preview_step"], client.download_preview(video["id"], tmp_path / f"{shown['preview_step']}.mp4")))
        assert [step for step, _ in saved] == [2, 4]
        for _, path in saved:  # one frame per latent frame (9 frames: 3) at half of 64x64
            assert probe_mp4(path)["frames"] == 3 and probe_mp4(path)["size"] == (32, 32)
        assert client.get(video["id"])["status"] == "completed"
        assert (
            client.content_url(video["id"], variant="preview")
            == f"{stack.api_url}/v1/videos/{video['id']}/content?variant=preview"
        )
        # The job has ended: its last preview still comes at once, then the stream ends.
        assert [v["preview_step"] for v in client.previews(video["id"], timeout=60)] == [4]
        assert client.content(video["id"], variant="preview") == saved[-1][1].read_bytes()


def test_wanq_submit_says_where_previews_are_and_saves_each_in_the_preview_dir(
    stack: Stack, workers: Workers, tmp_path: Path
) -> None:
    workers.start(1)
    # 1. --wait: each preview's content URL on stderr, as it comes
    told = wanq("submit", f"submit previews {SLOW}", *TINY_FLAGS, "--preview-every", "2", "--wait", stack=stack, cwd=tmp_path)
    assert told.returncode == 0, told.stderr
    video_id = told.stdout.splitlines()[0]
    where = f"{stack.api_url}/v1/videos/{video_id}/content?variant=preview"
    lines = [line for line in told.stderr.splitlines() if "preview after" in line]
    assert lines == [f"wanq: preview after step 2: {where}", f"wanq: preview after step 4: {where}"], told.stderr
    # 2. --preview-dir (made if missing) saves each; the draft decoder's MP4 has the job's frames and size
    folder = tmp_path / "previews" / "fox"
    saved = wanq(
        "submit", f"saved previews {SLOW}", *TINY_FLAGS, "--preview-every", "2", "--decoder", "tiny",
        "--preview-dir", str(folder), "-o", str(tmp_path / "fox.mp4"), stack=stack, cwd=tmp_path,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["preview_step002.mp4", "preview_step004.mp4"]
    assert [line for line in saved.stderr.splitlines() if "preview after" in line] == [
        f"wanq: preview after step {n}: {folder / f'preview_step{n:03d}.mp4'}" for n in (2, 4)
    ]
    for path in folder.iterdir():
        assert probe_mp4(path)["frames"] == 3 and probe_mp4(path)["size"] == (32, 32)
    made = probe_mp4(tmp_path / "fox.mp4")
    assert made["frames"] == 9 and made["size"] == (64, 64)
    assert wait_for_status_of(stack, saved.stdout.splitlines()[0])["decoder"] == "tiny"


def wait_for_status_of(stack: Stack, video_id: str) -> dict[str, object]:
    with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30) as api:
        return wait_for_status(api, video_id, {"completed", "failed", "canceled"})


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (("--preview-every", "-1"), "argument --preview-every: '-1': say a whole number of steps, 0 or more (0: no previews)"),
        (("--preview-every", "two"), "argument --preview-every: 'two': say a whole number of steps, 0 or more"),
        (("--decoder", "medium"), "argument --decoder: invalid choice: 'medium' (choose from"),
    ],
)
def test_bad_preview_flags_are_refused_in_one_line(flags: tuple[str, ...], said: str, tmp_path: Path) -> None:
    done = wanq("submit", "a fox", *flags, "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1


def test_a_preview_dir_that_is_a_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    for command in (["submit", "a fox"], ["remix", "video_x", "a fox"], ["extend", "video_x", "a fox"]):
        done = wanq(*command, "--preview-dir", "taken", "--url", "http://127.0.0.1:9", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert done.stderr == f"wanq {command[0]}: --preview-dir 'taken' is a file: give a folder (it is made if missing)\n"


def test_an_extension_of_a_draft_may_ask_for_previews_and_the_full_decoder(stack: Stack, tmp_path: Path) -> None:
    # The session's shared tiny-ti2v-5b workers (an image-to-video model: it extends)
    with Client(stack.api_url, api_key=stack.env.get(DEV_ADMIN_KEY_ENV)) as client:
        body = {"size": "64x64", "num_frames": 9, "num_inference_steps": 2, "seed": 7}
        draft = client.submit("a draft to extend", model="tiny-ti2v-5b", decoder="tiny", **body)
        assert client.wait(draft["id"], timeout=180)["status"] == "completed"
        kept = client.extend(draft["id"], "and on, still a draft", num_frames=5)  # a draft's extension is one too
        assert kept["decoder"] == "tiny" and client.wait(kept["id"], timeout=180)["status"] == "completed"
        longer = client.extend(draft["id"], "and on", num_frames=5, decoder="full", preview_every=1)
        assert longer["decoder"] == "full" and longer["preview_every"] == 1
        done = client.wait(longer["id"], timeout=180)
        assert done["status"] == "completed" and done["decoder"] == "full" and done["preview_step"] == 1, done
        whole = client.download(longer["id"], tmp_path / "whole.mp4")
        assert probe_mp4(whole)["frames"] == 9 + 5 - 1
        # Checked like a create's: more previews than steps is refused, naming the field
        with pytest.raises(APIError) as refused:
            client.extend(draft["id"], "x", num_frames=5, preview_every=3)
        assert refused.value.status == 400 and refused.value.param == "preview_every"
        # A remix of the draft through the client: the full decoder on request
        again = client.remix(draft["id"], "a draft to extend", decoder="full")
        assert again["decoder"] == "full" and client.wait(again["id"], timeout=180)["status"] == "completed"
