"""What a `wanq` command is configured by, and how it says that something it was given is wrong.

- `Settings` (the service's, from WANQ_ variables), with the engine flags of `wanq worker` / `wanq generate` laid
  over them; `ClientSettings` for the client commands (which server, which key).
- `DevStack`: where a running `wanq dev` lives (.wanq/dev.json in the directory it runs in), so that commands
  run there (`wanq keys ...`) use its Redis.
- `UsageError`: a mistake in what the command was given (a flag, a WANQ_ variable, a path). `wanq` prints its one
  line, which says what to change, and exits with status 2, as argparse does for a bad command line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.settings import EngineSettings, Settings

DEFAULT_URL = "http://127.0.0.1:8000"
DEV_STACK_FILE = Path(".wanq") / "dev.json"
"""Relative to the working directory: `wanq dev` writes it there, commands run there read it."""


class UsageError(SystemExit):
    """One line saying what to change; exit status 2. A SystemExit, so that nothing on the way catches it as an
    error of its own; `reporting_usage_errors` (around each entry point) prints the line."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextmanager
def reporting_usage_errors() -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        print(exc.message, file=sys.stderr)
        raise


@contextmanager
def reaching_redis(command: str, url: str) -> Iterator[None]:
    """A Redis at `url` that does not answer, or refuses the credentials, ends `wanq COMMAND` in one line saying what
    to do (its password never shown)."""
    import redis

    try:
        yield
    except redis.AuthenticationError as exc:
        raise UsageError(
            f"wanq {command}: Redis at {shown_redis_url(url)} refused the credentials ({exc}); check WANQ_REDIS_URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError):
        raise UsageError(
            f"wanq {command}: no Redis answers at {shown_redis_url(url)}; start it, run `wanq dev` here, or set WANQ_REDIS_URL"
        ) from None


def shown_redis_url(url: str) -> str:
    """The URL without its password (a deployment's WANQ_REDIS_URL carries one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class ClientSettings(BaseSettings):
    """The client commands' side (`wanq submit`, `wanq webhooks ...`): which server, with which key. The service's
    `Settings` never sees these."""

    model_config = SettingsConfigDict(env_prefix="WANQ_", extra="ignore", use_attribute_docstrings=True)

    url: str = DEFAULT_URL
    """The wanq server (WANQ_URL); `--url` wins."""
    api_key: SecretStr | None = None
    """The API key sent as `Authorization: Bearer` (WANQ_API_KEY); `--api-key` wins."""


def load_settings() -> Settings:
    return _load(Settings)


def load_client_settings() -> ClientSettings:
    return _load(ClientSettings)


_S = TypeVar("_S", bound=BaseSettings)


def _load(cls: type[_S]) -> _S:
    try:
        return cls()
    except ValidationError as exc:
        raise UsageError("wanq: " + "; ".join(_explain(cls, e) for e in exc.errors())) from None
    except SettingsError as exc:
        # pydantic-settings could not parse a list or object value as JSON; it names the field, not the variable.
        field = re.search(r'field "(\w+)"', str(exc), re.ASCII)
        name = field.group(1) if field else ""
        where = f"a WANQ_{name.upper()}_* variable" if _is_group(cls, name) else f"WANQ_{name.upper()}"
        raise UsageError(
            f"wanq: {where} is not valid JSON ({exc.__cause__ or exc}); lists and objects are written as JSON, "
            f"e.g. WANQ_MODELS='[\"wan2.2-ti2v-5b\"]'"
        ) from None


def _is_group(cls: type[BaseSettings], name: str) -> bool:
    field = cls.model_fields.get(name)
    return field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _explain(cls: type[BaseSettings], error: ErrorDetails) -> str:
    """`WANQ_ENGINE_OFFLOAD='everything' is invalid: input should be ...`; a validator's own message (which names
    the variable and what to do) as it is. Values of the auth group are never shown: they may be keys."""
    message = error["msg"].removeprefix("Value error, ")
    if "WANQ_" in message:
        return message
    loc = [str(part) for part in error["loc"]]
    depth = 2 if _is_group(cls, loc[0]) else 1
    name = "WANQ_" + "_".join(part.upper() for part in loc[:depth]) + "".join(f"[{part}]" for part in loc[depth:])
    value = error.get("input")
    shown = f"={value!r}" if loc[0] != "auth" and isinstance(value, str | int | float) else ""
    return f"{name}{shown} is invalid: {message[:1].lower()}{message[1:]}"


# Engine flags ------------------------------------------------------------------------------------

ENGINE_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--device", dict(help="cuda, cuda:N, cpu or auto")),
    ("--dtype", dict(choices=["auto", "bf16", "fp16", "fp32"])),
    ("--attention-backend", dict(help="a diffusers attention backend (native, _native_cudnn, flash, ...), fa4, fa3 or fa3-fp8")),
    ("--quantization", dict(choices=["none", "fp8"], help="fp8: FP8 rowwise linears in the transformer blocks (lossy)")),
    ("--compile", dict(action="store_true", default=None, help="regional compile of the repeated transformer blocks")),
    ("--warmup", dict(action="store_true", default=None, help="one small generation before taking jobs")),
    ("--offload", dict(choices=["none", "model", "group", "sequential"])),
    ("--text-encoder-cpu-offload", dict(action="store_true", default=None)),
    ("--vae-cpu-offload", dict(action="store_true", default=None)),
    ("--pin-cpu-memory", dict(action="store_true", default=None)),
    ("--vae-tiling", dict(action="store_true", default=None)),
    ("--vae-path", dict(help="a VAE used instead of the model's: a diffusers directory or a weights file")),
    ("--fuse-lora", dict(help="a LoRA fused into the weights at start: every job runs with it, at no cost per step")),
    ("--fuse-lora-2", dict(help="T2V-A14B: the low-noise expert's own LoRA file to fuse (default: --fuse-lora's)")),
    ("--fuse-lora-strength", dict(type=float, help="the strength the fused LoRAs are fused at (1.0)")),
    ("--interpolator-path", dict(help="RIFE IFNet v4.x weights: jobs may ask for interpolate 2 or 4")),
    ("--upscaler-path", dict(help="Real-ESRGAN-class weights: jobs may ask for upscale by its scale")),
    ("--vae-compile", dict(action="store_true", default=None, help="torch.compile the VAE decoder")),
    (
        "--vae-channels-last",
        dict(
            action=argparse.BooleanOptionalAction,
            default=None,
            help="channels-last VAE weights for cuDNN's conv3d (default: on a GPU)",
        ),
    ),
    (
        "--vae-fused",
        dict(
            action=argparse.BooleanOptionalAction,
            default=None,
            help="the VAE decoder's norm + SiLU as one kernel (default: on a GPU without VAE offload hooks)",
        ),
    ),
    ("--cudnn-benchmark", dict(action="store_true", default=None, help="let cuDNN time its conv algorithms per shape")),
    ("--preview-vae-path", dict(help="a TAEHV checkpoint: the tiny decoder of previews and draft decodes")),
    ("--preview-every", dict(type=int, help="a preview every N steps for jobs that do not say (0: none)")),
    ("--num-gpus", dict(type=int)),
    ("--ulysses-degree", dict(type=int)),
    ("--ring-degree", dict(type=int)),
    ("--cfg-parallel", dict(action="store_true", default=None)),
    (
        "--fused-ffn",
        dict(
            action=argparse.BooleanOptionalAction,
            default=None,
            help="the FFN's product, bias and GELU as one product (default: on a GPU, without fp8 or sequential offload)",
        ),
    ),
    ("--cfg-batch", dict(action="store_true", default=None, help="one GPU: both CFG branches as one batch-2 forward")),
    ("--cache", dict(choices=["none", "dbcache"], help="default step cache of jobs that do not say (cache-dit; lossy)")),
    ("--cache-fn", dict(type=int, help="dbcache: first blocks always computed (1)")),
    ("--cache-bn", dict(type=int, help="dbcache: last blocks always computed (0)")),
    ("--cache-warmup", dict(type=int, help="dbcache: first steps always computed (4)")),
    ("--cache-rdt", dict(type=float, help="dbcache: residual-difference threshold (0.24)")),
    ("--cache-mc", dict(type=int, help="dbcache: most cached steps in a row, -1 = no limit (3)")),
    ("--cache-taylorseer", dict(action="store_true", default=None, help="dbcache: TaylorSeer calibrator")),
    ("--cache-ts-order", dict(type=int, help="dbcache: TaylorSeer order, 1 or 2 (1)")),
]
"""Each flag sets the `EngineSettings` field of its name (`--num-gpus` -> `num_gpus`, i.e. WANQ_ENGINE_NUM_GPUS)."""


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
    try:
        engine = EngineSettings.model_validate({**settings.engine.model_dump(), **overrides})
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = str(e["loc"][0]) if e["loc"] else ""
            flag = "--" + name.replace("_", "-")
            message = e["msg"].removeprefix("Value error, ")
            problems.append(
                f"{flag} {overrides[name]} is invalid: {message[:1].lower()}{message[1:]}" if name in overrides else message
            )
        raise UsageError("wanq: " + "; ".join(problems)) from None
    return settings.model_copy(update={"engine": engine})


# The dev stack's address -------------------------------------------------------------------------


class DevStack(BaseModel):
    """Where a running `wanq dev` lives. Written to DEV_STACK_FILE while it runs, removed when it stops."""

    redis_url: str
    api_url: str
    s3_url: str
    pid: int

    def write(self, path: Path = DEV_STACK_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(self.model_dump_json(indent=2) + "\n")
        partial.replace(path)  # whole or not at all, for a command reading it meanwhile

    @classmethod
    def read(cls, path: Path = DEV_STACK_FILE) -> DevStack | None:
        """The `wanq dev` running here, or None: no file, an unreadable one, or one whose process has ended."""
        try:
            stack = cls.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(stack.pid, 0)
        except ProcessLookupError:
            return None  # left behind by a `wanq dev` that was killed
        except PermissionError:
            pass  # alive, someone else's
        return stack
