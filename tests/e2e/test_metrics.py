"""The API's Prometheus `/metrics`, the autoscaler's `/metrics/demand`, and the API's JSON logs,
through the real stack."""

from __future__ import annotations

import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LATE, SMALL, wait_for_status
from tests.tenants import ADMIN, client, make_key
from wanq.stack import AWS_TEST_ENV, Stack, wait_until


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and sorted labels (the API's needs the admin key's headers)."""
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    text = response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_latency_is_labelled_by_route_template(api: httpx.Client, stack: Stack) -> None:
    missing = api.get("/v1/videos/video_notthere")
    assert missing.status_code == 404
    samples = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
    routes = {dict(labels).get("route") for name, labels in samples if name == "wanq_http_request_duration_seconds_count"}
    assert "/v1/videos/{video_id}" in routes and "/healthz" in routes
    assert not any(r and "video_notthere" in r for r in routes)  # one series per route, not per id
    assert (
        value(samples, "wanq_http_request_duration_seconds_count", method="GET", route="/v1/videos/{video_id}", status="404") >= 1
    )
    assert value(samples, "wanq_store_up") == 1


def test_pending_depth_by_model_and_tenant_and_demand(api: httpx.Client, stack: Stack) -> None:
    # LATE has no worker: its job waits, and the autoscaler should want one worker for it. (The `api`
    # fixture acts for the admin tenant.)
    before = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
    demand_before = api.get("/metrics/demand", params={"model": LATE}).json()
    video = api.post("/v1/videos", json={"prompt": "waiting for a worker", "model": LATE, **SMALL}).json()
    try:
        demand = api.get("/metrics/demand", params={"model": LATE}).json()
        assert demand["model"] == LATE and demand["workers"] == 0
        assert demand["queued"] == demand_before["queued"] + 1 and demand["demand"] == demand_before["demand"] + 1
        during = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
        pending = value(during, "wanq_jobs_pending", model=LATE, tenant=ADMIN)
        assert pending == value(before, "wanq_jobs_pending", model=LATE, tenant=ADMIN) + 1
        assert value(during, "wanq_jobs", model=LATE, status="queued") == demand["queued"]
        assert value(during, "wanq_demand", model=LATE) == demand["demand"]
        # The dispatcher hands one job to the worker queue even with no worker, for a list-length autoscaler.
        wait_until(
            lambda: value(scrape(f"{stack.api_url}/metrics", stack.admin_headers()), "wanq_queue_messages", model=LATE) >= 1,
            30,
            "a message",
        )
    finally:
        assert api.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    after = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
    assert value(after, "wanq_jobs_pending", model=LATE, tenant=ADMIN) == value(
        before, "wanq_jobs_pending", model=LATE, tenant=ADMIN
    )
    canceled = value(after, "wanq_jobs_finished_total", model=LATE, status="canceled")
    assert canceled == value(before, "wanq_jobs_finished_total", model=LATE, status="canceled") + 1


def test_finished_jobs_and_live_workers_are_counted(api: httpx.Client, stack: Stack) -> None:
    model = "tiny-ti2v-5b"
    before = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
    video = api.post("/v1/videos", json={"prompt": "counted", "model": model, **SMALL}).json()
    assert wait_for_status(api, video["id"], {"completed", "failed"})["status"] == "completed"
    after = scrape(f"{stack.api_url}/metrics", stack.admin_headers())
    completed = value(after, "wanq_jobs_finished_total", model=model, status="completed")
    assert completed == value(before, "wanq_jobs_finished_total", model=model, status="completed") + 1
    assert value(after, "wanq_workers_live", model=model) >= 1


def test_metrics_name_tenants_so_they_need_an_admin_key(api: httpx.Client, stack: Stack) -> None:
    plain = make_key(api, "metrics-reader")
    for path in ("/metrics", "/metrics/demand?model=tiny-t2v-a14b"):
        with client(stack, None) as anonymous:
            response = anonymous.get(path)
            assert response.status_code == 401 and response.json()["error"]["param"] == "authorization", response.text
            assert response.headers["www-authenticate"].startswith("Bearer")
        with client(stack, plain) as tenant:
            response = tenant.get(path)
            assert response.status_code == 403 and "admin" in response.json()["error"]["message"], response.text
        assert api.get(path).status_code == 200  # the stack's admin key


def test_demand_names_a_bad_model(api: httpx.Client) -> None:
    unknown = api.get("/metrics/demand", params={"model": "no-such-model"})
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]["message"]
    assert api.get("/metrics/demand").status_code == 400


def test_api_logs_are_json_without_secrets(stack: Stack, api: httpx.Client) -> None:
    api.get("/healthz")
    log = next(p for p in stack.processes if p.name.startswith("api-")).log()
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the API wrote no log lines"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's own lines are JSON too
    assert AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"] not in log
