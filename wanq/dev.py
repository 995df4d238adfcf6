"""`wanq dev` (the whole stack in the foreground) and `make demo` (one job from prompt to MP4).

Uses WANQ_REDIS_URL if it is set and reachable, else starts a private redis-server; uses
WANQ_S3_ENDPOINT_URL if set, else starts a local S3 endpoint (moto's server). Then the API and one
worker per tiny model, and the webhook delivery process. Ctrl-C stops everything it started.
While it runs, .wanq/dev.json in the working directory says where (`wanq keys ...` run there use its Redis).

Its API port is checked first: taken, `wanq dev` ends at once (exit 2), naming a free one to pass. SIGTERM, SIGINT
(Ctrl-C) and SIGHUP stop every child it started, at any moment, start-up included. Exit status: 0 stopped by a
signal once running; 1 a process it started failed (the line names it, its last words and its log); 2 a usage
error; 128 + the signal's number when stopped during start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.catalog import TINY_MODEL_IDS
from wanq.config import DEV_STACK_FILE, DevStack, UsageError, load_settings, reporting_usage_errors
from wanq.stack import (
    DEV_ADMIN_KEY_ENV,
    ProcessExited,
    Stack,
    StopRequested,
    checkpoint,
    free_port,
    port_free,
    port_open,
    stop_on_signals,
)

log = logging.getLogger("wanq.dev")


def start_dev_stack(
    workdir: Path, *, api_port: int | None = None, models: tuple[str, ...] = TINY_MODEL_IDS, announce: bool = True
) -> Stack:
    settings = load_settings()
    stack = Stack(workdir)
    try:
        redis_given = "redis" in settings.model_fields_set
        url = urlsplit(settings.redis.url)
        private_redis = not (redis_given and port_open(url.hostname or "127.0.0.1", url.port or 6379))
        if not private_redis:
            stack.redis_url = settings.redis.url
            stack.env["WANQ_REDIS_URL"] = settings.redis.url
            print(f"wanq dev: using Redis at {settings.redis.url}", file=sys.stderr)
        else:
            print(f"wanq dev: started a private redis-server at {stack.start_redis()}", file=sys.stderr)
        if settings.s3.endpoint_url:
            stack.s3_url = settings.s3.endpoint_url
            print(f"wanq dev: using S3 endpoint {settings.s3.endpoint_url}", file=sys.stderr)
        else:
            print(f"wanq dev: started a local S3 endpoint (moto) at {stack.start_s3()}", file=sys.stderr)
            if private_redis:
                # A private Redis and a private bucket start empty together, by design. Never with a given S3
                # endpoint: its bucket may hold a deployment whose Redis is elsewhere, and a fresh start would let
                # the orphan sweep take every object there for an orphan (the API then says Redis lost its data).
                stack.env["WANQ_MAINTENANCE_FRESH_START"] = "true"
        stack.env["WANQ_MODELS"] = "[" + ",".join(f'"{m}"' for m in models) + "]"
        open_mode = "auth" not in settings.model_fields_set
        if open_mode:
            # Explicitly open: a local playground needs no key (and takes any, as the openai SDK always sends one).
            # The API logs a warning saying so.
            stack.env["WANQ_AUTH_OPEN"] = "true"
        stack.seed_admin_key("dev-admin")  # for the stack's own checks; never shown
        stack.env.setdefault("WANQ_S3_CREATE_BUCKET", "true")
        # Local receivers (a script on this machine) are the usual webhook target while developing.
        if not settings.webhooks.allowlist:
            stack.env["WANQ_WEBHOOKS_ALLOWLIST"] = '["127.0.0.0/8", "::1/128"]'
        folder = workdir.parent / "models"
        if any(not (folder / m / "model_index.json").exists() for m in models):
            print(f"wanq dev: writing the tiny models to {folder} (once)", file=sys.stderr)
        with _stderr_into(workdir / "logs" / "models.log"):  # torch's and diffusers' chatter, and their tqdm bars
            stack.build_tiny_models(list(models), folder)
        api = stack.start_api(api_port)
        stack.start_webhooks()
        for model in models:
            stack.start_worker(model)
        for model in models:
            stack.wait_for_workers(model, 1, timeout=180)
        for line in banner(api, models, open_mode=open_mode, logs=workdir / "logs") if announce else []:
            print(f"wanq dev: {line}", file=sys.stderr)
        return stack
    except BaseException:
        stack.stop()
        raise


def banner(api: str, models: tuple[str, ...], *, open_mode: bool, logs: Path) -> list[str]:
    """What a person needs once the stack is up: where the page, the docs, the API and the logs are, and which key
    to use."""
    lines = [
        f"ready: the web page at {api}/ , the API docs at {api}/docs , the API at {api}/v1",
        f"models: {', '.join(models)} (tiny random-weight pipelines: their videos are noise, made in seconds on a CPU)",
        f"logs: {logs.resolve()}/ , one file per process (api-*.log, worker-MODEL-0.log with a line per job, ...)",
    ]
    if open_mode:
        lines.append(
            "authentication is OFF (WANQ_AUTH_OPEN=true, local use only): no key needed and any key is taken, e.g. "
            f'OpenAI(base_url="{api}/v1", api_key="wq_..."); set WANQ_AUTH_KEYS to require keys'
        )
    else:
        lines.append("keys are required: make one with `wanq keys create --tenant me` (run here, it uses this stack's Redis)")
    return lines


def check_port(port: int) -> None:
    """Refuses, before anything starts, an API port that something already listens on."""
    if port_free(port):
        return
    running = DevStack.read()
    held = running is not None and running.api_url.rsplit(":", 1)[-1] == str(port)
    who = f" by the `wanq dev` running here (pid {running.pid})" if held and running is not None else ""
    raise UsageError(
        f"wanq dev: port {port} on 127.0.0.1 is already in use{who}; stop what listens there, or pass a free port: "
        f"wanq dev --port {free_port()}"
    )


@contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """File descriptor 2 into `path` while the block runs (what libraries print, C code's included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def published(stack: Stack, path: Path = DEV_STACK_FILE) -> Iterator[DevStack]:
    """Says where `stack` lives in `path` while the block runs (for the commands run in this directory)."""
    here = DevStack(redis_url=stack.redis_url, api_url=stack.api_url, s3_url=stack.s3_url, pid=os.getpid())
    here.write(path)
    try:
        yield here
    finally:
        if DevStack.read(path) == here:  # not another `wanq dev`'s, started here since
            path.unlink(missing_ok=True)


def run_dev(workdir: Path, *, api_port: int | None = 8000) -> None:
    if api_port is not None:
        check_port(api_port)
    with stop_on_signals():  # from the first child on: any stop signal, at any moment, stops every one
        try:
            stack = start_dev_stack(workdir, api_port=api_port)  # stops what it started if it does not get through
        except StopRequested as exc:
            print(f"wanq dev: stopped by {exc} during start-up; every process it had started is stopped", file=sys.stderr)
            raise SystemExit(128 + exc.signum) from None
        except ProcessExited as exc:
            raise SystemExit(
                f"wanq dev: {exc.managed.name} exited with status {exc.managed.proc.returncode} during start-up: "
                f"{exc.last_words()} (its log: {exc.managed.log_path})"
            ) from None
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"wanq dev: could not start: {exc} (logs in {workdir / 'logs'})") from None
        status: int | str = 0
        try:
            with published(stack):
                print(
                    f"wanq dev: {DEV_STACK_FILE} says where it runs (`wanq keys ...` run here use its Redis); Ctrl-C stops it",
                    file=sys.stderr,
                )
                while True:
                    dead = [p for p in stack.processes if not p.alive()]
                    if dead:
                        names = ", ".join(f"{p.name} (status {p.proc.returncode}, log {p.log_path})" for p in dead)
                        status = f"wanq dev: {names} exited; stopped the rest"
                        break
                    checkpoint()
                    time.sleep(0.5)
        except StopRequested as exc:
            print(f"wanq dev: stopping ({exc})", file=sys.stderr)
        finally:
            stack.stop()
        print("wanq dev: stopped", file=sys.stderr)
        if status:
            raise SystemExit(status)


