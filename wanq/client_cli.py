"""Client commands of `wanq`: submit, extend, remix (with a live progress bar), image, status, list, cancel, delete,
download, models.

The server and key come from --url / --api-key, else WANQ_URL / WANQ_API_KEY (`ClientSettings`, wanq/config.py).
Results go to stdout (an id, a path, JSON), progress and errors to stderr, so `ID=$(wanq submit ...)` works.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

from wanq.client import TERMINAL, APIError, Client, ServerUnreachable, Variant, Video, WanqClientError, video_ids
from wanq.config import DEFAULT_URL, UsageError, load_client_settings

T = TypeVar("T")
EXTENSIONS = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg", "image": "png", "preview": "mp4"}


def add_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help=f"server URL (default: WANQ_URL, else {DEFAULT_URL})")
        p.add_argument("--api-key", default=None, help="API key (default: WANQ_API_KEY)")

    def previews(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument(
            "--preview-every",
            type=_preview_every_arg,
            metavar="N",
            help=f"a preview every N denoising steps (0: none; default: {default}); --wait says where each is",
        )
        p.add_argument(
            "--decoder", choices=["full", "tiny"], help=f"full: the VAE; tiny: a quick draft decode (default: {default})"
        )
        p.add_argument(
            "--preview-dir",
            metavar="DIR",
            help="save each preview as it comes, as DIR/preview_step<NNN>.mp4 (made if missing; implies --wait)",
        )

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
    p.add_argument("-n", "--n", dest="n", type=int, help="how many videos, each a job (seeds SEED, SEED+1, ...); default 1")
    p.add_argument("--seeds", type=_seeds_arg, metavar="S1,S2,...", help="one seed per video (sets -n to their count)")
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
    p.add_argument(
        "--cache",
        nargs="?",
        const=True,
        type=_cache_arg,
        metavar="on|off|JSON",
        help="the step cache for this job (lossy, faster): --cache or on (the worker's settings), off, or settings "
        "as JSON, e.g. '{\"fn\": 2, \"rdt\": 0.3}' (the others the worker's); default: the worker's configured cache",
    )
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False, help="no step cache for this job")
    p.add_argument(
        "--interpolate", type=int, choices=[1, 2, 4], help="frame interpolation: fps and frames times k (default 1, none)"
    )
    p.add_argument("--upscale", type=int, choices=[1, 2, 4], help="upscaling: width and height times k (default 1, none)")
    previews(p, "the worker's")
    p.add_argument("--wait", action="store_true", help="follow progress until it ends and download the video")
    p.add_argument(
        "-o", "--output", help="where to write the MP4 (implies --wait; default ID.mp4; with -n: NAME-1.mp4, NAME-2.mp4...)"
    )
    common(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("extend", help="continue a finished video from its last frame; --wait downloads the whole video")
    p.add_argument("id", help="the completed video to continue")
    p.add_argument("prompt")
    p.add_argument("--seconds", type=float, help="length of the new part (rounded to a 4k+1 frame count)")
    p.add_argument("--num-frames", type=int, help="frames of the new part, 4k+1; wins over --seconds")
    p.add_argument("--model", help="an image-to-video model (default: the source's)")
    p.add_argument("--steps", dest="num_inference_steps", type=int, help="denoising steps (default: the source's)")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int, help="default: the source's + 1")
    previews(p, "the source's with the same model")
    p.add_argument("--wait", action="store_true", help="follow progress until it ends and download the whole video")
    p.add_argument("-o", "--output", help="where to write the MP4 (implies --wait; default ID.mp4)")
    common(p)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("remix", help="a new job with a video's parameters, seed and image, and a new prompt")
    p.add_argument("id")
    p.add_argument("prompt")
    previews(p, "the video's")
    p.add_argument("--wait", action="store_true", help="follow progress until it ends and download the result")
    p.add_argument("-o", "--output", help="where to write it (implies --wait; default ID.mp4, or ID.png for an image)")
    common(p)
    p.set_defaults(func=cmd_remix)

    p = sub.add_parser("image", help="make images (single frames) from a prompt and write the PNGs")
    p.add_argument("prompt")
    p.add_argument("--model", help="a text-to-video model (see `wanq models`); default: the server's first")
    p.add_argument("--size", help='"WIDTHxHEIGHT"')
    p.add_argument("-n", type=int, default=None, help="how many images (default 1)")
    p.add_argument("--steps", dest="num_inference_steps", type=int, help="denoising steps")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int, help="seed of the first image; image i gets seed + i")
    p.add_argument("-o", "--output", help="where to write the PNG (several: NAME-1.png, NAME-2.png...; default ID.png)")
    common(p)
    p.set_defaults(func=cmd_image)

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

    p = sub.add_parser("download", help="download a finished job's video, thumbnail or spritesheet, or any job's latest preview")
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


def _seeds_arg(text: str) -> list[int]:
    """S1,S2,... -> the `seeds` field."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: say the seeds as whole numbers separated by commas, e.g. 1,2,3") from None


