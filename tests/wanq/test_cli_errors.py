"""A mistake in what a `wanq` command was given ends it with one line that says what to change, and exit status 2:
never a traceback. Each case runs the real command as a process, in an empty directory, with no WANQ_ variable but
its own (nothing here may reach a Redis on the default port)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.catalog import PRESETS
from wanq.config import DEV_STACK_FILE, DevStack
from wanq.dev import published
from wanq.stack import Stack

KNOWN = ", ".join(sorted(PRESETS))


def wanq(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    return subprocess.run(
        [sys.executable, "-m", "wanq", *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command ends with (after its usage, for argparse's refusals)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    return done.stderr.splitlines()[-1]


@pytest.fixture
def closed_redis() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_keys_without_a_reachable_redis(tmp_path: Path, closed_redis: str) -> None:
    done = wanq(tmp_path, "keys", "create", "--tenant", "acme", WANQ_REDIS_URL=closed_redis)
    assert refused(done) == f"wanq keys: no Redis answers at {closed_redis}; start it, run `wanq dev` here, or set WANQ_REDIS_URL"
    assert done.stderr.splitlines() == [f"wanq keys: using Redis at {closed_redis} (WANQ_REDIS_URL)", refused(done)]


def test_keys_never_show_the_redis_password(tmp_path: Path, closed_redis: str) -> None:
    url = closed_redis.replace("redis://", "redis://:hunter2-secret@")
    done = wanq(tmp_path, "keys", "list", WANQ_REDIS_URL=url)
    assert refused(done).startswith(f"wanq keys: no Redis answers at {closed_redis.replace('redis://', 'redis://:***@')};")
    assert "hunter2" not in done.stderr


def test_keys_use_the_redis_of_the_wanq_dev_running_here(tmp_path: Path, closed_redis: str) -> None:
    stack = Stack(tmp_path / "stack")
    stack.redis_url, stack.api_url, stack.s3_url = closed_redis, "http://127.0.0.1:1", "http://127.0.0.1:2"
    other = closed_redis.replace("/0", "/1")
    with published(stack, tmp_path / DEV_STACK_FILE) as here:
        assert json.loads((tmp_path / DEV_STACK_FILE).read_text())["redis_url"] == closed_redis
        assert here.pid == os.getpid()
        done = wanq(tmp_path, "keys", "list")
        given = wanq(tmp_path, "keys", "list", WANQ_REDIS_URL=other)  # WANQ_REDIS_URL wins
    assert not (tmp_path / DEV_STACK_FILE).exists()  # gone with the stack
    assert done.stderr.splitlines()[0] == (
        f"wanq keys: using Redis at {closed_redis} (from {DEV_STACK_FILE}: the `wanq dev` running here)"
    )
    assert refused(done).startswith(f"wanq keys: no Redis answers at {closed_redis};")
    assert given.stderr.splitlines()[0] == f"wanq keys: using Redis at {other} (WANQ_REDIS_URL)"

    # A file left by a `wanq dev` that was killed is no dev stack.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    DevStack(redis_url=closed_redis, api_url="", s3_url="", pid=int(ended.stdout)).write(tmp_path / DEV_STACK_FILE)
    assert DevStack.read(tmp_path / DEV_STACK_FILE) is None


def test_generate_without_a_pipeline_directory(tmp_path: Path) -> None:
    done = wanq(tmp_path, "generate", "--model-path", "/nonexistent", "--prompt", "a fox")
    assert refused(done) == (
        "wanq generate: --model-path '/nonexistent': no such directory, and not a Hugging Face repository id "
        "(owner/name, e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers)"
    )
    done = wanq(tmp_path, "generate", "--model-path", str(tmp_path), "--prompt", "a fox")
    assert refused(done) == (
        f"wanq generate: --model-path '{tmp_path}' is not a diffusers pipeline directory (no model_index.json); give a "
        "Hugging Face repository id (e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers), download one with `wanq fetch-model`, or "
        "make a tiny one with `wanq tiny-model`"
    )


def test_worker_for_an_unknown_model(tmp_path: Path) -> None:
    done = wanq(tmp_path, "worker", "--model", "typo", "--model-path", str(tmp_path))
    assert refused(done) == f"wanq worker: unknown model 'typo'; known: {KNOWN}"


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("WANQ_ENGINE_OFFLOAD", "everything", "wanq: WANQ_ENGINE_OFFLOAD='everything' is invalid: input should be 'none', 'model', 'group' or 'sequential'"),
        ("WANQ_API_PORT", "eighty", "wanq: WANQ_API_PORT='eighty' is invalid: input should be a valid integer, unable to parse string as an integer"),
        (
            "WANQ_MODELS",
            '["wan2.2-ti2v-5b"',
            "wanq: WANQ_MODELS is not valid JSON (Expecting ',' delimiter: line 1 column 18 (char 17)); lists and objects "
            """are written as JSON, e.g. WANQ_MODELS='["wan2.2-ti2v-5b"]'""",
        ),
        (
            "WANQ_JOBS_HARD_TIME_LIMIT_S",
            "10",
            "wanq: jobs.hard_time_limit_s (10) must exceed jobs.soft_time_limit_s (3600): set WANQ_JOBS_HARD_TIME_LIMIT_S higher",
        ),
        # The message never repeats a key.
        ("WANQ_AUTH_KEYS", '[{"key": "wq_tooshort", "tenant": "acme"}]', "wanq: the WANQ_AUTH_KEYS entry of tenant 'acme' has a key shorter than 20 characters"),
    ],
)  # fmt: skip
def test_a_bad_setting(tmp_path: Path, variable: str, value: str, line: str) -> None:
    assert refused(wanq(tmp_path, "keys", "list", **{variable: value})) == line


def test_bad_flags(tmp_path: Path) -> None:
    done = wanq(tmp_path, "generate", "--model-path", str(tmp_path), "--prompt", "x", "--cache-rdt", "-1")
    assert refused(done) == "wanq: --cache-rdt -1.0 is invalid: input should be greater than or equal to 0"
    done = wanq(tmp_path, "dispatcher", "--loglevel", "loud")
    assert refused(done) == (
        "wanq dispatcher: error: argument --loglevel: invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')"
    )
    done = wanq(tmp_path, "submit", "a fox", "--image", "missing.png", "--url", "http://127.0.0.1:1")
    assert refused(done) == "wanq submit: --image 'missing.png': no such file"


def test_webhooks_alone_asks_for_a_subcommand(tmp_path: Path) -> None:
    done = wanq(tmp_path, "webhooks")
    assert done.stderr.startswith("usage: wanq webhooks")
    assert refused(done) == (
        "wanq webhooks: error: pick a subcommand: show, set-endpoint, delete-endpoint, rotate-secret, deliveries "
        "(the delivery process is `wanq webhook-delivery`)"
    )


def test_dev_without_redis_server_is_a_usage_error(tmp_path: Path) -> None:
    # A PATH with no redis-server on it (the interpreter is named by its full path), and no WANQ_REDIS_URL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = wanq(tmp_path, "dev", "--port", str(port), PATH=str(tmp_path / "no-bin"))
    assert refused(done) == (
        "wanq dev: redis-server is not installed: install it (Debian/Ubuntu: apt-get install redis-server), or point "
        "WANQ_REDIS_URL at a running Redis"
    )


def test_worker_probes_without_a_reachable_redis_or_with_an_unknown_model(tmp_path: Path, closed_redis: str) -> None:
    url = closed_redis.replace("redis://", "redis://:hunter2-secret@")
    for command in ("worker-health", "worker-drain"):
        done = wanq(tmp_path, command, "--model", "tiny-ti2v-5b", WANQ_REDIS_URL=url)
        assert refused(done) == (
            f"wanq {command}: no Redis answers at {closed_redis.replace('redis://', 'redis://:***@')}; start it, run "
            "`wanq dev` here, or set WANQ_REDIS_URL"
        )
        done = wanq(tmp_path, command, "--model", "typo", WANQ_REDIS_URL=closed_redis)
        assert refused(done) == f"wanq {command}: unknown model 'typo'; known: {KNOWN}"