def run_demo(argv: list[str] | None = None) -> None:
    """Starts the dev stack, submits one prompt with a live progress bar, downloads the MP4, stops."""
    from worker.export import probe_mp4

    parser = argparse.ArgumentParser(prog="wanq-demo")
    parser.add_argument("--workdir", default=".wanq/demo")
    parser.add_argument("--output", default="out/demo.mp4")
    parser.add_argument("--prompt", default="A corgi surfing a wave at sunset, cinematic")
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stack = start_dev_stack(Path(args.workdir), api_port=None, models=("tiny-ti2v-5b",), announce=False)  # it stops after
    try:
        # `wanq submit`, as a person would run it. The stack's key works whether or not authentication is open.
        submit = [sys.executable, "-m", "wanq", "submit", args.prompt, "--model", "tiny-ti2v-5b", "--wait", "-o", str(output)]
        env = {**os.environ, "WANQ_URL": stack.api_url, "WANQ_API_KEY": stack.env[DEV_ADMIN_KEY_ENV]}
        done = subprocess.run(submit, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(done.returncode)
        info: dict[str, Any] = probe_mp4(output)
        print(
            f"demo: {output.resolve()} — {info['codec']} {info['size'][0]}x{info['size'][1]}, {info['frames']} frames at {info['fps']:g} fps"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    with reporting_usage_errors():
        run_demo()
