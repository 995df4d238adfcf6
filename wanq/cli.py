"""The `wanq` command: one parser for every subcommand. The service's processes (api, worker, dispatcher,
webhook-delivery, dev) and the worker's tools are here; the client's commands are in client_cli.py and
webhooks_cli.py, the key commands in keys_cli.py.

Exit status: 0 done; 1 the work failed (a job, a refusal by the server, an unhealthy worker); 2 the command
or its configuration is wrong, said in one line that names what to change (`UsageError`, wanq/config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.catalog import PRESETS
from shared.settings import LOG_LEVELS, Settings
from wanq import client_cli, keys_cli, webhooks_cli
from wanq.config import (
    UsageError,
    add_engine_flags,
    load_settings,
    reaching_redis,
    reporting_usage_errors,
    settings_with_engine_flags,
)

if TYPE_CHECKING:
    from worker.pipeline_dir import PipelineShape


def _configure_logging(level: str, *, torch_side: bool = False) -> None:
    from shared.logs import configure, route_third_party

    configure(level)
    if torch_side:
        route_third_party(import_them=True)


def _known_model(command: str, model: str) -> str:
    if model not in PRESETS:
        raise UsageError(f"wanq {command}: unknown model {model!r}; known: {', '.join(sorted(PRESETS))}")
    return model


def _engine_problems(command: str, settings: Settings) -> None:
    """Refuses engine options this machine cannot run (the GPUs asked for, the packages): all that needs no weights,
    so before --model-path is fetched (worker/probe.py; torch is imported in a child, if at all)."""
    from worker import probe

    problems = probe.environment_problems_in_child(settings.engine)
    if problems:
        raise UsageError(f"wanq {command}: engine options this machine cannot run: " + "; ".join(problems))


def _pipeline_dir(command: str, path: str, model: str | None = None) -> tuple[Path, PipelineShape]:
    """The pipeline directory --model-path names (a directory, or a Hugging Face repository id resolved through its
    cache) and its shape, checked to be a Wan2.2 pipeline, the one `model` means, from its configs alone before a
    repository's weights are fetched (worker/pipeline_dir.py; no torch yet)."""
    from worker.pipeline_dir import PipelineDirError, check, configs, inspect, resolve, variant_of

    try:
        described = configs(path)
        shape = check(model, described) if model is not None else inspect(described)
        variant_of(shape, described)
        directory = resolve(path, say=lambda line: print(f"wanq {command}: {line}", file=sys.stderr))
    except PipelineDirError as exc:
        raise UsageError(f"wanq {command}: {exc}") from None
    return directory, shape


def _output_file(args: argparse.Namespace) -> Path:
    """Where `wanq generate` writes its MP4: -o, or SGLang's --output-path DIR and --output-file-name NAME (a name
    alone goes in the working directory; in a folder alone, the prompt names it). The folder is made and tried now,
    so that a path that cannot be written is refused before minutes of generation."""
    if args.output is not None and (args.output_path is not None or args.output_file_name is not None):
        raise UsageError("wanq generate: give -o FILE, or --output-path DIR / --output-file-name NAME, not both")
    if args.output is not None:
        out = Path(args.output)
    elif args.output_path is None and args.output_file_name is None:
        out = Path("out.mp4")
    else:
        name = args.output_file_name or re.sub(r"[^\w.-]+", "_", args.prompt, flags=re.ASCII).strip("_.")[:100] or "video"
        out = Path(args.output_path or ".") / name
        if not out.suffix:
            out = out.with_suffix(".mp4")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise IsADirectoryError(f"{out} is a folder")
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(
            f"wanq generate: cannot write {str(out)!r} (a file stands where its folder would be): give -o a file in a "
            "folder you can write"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"wanq generate: cannot write {str(out)!r} ({exc.strerror or exc}): give -o a file in a folder you can write"
        ) from None
    return out


