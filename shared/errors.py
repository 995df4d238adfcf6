"""wanq's error types. Each has a stable `code` (on the wire and in job records) and an HTTP status.

The API maps them to responses in one place (api/errors.py); workers record them on failed jobs.
A subclass names its code and status in its class line: `class NotFound(WanqError, code=..., http_status=404)`.
"""

from __future__ import annotations

from typing import Any


class WanqError(Exception):
    code = "internal_error"
    http_status = 500

    def __init_subclass__(cls, *, code: str | None = None, http_status: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# Refusals of a request (HTTP)
class InvalidRequest(WanqError, code="invalid_request", http_status=400): ...


class PayloadTooLarge(InvalidRequest, http_status=413): ...


class ModelNotAvailable(WanqError, code="model_not_available", http_status=400): ...


class Unauthorized(WanqError, code="unauthorized", http_status=401): ...


class Forbidden(WanqError, code="permission_denied", http_status=403): ...


class NotFound(WanqError, code="not_found", http_status=404): ...


class Conflict(WanqError, code="conflict", http_status=409): ...


class Gone(WanqError, code="expired", http_status=410): ...


class IdempotencyMismatch(WanqError, code="idempotency_key_reused", http_status=422): ...


class RateLimited(WanqError, code="rate_limited", http_status=429):
    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(WanqError, code="service_unavailable", http_status=503): ...


class StorageUnavailable(WanqError, code="storage_unavailable", http_status=503): ...


# How a job ended (recorded on the job, not raised over HTTP)
class JobCanceled(WanqError, code="canceled"): ...


class OutOfMemory(WanqError, code="out_of_memory"): ...


class JobTimeout(WanqError, code="timeout"): ...


class ClaimLost(WanqError, code="claim_lost"):
    """The run's claim on its job is gone: the job was requeued (its worker looked dead) and another run
    replaced this one. The run stops and touches nothing of the job's."""
