"""One more API process on a test stack (its own settings on top of the stack's), for the tests that need an API
configured unlike the session's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from wanq.stack import Stack, free_port, wait_until


@contextmanager
def api_process(stack: Stack, name: str, env: dict[str, str]) -> Iterator[str]:
    """An API process of `stack` on a free port, with `env` on top of the stack's; yields its URL once healthy."""
    port = free_port()
    process = stack.spawn(
        f"{name}-{port}", [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)], env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.check_alive() and Stack._healthy(url), 60, f"the API {name}")
        yield url
    finally:
        process.stop()
        stack.processes.remove(process)
