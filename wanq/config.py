"""What a `wanq` command is configured by: the service's `Settings` from WANQ_ variables (with the engine flags
of `wanq worker` / `wanq generate` laid over them), or for the client commands, `ClientSettings`."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import EngineSettings, Settings

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """The client commands' side (`wanq submit`, `wanq webhooks ...`): which server, with which key. The service's
    `Settings` never sees these."""

    model_config = SettingsConfigDict(env_prefix="WANQ_", extra="ignore", use_attribute_docstrings=True)

    url: str = DEFAULT_URL
    """The wanq server (WANQ_URL); `--url` wins."""
    api_key: SecretStr | None = None
    """The API key sent as `Authorization: Bearer` (WANQ_API_KEY); `--api-key` wins."""


ENGINE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--device", dict(help="cuda, cuda:N, cpu or auto")),
    ("--dtype", dict(choices=["auto", "bf16", "fp16", "fp32"])),
    ("--attention-backend", dict(help="a diffusers attention backend (native, _native_cudnn, flash, ...)")),
    ("--compile", dict(action="store_true", default=None, help="regional compile of the repeated transformer blocks")),
    ("--warmup", dict(action="store_true", default=None, help="one small generation before taking jobs")),
    ("--offload", dict(choices=["none", "model", "group", "sequential"])),
    ("--text-encoder-cpu-offload", dict(action="store_true", default=None)),
    ("--vae-cpu-offload", dict(action="store_true", default=None)),
    ("--pin-cpu-memory", dict(action="store_true", default=None)),
    ("--vae-tiling", dict(action="store_true", default=None)),
    ("--num-gpus", dict(type=int)),
    ("--ulysses-degree", dict(type=int)),
    ("--ring-degree", dict(type=int)),
    ("--cfg-parallel", dict(action="store_true", default=None)),
    ("--cache", dict(choices=["none", "fbcache", "taylorseer"])),
    ("--cache-threshold", dict(type=float)),
    ("--cache-interval", dict(type=int)),
]
"""Each flag sets the `EngineSettings` field of its name (`--num-gpus` -> `num_gpus`, i.e. WANQ_ENGINE_NUM_GPUS)."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("wanq: invalid configuration (WANQ_* variables):\n" + "\n".join(lines)) from None


def load_client_settings() -> ClientSettings:
    try:
        return ClientSettings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("wanq: invalid configuration (WANQ_* variables):\n" + "\n".join(lines)) from None


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (each also a WANQ_ENGINE_* setting)")
    for flag, kwargs in ENGINE_FLAGS:
        group.add_argument(flag, **kwargs)


def settings_with_engine_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """`settings` with the engine flags that were given laid over its engine group (a flag wins over WANQ_ENGINE_*)."""
    fields = [flag[2:].replace("-", "_") for flag, _ in ENGINE_FLAGS]
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    if not overrides:
        return settings
    engine = EngineSettings.model_validate({**settings.engine.model_dump(), **overrides})
    return settings.model_copy(update={"engine": engine})
