"""Maps wanq's errors, validation errors and an unreachable Redis onto HTTP responses, once."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import Forbidden, InvalidRequest, NotFound, RateLimited, ServiceUnavailable, Unauthorized, WanqError
from shared.redisconn import PoolExhausted

log = logging.getLogger("wanq.api")


def error_body(message: str, code: str, param: str | None = None, type_: str = "invalid_request_error") -> dict[str, object]:
    """OpenAI's error shape, so that the `openai` SDK raises its usual exceptions with our message."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_HTTP_CODES = {
    401: Unauthorized.code,
    403: Forbidden.code,
    404: NotFound.code,
    405: "method_not_allowed",
    413: InvalidRequest.code,
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WanqError)
    async def _wanq_error(request: Request, exc: WanqError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after_s)
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="wanq"'
        if exc.http_status == 503:
            headers["Retry-After"] = "5"
        type_ = "invalid_request_error" if exc.http_status < 500 else "server_error"
        return JSONResponse(error_body(exc.message, exc.code, exc.param, type_), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "request"
        value = err.get("input")
        message = f"invalid '{field}' {value!r}: {err.get('msg')}" if value is not None else f"'{field}': {err.get('msg')}"
        return JSONResponse(error_body(message, InvalidRequest.code, field), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own refusals (unknown path, wrong method, a body FastAPI could not parse) in the same shape.
        code = _HTTP_CODES.get(exc.status_code, InvalidRequest.code if exc.status_code < 500 else WanqError.code)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = _unrouted(request, exc) or str(exc.detail)
        return JSONResponse(error_body(message, code, None, type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        message = "the job store is unavailable; retry shortly"
        if isinstance(exc, PoolExhausted):  # Redis is up; this process has more requests in flight than connections
            message = f"the API is overloaded: {exc}; retry shortly"
        return JSONResponse(
            error_body(message, ServiceUnavailable.code, None, "server_error"),
            status_code=503,
            headers={"Retry-After": "2"},
        )


def _unrouted(request: Request, exc: HTTPException) -> str | None:
    """What an OpenAI SDK user calling a route wanq lacks is told, instead of a bare 'Not Found' (None: not that)."""
    if not request.url.path.startswith("/v1/") or exc.detail not in ("Not Found", "Method Not Allowed"):
        return None
    call = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        return f"{call}: this route does not take {request.method} (it takes {exc.headers.get('Allow', '?') if exc.headers else '?'}); see /docs"
    return f"{call} is not supported by wanq: it has no such route (its routes are listed at /docs)"
