"""Client commands of `wanq`: submit (with a live progress bar), status, list, cancel, delete, download, models.

The server and key come from --url / --api-key, else WANQ_URL / WANQ_API_KEY: client-side settings, read here at
the command's entry point (the server's `Settings` never sees them). Results go to stdout (an id, a path, JSON),
progress and errors to stderr, so `ID=$(wanq submit ...)` works.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from wanq.client import TERMINAL, APIError, Client, ServerUnreachable, Video, WanqClientError

DEFAULT_URL = "http://127.0.0.1:8000"
EXTENSIONS = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg"}
# Share of the progress bar that denoising covers (shared/schemas.py `_STAGE_SPANS`: 5 -> 88 %).
_DENOISE_SPAN = 83


def add_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help=f"server URL (default: WANQ_URL, else {DEFAULT_URL})")
        p.add_argument("--api-key", default=None, help="API key (default: WANQ_API_KEY)")

    p = sub.add_parser("submit", help="submit a prompt; --wait shows live progress, then downloads the MP4")
    p.add_argument("prompt")
    p.add_argument("--model", help="a model id (see `wanq models`); default: the server's first")
    p.add_argument("--size", help='"WIDTHxHEIGHT", e.g. 1280x704')
    p.add_argument("--seconds", type=float, help="duration (rounded to a 4k+1 frame count)")
    p.add_argument("--num-frames", type=int, help="4k+1 frames; wins over --seconds")
    p.add_argument("--steps", dest="num_inference_steps", type=int, help="denoising steps")
    p.add_argument("--fps", type=int)
    p.add_argument("--negative-prompt")
    p.add_argument("--image", help="first frame (image-to-video models)")
    p.add_argument("--seed", type=int)
    p.add_argument("--webhook-url", help="POST signed events about this job here")
    p.add_argument("--webhook-event", dest="webhook_events", action="append", help="an event to send (repeat for several)")
    p.add_argument(
        "--lora",
        dest="loras",
        action="append",
        type=_lora_arg,
        metavar="NAME[:STRENGTH[:EXPERT]]",
        help="a LoRA of your library (repeat for several); EXPERT: both, high_noise, low_noise (A14B)",
    )
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--wait", action="store_true", help="follow progress until it ends and download the video")
    p.add_argument("-o", "--output", help="where to write the MP4 (implies --wait; default ID.mp4)")
    common(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the whole video object")
    common(p)
    p.set_defaults(func=cmd_status)

    for name, func, help_ in (
        ("cancel", cmd_cancel, "cancel a queued or running job"),
        ("delete", cmd_delete, "delete a job and its outputs"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("id")
        common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="list your jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("download", help="download a finished job's video, thumbnail or spritesheet")
    p.add_argument("id")
    p.add_argument("--variant", default="video", choices=list(EXTENSIONS))
    p.add_argument("-o", "--output", help="default ID.mp4 / ID.webp / ID.jpg")
    common(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="the models the server accepts, their defaults and live workers")
    common(p)
    p.set_defaults(func=cmd_models)

    loras = sub.add_parser("loras", help="your LoRA library: upload, list, show, delete")
    lora_sub = loras.add_subparsers(dest="loras_command", required=True, metavar="{upload,list,show,delete}")
    p = lora_sub.add_parser("upload", help="upload a .safetensors LoRA (a file, or an https URL the server fetches)")
    p.add_argument("source", help="a .safetensors file, or an https:// URL")
    p.add_argument("--name", required=True, help="unique among your LoRAs")
    p.add_argument("--model", required=True, help="a model id, or a family (wan2.2-a14b: T2V- and I2V-A14B)")
    p.add_argument("--steps", dest="num_inference_steps", type=int, help="recommended steps (jobs naming it inherit them)")
    p.add_argument("--guidance-scale", type=float, help="recommended guidance (1: no classifier-free guidance)")
    p.add_argument("--guidance-scale-2", type=float, help="recommended low-noise guidance (A14B)")
    p.add_argument("--flow-shift", type=float, help="recommended flow shift")
    p.add_argument("--expert", choices=["both", "high_noise", "low_noise"], help="the expert jobs put it in by default (A14B)")
    p.add_argument("--shared", action="store_true", help="admins: publish it to every tenant")
    common(p)
    p.set_defaults(func=cmd_lora_upload)
    p = lora_sub.add_parser("list", help="your LoRAs and the shared ones")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_lora_list)
    p = lora_sub.add_parser("show", help="one LoRA, as JSON")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_lora_show)
    p = lora_sub.add_parser("delete", help="delete a LoRA and its file")
    p.add_argument("name")
    p.add_argument("--shared", action="store_true", help="admins: the shared LoRA of that name")
    common(p)
    p.set_defaults(func=cmd_lora_delete)


def _lora_arg(text: str) -> dict[str, Any]:
    """NAME[:STRENGTH[:EXPERT]] -> a `loras` entry."""
    name, _, rest = text.partition(":")
    strength, _, expert = rest.partition(":")
    entry: dict[str, Any] = {"name": name}
    if strength:
        try:
            entry["strength"] = float(strength)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the strength after the name must be a number") from None
    if expert:
        entry["expert"] = expert
    return entry


# Errors ------------------------------------------------------------------------------------------


def explain(exc: WanqClientError, *, api_key_given: bool) -> str:
    """One line a person can act on."""
    if isinstance(exc, ServerUnreachable):
        return f"wanq: {exc} — start one with `wanq dev`, or pass --url / set WANQ_URL"
    if not isinstance(exc, APIError):
        return f"wanq: {exc}"
    if exc.status == 401:
        hint = (
            "check --api-key / WANQ_API_KEY" if api_key_given else "this server needs a key: pass --api-key or set WANQ_API_KEY"
        )
        return f"wanq: not authorized: {exc.message} ({hint})"
    if exc.status == 403:
        return f"wanq: forbidden: {exc.message}"
    if exc.status == 429:
        wait = f"; retry in {exc.retry_after:g} s" if exc.retry_after is not None else "; retry later"
        return f"wanq: quota exceeded: {exc.message}{wait}"
    if exc.code == "model_not_available":
        return f"wanq: {exc.message} (see `wanq models`)"
    if exc.status == 404:
        return f"wanq: {exc.message} (see `wanq list`)"
    return f"wanq: {exc.message}"


def _run(args: argparse.Namespace, action: Callable[[Client], None]) -> None:
    url = args.url or os.environ.get("WANQ_URL") or DEFAULT_URL
    key = args.api_key or os.environ.get("WANQ_API_KEY") or None
    with Client(url, api_key=key) as client:
        try:
            action(client)
        except WanqClientError as exc:
            raise SystemExit(explain(exc, api_key_given=key is not None)) from None


# Progress ----------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


class ProgressBar:
    """Stage, step i/N, elapsed and estimated remaining time, fed by the job's events.

    On a terminal: one line, redrawn. Elsewhere (a pipe, a CI log): one plain line per change of stage or step.
    The estimate comes from the measured time per denoising step, so queue wait and model loading don't skew it;
    the stages after denoising are assumed to take their share of the bar at the same pace."""

    def __init__(self, out: TextIO = sys.stderr, *, width: int = 24, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.width = width
        self.clock = clock
        self.tty = out.isatty()
        self.started = clock()
        self.running_since: float | None = None
        self.first_step: tuple[int, float] | None = None
        self.seconds_per_step: float | None = None
        self.last_key: tuple[Any, ...] | None = None
        self.drawn = False

    def update(self, video: Video) -> None:
        now = self.clock()
        status, stage, step = video["status"], video.get("stage") or video["status"], int(video.get("step") or 0)
        total = int(video.get("total_steps") or 0)
        pct = max(0, min(100, int(video.get("progress") or 0)))
        if status == "in_progress" and self.running_since is None:
            self.running_since = now
        if stage == "denoising" and step > 0:
            if self.first_step is None or step < self.first_step[0]:
                self.first_step = (step, now)
            elif step > self.first_step[0]:
                self.seconds_per_step = (now - self.first_step[1]) / (step - self.first_step[0])

        label = _label(video, stage, step, total)
        key = (status, stage, step, video.get("queue_position"))
        if not self.tty and key == self.last_key:
            return
        self.last_key = key
        remaining = self._remaining(status, pct, total, now)
        # Under a second left says nothing useful (and the stages after denoising rarely keep the step pace exactly).
        timing = f"{_clock(now - self.started)}" + (f", ~{_clock(remaining)} left" if remaining and remaining >= 1 else "")
        if self.tty:
            filled = self.width * pct // 100
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}%  {label}  {timing}"
            columns = shutil.get_terminal_size((100, 20)).columns
            self.out.write("\r\x1b[K" + line[: columns - 1])
            self.drawn = True
        else:
            self.out.write(f"{pct:3d}%  {label}  {timing}\n")
        self.out.flush()

    def _remaining(self, status: str, pct: int, total: int, now: float) -> float | None:
        if status != "in_progress" or pct >= 100:
            return None
        if self.seconds_per_step is not None and total:
            seconds_per_pct = self.seconds_per_step * total / _DENOISE_SPAN
            return (100 - pct) * seconds_per_pct
        if self.running_since is not None and pct >= 88:
            # Past denoising without a measured step rate (a very fast job): extrapolate from the running time.
            return (now - self.running_since) * (100 - pct) / pct
        return None

    def close(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def _label(video: Video, stage: str, step: int, total: int) -> str:
    if video["status"] in TERMINAL:
        return video["status"]
    if video["status"] == "queued":
        position = video.get("queue_position")
        return f"queued (position {position + 1})" if position is not None else "queued"
    if stage == "denoising":
        return f"denoising {step}/{total or '?'}"
    return stage.replace("_", " ")


# Commands ----------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> None:
    names = ("model", "size", "seconds", "num_frames", "num_inference_steps", "fps", "negative_prompt", "seed", "guidance_scale")
    fields = {k: getattr(args, k) for k in (*names, "webhook_url", "webhook_events", "loras")}
    if args.image and not Path(args.image).is_file():
        raise SystemExit(f"wanq: --image {args.image!r}: no such file")

    def action(client: Client) -> None:
        video = client.submit(args.prompt, image=args.image, **fields)
        video_id = video["id"]
        print(video_id, flush=True)
        if not (args.wait or args.output):
            return
        bar = ProgressBar()
        try:
            for event in client.events(video_id):
                bar.update(event)
                video = event
        except KeyboardInterrupt:
            bar.close()
            raise SystemExit(f"wanq: stopped following; the job goes on (`wanq cancel {video_id}` stops it)") from None
        bar.close()
        if video["status"] != "completed":
            error = video.get("error") or {}
            raise SystemExit(f"wanq: job {video['id']} {video['status']}: {error.get('message', 'no reason given')}")
        out = Path(args.output or f"{video['id']}.mp4")
        out.parent.mkdir(parents=True, exist_ok=True)
        print(client.download(video["id"], out).resolve())

    _run(args, action)


def cmd_status(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        video = client.get(args.id)
        if args.json:
            print(json.dumps(video, indent=2, ensure_ascii=False))
            return
        step, total = int(video.get("step") or 0), int(video.get("total_steps") or 0)
        print(f"{video['id']}  {video['status']}  {video['progress']}%  {_label(video, video.get('stage', ''), step, total)}")
        print(
            f"  model {video['model']}, {video['size']}, {video.get('num_frames')} frames ({video['seconds']} s), seed {video.get('seed')}"
        )
        print(f"  prompt {video['prompt']!r}")
        if video.get("error"):
            print(f"  error {video['error'].get('code')}: {video['error'].get('message')}")

    _run(args, action)


def cmd_list(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        videos = client.list(limit=args.limit)["data"]
        if args.json:
            print(json.dumps(videos, indent=2, ensure_ascii=False))
            return
        for video in videos:
            step, total = int(video.get("step") or 0), int(video.get("total_steps") or 0)
            label = _label(video, video.get("stage", ""), step, total)
            print(f"{video['id']}  {video['progress']:3d}%  {label:<22} {video['model']:<16} {video['prompt'][:48]!r}")

    _run(args, action)


def cmd_cancel(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        video = client.cancel(args.id)
        stopping = video.get("cancel_requested") and video["status"] == "in_progress"
        print(f"{video['id']} {'stopping at its next step' if stopping else video['status']}")

    _run(args, action)


def cmd_delete(args: argparse.Namespace) -> None:
    _run(args, lambda client: print(f"{client.delete(args.id)['id']} deleted"))


def cmd_download(args: argparse.Namespace) -> None:
    out = args.output or f"{args.id}.{EXTENSIONS[args.variant]}"
    _run(args, lambda client: print(client.download(args.id, out, variant=args.variant).resolve()))


def cmd_lora_upload(args: argparse.Namespace) -> None:
    source = args.source
    if not source.startswith(("https://", "http://")) and not Path(source).is_file():
        raise SystemExit(f"wanq: {source!r}: no such file (or give an https:// URL)")
    defaults = {
        k: getattr(args, k) for k in ("num_inference_steps", "guidance_scale", "guidance_scale_2", "flow_shift", "expert")
    }

    def action(client: Client) -> None:
        lora = client.upload_lora(source, name=args.name, model=args.model, shared=args.shared, **defaults)
        print(f"{lora['name']}  {lora['model']}  rank {lora['rank']}  {lora['num_modules']} modules  sha256 {lora['sha256']}")

    _run(args, action)


def cmd_lora_list(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        loras = client.loras()
        if args.json:
            print(json.dumps(loras, indent=2))
            return
        for lora in loras:
            defaults = " ".join(f"{k}={v}" for k, v in lora["defaults"].items())
            shared = " shared" if lora["shared"] else ""
            print(f"{lora['name']:<24} {lora['model']:<18} rank {lora['rank']:<4} {lora['size_bytes']:>11} B{shared}  {defaults}")

    _run(args, action)


def cmd_lora_show(args: argparse.Namespace) -> None:
    _run(args, lambda client: print(json.dumps(client.lora(args.name), indent=2)))


def cmd_lora_delete(args: argparse.Namespace) -> None:
    _run(args, lambda client: print(f"{client.delete_lora(args.name, shared=args.shared)['name']} deleted"))


def cmd_models(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        for model in client.models():
            d = model["defaults"]
            print(
                f"{model['id']:<18} {model['variant']:<9} image {model['image_input']:<8} "
                f"{d['size']:>9} {d['num_frames']:>3} frames {d['num_inference_steps']:>2} steps  "
                f"workers {model['live_workers']}, queued {model['queued']}"
            )

    _run(args, action)
