"""`wanq dev` as a person runs it, as a process: a taken port is said at once (no start-up, no traceback, no polling
of whatever holds the port), and a stop signal at any moment of start-up stops every process it had started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from wanq.stack import free_port


def _env() -> dict[str, str]:
    # Nothing of the session's stack or of a WANQ_ variable of the machine: `wanq dev` starts its own Redis and S3.
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_said_at_once(tmp_path: Path, taken_port: int) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "wanq", "dev", "--port", str(taken_port)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    match = re.fullmatch(
        rf"wanq dev: port {taken_port} on 127\.0\.0\.1 is already in use; stop what listens there, or pass a free port: "
        r"wanq dev --port (\d+)",
        line,
    )
    assert match, line
    suggested = int(match.group(1))
    assert suggested != taken_port
    assert time.monotonic() - started < 20  # the time to start Python, not a 180 s wait
    assert not (tmp_path / ".wanq").exists()  # nothing was started, no log written


def _descendants(process: psutil.Process, seen: dict[int, tuple[float, str]]) -> None:
    for child in process.children(recursive=True):
        try:
            seen[child.pid] = (child.create_time(), " ".join(child.cmdline()))
        except psutil.Error:
            pass


def _left_behind(seen: dict[int, tuple[float, str]]) -> list[str]:
    left = []
    for pid, (created, command) in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid}: {command}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("moto.server", signal.SIGTERM),  # Redis and S3 up, the tiny models being written in the process itself
        ("wanq api", signal.SIGINT),  # Ctrl-C while the API starts
        ("wanq worker", signal.SIGTERM),  # the API up, the workers loading
    ],
)
def test_a_stop_signal_during_start_up_leaves_no_process_behind(tmp_path: Path, moment: str, signum: int) -> None:
    dev = subprocess.Popen(
        [sys.executable, "-m", "wanq", "dev", "--port", str(free_port()), "--workdir", str(tmp_path / "dev")],
        cwd=tmp_path,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, tuple[float, str]] = {}
    try:
        me = psutil.Process(dev.pid)
        deadline = time.monotonic() + 180
        while not any(moment in command for _, command in seen.values()):
            assert dev.poll() is None and time.monotonic() < deadline, (moment, seen)
            _descendants(me, seen)
            time.sleep(0.05)
        time.sleep(0.5)
        _descendants(me, seen)
        dev.send_signal(signum)
        _, err = dev.communicate(timeout=120)
    finally:
        if dev.poll() is None:
            dev.kill()
    assert dev.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.splitlines()[-1] == f"wanq dev: stopped by {name} during start-up; every process it had started is stopped"
    assert "Traceback" not in err
    assert len(seen) >= 2  # redis-server and the S3 endpoint at least
    time.sleep(0.5)
    assert _left_behind(seen) == []


def test_a_stop_signal_during_an_import_waits_for_the_import_to_finish(tmp_path: Path) -> None:
    """Raised inside an import, the stop left a half-initialised module behind (redis' package then recursed without
    end when stopping imported it again, and `wanq dev` exited 1, "maximum recursion depth exceeded"): the stop waits
    for the import, then is raised at the next checkpoint."""
    (tmp_path / "slow_module.py").write_text("import time\nfor _ in range(20):\n    time.sleep(0.05)\nDONE = True\n")
    script = (
        "import os, signal, sys, threading, time\n"
        "from wanq.stack import StopRequested, checkpoint, stop_on_signals\n"
        "threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
        "with stop_on_signals():\n"
        "    try:\n"
        "        import slow_module\n"
        "        print('imported', slow_module.DONE)\n"
        "        checkpoint()\n"
        "        print('not stopped')\n"
        "    except StopRequested as exc:\n"
        "        print('stopped', exc, 'slow_module' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={**_env(), "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.splitlines() == ["imported True", "stopped SIGTERM True"], done.stdout + done.stderr
