"""The commands a container platform runs beside a worker: its health check and the model fetch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LATE
from wanq.stack import Stack
from worker.control import FETCHED_MARKER, fetch_model


def _wanq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env}
    return subprocess.run([sys.executable, "-m", "wanq", *args], capture_output=True, text=True, env=env, timeout=60)


def test_worker_health_is_ok_only_where_a_loaded_worker_beats(stack: Stack) -> None:
    ok = _wanq(stack, "worker-health", "--model", "tiny-t2v-a14b")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ready" in ok.stdout
    missing = _wanq(stack, "worker-health", "--model", LATE)  # no worker of it runs now
    assert missing.returncode == 1 and LATE in missing.stdout


def test_fetch_model_writes_once_then_reuses(tmp_path: Path) -> None:
    target = tmp_path / "tiny-ti2v-5b"
    first = fetch_model("tiny-ti2v-5b", target)
    assert "wrote" in first and (target / "model_index.json").exists() and (target / FETCHED_MARKER).exists()
    assert "already" in fetch_model("tiny-ti2v-5b", target)


def test_fetch_model_takes_a_pipeline_put_there_by_other_means(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    assert "other means" in fetch_model("wan2.2-ti2v-5b", tmp_path)  # no download attempted


def test_fetch_model_names_an_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such-model"):
        fetch_model("no-such-model", tmp_path)
