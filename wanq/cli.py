"""The `wanq` command: run the API, a worker, the engine alone, a tiny model, or the whole dev stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.settings import EngineSettings, Settings

ENGINE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--device", dict(help="cuda, cuda:N, cpu or auto")),
    ("--dtype", dict(choices=["auto", "bf16", "fp16", "fp32"])),
    ("--attention-backend", dict(help="a diffusers attention backend (native, _native_cudnn, flash, ...) or fa4")),
    ("--quantization", dict(choices=["none", "fp8"], help="fp8: FP8 rowwise linears in the transformer blocks (lossy)")),
    ("--compile", dict(action="store_true", default=None, help="regional compile of the repeated transformer blocks")),
    ("--warmup", dict(action="store_true", default=None, help="one small generation before taking jobs")),
    ("--offload", dict(choices=["none", "model", "group", "sequential"])),
    ("--text-encoder-cpu-offload", dict(action="store_true", default=None)),
    ("--vae-cpu-offload", dict(action="store_true", default=None)),
    ("--pin-cpu-memory", dict(action="store_true", default=None)),
    ("--vae-tiling", dict(action="store_true", default=None)),
    ("--vae-path", dict(help="a VAE used instead of the model's: a diffusers directory or a weights file")),
    ("--vae-compile", dict(action="store_true", default=None, help="torch.compile the VAE decoder")),
    ("--vae-channels-last", dict(action="store_true", default=None, help="channels-last VAE weights (cuDNN conv3d)")),
    ("--cudnn-benchmark", dict(action="store_true", default=None, help="let cuDNN time its conv algorithms per shape")),
    ("--num-gpus", dict(type=int)),
    ("--ulysses-degree", dict(type=int)),
    ("--ring-degree", dict(type=int)),
    ("--cfg-parallel", dict(action="store_true", default=None)),
    ("--cache", dict(choices=["none", "dbcache"], help="default step cache of jobs that do not say (cache-dit; lossy)")),
    ("--cache-fn", dict(type=int, help="dbcache: first blocks always computed (1)")),
    ("--cache-bn", dict(type=int, help="dbcache: last blocks always computed (0)")),
    ("--cache-warmup", dict(type=int, help="dbcache: first steps always computed (4)")),
    ("--cache-rdt", dict(type=float, help="dbcache: residual-difference threshold (0.24)")),
    ("--cache-mc", dict(type=int, help="dbcache: most cached steps in a row, -1 = no limit (3)")),
    ("--cache-taylorseer", dict(action="store_true", default=None, help="dbcache: TaylorSeer calibrator")),
    ("--cache-ts-order", dict(type=int, help="dbcache: TaylorSeer order, 1 or 2 (1)")),
]


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (each also a WANQ_ENGINE_* setting)")
    for flag, kwargs in ENGINE_FLAGS:
        group.add_argument(flag, **kwargs)


def _settings_with_engine_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    overrides = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _ in ENGINE_FLAGS
        if getattr(args, flag[2:].replace("-", "_")) is not None
    }
    if not overrides:
        return settings
    engine = EngineSettings.model_validate({**settings.engine.model_dump(), **overrides})
    return settings.model_copy(update={"engine": engine})


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("wanq: invalid configuration (WANQ_* variables):\n" + "\n".join(lines)) from None


def _configure_logging(level: str) -> None:
    from shared.logs import configure

    configure(level)


# Commands ----------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app

    settings = load_settings()
    _configure_logging(args.loglevel)
    host = args.host or settings.api.host
    port = args.port if args.port is not None else settings.api.port
    workers = args.workers or settings.api.workers
    if workers > 1:
        # Each worker process builds its app from the same settings, through api_factory.
        os.environ[_API_LOGLEVEL_ENV] = args.loglevel
    uvicorn.run(
        create_app(settings) if workers == 1 else "wanq.cli:api_factory",
        factory=workers > 1,
        workers=workers,
        host=host,
        port=port,
        log_level=args.loglevel.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn's own lines go through the JSON handler too
    )


_API_LOGLEVEL_ENV = "_WANQ_API_LOGLEVEL"


def api_factory() -> Any:
    """The entry point of each process of `wanq api --workers N` (uvicorn imports it by name)."""
    from api.app import create_app

    _configure_logging(os.environ.get(_API_LOGLEVEL_ENV, "INFO"))
    return create_app(load_settings())


def cmd_worker(args: argparse.Namespace) -> None:
    from worker import accel, probe
    from worker.service import run

    settings = _settings_with_engine_flags(load_settings(), args)
    _configure_logging(args.loglevel)
    try:
        accel.validate(settings.engine)
    except ValueError as exc:
        raise SystemExit(f"wanq worker: {exc}") from None
    problems = probe.environment_problems_in_child(settings.engine)
    if problems:
        raise SystemExit("wanq worker: engine options this machine cannot run: " + "; ".join(problems))
    if args.model not in settings.catalog() and args.model not in settings.models:
        # A worker may serve a model the API is not configured for only if WANQ_MODELS says so.
        settings = settings.model_copy(update={"models": [*settings.models, args.model]})
    run(settings, args.model, Path(args.model_path), loglevel=args.loglevel)


def cmd_generate(args: argparse.Namespace) -> None:
    from PIL import Image

    from shared.catalog import PRESETS
    from shared.errors import WanqError
    from shared.specs import NUMBER_FIELDS, VideoRequest, resolve_spec
    from worker import export
    from worker.engine import detect_variant
    from worker.startup import start_engine

    settings = _settings_with_engine_flags(load_settings(), args)
    _configure_logging(args.loglevel)
    model_path = Path(args.model_path)
    variant = detect_variant(model_path)
    model_id = args.model or next(m for m, s in PRESETS.items() if s.variant == variant and s.tiny == args.tiny)
    catalog = {model_id: PRESETS[model_id]}
    image = Image.open(args.image).convert("RGB") if args.image else None
    fields = {k: getattr(args, k) for k in ("size", *NUMBER_FIELDS, "negative_prompt") if getattr(args, k) is not None}
    try:
        spec = resolve_spec(
            VideoRequest(prompt=args.prompt, model=model_id, **fields),
            catalog,
            model_id,
            settings.jobs,
            has_image=image is not None,
        )
    except WanqError as exc:
        raise SystemExit(f"wanq generate: {exc.message}") from None
    if image is not None:
        from shared.images import fit_to

        image = fit_to(image, spec.width, spec.height)
    try:
        engine = start_engine(model_path, settings.engine, model_id=model_id)
    except ValueError as exc:
        raise SystemExit(f"wanq generate: {exc}") from None
    started = time.perf_counter()
    result = engine.generate(spec, image, on_step=lambda i, n: print(f"\rstep {i}/{n}", end="", file=sys.stderr))
    print(file=sys.stderr)
    out = Path(args.output)
    t0 = time.perf_counter()
    export.write_mp4(result.frames, spec.fps, out)
    result.timings["encoding_video"] = time.perf_counter() - t0
    result.timings["total"] = time.perf_counter() - started
    print(
        json.dumps(
            {
                "output": str(out),
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
    results = [healthy(settings, model) for model in ([args.model] if args.model else settings.models)]
    print("; ".join(detail for _, detail in results))
    raise SystemExit(0 if any(ok for ok, _ in results) else 1)


def cmd_worker_drain(args: argparse.Namespace) -> None:
    from worker.control import drain

    nodes = drain(load_settings(), args.model)
    print(f"stopped consuming: {', '.join(nodes) or 'no worker of ' + args.model + ' on this host'}")


def cmd_fetch_model(args: argparse.Namespace) -> None:
    from worker.control import fetch_model

    try:
        print(fetch_model(args.model, Path(args.dir), revision=args.revision))
    except ValueError as exc:
        raise SystemExit(f"wanq fetch-model: {exc}") from None


def cmd_webhooks(args: argparse.Namespace) -> None:
    from wanq.webhookd import run

    settings = load_settings()
    _configure_logging(args.loglevel)
    run(settings)


def cmd_dev(args: argparse.Namespace) -> None:
    from wanq.dev import run_dev

    run_dev(Path(args.workdir), api_port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanq", description="Self-hosted Wan2.2 video generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="run the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="API processes sharing the port (WANQ_API_WORKERS, default 1)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a GPU worker for one model")
    p.add_argument("--model", required=True, help="model id it serves (its queue is wanq.<model>)")
    p.add_argument("--model-path", required=True, help="a diffusers Wan2.2 pipeline directory")
    p.add_argument("--loglevel", default="INFO")
    _add_engine_flags(p)
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
    p.add_argument("--model-path", required=True)
    p.add_argument("--model", help="model id whose defaults apply (default: by the directory's variant)")
    p.add_argument("--tiny", action="store_true", help="use the tiny model defaults (64x64, 17 frames, 4 steps)")
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
    p.add_argument("-o", "--output", default="out.mp4")
    p.add_argument("--loglevel", default="WARNING")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("tiny-model", help="write a random-weight few-layer Wan2.2 pipeline")
    p.add_argument("dir")
    p.add_argument("--variant", required=True, choices=["t2v-a14b", "i2v-a14b", "ti2v-5b"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    from wanq import webhooks_cli

    p = sub.add_parser("webhooks", help="deliver webhooks (alone: the delivery process); subcommands manage the endpoint")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_webhooks)
    webhooks_cli.add_commands(p)

    p = sub.add_parser("dev", help="the whole stack in the foreground (Redis, S3, API, tiny workers)")
    p.add_argument("--workdir", default=".wanq/dev")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dev)

    from wanq import admin_cli, client_cli

    client_cli.add_commands(sub)
    admin_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    args.func(args)
