"""Refuses request bodies larger than `api.max_body_bytes` with 413, on every route, before they are buffered.

A declared Content-Length over the limit is refused before a byte of the body is read. A body sent
without one (chunked) is counted as it arrives: past the limit, reading stops and whatever the route
was about to answer is replaced by the 413 (FastAPI turns errors while reading a body into its own
400, so the answer is swapped here rather than left to the route). Starlette spools multipart
uploads to disk as they arrive; without this, a chunked upload could fill the disk.

A route's own larger limit (a LoRA upload) holds for multipart bodies only: their file part is spooled to
disk, and Starlette caps each other part (1 MB) and their number. Any other body to that route (JSON,
read whole into memory) keeps the default limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from shared.errors import PayloadTooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[tuple[str, str], int] | None = None) -> None:
        """`overrides`: (method, path) -> a limit of its own for multipart bodies (LoRA uploads)."""
        self.app = app
        self.default_bytes = max_bytes
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.default_bytes
        if _is_multipart(scope):
            limit = self.overrides.get((scope.get("method", ""), scope.get("path", "").rstrip("/")), limit)
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, f"request body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes")
            return

        received = 0
        exceeded = refused = started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes", param="body")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, refused
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = refused = True
                    await self._refuse(send, f"request body exceeds the limit of {max_bytes} bytes")
                return  # the route's own answer to the cut-off body is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if refused:
                return
            if started:
                raise
            await self._refuse(send, f"request body exceeds the limit of {max_bytes} bytes")

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        body = json.dumps(error_body(message, PayloadTooLarge.code, "body")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_multipart(scope: Scope) -> bool:
    """The same test as the routes' own (`request.headers`: the first Content-Type header, parameters dropped)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"multipart/form-data"
    return False