def _preview_every_arg(text: str) -> int:
    """N -> the `preview_every` field (the server checks it against the job's steps)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: say a whole number of steps, 0 or more (0: no previews)")
    return int(text)


def _cache_arg(text: str) -> dict[str, Any] | bool:
    """on / off / a JSON object -> the `cache` field (true, false or settings)."""
    if text in ("on", "off"):
        return text == "on"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: say on, off or settings as a JSON object, e.g. '{{\"rdt\": 0.3}}'")
    return value


# Errors ------------------------------------------------------------------------------------------


SUBMIT_FLAGS = {
    "input_reference": "--image",
    "image_url": "--image",
    "num_inference_steps": "--steps",
    "webhook_events": "--webhook-event",
    "n": "-n",
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "model",
            "size",
            "seconds",
            "num_frames",
            "fps",
            "negative_prompt",
            "seed",
            "seeds",
            "webhook_url",
            "guidance_scale",
            "preview_every",
            "decoder",
        )
    },
}
"""The flag of each API field in `wanq submit`, `extend` and `image`, so that a refusal names what the person typed."""


def in_flags(message: str) -> str:
    """The server's message with the API fields it names (`'num_inference_steps'`) as the flags (`--steps`), and the
    API's routes it points to (`GET /v1/loras`) as the commands."""
    message = re.sub(r"'input_reference'(?: \(file\))?(?: or |/)'image_url'", "--image", message)
    message = re.sub(r"'loras\[\d+\](?:\.\w+)?'", "--lora", message, flags=re.ASCII)
    message = message.replace("GET /v1/loras", "`wanq loras list`")
    for name, flag in SUBMIT_FLAGS.items():
        message = message.replace(f"'{name}'", flag)
    return message


def explain(exc: WanqClientError, *, api_key_given: bool, flags: bool = False, listing: str = "wanq list") -> str:
    """One line a person can act on. `flags`: the command is `wanq submit` (or extend, image), so API fields are named
    as its flags. `listing`: the command that lists what a 404 did not find."""
    if flags and isinstance(exc, APIError) and exc.status == 400:
        exc = APIError(exc.status, in_flags(exc.message), exc.code, exc.param, exc.retry_after)
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
        return f"wanq: {exc.message} (see `{listing}`)"
    return f"wanq: {exc.message}"


def call(args: argparse.Namespace, action: Callable[[Client], T], *, flags: bool = False, listing: str = "wanq list") -> T:
    """`action` with a client for the server and key the command was given; a client error ends the command in one
    line (exit status 1). `flags`: refusals name the command's flags instead of the API's fields; `listing`: the
    command that lists what a 404 did not find."""
    settings = load_client_settings()
    url = args.url or settings.url or DEFAULT_URL
    if urlsplit(url).scheme not in ("http", "https"):
        where = "--url" if args.url else "WANQ_URL"
        example = f" (e.g. http://{url})" if "://" not in url else ""
        raise UsageError(f"wanq: {where} {url!r} is not an http:// or https:// URL: add http://{example}")
    key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None) or None
    with Client(url, api_key=key) as client:
        try:
            return action(client)
        except WanqClientError as exc:
            raise SystemExit(explain(exc, api_key_given=key is not None, flags=flags, listing=listing)) from None


# Progress ----------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


