"""Structured JSON logs: one object per line, with job_id, tenant and model when a line concerns a job.

Secrets never reach a log line: Authorization headers are not logged, and `redact` masks anything
that looks like an API key or a webhook secret before it is written.

Job fields come from a context: code that works on a job calls `enter_job(...)` first and
`leave_job(token)` after, and every line logged between (Celery's own included) carries job_id,
tenant and model. `bind(...)` sets fields for the whole process (a worker's model).
"""

from __future__ import annotations

import contextvars
import importlib
import json
import logging
import re
import sys
import time
import warnings
from typing import Any

_SECRET = re.compile(r"(wq_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}|Bearer\s+\S+)", re.ASCII)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: m.group(0)[:6] + "…redacted", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool)) or value is None else redact(str(value))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("wanq_log_job", default=None)
_process_fields: dict[str, Any] = {}


def enter_job(job_id: str, tenant: str | None, model: str | None) -> contextvars.Token[dict[str, Any] | None]:
    """From here on (in this thread) every line carries the job's id, tenant and model; undo with `leave_job`."""
    return _job.set({"job_id": job_id, "tenant": tenant, "model": model})


def leave_job(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _job.reset(token)


def bind(**fields: Any) -> None:
    """Fields every line of this process carries unless the line sets them itself."""
    _process_fields.update(fields)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_process_fields, **(_job.get() or {})}.items():
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


# What the libraries say at every start that a user of wanq can do nothing about: (logger, start of the message).
_NOT_THE_USERS_BUSINESS = (
    # torchao's optional compiled kernels (MXFP8, CUTLASS sm90a) are built for another Python or CUDA than the wheel
    # runs on; wanq's FP8 path (worker/fp8.py) ends in torch's own `_scaled_mm`, not in them.
    ("torchao", re.compile(r"Failed to load .*torchao/_C")),
    # torchao's int8 matmul kernels need Triton; wanq never calls them (no Triton on CPU machines, the GPU images have it).
    ("torchao.kernel.intmm", re.compile(r"Warning: Detected no triton")),
    # torchao registers its enums in a way torch now deprecates: a notice for torchao's maintainers.
    (
        "torch.utils._pytree",
        re.compile(r"<enum '\w+'> is an Enum subclass and is now natively supported by torch.compile", re.ASCII),
    ),
    # The same torchao build: diffusers cannot read torchao-serialized checkpoints, which wanq never loads (it
    # quantizes at load time).
    ("diffusers.quantizers.torchao.torchao_quantizer", re.compile(r"Unable to import `torchao` Tensor objects")),
    # Without torchvision, transformers uses the PIL image processor, which gives the image-to-video pipelines the same
    # input; torchvision would add a large download for nothing.
    ("transformers.utils.import_utils", re.compile(r"`CLIPImageProcessor` requires torchvision")),
)


class NotTheUsersBusiness(logging.Filter):
    """Drops the lines of `_NOT_THE_USERS_BUSINESS`; every other line of the same loggers still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and pattern.match(record.getMessage()) for name, pattern in _NOT_THE_USERS_BUSINESS)


def _ignore_warnings() -> None:
    # wanq's LoRA slots (worker/lora_slots.py) put several adapters into each transformer on purpose.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", module="peft")
    # Celery warns a worker run as root that pickled messages could run code: wanq's Celery accepts JSON only
    # (shared/queue.py), and the images run the worker as root for the GPU device files.
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges", module="celery")


def configure(level: str | int = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(NotTheUsersBusiness())
    _ignore_warnings()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    route_third_party()


# Libraries that write to stderr past the logging configuration: each its own handler and format, and tqdm bars.
_OWN_HANDLERS = ("transformers", "diffusers", "torch", "torchao", "huggingface_hub")


def route_third_party(*, import_them: bool = False) -> None:
    """Everything the libraries say goes through the JSON handler: `warnings.warn` becomes a log line (logger
    `py.warnings`), the loggers that bring their own stderr handler propagate to it instead, and no progress bar is
    drawn. Their handlers come with their import: `import_them` imports their logging first (the worker and
    `wanq generate` do, before the rest of torch, transformers and diffusers talks), and worker.startup calls this
    again before loading a model."""
    logging.captureWarnings(True)
    if import_them:
        for module in ("torch", "transformers.utils.logging", "diffusers.utils.logging", "huggingface_hub.utils"):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    for name in _OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        library = sys.modules.get(module)
        if library is not None:
            library.disable_default_handler()  # its own handler, made on first use: made and taken off now
            library.enable_propagation()
            library.disable_progress_bar()
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
