"""The body limit of a route with a larger one of its own (`POST /v1/loras`): only a multipart upload may
exceed `WANQ_API_MAX_BODY_BYTES` (its file part is spooled to disk); any other body, JSON above all, which
the route reads whole into memory, is refused with 413 once the limit is crossed, before more is read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.reliability_report import record
from wanq.stack import Stack, free_port, wait_until

LIMIT = 200_000  # WANQ_API_MAX_BODY_BYTES of the API below; its LoRA limit stays the default 2 GiB
OFFERED = 64 * 1024 * 1024  # a JSON body the old limit let through whole


@pytest.fixture(scope="module")
def small_api(stack: Stack) -> Iterator[tuple[httpx.Client, psutil.Process]]:
    port = free_port()
    process = stack.spawn(
        f"api-body-limit-{port}",
        [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)],
        {"WANQ_API_MAX_BODY_BYTES": str(LIMIT), "WANQ_LORAS_MAX_BYTES": str(2 * 1024**3), "WANQ_MAINTENANCE_ENABLED": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: process.check_alive() and stack._healthy(url), 60, "the small-body API")
    try:
        with httpx.Client(base_url=url, timeout=60, headers=stack.admin_headers()) as client:
            yield client, psutil.Process(process.proc.pid)
    finally:
        process.stop()
        stack.processes.remove(process)


def _rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def _refused_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "body" and str(LIMIT) in error["message"], error


def test_a_json_body_to_the_lora_route_is_refused_at_the_default_limit(small_api: tuple[httpx.Client, psutil.Process]) -> None:
    client, process = small_api
    # Sent chunked: the server stops reading at the limit. What the client could push is the limit plus what the
    # two sockets' buffers hold; the old code read all 64 MB into memory.
    pulled = 0

    def body() -> Iterator[bytes]:
        nonlocal pulled
        yield b'{"url": "'
        piece = b" " * 65536
        while pulled < OFFERED:
            pulled += len(piece)
            yield piece
        yield b'"}'

    before = _rss(process)
    response = client.post("/v1/loras", content=body(), headers={"content-type": "application/json"})
    growth_mb = (_rss(process) - before) / 1024**2
    _refused_413(response)
    assert pulled < OFFERED // 4, pulled
    assert growth_mb < 16, growth_mb
    # Declared length: refused before a byte of the body is read.
    declared = json.dumps({"url": "http://127.0.0.1/x.safetensors", "name": "x" * (LIMIT + 10)}).encode()
    _refused_413(client.post("/v1/loras", content=declared, headers={"content-type": "application/json"}))
    record("hostile_input", {"json_body_refused_bytes": pulled, "api_rss_growth_mb": round(growth_mb, 1)})


def test_only_a_multipart_upload_may_exceed_the_default_limit(small_api: tuple[httpx.Client, psutil.Process]) -> None:
    client, _ = small_api
    # A file part over WANQ_API_MAX_BODY_BYTES reaches the route (not a LoRA: refused for what it is, not its size).
    upload = client.post("/v1/loras", data={"name": "big"}, files={"file": ("big.safetensors", b"\0" * (LIMIT * 3))})
    assert upload.status_code == 400, upload.text
    assert upload.json()["error"]["param"] != "body", upload.text
    # The other parts stay small: a 2 MB form field is refused without being kept.
    field = client.post("/v1/loras", data={"name": "x" * 2 * 1024**2}, files={"file": ("a.safetensors", b"\0" * 64)})
    assert field.status_code == 400 and "maximum size" in field.text, field.text