class ProgressBar:
    """Stage, step i/N, elapsed and estimated remaining time, fed by the job's events.

    On a terminal: one line, redrawn. Elsewhere (a pipe, a CI log): one plain line per change of stage or step. The
    time left is the server's (`eta_s`, the same the web page shows): none until there is something to go by."""

    def __init__(
        self,
        out: TextIO = sys.stderr,
        *,
        width: int = 24,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.width = width
        self.clock = clock
        self.tty = out.isatty()
        self.started = clock()
        self.last_key: tuple[Any, ...] | None = None
        self.drawn = False

    def update(self, video: Video) -> None:
        now = self.clock()
        status, stage, step = video["status"], video.get("stage") or video["status"], int(video.get("step") or 0)
        total = int(video.get("total_steps") or 0)
        pct = max(0, min(100, int(video.get("progress") or 0)))
        label = _label(video, stage, step, total)
        key = (status, stage, step, video.get("queue_position"))
        if not self.tty and key == self.last_key:
            return
        self.last_key = key
        timing = f"{_clock(now - self.started)}" + _remaining(video)
        if self.tty:
            filled = self.width * pct // 100
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}%  {label}  {timing}"
            columns = shutil.get_terminal_size((100, 20)).columns
            self.out.write("\r\x1b[K" + line[: columns - 1])
            self.drawn = True
        else:
            self.out.write(f"{pct:3d}%  {label}  {timing}\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A line of its own (e.g. where a preview is) between the bar's: on a terminal the bar is redrawn below it."""
        if self.tty and self.drawn:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        self.out.flush()
        self.drawn = False
        self.last_key = None  # the next update draws the bar again

    def close(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def _remaining(video: Video) -> str:
    """', ~0:41 left' from the server's estimate, or ''."""
    eta = video.get("eta_s")
    if video["status"] != "in_progress" or eta is None or eta < 1:  # under a second left says nothing useful
        return ""
    return f", ~{_clock(eta)} left"


def _cache_line(video: Video) -> str:
    """'step cache skipped 42% of block computations, reused 3 of 8 steps (transformer), ...', or ''."""
    stats = video.get("cache_stats")
    if not stats:
        return ""
    reused = ", ".join(
        f"{n} of {stats['steps'].get(expert, '?')} steps ({expert})" for expert, n in stats["steps_reused"].items()
    )
    return f"step cache skipped {stats['blocks_skipped_share']:.0%} of block computations, reused {reused}"


def _label(video: Video, stage: str, step: int, total: int) -> str:
    if video["status"] in TERMINAL:
        return video["status"]
    if video["status"] == "queued":
        position = video.get("queue_position")
        return f"queued (position {position + 1})" if position is not None else "queued"
    if stage == "denoising":
        return f"denoising {step}/{total or '?'}"
    return stage.replace("_", " ")


def _detail(video: Video, step: int, total: int) -> str:
    """What `wanq status` adds to the status: the stage or queue place while it runs or waits; nothing once it ended."""
    if video["status"] in TERMINAL:
        return ""
    if video["status"] == "queued":
        position = video.get("queue_position")
        return f"position {position + 1} in the queue" if position is not None else ""
    return _label(video, video.get("stage") or "", step, total)


# Commands ----------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> None:
    names = ("model", "size", "seconds", "num_frames", "num_inference_steps", "fps", "negative_prompt", "seed", "guidance_scale")
    extras = (
        "webhook_url",
        "webhook_events",
        "loras",
        "cache",
        "n",
        "seeds",
        "interpolate",
        "upscale",
        "preview_every",
        "decoder",
    )
    fields = {k: getattr(args, k) for k in (*names, *extras)}
    if args.image and not Path(args.image).is_file():
        raise UsageError(f"wanq submit: --image {args.image!r}: no such file")
    if args.seeds is not None and args.n is not None and args.n != len(args.seeds):
        raise UsageError(f"wanq submit: -n {args.n} and --seeds with {len(args.seeds)} seeds: give one seed per video")
    _check_preview_dir("submit", args)

    def action(client: Client) -> None:
        answer = client.submit(args.prompt, image=args.image, **fields)
        ids = video_ids(answer)
        if len(ids) == 1:
            _follow(client, answer, args)
            return
        _follow_all(client, ids, args)

    call(args, action, flags=True)


def _follow(client: Client, video: Video, args: argparse.Namespace) -> None:
    """Prints the new job's id; with --wait or -o, follows it with the progress bar and downloads what it made."""
    video_id = video["id"]
    print(video_id, flush=True)
    if not (args.wait or args.output or args.preview_dir):
        return
    bar = ProgressBar()
    previews = Previews(client, args.preview_dir, bar)
    try:
        for event in client.events(video_id):
            bar.update(event)
            previews.seen(event)
            video = event
    except KeyboardInterrupt:
        bar.close()
        raise SystemExit(f"wanq: stopped following; the job goes on (`wanq cancel {video_id}` stops it)") from None
    bar.close()
    if video["status"] != "completed":
        error = video.get("error") or {}
        raise SystemExit(f"wanq: job {video['id']} {video['status']}: {error.get('message', 'no reason given')}")
    cache = _cache_line(video)
    if cache:
        print(f"wanq: {cache}", file=sys.stderr)
    variant: Variant = "image" if video.get("kind") == "image" else "video"
    out = Path(args.output or f"{video['id']}.{EXTENSIONS[variant]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(client.download(video["id"], out, variant=variant).resolve())


def _follow_all(client: Client, ids: list[str], args: argparse.Namespace) -> None:
    """The n jobs of one submit: prints their ids (seed order); with --wait or -o, follows each in turn and downloads
    every one that completed (-o fox.mp4: fox-1.mp4, fox-2.mp4...), then fails if any did not."""
    print("\n".join(ids), flush=True)
    if not (args.wait or args.output or args.preview_dir):
        return
    failed = []
    for number, video_id in enumerate(ids, start=1):
        bar = ProgressBar()
        # Each job's previews in a folder of its own: DIR/ID/preview_step<NNN>.mp4
        previews = Previews(client, args.preview_dir and str(Path(args.preview_dir) / video_id), bar)
        video: Video = {"id": video_id, "status": "queued"}
        try:
            for event in client.events(video_id):
                bar.update(event)
                previews.seen(event)
                video = event
        except KeyboardInterrupt:
            bar.close()
            rest = " ".join(ids[number - 1 :])
            raise SystemExit(f"wanq: stopped following; the jobs go on (`wanq cancel ID` stops one): {rest}") from None
        bar.close()
        if video["status"] != "completed":
            error = video.get("error") or {}
            failed.append(f"job {video_id} {video['status']}: {error.get('message', 'no reason given')}")
            continue
        out = Path(f"{video_id}.mp4")
        if args.output:
            named = Path(args.output)
            out = named.with_name(f"{named.stem}-{number}{named.suffix or '.mp4'}")
        out.parent.mkdir(parents=True, exist_ok=True)
        print(client.download(video_id, out).resolve(), flush=True)
    if failed:
        raise SystemExit("wanq: " + "; ".join(failed))


class Previews:
    """Says where each new preview of a followed job is (its content URL, on stderr) and, with --preview-dir, saves it
    as DIR/preview_step<NNN>.mp4. The variant is always the latest preview: one fetched late may show a later step
    than its name (the worker does not wait); a preview that cannot be fetched is said and skipped."""

    def __init__(self, client: Client, folder: str | None, bar: ProgressBar) -> None:
        self.client, self.folder, self.bar = client, Path(folder) if folder else None, bar
        self.shown: int | None = None

    def seen(self, video: Video) -> None:
        step = video.get("preview_step")
        if step is None or step == self.shown:
            return
        self.shown = step
        where = self.client.content_url(video["id"], variant="preview")
        if self.folder is None:
            self.bar.note(f"wanq: preview after step {step}: {where}")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            path = self.client.download_preview(video["id"], self.folder / f"preview_step{step:03d}.mp4")
        except WanqClientError as exc:
            self.bar.note(f"wanq: preview after step {step} not saved ({exc}); it is at {where}")
            return
        self.bar.note(f"wanq: preview after step {step}: {path}")


def _check_preview_dir(command: str, args: argparse.Namespace) -> None:
    folder = args.preview_dir
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise UsageError(f"wanq {command}: --preview-dir {folder!r} is a file: give a folder (it is made if missing)")


def cmd_extend(args: argparse.Namespace) -> None:
    names = ("seconds", "num_frames", "model", "num_inference_steps", "negative_prompt", "seed", "preview_every", "decoder")
    _check_preview_dir("extend", args)
    call(
        args,
        lambda client: _follow(client, client.extend(args.id, args.prompt, **{k: getattr(args, k) for k in names}), args),
        flags=True,
    )


def cmd_remix(args: argparse.Namespace) -> None:
    _check_preview_dir("remix", args)
    fields = {"preview_every": args.preview_every, "decoder": args.decoder}
    call(args, lambda client: _follow(client, client.remix(args.id, args.prompt, **fields), args), flags=True)


def cmd_image(args: argparse.Namespace) -> None:
    names = ("model", "size", "n", "num_inference_steps", "negative_prompt", "seed")

    def action(client: Client) -> None:
        answer = client.images(args.prompt, **{k: getattr(args, k) for k in names})
        if answer.get("status") == "in_progress":
            # Longer than the server's wait: follow each job, then fetch its PNG.
            print(f"wanq: still running after {answer['waited_s']:g} s; waiting for {' '.join(answer['ids'])}", file=sys.stderr)
            images = []
            for job_id in answer["ids"]:
                video = client.wait(job_id)
                if video["status"] != "completed":
                    error = video.get("error") or {}
                    raise SystemExit(f"wanq: image {job_id} {video['status']}: {error.get('message', 'no reason given')}")
                images.append((job_id, client.content(job_id, variant="image")))
        else:
            images = [(item["id"], base64.b64decode(item["b64_json"])) for item in answer["data"]]
        for n, (job_id, png) in enumerate(images, start=1):
            out = Path(args.output or f"{job_id}.png")
            if args.output and len(images) > 1:
                out = out.with_name(f"{out.stem}-{n}{out.suffix or '.png'}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(png)
            print(out.resolve())

    call(args, action, flags=True)


def cmd_status(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        video = client.get(args.id)
        if args.json:
            print(json.dumps(video, indent=2, ensure_ascii=False))
            return
        step, total = int(video.get("step") or 0), int(video.get("total_steps") or 0)
        detail = _detail(video, step, total)
        print(f"{video['id']}  {video['status']}  {video['progress']}%" + (f"  {detail}" if detail else ""))
        print(
            f"  model {video['model']}, {video['size']}, {_frames(video)} frames ({video['seconds']} s), seed {video.get('seed')}"
        )
        print(f"  prompt {video['prompt']!r}")
        if video.get("extended_from_video_id"):
            print(f"  extends {video['extended_from_video_id']} by {video['num_frames'] - 1} frames")
        if video.get("remixed_from_video_id"):
            print(f"  remix of {video['remixed_from_video_id']}")
        cache = _cache_line(video)
        if cache:
            print(f"  {cache}")
        if video.get("error"):
            print(f"  error {video['error'].get('code')}: {video['error'].get('message')}")

    call(args, action)


def _frames(video: Video) -> object:
    """Frames of the delivered file: an extension's whole video (its source's, then its own but the first)."""
    if video.get("source_frames"):
        return int(video["source_frames"]) + int(video["num_frames"]) - 1
    return video.get("num_frames")


def cmd_list(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        videos = client.list(limit=args.limit)["data"]
        if args.json:
            print(json.dumps(videos, indent=2, ensure_ascii=False))
            return
        if not videos:
            print('wanq: no jobs yet; `wanq submit "a prompt"` makes one', file=sys.stderr)
        for video in videos:
            step, total = int(video.get("step") or 0), int(video.get("total_steps") or 0)
            label = _label(video, video.get("stage", ""), step, total)
            print(f"{video['id']}  {video['progress']:3d}%  {label:<22} {video['model']:<16} {video['prompt'][:48]!r}")

    call(args, action)


def cmd_cancel(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        video = client.cancel(args.id)
        stopping = video.get("cancel_requested") and video["status"] == "in_progress"
        print(f"{video['id']} {'stopping at its next step' if stopping else video['status']}")

    call(args, action)


def cmd_delete(args: argparse.Namespace) -> None:
    call(args, lambda client: print(f"{client.delete(args.id)['id']} deleted"))


def cmd_download(args: argparse.Namespace) -> None:
    suffix = "-preview" if args.variant == "preview" else ""  # not to be taken for the video
    out = args.output or f"{args.id}{suffix}.{EXTENSIONS[args.variant]}"
    call(args, lambda client: print(client.download(args.id, out, variant=args.variant).resolve()))


def cmd_lora_upload(args: argparse.Namespace) -> None:
    source = args.source
    if not source.startswith(("https://", "http://")) and not Path(source).is_file():
        raise UsageError(f"wanq loras upload: {source!r}: no such file (or give an https:// URL)")
    defaults = {
        k: getattr(args, k) for k in ("num_inference_steps", "guidance_scale", "guidance_scale_2", "flow_shift", "expert")
    }

    def action(client: Client) -> None:
        lora = client.upload_lora(source, name=args.name, model=args.model, shared=args.shared, **defaults)
        print(f"{lora['name']}  {lora['model']}  rank {lora['rank']}  {lora['num_modules']} modules  sha256 {lora['sha256']}")

    call(args, action)


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

    call(args, action)


def cmd_lora_show(args: argparse.Namespace) -> None:
    call(args, lambda client: print(json.dumps(client.lora(args.name), indent=2)), listing="wanq loras list")


def cmd_lora_delete(args: argparse.Namespace) -> None:
    call(
        args,
        lambda client: print(f"{client.delete_lora(args.name, shared=args.shared)['name']} deleted"),
        listing="wanq loras list",
    )


def cmd_models(args: argparse.Namespace) -> None:
    def action(client: Client) -> None:
        for model in client.models():
            d = model["defaults"]
            print(
                f"{model['id']:<18} {model['variant']:<9} image {model['image_input']:<8} "
                f"{d['size']:>9} {d['num_frames']:>3} frames {d['num_inference_steps']:>2} steps  "
                f"workers {model['live_workers']}, queued {model['queued']}"
            )

    call(args, action)