# Commands ----------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app

    settings = load_settings()
    level = args.loglevel or settings.api.log_level
    _configure_logging(level)
    host = args.host or settings.api.host
    port = args.port if args.port is not None else settings.api.port
    workers = args.workers or settings.api.workers
    if workers > 1:
        # uvicorn starts each process from the import string, and api_factory builds its app from the environment,
        # as this process did; the one flag that matters to them goes along the same way.
        os.environ["WANQ_API_LOG_LEVEL"] = level
    uvicorn.run(
        create_app(settings) if workers == 1 else "wanq.cli:api_factory",
        factory=workers > 1,
        workers=workers,
        host=host,
        port=port,
        log_level=level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn's own lines go through the JSON handler too
    )


def api_factory() -> Any:
    """The entry point of each process of `wanq api --workers N` (uvicorn imports it by name)."""
    from api.app import create_app

    settings = load_settings()
    _configure_logging(settings.api.log_level)
    return create_app(settings)


def cmd_worker(args: argparse.Namespace) -> None:
    # 1. Check what was given and what this machine has, then the pipeline's configs, then fetch it: nothing that
    # needs the weights before everything that does not
    settings = settings_with_engine_flags(load_settings(), args)
    model = _known_model("worker", args.model)
    _engine_problems("worker", settings)
    model_path, _ = _pipeline_dir("worker", args.model_path, model)
    _configure_logging(args.loglevel, torch_side=True)  # torch and diffusers then say everything as JSON lines

    from worker import lora_slots
    from worker.service import run

    try:  # the engine options were checked by _engine_problems (worker/probe.py)
        lora_slots.check_settings(settings.engine, settings.loras)
    except ValueError as exc:
        raise UsageError(f"wanq worker: {exc}") from None
    if model not in settings.models:
        # A known model the API is not configured for: the worker serves it all the same.
        settings = settings.model_copy(update={"models": [*settings.models, model]})

    # 2. Run
    run(settings, model, model_path, loglevel=args.loglevel)


