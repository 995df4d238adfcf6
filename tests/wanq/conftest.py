"""Fixtures for the client and CLI tests: a real HTTP server on loopback that refuses every request with a given
status and OpenAI-style error body (what an authenticating or rate-limiting wanq answers), and a closed port."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wanq.stack import Stack


class Refuser:
    def __init__(self) -> None:
        self.status = 401
        self.body: object = {}
        self.headers: dict[str, str] = {}
        self.seen_authorization: list[str | None] = []
        self.seen_paths: list[str] = []
        self.url = ""


@pytest.fixture
def refusing_server() -> Iterator[Callable[..., Refuser]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Refuser:
        refuser = Refuser()
        refuser.status = status
        refuser.body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        refuser.headers = headers or {}

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                refuser.seen_authorization.append(self.headers.get("Authorization"))
                refuser.seen_paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                payload = json.dumps(refuser.body).encode()
                self.send_response(refuser.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in refuser.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _refuse

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        refuser.url = f"http://127.0.0.1:{server.server_address[1]}"
        return refuser

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def answering_server(refusing_server: Callable[..., Refuser]) -> Callable[[object], Refuser]:
    """A real HTTP server on loopback that answers every request with HTTP 200 and the JSON `body`."""

    def start(body: object) -> Refuser:
        server = refusing_server(200, "", "")
        server.body = body
        return server

    return start


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago and stays unbound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def api_key(stack: Stack) -> str | None:
    """The stack's key, when it runs with authentication."""
    return stack.env.get("WANQ_DEV_ADMIN_KEY")
