"""Client commands of `wanq`: submit (with a live progress bar), status, list, cancel, download.

The server and key come from --url / --api-key or WANQ_URL / WANQ_API_KEY (client-side settings,
read here at the entry point like every other setting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from wanq.client import Client, WanqClientError


def add_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help="server URL (WANQ_URL, default http://127.0.0.1:8000)")
        p.add_argument("--api-key", default=None, help="API key (WANQ_API_KEY)")

    p = sub.add_parser("submit", help="submit a prompt; --wait shows live progress and downloads")
    p.add_argument("prompt")
    p.add_argument("--model")
    p.add_argument("--size")
    p.add_argument("--seconds", type=float)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--steps", dest="num_inference_steps", type=int)
    p.add_argument("--image")
    p.add_argument("--seed", type=int)
    p.add_argument("--webhook-url", help="POST signed events about this job here")
    p.add_argument("--webhook-event", dest="webhook_events", action="append", help="repeat to choose events")
    p.add_argument("--wait", action="store_true")
    p.add_argument("-o", "--output")
    common(p)
    p.set_defaults(func=cmd_submit)

    for name, func, help_ in (("status", cmd_status, "show a job"), ("cancel", cmd_cancel, "cancel a job")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("id")
        common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="list your jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("download", help="download a finished job's video, thumbnail or spritesheet")
    p.add_argument("id")
    p.add_argument("--variant", default="video", choices=["video", "thumbnail", "spritesheet"])
    p.add_argument("-o", "--output")
    common(p)
    p.set_defaults(func=cmd_download)


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("WANQ_URL") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("WANQ_API_KEY")
    return Client(url, api_key=key)


def _fail(exc: Exception, url: str) -> SystemExit:
    if isinstance(exc, httpx.ConnectError):
        return SystemExit(f"wanq: no server answers at {url} (start one with `wanq dev`, or pass --url)")
    if isinstance(exc, WanqClientError):
        hints = {401: " (check --api-key / WANQ_API_KEY)", 429: " (quota: retry later)"}
        return SystemExit(f"wanq: {exc.message}{hints.get(exc.status, '')}")
    return SystemExit(f"wanq: {exc}")


class ProgressBar:
    """One line, redrawn: stage, step i/N, elapsed and estimated remaining time."""

    def __init__(self, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.started = time.monotonic()
        self.tty = out.isatty()

    def update(self, video: dict[str, Any]) -> None:
        pct = int(video.get("progress", 0))
        filled = self.width * pct // 100
        stage = video.get("stage", video["status"])
        if stage == "denoising":
            stage = f"denoising {video.get('step', 0)}/{video.get('total_steps', '?')}"
        elif video["status"] == "queued" and video.get("queue_position") is not None:
            stage = f"queued (position {video['queue_position'] + 1})"
        elapsed = time.monotonic() - self.started
        remaining = f" ~{elapsed * (100 - pct) / pct:.0f}s left" if 0 < pct < 100 else ""
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% {stage:<24} {elapsed:5.1f}s{remaining}"
        self.out.write(("\r" + line) if self.tty else line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")


def cmd_submit(args: argparse.Namespace) -> None:
    client = _client(args)
    names = ("model", "size", "seconds", "num_frames", "num_inference_steps", "seed", "webhook_url", "webhook_events")
    fields = {k: getattr(args, k) for k in names}
    try:
        video = client.submit(args.prompt, image=args.image, **fields)
        print(video["id"])
        if not (args.wait or args.output):
            return
        bar = ProgressBar()
        for event in client.events(video["id"]):
            bar.update(event)
            video = event
        bar.close()
        if video["status"] != "completed":
            error = video.get("error") or {}
            raise SystemExit(f"wanq: job {video['status']}: {error.get('message', '')}")
        out = Path(args.output or f"{video['id']}.mp4")
        client.download(video["id"], out)
        print(out.resolve())
    except (httpx.HTTPError, WanqClientError) as exc:
        raise _fail(exc, client.base_url) from None


def cmd_status(args: argparse.Namespace) -> None:
    client = _client(args)
    try:
        print(json.dumps(client.get(args.id), indent=2, ensure_ascii=False))
    except (httpx.HTTPError, WanqClientError) as exc:
        raise _fail(exc, client.base_url) from None


def cmd_cancel(args: argparse.Namespace) -> None:
    client = _client(args)
    try:
        video = client.cancel(args.id)
        print(
            f"{video['id']} {video['status']}{' (stopping at the next step)' if video.get('cancel_requested') and video['status'] == 'in_progress' else ''}"
        )
    except (httpx.HTTPError, WanqClientError) as exc:
        raise _fail(exc, client.base_url) from None


def cmd_list(args: argparse.Namespace) -> None:
    client = _client(args)
    try:
        for video in client.list(limit=args.limit)["data"]:
            print(f"{video['id']}  {video['status']:<11} {video['progress']:3d}%  {video['model']:<18} {video['prompt'][:50]!r}")
    except (httpx.HTTPError, WanqClientError) as exc:
        raise _fail(exc, client.base_url) from None


def cmd_download(args: argparse.Namespace) -> None:
    client = _client(args)
    ext = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg"}[args.variant]
    try:
        print(client.download(args.id, args.output or f"{args.id}.{ext}", variant=args.variant).resolve())
    except (httpx.HTTPError, WanqClientError) as exc:
        raise _fail(exc, client.base_url) from None
