"""`wanq dev` (the whole stack in the foreground) and `make demo` (one job from prompt to MP4).

Uses WANQ_REDIS_URL if it is set and reachable, else starts a private redis-server; uses
WANQ_S3_ENDPOINT_URL if set, else starts a local S3 endpoint (moto's server). Then the API and one
worker per tiny model, and the webhook delivery process. Ctrl-C stops everything it started.
While it runs, .wanq/dev.json in the working directory says where (`wanq keys ...` run there use its Redis).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.catalog import TINY_MODEL_IDS
from wanq.config import DEV_STACK_FILE, DevStack, load_settings, reporting_usage_errors
from wanq.stack import DEV_ADMIN_KEY_ENV, Stack, port_open

log = logging.getLogger("wanq.dev")


def start_dev_stack(workdir: Path, *, api_port: int | None = None, models: tuple[str, ...] = TINY_MODEL_IDS) -> Stack:
    settings = load_settings()
    stack = Stack(workdir)
    try:
        redis_given = "redis" in settings.model_fields_set
        url = urlsplit(settings.redis.url)
        if redis_given and port_open(url.hostname or "127.0.0.1", url.port or 6379):
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
        stack.env["WANQ_MODELS"] = "[" + ",".join(f'"{m}"' for m in models) + "]"
        if "auth" not in settings.model_fields_set:
            # Explicitly open: a local playground needs no key. The API logs a warning saying so.
            stack.env["WANQ_AUTH_OPEN"] = "true"
            print(
                "wanq dev: authentication is OFF (WANQ_AUTH_OPEN=true, local use only); set WANQ_AUTH_KEYS to require keys",
                file=sys.stderr,
            )
        stack.seed_admin_key("dev-admin")  # for the stack's own checks; never shown
        stack.env.setdefault("WANQ_S3_CREATE_BUCKET", "true")
        # Local receivers (a script on this machine) are the usual webhook target while developing.
        if not settings.webhooks.allowlist:
            stack.env["WANQ_WEBHOOKS_ALLOWLIST"] = '["127.0.0.0/8", "::1/128"]'
        stack.build_tiny_models(list(models), workdir.parent / "models")
        api = stack.start_api(api_port)
        stack.start_webhooks()
        for model in models:
            stack.start_worker(model)
        for model in models:
            stack.wait_for_workers(model, 1, timeout=180)
        print(f"wanq dev: API at {api} (docs at {api}/docs); workers ready for {', '.join(models)}", file=sys.stderr)
        return stack
    except BaseException:
        stack.stop()
        raise


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
    stack = start_dev_stack(workdir, api_port=api_port)
    stop = False

    def _interrupt(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with published(stack):
            print(f"wanq dev: {DEV_STACK_FILE} says where it runs; `wanq keys ...` run here use its Redis", file=sys.stderr)
            while not stop:
                dead = [p.name for p in stack.processes if not p.alive()]
                if dead:
                    print(f"wanq dev: {', '.join(dead)} exited; logs in {workdir / 'logs'}", file=sys.stderr)
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("wanq dev: stopping", file=sys.stderr)
        stack.stop()


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
    stack = start_dev_stack(Path(args.workdir), api_port=None, models=("tiny-ti2v-5b",))
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
