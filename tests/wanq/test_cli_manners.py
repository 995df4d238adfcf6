"""How the `wanq` commands behave around what they are given and where their output goes: a reader that goes away
(`wanq list | head -1`), ids sent as one URL segment, hints that name the command to run, a server URL without its
scheme, refused values named by their flags. (Where `wanq generate` writes: tests/worker/test_model_path.py.) Real subprocesses against real HTTP servers on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VIDEO = {
    "id": "video_1",
    "status": "completed",
    "progress": 100,
    "model": "tiny-ti2v-5b",
    "size": "64x64",
    "num_frames": 17,
    "seconds": 2.1,
    "seed": 3,
    "prompt": "a fox",
}


def wanq(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    return subprocess.run(
        [sys.executable, "-m", "wanq", *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs `wanq ARGS` with its stdout a pipe whose reader has gone before anything is written (`| head -0`)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wanq", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the interpreter has started, let alone printed
    stderr = proc.stderr.read()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=60), "", stderr)


@pytest.mark.parametrize("command", [["list"], ["status", "video_1"], ["list", "--json"], ["models"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(answering_server: Callable[..., Any], command: list[str]) -> None:
    model = {"id": "m", "variant": "ti2v-5b", "image_input": "optional", "live_workers": 1, "queued": 0}
    model["defaults"] = {"size": "64x64", "num_frames": 17, "num_inference_steps": 4}
    server = answering_server({"data": [{**VIDEO, **model}] * 50, **VIDEO})  # a list page, a video, models
    done = into_a_closed_pipe(*command, "--url", server.url)
    # What a Unix tool killed by SIGPIPE shows in the shell (128 + 13), and no traceback.
    assert (done.returncode, done.stderr) == (141, ""), done.stderr


def test_help_into_a_closed_pipe_is_quiet_too() -> None:
    # argparse ignores a failed write of its help itself, and exits 0 as it does for --help.
    assert into_a_closed_pipe("--help").stderr == ""


def test_ids_and_names_go_as_one_url_segment(refusing_server: Callable[..., Any]) -> None:
    server = refusing_server(404, "not_found", "no video with id '../etc'")
    done = wanq("status", "../etc", "--url", server.url)
    assert done.returncode == 1 and done.stderr == "wanq: no video with id '../etc' (see `wanq list`)\n"
    wanq("cancel", "..", "--url", server.url)
    wanq("loras", "show", "a/b", "--url", server.url)
    assert server.seen_paths == ["/v1/videos/..%2Fetc", "/v1/videos/%2E%2E/cancel", "/v1/loras/a%2Fb"]


def test_a_missing_lora_points_to_wanq_loras_list(refusing_server: Callable[..., Any]) -> None:
    server = refusing_server(404, "not_found", "no LoRA named 'gone'")
    for command in ("delete", "show"):
        done = wanq("loras", command, "gone", "--url", server.url)
        assert done.returncode == 1 and done.stderr == "wanq: no LoRA named 'gone' (see `wanq loras list`)\n"


def test_refused_values_are_named_by_their_flags(refusing_server: Callable[..., Any]) -> None:
    # The server's own messages (shared/image_specs.py, shared/loras.py).
    server = refusing_server(400, "invalid_request", "invalid 'n' 50: must be between 1 and 4 (WANQ_IMAGES_MAX_N)")
    done = wanq("image", "a fox", "-n", "50", "--url", server.url)
    assert done.returncode == 1 and done.stderr == "wanq: invalid -n 50: must be between 1 and 4 (WANQ_IMAGES_MAX_N)\n"
    server = refusing_server(
        400,
        "invalid_request",
        "invalid 'loras[0].name' 'gone': no LoRA of that name (GET /v1/loras lists yours and the shared ones)",
    )
    done = wanq("submit", "a fox", "--lora", "gone", "--url", server.url)
    assert (
        done.stderr == "wanq: invalid --lora 'gone': no LoRA of that name (`wanq loras list` lists yours and the shared ones)\n"
    )


def test_a_server_url_without_its_scheme(tmp_path: Path) -> None:
    done = wanq("list", "--url", "localhost:8000")
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr
        == "wanq: --url 'localhost:8000' is not an http:// or https:// URL: add http:// (e.g. http://localhost:8000)\n"
    )
    done = wanq("models", WANQ_URL="127.0.0.1:8000")
    assert done.returncode == 2 and done.stderr.startswith("wanq: WANQ_URL '127.0.0.1:8000' is not an http:// or https:// URL")


def test_a_lora_file_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    done = wanq("loras", "upload", "missing.safetensors", "--name", "x", "--model", "tiny-t2v-a14b", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "wanq loras upload: 'missing.safetensors': no such file (or give an https:// URL)\n"
