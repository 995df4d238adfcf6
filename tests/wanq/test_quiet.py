"""What `wanq generate`, the workers and `wanq dev` say: nothing a user cannot act on, a line per job in dev, and
where the logs are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for_status
from wanq.dev import start_dev_stack
from wanq.stack import Stack

# What the libraries said at every start (issue 24): none of it is the user's business.
NOISE = (
    "torchao/_C_mxfp8",  # torchao's compiled kernels built for another Python
    "torchao/_C_cutlass_90a",
    "Detected no triton",
    "is an Enum subclass and is now natively supported by torch.compile",  # torch's pytree, about torchao
    "Unable to import `torchao` Tensor objects",
    "`CLIPImageProcessor` requires torchvision",
    "You're running the worker with superuser privileges",  # Celery
    "Make sure to know what you are doing!",  # peft, about wanq's LoRA slots
)


def _noise_in(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


def test_wanq_generate_says_none_of_the_noise(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "quiet.mp4"
    model = str(stack.model_paths["tiny-t2v-a14b"])
    args = ("generate", "--model-path", model, "--prompt", "x", "--size", "64x64", "--num-frames", "5")
    done = subprocess.run(
        [sys.executable, "-m", "wanq", *args, "--num-inference-steps", "1", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    assert _noise_in(done.stderr) == [], done.stderr


def test_the_workers_say_none_of_the_noise(stack: Stack, api: httpx.Client) -> None:
    # A job with a LoRA slot filled would bring peft's warning; any job makes the worker import everything.
    created = api.post("/v1/videos", json={"prompt": "quiet", "model": "tiny-t2v-a14b", "size": "64x64", "num_frames": 5})
    assert wait_for_status(api, created.json()["id"], {"completed", "failed"})["status"] == "completed"
    logs = [p.log_path for p in stack.processes if p.name.startswith("worker-")]
    assert logs
    for path in logs:
        assert _noise_in(path.read_text()) == [], path


def test_a_line_a_user_can_act_on_still_shows() -> None:
    """The filters go by logger and message: the same loggers and warnings with another message still show."""
    script = """
import logging, warnings
from shared.logs import configure
configure("INFO")
logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: gone")
logging.getLogger("torchao").warning("torchao 0.18 needs torch >= 2.9: upgrade torch")
peft = {"category": UserWarning, "filename": "tuners_utils.py", "lineno": 1, "module": "peft.tuners.tuners_utils"}
warnings.warn_explicit("Already found a `peft_config` attribute in the model. Make sure to know what you are doing!", **peft)
warnings.warn_explicit("this LoRA has no weights for the transformer", **peft)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = [json.loads(line)["msg"] for line in done.stderr.splitlines()]
    assert said[0] == "torchao 0.18 needs torch >= 2.9: upgrade torch"
    assert "UserWarning: this LoRA has no weights for the transformer" in said[1]
    assert len(said) == 2, said


@pytest.mark.slow
def test_wanq_dev_names_its_logs_and_its_workers_log_each_job(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "dev"
    dev = start_dev_stack(workdir, api_port=None, models=("tiny-ti2v-5b",))
    try:
        said = capfd.readouterr().err
        assert f"wanq dev: logs: {(workdir / 'logs').resolve()}/ , one file per process" in said, said
        with httpx.Client(base_url=dev.api_url, timeout=30, headers=dev.admin_headers()) as api:
            created = api.post("/v1/videos", json={"prompt": "a logged fox", "model": "tiny-ti2v-5b", "num_frames": 5})
            assert wait_for_status(api, created.json()["id"], {"completed", "failed"})["status"] == "completed"
        (log,) = [p.log_path for p in dev.processes if p.name.startswith("worker-")]
        assert log.parent == workdir / "logs"

        def job_lines() -> list[str]:
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            return [
                line["msg"] for line in lines if line.get("job_id") == created.json()["id"] and line["logger"] == "wanq.worker"
            ]

        deadline = time.monotonic() + 10
        while "job completed" not in job_lines() and time.monotonic() < deadline:  # logged right after the record
            time.sleep(0.2)
        assert job_lines() == ["job started", "job completed"]
    finally:
        dev.stop()
