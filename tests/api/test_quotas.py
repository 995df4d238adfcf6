"""Quotas answered at the door: requests per minute and the size of one job -> 429, Retry-After, the limit's name.

(The queue-length quota and max running jobs need the dispatcher stopped or busy workers:
tests/e2e/test_dispatch.py.)
"""

from __future__ import annotations

import httpx

from shared.store import JobStore
from tests.tenants import RPM, SMALL, TENANT_QUOTAS, TINY_JOB, client, make_key
from wanq.stack import Stack


def test_requests_per_minute(stack: Stack, api: httpx.Client) -> None:
    limit = int(TENANT_QUOTAS[RPM]["requests_per_minute"])
    with client(stack, make_key(api, RPM)) as tenant:
        answers = [tenant.get("/v1/models") for _ in range(limit)]
        assert [r.status_code for r in answers] == [200] * limit
        refused = tenant.get("/v1/videos")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["param"] == "requests_per_minute"
        assert f"{limit} requests per minute" in error["message"] and "requests_per_minute" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Other tenants are not affected.
    assert api.get("/v1/models").status_code == 200


def test_pixel_frames_per_job(stack: Stack, api: httpx.Client, store: JobStore) -> None:
    limit = int(TENANT_QUOTAS[SMALL]["max_pixel_frames"])
    before = store.queued_count("tiny-t2v-a14b")
    with client(stack, make_key(api, SMALL)) as tenant:
        refused = tenant.post("/v1/videos", json={"prompt": "too long", "model": "tiny-t2v-a14b", **TINY_JOB, "num_frames": 13})
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["param"] == "max_pixel_frames"
        assert f"64x64 x 13 frames = {64 * 64 * 13}" in error["message"] and str(limit) in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert store.queued_count("tiny-t2v-a14b") == before  # nothing was stored

        # The same job for a tenant with the default limit is accepted.
        fits = api.post("/v1/videos", json={"prompt": "fits", "model": "tiny-t2v-a14b", **TINY_JOB, "num_frames": 13})
        assert fits.status_code == 202, fits.text
        assert api.post(f"/v1/videos/{fits.json()['id']}/cancel").status_code == 200
