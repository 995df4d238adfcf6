"""Structured JSON logs: one object per line, with job_id, tenant and model when a line concerns a job.

Secrets never reach a log line: Authorization headers are not logged, and `redact` masks anything
that looks like an API key or a webhook secret before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET = re.compile(r"(wq_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}|Bearer\s+\S+)")
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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
