"""Tenants of the test stack and their keys.

`TENANT_QUOTAS` is the stack's WANQ_QUOTAS_TENANTS. The admin tenant, which every `api` fixture
request uses, is practically unlimited; each other tenant belongs to one test module. Keys made with
`make_key` are remembered in `CREATED_KEYS`, which tests/e2e/test_secrets_in_logs.py looks for in
every log file of the stack.
"""

from __future__ import annotations

import httpx

from wanq.stack import Stack

ADMIN = "admin"
FAIR_A, FAIR_B = "fair-a", "fair-b"  # tests/e2e/test_fairness.py
SMALL = "quota-small"  # tests/e2e/test_dispatch.py: a short queue and small jobs
RPM = "quota-rpm"  # tests/api/test_quotas.py
ONE_AT_A_TIME = "quota-one"  # tests/e2e/test_dispatch.py
HEAVY, LIGHT = "weight-a2", "weight-b1"  # tests/e2e/test_dispatch.py: weights 2 and 1
FUZZ = "fuzz"  # tests/api/test_openapi_fuzz.py: unthrottled, but few jobs, so generated ones can't flood the workers
SSRF = "ssrf-probe"  # tests/api/test_webhook_api.py: hundreds of refused webhook URLs in a few seconds

UNLIMITED = {"max_queued_jobs": 10_000, "requests_per_minute": 1_000_000}
TENANT_QUOTAS: dict[str, dict[str, int | float]] = {
    ADMIN: UNLIMITED,
    FAIR_A: UNLIMITED,
    FAIR_B: UNLIMITED,
    SMALL: {"max_queued_jobs": 2, "max_pixel_frames": 64 * 64 * 9, "requests_per_minute": 100_000},
    RPM: {"requests_per_minute": 5},
    ONE_AT_A_TIME: {"max_running_jobs": 1, "requests_per_minute": 100_000},
    HEAVY: {"weight": 2},
    FUZZ: {"max_queued_jobs": 2, "max_running_jobs": 1, "requests_per_minute": 1_000_000},
    SSRF: {"requests_per_minute": 1_000_000},
}

# The smallest job a tiny model runs: what tests use when only scheduling matters.
TINY_JOB = {"size": "64x64", "num_frames": 5, "num_inference_steps": 1}

CREATED_KEYS: list[str] = []


def make_key(api: httpx.Client, tenant: str, *, admin: bool = False) -> str:
    """A new key for `tenant`, made over the admin API with the stack's admin key."""
    response = api.post("/v1/admin/keys", json={"tenant": tenant, "admin": admin})
    assert response.status_code == 201, response.text
    key = str(response.json()["key"])
    CREATED_KEYS.append(key)
    return key


def client(stack: Stack, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)
