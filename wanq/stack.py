"""Starts a whole local wanq stack as child processes: redis-server, an S3 endpoint (moto), the API
and workers on tiny models. Used by `wanq dev`, `make demo`, the test suite and the benchmarks.

Every piece runs as its own process, configured only through `WANQ_` variables, exactly as in
production; nothing is faked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.catalog import PRESETS
from shared.settings import SeedKey, Settings
from wanq.config import UsageError

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "wanq-local",
    "AWS_SECRET_ACCESS_KEY": "wanq-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


DEV_ADMIN_KEY_ENV = "WANQ_DEV_ADMIN_KEY"
"""Where the stack keeps the admin key it seeded (`seed_admin_key`), for its own and the tests' requests."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (as uvicorn binds: SO_REUSEADDR, so TIME_WAIT is no obstacle)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint()
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _as_written(seed: SeedKey) -> dict[str, object]:
    """A seeded key as WANQ_AUTH_KEYS writes it (the key itself, where it was given so)."""
    secret = {"key": seed.key.get_secret_value()} if seed.key else {"key_sha256": seed.key_sha256}
    return {**secret, "tenant": seed.tenant, "admin": seed.admin}


# Signals -------------------------------------------------------------------------------------------


class StopRequested(BaseException):
    """A stop signal arrived (SIGTERM, SIGINT, SIGHUP) while `stop_on_signals` was in force: raised in the main thread,
    like KeyboardInterrupt, so that whatever is under way unwinds to the code that stops the stack."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    received: int | None = None
    raised = False
    held = 0
    """> 0 while a child is being started (the signal waits until it is in `processes`, so it is stopped too) or the
    tiny models are written in this process."""
    quiet = 0
    """> 0 while stopping: a signal is only noted, never raised (a stop is not cut short by another)."""


def _on_signal(signum: int, frame: object) -> None:
    _Signals.received = _Signals.received or signum
    if _Signals.raised or _Signals.held or _Signals.quiet or _importing(frame):
        return
    _Signals.raised = True
    raise StopRequested(signum)


def _importing(frame: object) -> bool:
    """Whether the main thread is inside an import. Raised there, the stop leaves a half-initialised module behind
    (redis' package then recursed without end when the stop imported it again): it waits for `checkpoint`."""
    while frame is not None:
        if getattr(frame, "f_code", None) is not None and frame.f_code.co_filename.startswith("<frozen importlib"):  # type: ignore[attr-defined]
            return True
        frame = frame.f_back  # type: ignore[attr-defined]
    return False


def checkpoint() -> None:
    """Raises the stop that a signal asked for while it could not be raised (during an import)."""
    if _Signals.received is not None and not (_Signals.raised or _Signals.held or _Signals.quiet):
        _Signals.raised = True
        raise StopRequested(_Signals.received)


@contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> Iterator[None]:
    """While the block runs, the first of these signals raises StopRequested (at once, or once the child being
    started is recorded); later ones are ignored: the stop is under way. Installed before anything starts, so a signal
    during start-up stops every child too."""
    previous = {signum: signal.signal(signum, _on_signal) for signum in signums}
    _Signals.received, _Signals.raised = None, False
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _holding_signals() -> Iterator[None]:
    _Signals.held += 1
    try:
        yield
    finally:
        _Signals.held -= 1
    if not (_Signals.held or _Signals.quiet or _Signals.raised) and _Signals.received is not None:
        _Signals.raised = True
        raise StopRequested(_Signals.received)


@contextmanager
def quiet_signals() -> Iterator[None]:
    """A stop signal during the block is noted, not raised (around stopping the stack)."""
    _Signals.quiet += 1
    try:
        yield
    finally:
        _Signals.quiet -= 1


class ProcessExited(RuntimeError):
    """A child of the stack ended while the stack waited for it to be ready."""

    def __init__(self, managed: Managed) -> None:
        super().__init__(f"{managed.name} exited with {managed.proc.returncode}:\n{managed.log()[-3000:]}")
        self.managed = managed

    def last_words(self) -> str:
        """The last line its log has, as said (the message of a JSON line)."""
        for line in reversed(self.managed.log().strip().splitlines()):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                return line
            return str(entry.get("msg", line)) if isinstance(entry, dict) else line
        return "(its log is empty)"


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> bool:
        """True while running; raises with the end of its log once it has exited (no waiting for nothing)."""
        if self.proc.poll() is not None:
            raise ProcessExited(self)
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Managed] = field(default_factory=list)
    redis_url: str = ""
    s3_url: str = ""
    api_url: str = ""
    model_paths: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)

    # Processes ---------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], extra_env: Mapping[str, str] | None = None) -> Managed:
        log_path = self.workdir / "logs" / f"{name}.log"
        env = {**os.environ, **AWS_TEST_ENV, **self.env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        env.pop(DEV_ADMIN_KEY_ENV, None)  # the processes get only its hash (WANQ_AUTH_KEYS)
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        with _holding_signals():  # a stop signal now waits until the child is in `processes`, so it is stopped too
            try:
                proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            finally:
                log_file.close()
            managed = Managed(name, proc, log_path)
            self.processes.append(managed)
        return managed

    def start_redis(self, port: int | None = None, *, appendonly: bool = False) -> str:
        port = port or free_port()
        data = self.workdir / f"redis-{port}"
        data.mkdir(exist_ok=True)
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            # This machine's set-up, not a failure of the stack: `wanq dev` ends with this line and exit status 2.
            raise UsageError(
                "wanq dev: redis-server is not installed: install it (Debian/Ubuntu: apt-get install redis-server), or "
                "point WANQ_REDIS_URL at a running Redis"
            )
        self.spawn(
            f"redis-{port}",
            [
                redis_server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(data),
                "--appendonly",
                "yes" if appendonly else "no",
                "--protected-mode",
                "no",
            ],
        )
        wait_until(lambda: port_open("127.0.0.1", port), 10, f"redis-server on port {port}")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.env["WANQ_REDIS_URL"] = self.redis_url
        return self.redis_url

    def start_s3(self, port: int | None = None) -> str:
        port = port or free_port()
        self.spawn(f"s3-{port}", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
        wait_until(lambda: port_open("127.0.0.1", port), 30, f"the S3 endpoint (moto) on port {port}")
        self.s3_url = f"http://127.0.0.1:{port}"
        self.env["WANQ_S3_ENDPOINT_URL"] = self.s3_url
        self.env.setdefault("WANQ_S3_CREATE_BUCKET", "true")
        return self.s3_url

    def build_tiny_models(self, models: list[str], folder: Path | None = None) -> dict[str, Path]:
        from worker.tiny_model import write_tiny_model

        folder = folder or self.workdir / "models"
        # A stop signal meanwhile is raised once the models are written: torch's, diffusers' and transformers' lazy
        # imports run throughout (see `_importing`), and no model folder is left half written.
        with _holding_signals():
            for model in models:
                spec = PRESETS[model]
                path = folder / model
                if not (path / "model_index.json").exists():
                    write_tiny_model(path, spec.variant)
                self.model_paths[model] = path
        return self.model_paths

    def start_api(self, port: int | None = None) -> str:
        port = port or free_port()
        api = self.spawn(f"api-{port}", [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)])
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: api.check_alive() and self._healthy(self.api_url), 120, f"the API on port {port}")
        if self.admin_headers():
            # Ours, not another server that held the port first (ours then exits): that one does not know our key.
            answer = httpx.get(f"{self.api_url}/v1/models", headers=self.admin_headers(), timeout=5)
            api.check_alive()
            if answer.status_code == 401:
                raise RuntimeError(f"another server answers on port {port} (it refuses this stack's key); pass another port")
        return self.api_url

    def seed_admin_key(self, tenant: str = "admin") -> str:
        """Makes an admin key for the processes started after this; they receive only its SHA-256."""
        from shared.apikeys import generate_key, hash_key

        key = generate_key()
        # Added to the keys already configured for the stack, else to those of its environment (which it overrides).
        if "WANQ_AUTH_KEYS" in self.env:
            seeds = json.loads(self.env["WANQ_AUTH_KEYS"])
        else:
            seeds = [_as_written(seed) for seed in Settings().auth.keys]
        seeds.append({"key_sha256": hash_key(key), "tenant": tenant, "admin": True})
        self.env["WANQ_AUTH_KEYS"] = json.dumps(seeds)
        self.env[DEV_ADMIN_KEY_ENV] = key
        return key

    def start_dispatcher(self, *, extra_env: Mapping[str, str] | None = None) -> Managed:
        """A `wanq dispatcher` process (set WANQ_DISPATCH_IN_API=false to have the API run none)."""
        count = sum(1 for p in self.processes if p.name.startswith("dispatcher"))
        return self.spawn(f"dispatcher-{count}", [sys.executable, "-m", "wanq", "dispatcher"], extra_env)

    def start_worker(self, model: str, *, extra_env: Mapping[str, str] | None = None, name: str | None = None) -> Managed:
        path = self.model_paths[model]
        count = sum(1 for p in self.processes if p.name.startswith(f"worker-{model}"))
        return self.spawn(
            name or f"worker-{model}-{count}",
            # INFO: a line as each job starts and ends (which job, which worker, how long), in the worker's log.
            [sys.executable, "-m", "wanq", "worker", "--model", model, "--model-path", str(path), "--loglevel", "INFO"],
            extra_env,
        )

    def start_webhooks(self, *, extra_env: Mapping[str, str] | None = None) -> Managed:
        """A `wanq webhook-delivery` process; it needs no readiness wait: events wait for it in Redis."""
        count = sum(1 for p in self.processes if p.name.startswith("webhooks"))
        args = [sys.executable, "-m", "wanq", "webhook-delivery", "--loglevel", "INFO"]
        return self.spawn(f"webhooks-{count}", args, extra_env)

    def wait_for_workers(self, model: str, count: int = 1, timeout: float = 120) -> None:
        def ready() -> bool:
            response = httpx.get(f"{self.api_url}/v1/models", headers=self.admin_headers(), timeout=5)
            for item in response.json().get("data", []):
                if item["id"] == model:
                    return int(item["live_workers"]) >= count
            return False

        wait_until(ready, timeout, f"{count} live worker(s) for {model}", interval=0.2)

    def admin_headers(self) -> dict[str, str]:
        key = self.env.get(DEV_ADMIN_KEY_ENV)
        return {"Authorization": f"Bearer {key}"} if key else {}

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        # Workers and the API first, then the services they talk to. A stop signal meanwhile cuts nothing short.
        with quiet_signals():
            for managed in sorted(self.processes, key=lambda m: m.name.startswith(("redis", "s3"))):
                managed.stop()
            self.processes.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
