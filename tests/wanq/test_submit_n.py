"""`n` videos per request from the Python client and `wanq submit -n` / `--seeds`: one create makes n jobs, the
answer names them all (`video_ids`, seed order), and `--wait -o fox.mp4` writes fox-1.mp4 .. fox-n.mp4. Real
subprocesses, a real HTTP server on loopback for what needs no worker, and the real stack for the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import png_bytes
from wanq.client import Client, video_ids
from wanq.stack import Stack
from worker.export import probe_mp4

TINY = ("--model", "tiny-t2v-a14b", "--size", "64x64", "--num-frames", "5", "--steps", "1")


def wanq(*args: str, key: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    if key:
        env["WANQ_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "wanq", *args], capture_output=True, text=True, timeout=240, env=env, cwd=cwd)


@pytest.fixture
def client(stack: Stack, api_key: str | None) -> Iterator[Client]:
    with Client(stack.api_url, api_key=api_key) as client:
        yield client


# Without a worker -----------------------------------------------------------------------------------------------
def test_video_ids_of_an_answer_with_n_and_of_a_single_job() -> None:
    assert video_ids({"id": "video_a", "video_ids": ["video_a", "video_b"]}) == ["video_a", "video_b"]
    assert video_ids({"id": "video_a"}) == ["video_a"]


def test_submit_n_without_wait_prints_every_id_in_seed_order(answering_server: Callable[..., Any]) -> None:
    video = {"id": "video_1", "status": "queued", "progress": 0, "seed": 5, "video_ids": ["video_1", "video_2", "video_3"]}
    server = answering_server(video)
    done = wanq("submit", "a fox", "-n", "3", "--url", server.url)
    assert (done.returncode, done.stdout, done.stderr) == (0, "video_1\nvideo_2\nvideo_3\n", "")
    assert server.seen_paths == ["/v1/videos"]  # one request for all three


def test_seeds_that_do_not_match_n_or_are_not_numbers_are_usage_errors(tmp_path: Path) -> None:
    done = wanq("submit", "a fox", "-n", "2", "--seeds", "1,2,3", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "wanq submit: -n 2 and --seeds with 3 seeds: give one seed per video\n"
    done = wanq("submit", "a fox", "--seeds", "1,x", cwd=tmp_path)
    assert done.returncode == 2 and "--seeds" in done.stderr and "'1,x'" in done.stderr, done.stderr


def test_refused_n_and_seeds_are_named_by_their_flags(refusing_server: Callable[..., Any]) -> None:
    server = refusing_server(400, "invalid_request", "invalid 'n' 9: must be between 1 and 4 (WANQ_VIDEOS_MAX_N)")
    done = wanq("submit", "a fox", "-n", "9", "--url", server.url)
    assert done.returncode == 1 and done.stderr == "wanq: invalid -n 9: must be between 1 and 4 (WANQ_VIDEOS_MAX_N)\n"
    server = refusing_server(400, "invalid_request", "invalid 'seeds' [1, 2]: give n = 3 seeds")
    done = wanq("submit", "a fox", "-n", "3", "--seeds", "1,2,3", "--url", server.url)
    assert done.stderr == "wanq: invalid --seeds [1, 2]: give n = 3 seeds\n"


# Against the stack ----------------------------------------------------------------------------------------------
def test_the_client_creates_n_jobs_with_consecutive_or_given_seeds_and_waits_for_all(client: Client, tmp_path: Path) -> None:
    video = client.submit("three foxes", model="tiny-t2v-a14b", size="64x64", num_frames=5, num_inference_steps=1, seed=20, n=3)
    ids = video_ids(video)
    assert len(ids) == 3 == len(set(ids)) and video["id"] == ids[0] and video["seed"] == 20
    finals = client.wait_all(ids, timeout=180)
    assert [f["id"] for f in finals] == ids
    assert [f["seed"] for f in finals] == [20, 21, 22] and {f["status"] for f in finals} == {"completed"}
    # Each is an ordinary video of its own.
    assert all(probe_mp4(client.download(i, tmp_path / f"{i}.mp4"))["frames"] == 5 for i in ids)

    given = client.submit("two foxes", model="tiny-t2v-a14b", size="64x64", num_frames=5, num_inference_steps=1, seeds=[7, 3])
    assert [client.get(i)["seed"] for i in video_ids(given)] == [7, 3]

    # The same through multipart (a first frame): `seeds` goes as the field repeated.
    image = tmp_path / "first.png"
    image.write_bytes(png_bytes(64, 64))
    framed = client.submit(
        "two herons", model="tiny-ti2v-5b", size="64x64", num_frames=5, num_inference_steps=1, image=image, seeds=[4, 9]
    )
    assert [client.get(i)["seed"] for i in video_ids(framed)] == [4, 9]
    client.wait_all([*video_ids(given), *video_ids(framed)], timeout=180)


def test_submit_n_wait_writes_name_1_to_name_n(stack: Stack, api_key: str | None, tmp_path: Path) -> None:
    out = tmp_path / "clips" / "fox.mp4"
    done = wanq(
        "submit", "a red fox", *TINY, "-n", "3", "--seed", "5", "--wait", "-o", str(out), "--url", stack.api_url, key=api_key
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    ids, paths = lines[:3], [Path(p) for p in lines[3:]]
    assert all(i.startswith("video_") for i in ids) and len(set(ids)) == 3
    assert paths == [(tmp_path / "clips" / f"fox-{k}.mp4").resolve() for k in (1, 2, 3)]
    assert all(probe_mp4(p)["frames"] == 5 for p in paths)
    with Client(stack.api_url, api_key=api_key) as client:
        assert [client.get(i)["seed"] for i in ids] == [5, 6, 7]

    listed = wanq("submit", "a red fox", *TINY, "--seeds", "1,2", "--url", stack.api_url, key=api_key)
    assert listed.returncode == 0 and len(listed.stdout.split()) == 2, listed.stderr
