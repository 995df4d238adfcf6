"""Attackers: every route without a key, another tenant's jobs on every job route, SSRF through image
URLs and redirects, and presigned URLs that carry (and sign) their expiry.

Webhook SSRF targets are in tests/api/test_webhook_api.py; keys and secrets in logs in
tests/e2e/test_secrets_in_logs.py (run last, see tests/conftest.py).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest

from shared.storage import Storage
from tests.conftest import wait_for_status
from tests.reliability_report import record
from tests.tenants import TINY_JOB, client, make_key
from tests.webhook_receiver import Receiver
from wanq.stack import AWS_TEST_ENV, Stack, free_port, wait_until

MODEL = "tiny-ti2v-5b"
PUBLIC = {"/healthz", "/readyz"}  # and FastAPI's /docs, /redoc, /openapi.json, the page's / and /static/*
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def owner_and_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """Tenant "sec-owner" with a completed job that has webhook deliveries."""
    with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30) as admin:
        key = make_key(admin, "sec-owner")
    receiver = Receiver(tmp_path_factory.mktemp("receiver-security"))
    with client(stack, key) as owner:
        assert owner.post("/v1/webhook_endpoint/rotate_secret").status_code == 200
        assert owner.put("/v1/webhook_endpoint", json={"url": receiver.url("/owner")}).status_code == 200
        created = owner.post("/v1/videos", json={"prompt": "private", "model": MODEL, **TINY_JOB})
        assert created.status_code == 202, created.text
        video = wait_for_status(owner, created.json()["id"], {"completed", "failed"})
        assert video["status"] == "completed", video
        wait_until(lambda: owner.get(f"/v1/videos/{video['id']}/webhook_deliveries").json()["data"], 30, "a delivery")
        owner.delete("/v1/webhook_endpoint")
        try:
            yield key, video
        finally:
            receiver.stop()


def test_every_route_outside_v1_is_public_by_design(api: httpx.Client) -> None:
    paths = set(api.get("/openapi.json").json()["paths"])
    assert {p for p in paths if not p.startswith("/v1/")} == PUBLIC
    with httpx.Client(base_url=str(api.base_url), timeout=30) as anonymous:
        # The page and its files are static: nothing in them depends on who asks.
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.get("/static/../api/app.py").status_code == 404
        assert anonymous.get("/static/%2e%2e/app.py").status_code == 404
        ready = anonymous.get("/readyz").json()
        assert set(ready) == {"status", "checks"} and "wanq" not in str(ready)  # no internals beyond up/down


def test_another_tenant_gets_404_on_every_job_route(
    stack: Stack, api: httpx.Client, owner_and_job: tuple[str, dict[str, Any]]
) -> None:
    owner_key, video = owner_and_job
    intruder_key = make_key(api, "sec-intruder")
    paths = api.get("/openapi.json").json()["paths"]
    job_routes = [(method.upper(), path) for path, item in paths.items() if "{video_id}" in path for method in item]
    assert len(job_routes) >= 6  # retrieve, delete, cancel, content, events, webhook_deliveries
    tried = 0
    with client(stack, intruder_key) as intruder:
        for method, path in job_routes:
            variants = ["video", "thumbnail", "spritesheet"] if path.endswith("/content") else [None]
            for variant in variants:
                params = {"variant": variant} if variant else None
                theirs = intruder.request(method, path.replace("{video_id}", video["id"]), params=params)
                missing = intruder.request(method, path.replace("{video_id}", "video_missing"), params=params)
                tried += 1
                assert theirs.status_code == missing.status_code == 404, (method, path, variant, theirs.text)
                assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
                    "video_missing", video["id"]
                )
        # Listing around the owner's id, reusing its Idempotency-Key, naming its tenant: nothing of the owner's.
        assert intruder.get("/v1/videos", params={"after": video["id"]}).json()["data"] == []
        assert intruder.get("/v1/videos").json()["data"] == []
        assert intruder.get("/v1/webhook_endpoint", params={"tenant": "sec-owner"}).status_code == 404
        assert intruder.get("/v1/admin/jobs", params={"tenant": "sec-owner"}).status_code == 403
        body = {"prompt": "same key", "model": MODEL, **TINY_JOB}
        with client(stack, owner_key) as owner:
            first = owner.post("/v1/videos", json=body, headers={"Idempotency-Key": "shared-key-1"})
            assert first.status_code == 202
            second = intruder.post("/v1/videos", json=body, headers={"Idempotency-Key": "shared-key-1"})
            assert second.status_code == 202 and second.json()["id"] != first.json()["id"]
            assert "idempotent-replayed" not in second.headers
            # The owner's job is untouched by all of the above.
            after = owner.get(f"/v1/videos/{video['id']}").json()
            assert after["status"] == "completed" and after["cancel_requested"] is False
            assert owner.get(f"/v1/videos/{video['id']}/content").content[4:8] == b"ftyp"
            for response in (
                owner.post(f"/v1/videos/{first.json()['id']}/cancel"),
                intruder.post(f"/v1/videos/{second.json()['id']}/cancel"),
            ):
                assert response.status_code in (200, 409)
    FIGURES["cross_tenant_attempts"] = tried + 5
    FIGURES["cross_tenant_job_routes"] = len(job_routes)


class _Redirector(BaseHTTPRequestHandler):
    """Answers every GET with a redirect to the cloud metadata address (an SSRF pivot through an allowed host)."""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_image_urls_cannot_reach_private_addresses(api: httpx.Client) -> None:
    targets = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:6379/",
        "http://127.0.0.2:6379/",  # loopback outside the test stack's allowlist (127.0.0.1/32)
        "http://10.0.0.1/a.png",
        "http://192.168.0.1/a.png",
        "http://100.64.0.1/a.png",
        "http://0.0.0.0/a.png",
        "http://[fd00::1]/a.png",
        "http://[::ffff:169.254.169.254]/a.png",
        "gopher://127.0.0.1:6379/_INFO",
        "file:///etc/passwd",
    ]
    for url in targets:
        response = api.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v-a14b", "image_url": url})
        assert response.status_code == 400, (url, response.text)
        assert response.json()["error"]["param"] == "image_url", (url, response.json())
    # An allowed host that redirects to a private one: redirects are never followed.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        response = api.post(
            "/v1/videos",
            json={"prompt": "x", "model": "tiny-i2v-a14b", "image_url": f"http://127.0.0.1:{server.server_port}/a.png"},
        )
        assert response.status_code == 400 and "302" in response.json()["error"]["message"], response.text
    finally:
        server.shutdown()
    FIGURES["ssrf_image_url_targets_refused"] = len(targets) + 1


def _sigv4_query_signature(url: str, secret: str) -> str:
    """The AWS Signature V4 of a presigned GET URL, computed from its own parameters (AWS' documented algorithm)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query))
    signed = dict(query)
    canonical = "\n".join(
        [
            "GET",
            quote(parts.path, safe="/-_.~"),
            canonical_query,
            f"host:{parts.netloc}",
            "",
            signed["X-Amz-SignedHeaders"],
            "UNSIGNED-PAYLOAD",
        ]
    )
    date, scope = signed["X-Amz-Date"], signed["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_presigned_urls_carry_a_signed_expiry(stack: Stack, storage: Storage, owner_and_job: tuple[str, dict[str, Any]]) -> None:
    owner_key, video = owner_and_job
    port = free_port()
    presigning = stack.spawn(
        f"api-presigned-{port}",
        [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)],
        {"WANQ_S3_PRESIGNED_CONTENT": "true", "WANQ_S3_PRESIGN_EXPIRY_S": "5", "WANQ_MAINTENANCE_ENABLED": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: presigning.check_alive() and stack._healthy(url), 60, "the presigning API")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {owner_key}"}, timeout=30) as owner:
            redirect = owner.get(f"/v1/videos/{video['id']}/content")
        assert redirect.status_code == 302, redirect.text
        location = redirect.headers["location"]
        params = dict(parse_qsl(urlsplit(location).query))
        issued = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        assert params["X-Amz-Expires"] == "5" and abs(issued.timestamp() - time.time()) < 60
        assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and "Authorization" not in location
        # Anyone holding the URL can fetch the file (no API key), until it expires...
        fetched = httpx.get(location, timeout=30)
        assert fetched.status_code == 200 and fetched.content[4:8] == b"ftyp"
        # ...and the expiry is part of what is signed: a holder cannot stretch it.
        secret = AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]
        assert _sigv4_query_signature(location, secret) == params["X-Amz-Signature"]
        stretched = location.replace("X-Amz-Expires=5", "X-Amz-Expires=604800")
        assert _sigv4_query_signature(stretched, secret) != params["X-Amz-Signature"]
        short = storage.presigned_url(storage.key(video["id"], "thumbnail"), expires_s=1)
        assert dict(parse_qsl(urlsplit(short).query))["X-Amz-Expires"] == "1"
    finally:
        presigning.stop()
        stack.processes.remove(presigning)
    # moto (the test S3) does not enforce expiry itself: an expired URL still answers 200 there. Real S3,
    # MinIO and R2 refuse it (403 "Request has expired"); what this test can prove is that the URL says so.
    FIGURES["presigned_expiry_checked"] = "X-Amz-Expires set from WANQ_S3_PRESIGN_EXPIRY_S and covered by the SigV4 signature"
    record(
        "security",
        {
            "test": "tests/e2e/test_security.py, tests/api/test_auth.py, tests/api/test_webhook_api.py, tests/e2e/test_secrets_in_logs.py",
            "summary": "no route answers without a key but health and docs; other tenants' jobs are 404 on every job route; "
            "private addresses refused; presigned expiry signed",
            "lost": 0,
            **FIGURES,
        },
    )