def cmd_generate(args: argparse.Namespace) -> None:
    # 1. Check what was given, where the video goes and what this machine has, then the pipeline's configs, then
    # fetch it: nothing that needs the weights before everything that does not
    settings = settings_with_engine_flags(load_settings(), args)
    if args.model is not None:
        _known_model("generate", args.model)
    if args.image and not Path(args.image).is_file():
        raise UsageError(f"wanq generate: --image {args.image!r}: no such file")
    out = _output_file(args)
    _engine_problems("generate", settings)
    model_path, shape = _pipeline_dir("generate", args.model_path, args.model)
    from worker.pipeline_dir import model_ids

    _configure_logging(args.loglevel, torch_side=True)  # torch and diffusers then say everything as JSON lines
    from PIL import Image

    from shared.errors import WanqError
    from shared.specs import NUMBER_FIELDS, VideoRequest, resolve_spec
    from worker import export
    from worker.startup import start_engine

    # 2. Resolve the request as the service would. A tiny pipeline (`wanq tiny-model`) takes the tiny defaults (64x64,
    # 17 frames, 4 steps) unless --model says otherwise: the real ones would take minutes on a CPU.
    assert shape.variant is not None  # _pipeline_dir refuses the others
    model_id = args.model or model_ids(shape.variant, tiny=args.tiny or shape.tiny)[0]
    catalog = {model_id: PRESETS[model_id]}
    image = Image.open(args.image).convert("RGB") if args.image else None
    fields = {k: getattr(args, k, None) for k in ("size", *NUMBER_FIELDS, "negative_prompt", "decoder")}
    fields = {k: v for k, v in fields.items() if v is not None}  # fields `wanq generate` has no flag for are absent
    try:
        spec = resolve_spec(
            VideoRequest(prompt=args.prompt, model=model_id, **fields),
            catalog,
            model_id,
            settings.jobs,
            has_image=image is not None,
        )
    except WanqError as exc:
        raise UsageError(f"wanq generate: {exc.message}") from None
    if image is not None:
        from shared.images import fit_to

        image = fit_to(image, spec.width, spec.height)

    # 3. Load, generate, write the MP4
    try:
        engine = start_engine(model_path, settings.engine, model_id=model_id)
    except ValueError as exc:
        raise UsageError(f"wanq generate: {exc}") from None
    started = time.perf_counter()
    # On a terminal one line, redrawn; in a log one line per step.
    tty = sys.stderr.isatty()
    previews: list[str] = []

    def keep_preview(step: int, mp4: Path) -> None:
        # --preview-every: each preview beside the output (the engine deletes its own copy when the job ends)
        kept = out.with_name(f"{out.stem}.preview_step{step:03d}.mp4")
        shutil.copyfile(mp4, kept)
        previews.append(str(kept))
        print(f"\rpreview after step {step}: {kept}" if tty else f"preview after step {step}: {kept}", file=sys.stderr)

    result = engine.generate(
        spec,
        image,
        on_step=lambda i, n: print(f"\rstep {i}/{n}" if tty else f"step {i}/{n}", end="" if tty else "\n", file=sys.stderr),
        on_preview=keep_preview,
    )
    if tty:
        print(file=sys.stderr)
    t0 = time.perf_counter()
    export.write_mp4(result.frames, spec.fps, out)
    result.timings["encoding_video"] = time.perf_counter() - t0
    result.timings["total"] = time.perf_counter() - started
    print(
        json.dumps(
            {
                "output": str(out),
                "previews": previews,
                "load_s": round(engine.load_time_s, 3),
                "timings": {k: round(v, 3) for k, v in result.timings.items()},
                "spec": spec.model_dump(),
            },
            ensure_ascii=False,
        )
    )


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from worker.tiny_model import write_tiny_model

    path = write_tiny_model(Path(args.dir), args.variant, seed=args.seed)
    print(path)


def cmd_worker_health(args: argparse.Namespace) -> None:
    from worker.control import healthy

    settings = load_settings()
    models = [_known_model("worker-health", args.model)] if args.model else settings.models
    with reaching_redis("worker-health", settings.redis.url):
        results = [healthy(settings, model) for model in models]
    print("; ".join(detail for _, detail in results))
    raise SystemExit(0 if any(ok for ok, _ in results) else 1)


def cmd_worker_drain(args: argparse.Namespace) -> None:
    from worker.control import drain

    settings = load_settings()
    with reaching_redis("worker-drain", settings.redis.url):
        nodes = drain(settings, _known_model("worker-drain", args.model))
    print(f"stopped consuming: {', '.join(nodes) or 'no worker of ' + args.model + ' on this host'}")


def cmd_fetch_model(args: argparse.Namespace) -> None:
    from worker.control import fetch_model
    from worker.pipeline_dir import PipelineDirError

    _known_model("fetch-model", args.model)
    try:
        print(fetch_model(args.model, Path(args.dir), revision=args.revision))
    except PipelineDirError as exc:
        raise UsageError(f"wanq fetch-model: --model {args.model}: {exc}") from None


def cmd_dispatcher(args: argparse.Namespace) -> None:
    from api.daemons.dispatcher import Dispatcher

    settings = load_settings()
    _configure_logging(args.loglevel)
    dispatcher = Dispatcher(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stop())
    dispatcher.run()


def cmd_webhook_delivery(args: argparse.Namespace) -> None:
    from api.daemons.webhooks import run

    settings = load_settings()
    _configure_logging(args.loglevel)
    run(settings)


def cmd_dev(args: argparse.Namespace) -> None:
    from wanq.dev import run_dev

    run_dev(Path(args.workdir), api_port=args.port)


