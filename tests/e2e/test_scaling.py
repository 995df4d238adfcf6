"""Horizontal scaling on one machine, with real worker processes: several workers on one model's
queue all take jobs, another model's jobs never reach them, killing one (SIGKILL) leaves the others
working, and the Kubernetes scale-down path (preStop drain, then SIGTERM) never kills a running job.

Throughput against the worker count is a benchmark, not a test: benchmarks/scaling.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from shared.store import JobStore
from tests.conftest import wait_for_status
from tests.e2e.test_metrics import scrape, value
from tests.tenants import ADMIN
from wanq.stack import Managed, Stack, free_port, wait_until
from worker.control import drain

MODEL = "tiny-t2v-a14b"
OTHER = "tiny-ti2v-5b"
QUICK = {"size": "64x64", "num_frames": 5, "num_inference_steps": 1}
SLOWER = {"size": "64x64", "num_frames": 9, "num_inference_steps": 8}
LOG_INFO = ["--loglevel", "INFO"]


@dataclass
class Worker:
    process: Managed
    worker_id: str
    node: str
    metrics_url: str


def _live_ids(store: JobStore, model: str) -> set[str]:
    ids = {i.decode() for i in store.redis.zrange(store.keys.workers(model), 0, -1)}
    return {i for i in ids if store.worker_info(i) is not None}


def _heartbeat(store: JobStore, worker_id: str) -> dict[str, object]:
    return store.worker_info(worker_id) or {}


def _parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def extra(stack: Stack, store: JobStore) -> Iterator[list[Worker]]:
    """Two more workers on MODEL (the session's own makes three), with metrics and INFO logs."""
    before = _live_ids(store, MODEL)
    started = []
    for n in range(2):
        port = free_port()
        process = stack.spawn(
            f"scaling-worker-{n}",
            [sys.executable, "-m", "wanq", "worker", "--model", MODEL, "--model-path", str(stack.model_paths[MODEL]), *LOG_INFO],
            # One torch thread each: more would only oversubscribe 2 cores (benchmarks/RESULTS.md).
            {"WANQ_WORKER_METRICS_PORT": str(port), "OMP_NUM_THREADS": "1"},
        )
        started.append((process, port))
    try:

        def ready() -> bool:
            fresh = _live_ids(store, MODEL) - before
            return len(fresh) == 2 and all(_heartbeat(store, i).get("state") == "ready" for i in fresh)

        wait_until(ready, 240, "two more ready workers", interval=0.2)
        time.sleep(1.0)  # the consumers start a moment after the model is loaded
        workers = []
        for worker_id in _live_ids(store, MODEL) - before:
            pid = int(str(_heartbeat(store, worker_id)["pid"]))  # the child that holds the model
            process, port = next((p, port) for p, port in started if p.proc.pid == _parent_pid(pid))
            node = str(_heartbeat(store, worker_id)["node"])
            workers.append(Worker(process, worker_id, node, f"http://127.0.0.1:{port}/metrics"))
        yield sorted(workers, key=lambda w: w.process.name)
    finally:
        for process, _ in started:
            process.stop()


def _submit(api: httpx.Client, model: str, count: int, fields: dict[str, object], tag: str) -> list[str]:
    ids = []
    for n in range(count):
        response = api.post("/v1/videos", json={"prompt": f"{tag} {n}", "model": model, **fields})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def _finish_all(api: httpx.Client, store: JobStore, ids: list[str]) -> dict[str, str]:
    """Waits for every job to complete; returns job id -> the worker that completed it."""
    for job_id in ids:
        video = wait_for_status(api, job_id, {"completed", "failed", "canceled"}, timeout=240)
        assert video["status"] == "completed", video
    records = {job_id: store.get(job_id) for job_id in ids}
    return {job_id: str(record.worker) for job_id, record in records.items() if record is not None}


def test_every_worker_of_a_model_takes_jobs_and_only_that_models(api: httpx.Client, store: JobStore, extra: list[Worker]) -> None:
    workers_of_model = _live_ids(store, MODEL)
    assert len(workers_of_model) >= 3 and {w.worker_id for w in extra} <= workers_of_model
    jobs = _submit(api, MODEL, 9, QUICK, "spread")
    others = _submit(api, OTHER, 3, QUICK, "other model")
    ran_on = _finish_all(api, store, jobs)
    assert set(ran_on.values()) == workers_of_model, f"a worker took no job: {sorted(ran_on.values())}"
    other_ran_on = set(_finish_all(api, store, others).values())
    assert other_ran_on and not other_ran_on & workers_of_model
    assert other_ran_on <= _live_ids(store, OTHER)
    _check_metrics_and_logs(extra)


def _check_metrics_and_logs(extra: list[Worker]) -> None:
    """Each extra worker took jobs above: its metrics count them and its log lines name them."""
    for worker in extra:
        # The outcome is counted once the background upload is recorded, a moment after the status.
        wait_until(
            lambda w=worker: value(scrape(w.metrics_url), "wanq_worker_jobs_total", model=MODEL, outcome="completed") >= 1,
            30,
            "the completed job in the worker's metrics",
        )
        samples = scrape(worker.metrics_url)
        completed = value(samples, "wanq_worker_jobs_total", model=MODEL, outcome="completed")
        assert value(samples, "wanq_worker_job_duration_seconds_count", model=MODEL, outcome="completed") == completed
        assert value(samples, "wanq_worker_step_seconds_count", model=MODEL) >= completed  # >= 1 step per job
        for stage in ("encoding_prompt", "denoising", "decoding", "encoding_video", "uploading"):
            assert value(samples, "wanq_worker_stage_duration_seconds_count", model=MODEL, stage=stage) >= completed, stage
        assert value(samples, "wanq_worker_model_load_seconds", model=MODEL) > 0
        assert value(samples, "wanq_worker_jobs_in_flight", model=MODEL) == 0

        # Every JSON line about a job names the job, its tenant and its model; Celery's own included.
        lines = [json.loads(line) for line in worker.process.log().splitlines() if line.startswith("{")]
        about_jobs = [e for e in lines if "video_" in json.dumps(e)]
        assert any(e["logger"] == "celery.app.trace" for e in about_jobs)
        assert sum(e["msg"] == "job started" for e in about_jobs) >= completed
        for entry in about_jobs:
            assert entry.get("job_id", "").startswith("video_") and entry.get("tenant") == ADMIN, entry
            assert entry.get("model") == MODEL, entry
            mentioned = set(re.findall(r"video_[0-9a-f]{32}", json.dumps({k: v for k, v in entry.items() if k != "job_id"})))
            assert mentioned <= {entry["job_id"]}, entry  # the line is about the job it names
        assert "wanq-local-secret" not in worker.process.log()


def test_killing_a_worker_leaves_the_others_working(api: httpx.Client, store: JobStore, extra: list[Worker]) -> None:
    victim = extra[0]
    jobs = _submit(api, MODEL, 5, SLOWER, "kill")

    def victim_busy() -> str | None:
        for job_id in jobs:
            record = store.get(job_id)
            if record is not None and record.status.value == "in_progress" and record.worker == victim.worker_id:
                return job_id
        return None

    wait_until(lambda: victim_busy() is not None, 120, "a job running on the victim", interval=0.02)
    caught = victim_busy()
    victim.process.stop(signal.SIGKILL)  # the Celery parent and the child that holds the model
    killed_at = time.time()

    ran_on = _finish_all(api, store, jobs)
    assert victim.worker_id not in _live_ids(store, MODEL)
    if caught is not None:  # it was mid-job: the upkeep loop requeued it and a survivor finished it
        record = store.get(caught)
        assert record is not None and record.attempts >= 2 and ran_on[caught] != victim.worker_id
    later = [j for j in jobs if (r := store.get(j)) is not None and (r.started_at or 0) > killed_at]
    assert all(ran_on[j] != victim.worker_id for j in later)
    assert set(ran_on.values()) - {victim.worker_id}, "the surviving workers completed nothing"


def test_scale_down_drains_then_finishes_the_running_job(
    api: httpx.Client, store: JobStore, settings: Settings, extra: list[Worker]
) -> None:
    """What Kubernetes does to a worker pod: preStop (`wanq worker-drain`), then SIGTERM to PID 1."""
    leaving = extra[1]
    assert leaving.worker_id in _live_ids(store, MODEL)
    # Two jobs for the two live workers (the session's and this one): each takes one.
    jobs = _submit(api, MODEL, 2, SLOWER, "leaving")

    def job_on_leaving() -> str | None:
        for job_id in jobs:
            record = store.get(job_id)
            if record is not None and record.status.value == "in_progress" and record.worker == leaving.worker_id:
                return job_id
        return None

    wait_until(lambda: job_on_leaving() is not None, 120, "a job running on the leaving worker", interval=0.02)
    job = str(job_on_leaving())
    assert drain(settings, MODEL, nodes=[leaving.node]) == [leaving.node]
    os.kill(leaving.process.proc.pid, signal.SIGTERM)  # the Celery parent only, as the kubelet does
    after = _submit(api, MODEL, 2, QUICK, "after the drain")

    _finish_all(api, store, jobs)
    record = store.get(job)
    assert record is not None and record.worker == leaving.worker_id and record.attempts == 1  # finished where it ran
    assert leaving.process.proc.wait(120) == 0  # then the worker left on its own, cleanly
    assert all(worker != leaving.worker_id for worker in _finish_all(api, store, after).values())
