"""No API key, webhook signing secret or other secret appears in any log line of the stack's processes.

Runs last (tests/conftest.py orders it), after the other tests that make keys (tests/tenants.py
remembers them) and webhook secrets (Redis holds them all); drives the paths a key goes through
(accepted, unknown, revoked, malformed, in the wrong scheme, in a query string) and a secret goes
through (created, shown, rotated, signing deliveries that fail and are retried), then reads every log
file of the session's processes.
"""

from __future__ import annotations

import json
import re

import httpx
import redis

from tests.reliability_report import record
from tests.tenants import CREATED_KEYS, TINY_JOB, client, make_key
from wanq.stack import AWS_TEST_ENV, DEV_ADMIN_KEY_ENV, Stack, wait_until

# What a key or a secret looks like, whoever made it: none may appear unredacted (shared/logs.py redacts).
SHAPES = re.compile(r"whsec_[A-Za-z0-9+/=]{8,}|wq_[A-Za-z0-9_\-]{20,}")


def webhook_secrets(redis_client: redis.Redis) -> set[str]:
    found = set()
    for name in redis_client.scan_iter("wanq:webhook-secret:*"):
        stored = json.loads(redis_client.get(name) or "{}")
        found |= {stored[k] for k in ("current", "previous") if stored.get(k)}
    return found


def test_no_key_or_secret_in_any_log(stack: Stack, api: httpx.Client, redis_client: redis.Redis) -> None:
    key = make_key(api, "log-watch")
    made_secrets: set[str] = set()
    with client(stack, key) as tenant:
        # A webhook secret, rotated once, signing deliveries to a receiver that refuses them (logged attempts).
        made_secrets.add(tenant.post("/v1/webhook_endpoint/rotate_secret").json()["secret"])
        made_secrets.add(tenant.post("/v1/webhook_endpoint/rotate_secret").json()["secret"])
        assert tenant.put("/v1/webhook_endpoint", json={"url": "http://127.0.0.1:9/hook?token=abc"}).status_code == 200
        hooked = tenant.post("/v1/videos", json={"prompt": "signed", "model": "tiny-ti2v-5b", **TINY_JOB})
        assert hooked.status_code == 202

        def attempted() -> bool:
            deliveries = tenant.get(f"/v1/videos/{hooked.json()['id']}/webhook_deliveries").json()["data"]
            return any(d["attempts"] for d in deliveries)

        wait_until(attempted, 120, "a signed webhook attempt")
        tenant.delete("/v1/webhook_endpoint")
        created = tenant.post("/v1/videos", json={"prompt": "logged?", "model": "tiny-ti2v-5b", **TINY_JOB})
        assert created.status_code == 202
        assert tenant.get("/v1/videos", params={"api_key": key}).status_code == 200
        revoked_id = api.get("/v1/admin/keys").json()["data"][-1]["id"]
        assert api.delete(f"/v1/admin/keys/{revoked_id}").status_code == 200
        assert tenant.get("/v1/videos").status_code == 401  # revoked
    with client(stack, None) as anonymous:
        for header in (f"Bearer {key}x", f"Basic {key}", f"Bearer  {key}", key):
            assert anonymous.get("/v1/videos", headers={"Authorization": header}).status_code == 401

    whsecs = webhook_secrets(redis_client) | made_secrets
    secrets = {*CREATED_KEYS, *whsecs, stack.env[DEV_ADMIN_KEY_ENV], AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]}
    assert len(CREATED_KEYS) >= 5  # the other test modules made theirs
    logs = {path.name: path.read_text(errors="replace") for path in (stack.workdir / "logs").glob("*.log")}
    assert any(name.startswith("api-") for name in logs) and any(name.startswith("dispatcher") for name in logs)
    assert any("authentication failed" in text for text in logs.values())  # the refusals above were logged
    assert any("webhook attempt" in text for text in logs.values())  # the signed deliveries were logged
    leaks = [(name, secret[:8]) for name, text in logs.items() for secret in secrets if secret in text]
    assert leaks == [], f"secrets found in logs (file, secret prefix): {leaks}"
    shaped = [(name, m.group(0)[:8]) for name, text in logs.items() for m in SHAPES.finditer(text)]
    assert shaped == [], f"key- or secret-shaped strings in logs (file, prefix): {shaped}"
    record(
        "security",
        {
            "secrets_checked_in_logs": len(secrets),
            "webhook_secrets_checked": len(whsecs),
            "log_files_scanned": len(logs),
            "log_bytes_scanned": sum(len(t) for t in logs.values()),
            "secrets_found_in_logs": 0,
        },
    )
