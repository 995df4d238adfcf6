"""API keys: every /v1 route needs one, keys belong to tenants, are stored hashed and can be revoked;
tenants see only their own jobs; admin keys see everyone's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
import redis

from tests.conftest import wait_for_status
from tests.tenants import CREATED_KEYS, TINY_JOB, client, make_key
from wanq.stack import DEV_ADMIN_KEY_ENV, Stack

PUBLIC = ["/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"]


def test_public_routes_need_no_key(stack: Stack) -> None:
    with client(stack, None) as anonymous:
        for path in PUBLIC:
            assert anonymous.get(path).status_code == 200, path


def test_every_v1_route_needs_a_key(stack: Stack, api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    routes = [(method, path) for path, item in paths.items() if path.startswith("/v1/") for method in item]
    assert len(routes) >= 12  # videos, models and admin routes
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wq_not-a-real-key-0123456789abcdef"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ]
    with client(stack, None) as anonymous:
        for method, path in routes:
            url = path.replace("{video_id}", "video_x").replace("{model}", "tiny-t2v-a14b").replace("{key_ref}", "key_x")
            for headers in bad_headers:
                response = anonymous.request(method.upper(), url, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
                assert response.json()["error"]["code"] == "unauthorized"


def test_openai_sdk_api_key_is_the_key(stack: Stack, api: httpx.Client) -> None:
    key = make_key(api, "sdk-tenant")
    sdk = openai.OpenAI(api_key=key, base_url=f"{stack.api_url}/v1", max_retries=0)
    assert sdk.videos.list().data == []
    wrong = openai.OpenAI(api_key="wq_wrong-key-wrong-key-wrong-key", base_url=f"{stack.api_url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        wrong.videos.list()
    assert excinfo.value.status_code == 401


def test_tenants_see_only_their_own_jobs(stack: Stack, api: httpx.Client) -> None:
    key_a, key_b = make_key(api, "iso-a"), make_key(api, "iso-b")
    sdk_a = openai.OpenAI(api_key=key_a, base_url=f"{stack.api_url}/v1", max_retries=0)
    sdk_b = openai.OpenAI(api_key=key_b, base_url=f"{stack.api_url}/v1", max_retries=0)
    video = sdk_a.videos.create(model="tiny-t2v-a14b", prompt="mine, not yours", extra_body=TINY_JOB)  # type: ignore[arg-type]
    with client(stack, key_a) as a, client(stack, key_b) as b:
        assert wait_for_status(a, video.id, {"completed", "failed"})["status"] == "completed"

        # The owner sees it everywhere.
        assert [v.id for v in sdk_a.videos.list()] == [video.id]
        assert a.get(f"/v1/videos/{video.id}/content").status_code == 200

        # Another tenant gets exactly what an id that does not exist gets.
        with pytest.raises(openai.NotFoundError):
            sdk_b.videos.retrieve(video.id)
        assert sdk_b.videos.list().data == []
        for method, suffix in [("GET", ""), ("GET", "/content"), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", "")]:
            theirs = b.request(method, f"/v1/videos/{video.id}{suffix}")
            missing = b.request(method, f"/v1/videos/video_missing{suffix}")
            assert theirs.status_code == missing.status_code == 404, (method, suffix, theirs.text)
            assert theirs.json()["error"] == {
                **missing.json()["error"],
                "message": missing.json()["error"]["message"].replace("video_missing", video.id),
            }
        assert a.get(f"/v1/videos/{video.id}").json()["status"] == "completed"  # B's delete did nothing

    # An admin key sees every tenant's jobs.
    assert api.get(f"/v1/videos/{video.id}").status_code == 200
    listed = api.get("/v1/admin/jobs", params={"tenant": "iso-a"}).json()["data"]
    assert [(v["id"], v["tenant"]) for v in listed] == [(video.id, "iso-a")]
    everyone = api.get("/v1/admin/jobs", params={"limit": 100}).json()["data"]
    assert video.id in {v["id"] for v in everyone}


def test_admin_routes_need_an_admin_key(stack: Stack, api: httpx.Client) -> None:
    key = make_key(api, "not-admin")
    with client(stack, key) as plain:
        for method, path in [
            ("GET", "/v1/admin/jobs"),
            ("GET", "/v1/admin/queues"),
            ("POST", "/v1/admin/models/tiny-t2v-a14b/drain"),
            ("GET", "/v1/admin/keys"),
            ("POST", "/v1/admin/keys"),
        ]:
            response = plain.request(method, path, json={"tenant": "x"} if method == "POST" else None)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
    admin_key = make_key(api, "second-admin", admin=True)
    with client(stack, admin_key) as admin:
        assert admin.get("/v1/admin/queues").status_code == 200


def test_key_lifecycle_over_http_and_stored_hashed(stack: Stack, api: httpx.Client, redis_client: redis.Redis) -> None:
    created = api.post("/v1/admin/keys", json={"tenant": "lifecycle", "name": "ci"})
    assert created.status_code == 201
    body = created.json()
    key = body["key"]
    CREATED_KEYS.append(key)
    assert key.startswith("wq_") and len(key) >= 40 and body["prefix"] == key[:8] and body["tenant"] == "lifecycle"

    # Only the hash is stored: the key appears in no Redis key name or value.
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert redis_client.exists(f"wanq:key:{digest}")
    for name in redis_client.scan_iter("wanq:key*"):
        assert key.encode() not in name
        value = redis_client.get(name) if redis_client.type(name) == b"string" else b"".join(redis_client.zrange(name, 0, -1))
        assert key.encode() not in (value or b"")

    listed = {k["id"]: k for k in api.get("/v1/admin/keys").json()["data"]}
    assert listed[body["id"]]["prefix"] == key[:8] and "key" not in listed[body["id"]]
    assert key not in api.get("/v1/admin/keys").text

    with client(stack, key) as owner:
        assert owner.get("/v1/videos").status_code == 200
        assert owner.get("/v1/videos", headers={"Authorization": f"bearer {key}"}).status_code == 200  # scheme is case-free
        revoked = api.delete(f"/v1/admin/keys/{body['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        refused = owner.get("/v1/videos")
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert api.delete("/v1/admin/keys/key_doesnotexist").status_code == 404


def _wanq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env}
    env.pop(DEV_ADMIN_KEY_ENV, None)
    return subprocess.run([sys.executable, "-m", "wanq", *args], env=env, capture_output=True, text=True, timeout=60)


def test_keys_cli_create_list_revoke(stack: Stack) -> None:
    made = _wanq(stack, "keys", "create", "--tenant", "cli-tenant", "--admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    CREATED_KEYS.append(key)
    assert key.startswith("wq_") and "\n" not in key
    assert "shown only this once" in made.stderr and key not in made.stderr
    key_id = made.stderr.split("admin key ")[1].split()[0]

    with client(stack, key) as cli_admin:
        assert cli_admin.get("/v1/admin/queues").status_code == 200  # --admin took effect

    listing = _wanq(stack, "keys", "list", "--tenant", "cli-tenant")
    assert listing.returncode == 0 and key_id in listing.stdout and key[:8] in listing.stdout
    assert key not in listing.stdout
    seeded = _wanq(stack, "keys", "list", "--tenant", "admin")
    assert "settings" in seeded.stdout  # the stack's seeded admin key is listed, by id only

    revoked = _wanq(stack, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with client(stack, key) as cli_admin:
        assert cli_admin.get("/v1/admin/queues").status_code == 401
    unknown = _wanq(stack, "keys", "revoke", "key_000000000000")
    assert unknown.returncode != 0 and "no API key" in unknown.stderr
    bad = _wanq(stack, "keys", "create", "--tenant", "bad:tenant")
    assert bad.returncode != 0 and "tenant" in bad.stderr


def test_open_mode_is_explicit_and_loud_and_seeded_keys_revoke(stack: Stack, api: httpx.Client) -> None:
    from shared.apikeys import generate_key
    from wanq.stack import free_port, wait_until

    seeded = generate_key()
    CREATED_KEYS.append(seeded)
    port = free_port()
    env = {
        "WANQ_AUTH_OPEN": "true",
        "WANQ_AUTH_KEYS": json.dumps([{"key": seeded, "tenant": "seeded-plain"}]),
        "WANQ_DISPATCH_IN_API": "false",
    }
    open_api = stack.spawn(
        f"api-open-{port}", [sys.executable, "-m", "wanq", "api", "--host", "127.0.0.1", "--port", str(port)], env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: Stack._healthy(url), 60, "the open-mode API")
        with httpx.Client(base_url=url, timeout=30) as anonymous:
            # No key: the open tenant, with admin rights. So is a key the server does not know (the openai SDK
            # always sends one, e.g. the README's "wq_...").
            assert anonymous.get("/v1/videos").status_code == 200
            assert anonymous.get("/v1/admin/queues").status_code == 200
            assert anonymous.get("/metrics").status_code == 200  # and the metrics, which need an admin key otherwise
            for unknown in ("wq_bad-bad-bad-bad-bad-bad", "wq_..."):
                assert anonymous.get("/v1/admin/queues", headers={"Authorization": f"Bearer {unknown}"}).status_code == 200
            # A key seeded in plain text acts as its own tenant (no admin), and revoking it (a record in Redis) beats
            # the setting: it is then a key the server does not know.
            assert anonymous.get("/v1/videos", headers={"Authorization": f"Bearer {seeded}"}).status_code == 200
            assert anonymous.get("/v1/admin/queues", headers={"Authorization": f"Bearer {seeded}"}).status_code == 403
            listed = {k["tenant"]: k for k in anonymous.get("/v1/admin/keys").json()["data"]}
            assert listed["seeded-plain"]["source"] == "settings" and listed["seeded-plain"]["prefix"] == seeded[:8]
            assert anonymous.delete(f"/v1/admin/keys/{listed['seeded-plain']['id']}").status_code == 200
            assert anonymous.get("/v1/admin/queues", headers={"Authorization": f"Bearer {seeded}"}).status_code == 200
    finally:
        open_api.stop()
    warnings = [json.loads(line) for line in open_api.log().splitlines() if "AUTHENTICATION IS OFF" in line]
    assert [w["level"] for w in warnings] == ["warning", "warning"] and all("'default'" in w["msg"] for w in warnings)
    assert "a key this server does not know" in warnings[1]["msg"]  # once per process, not once per request
    # The session's API was not asked for open mode: it refuses requests without a key.
    with client(stack, None) as anonymous:
        assert anonymous.get("/v1/videos").status_code == 401