def _add_loglevel(parser: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    parser.add_argument("--loglevel", type=str.upper, choices=LOG_LEVELS, default=default, help=help or f"default: {default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanq", description="Self-hosted Wan2.2 video generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="run the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="API processes sharing the port (WANQ_API_WORKERS, default 1)")
    _add_loglevel(p, None, help="default: WANQ_API_LOG_LEVEL, else INFO")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a GPU worker for one model")
    p.add_argument("--model", required=True, help="model id it serves (its queue is wanq.<model>)")
    p.add_argument(
        "--model-path",
        required=True,
        help="a diffusers Wan2.2 pipeline directory, or a Hugging Face repository id (Wan-AI/Wan2.2-TI2V-5B-Diffusers: "
        "its snapshot in the Hugging Face cache, downloaded on first use; HF_HUB_OFFLINE respected)",
    )
    _add_loglevel(p, "INFO")
    add_engine_flags(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("worker-health", help="exit 0 if a worker on this host has loaded its model and beats")
    p.add_argument("--model", help="only this model's workers (default: any of WANQ_MODELS)")
    p.set_defaults(func=cmd_worker_health)

    p = sub.add_parser("worker-drain", help="make this host's workers of the model stop taking jobs (preStop hook)")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_worker_drain)

    p = sub.add_parser("fetch-model", help="download a model's diffusers pipeline into a directory, unless already there")
    p.add_argument("--model", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--revision")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("generate", help="run the engine alone, no service")
    p.add_argument(
        "--model-path", required=True, help="a pipeline directory or a Hugging Face repository id (as for `wanq worker`)"
    )
    p.add_argument("--model", help="model id whose defaults apply (default: by the directory's variant)")
    p.add_argument(
        "--tiny", action="store_true", help="use the tiny model defaults (64x64, 17 frames, 4 steps; a tiny pipeline's default)"
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--image")
    p.add_argument("--size")
    p.add_argument("--seconds", type=float)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--num-inference-steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--guidance-scale-2", type=float)
    p.add_argument("--flow-shift", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--decoder", choices=["full", "tiny"], help="full: the VAE (default); tiny: a quick draft decode (--preview-vae-path)"
    )
    p.add_argument("-o", "--output", help="the MP4 to write; its folder is made (default: out.mp4)")
    p.add_argument("--output-path", metavar="DIR", help="SGLang's spelling: the folder of the MP4 (made if missing)")
    p.add_argument(
        "--output-file-name", metavar="NAME", help="SGLang's spelling: the MP4's name in --output-path (default: the prompt)"
    )
    p.add_argument("--save-output", action="store_true", help="SGLang's flag; wanq always writes the MP4")
    _add_loglevel(p, "WARNING")
    add_engine_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("tiny-model", help="write a random-weight few-layer Wan2.2 pipeline")
    p.add_argument("dir")
    p.add_argument("--variant", required=True, choices=["t2v-a14b", "i2v-a14b", "ti2v-5b"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("dispatcher", help="feed the models' worker queues from the tenants' queues, fairly")
    _add_loglevel(p, "INFO")
    p.set_defaults(func=cmd_dispatcher)

    p = sub.add_parser("webhook-delivery", help="run the webhook delivery process (signed events, retried)")
    _add_loglevel(p, "INFO")
    p.set_defaults(func=cmd_webhook_delivery)

    p = sub.add_parser("dev", help="the whole stack in the foreground (Redis, S3, API, tiny workers)")
    p.add_argument("--workdir", default=".wanq/dev")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dev)

    client_cli.add_commands(sub)
    webhooks_cli.add_commands(sub)
    keys_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
        with reporting_usage_errors():
            args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is caught below rather than at exit
    except BrokenPipeError:
        # The reader of our output went away (`wanq list | head -1`): stop quietly, as Unix tools do. Python's own
        # flush at exit would fail again on the broken pipe, so stdout goes to /dev/null; 141 is the status of a
        # tool ended by SIGPIPE (128 + 13), which the shell shows for `yes | head -1` too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None
