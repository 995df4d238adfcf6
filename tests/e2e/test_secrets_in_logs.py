"""No API key or other secret appears in any log line of the stack's processes.

Runs after the other tests that make keys (tests/tenants.py remembers them), drives the paths a key
goes through (accepted, unknown, revoked, malformed, in the wrong scheme, in a query string), then
reads every log file of the session's processes.
"""

from __future__ import annotations

import httpx

from tests.tenants import CREATED_KEYS, TINY_JOB, client, make_key
from wanq.stack import AWS_TEST_ENV, DEV_ADMIN_KEY_ENV, Stack


def test_no_key_or_secret_in_any_log(stack: Stack, api: httpx.Client) -> None:
    key = make_key(api, "log-watch")
    with client(stack, key) as tenant:
        created = tenant.post("/v1/videos", json={"prompt": "logged?", "model": "tiny-ti2v-5b", **TINY_JOB})
        assert created.status_code == 202
        assert tenant.get("/v1/videos", params={"api_key": key}).status_code == 200
        revoked_id = api.get("/v1/admin/keys").json()["data"][-1]["id"]
        assert api.delete(f"/v1/admin/keys/{revoked_id}").status_code == 200
        assert tenant.get("/v1/videos").status_code == 401  # revoked
    with client(stack, None) as anonymous:
        for header in (f"Bearer {key}x", f"Basic {key}", f"Bearer  {key}", key):
            assert anonymous.get("/v1/videos", headers={"Authorization": header}).status_code == 401

    secrets = {*CREATED_KEYS, stack.env[DEV_ADMIN_KEY_ENV], AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]}
    assert len(CREATED_KEYS) >= 5  # the other test modules made theirs
    logs = {path.name: path.read_text(errors="replace") for path in (stack.workdir / "logs").glob("*.log")}
    assert any(name.startswith("api-") for name in logs) and any(name.startswith("dispatcher") for name in logs)
    assert any("authentication failed" in text for text in logs.values())  # the refusals above were logged
    leaks = [(name, secret[:8]) for name, text in logs.items() for secret in secrets if secret in text]
    assert leaks == [], f"secrets found in logs (file, secret prefix): {leaks}"
