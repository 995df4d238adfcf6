"""Load: 2,000 jobs through the API of a stack of its own with three workers. Every job ends, exactly
once, and nothing is lost; the API's latency under that load is recorded (docs/RELIABILITY.md).

Submitters post the jobs from several threads while pollers read them back, as clients would. On two
shared CPU cores a tiny job takes ~2-4 s, so running all 2,000 would take over half an hour: the
workers complete jobs for a bounded window, then the rest of the queue is drained (canceled) through
the admin API, and every job must reach its one terminal state either way. The counts are asserted;
the latencies are recorded, never asserted (no timed assertions).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.private_stack import MODEL, private_stack
from tests.reliability_report import record
from tests.webhook_receiver import Receiver
from wanq.stack import Stack

JOBS = 2000
WORKERS = 3
SUBMITTERS = 8
RUN_WINDOW_S = 90.0  # how long workers take jobs after the last submission before the rest is drained
TINY = {"prompt": "a paper boat in the rain", "model": MODEL, "size": "64x64", "num_frames": 5, "num_inference_steps": 1}
ENDS = ["video.completed", "video.failed", "video.canceled"]


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49] * 1000, 1),
        "p95_ms": round(cuts[94] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "n": len(samples),
    }


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_thousand_jobs_all_end_once_and_api_latency_is_recorded(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path)
    try:
        with private_stack(tmp_path / "stack", workers=WORKERS) as stack:
            _load(stack, receiver)
    finally:
        receiver.stop()


def _load(stack: Stack, receiver: Receiver) -> None:
    admin = httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=60)
    client = redis.Redis.from_url(stack.redis_url)
    assert admin.put("/v1/webhook_endpoint", json={"url": receiver.url("/ends"), "events": ENDS}).status_code == 200

    # 1. Submit from several threads while others poll what was submitted
    create_s: list[float] = []
    read_s: list[float] = []
    answers: Counter[int] = Counter()
    ids: list[str] = []
    lock = threading.Lock()
    submitting = threading.Event()
    submitting.set()

    def submit(n: int) -> None:
        with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=60) as http:
            for _ in range(n):
                t0 = time.perf_counter()
                response = http.post("/v1/videos", json=TINY)
                elapsed = time.perf_counter() - t0
                with lock:
                    answers[response.status_code] += 1
                    create_s.append(elapsed)
                    if response.status_code == 202:
                        ids.append(response.json()["id"])

    def poll() -> None:
        with httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=60) as http:
            i = 0
            while submitting.is_set():
                with lock:
                    target = ids[i % len(ids)] if ids else None
                i += 1
                t0 = time.perf_counter()
                response = http.get(f"/v1/videos/{target}") if target else http.get("/v1/videos", params={"limit": 10})
                elapsed = time.perf_counter() - t0
                with lock:
                    answers[response.status_code] += 1
                    read_s.append(elapsed)
                time.sleep(0.05)

    started = time.monotonic()
    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(2)]
    for thread in pollers:
        thread.start()
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(submit, [JOBS // SUBMITTERS] * SUBMITTERS))
    submit_s = time.monotonic() - started
    submitting.clear()
    for thread in pollers:
        thread.join(60)
    assert answers[202] == JOBS and set(answers) <= {200, 202}, answers
    assert len(set(ids)) == JOBS

    # 2. Workers run for a bounded window, then the rest is drained
    def counts() -> Counter[str]:
        raws = client.mget([f"wanq:job:{i}" for i in ids])
        return Counter(json.loads(r)["status"] if r else "missing" for r in raws)

    time.sleep(RUN_WINDOW_S)
    mid = counts()
    drained = admin.post(f"/v1/admin/models/{MODEL}/drain")
    assert drained.status_code == 200, drained.text
    deadline = time.monotonic() + 300
    while (final := counts())["queued"] + final["in_progress"] + final["missing"]:
        assert time.monotonic() < deadline, f"jobs did not end within 300 s of the drain: {final}"
        time.sleep(0.5)
    total_s = time.monotonic() - started
    assert set(final) <= {"completed", "canceled"}, final
    assert final["completed"] >= WORKERS, final  # the workers did run jobs under the load

    # 3. Exactly one terminal event per job, and it says how the job ended
    receiver.wait_for("/ends", JOBS, timeout=300)
    time.sleep(2.0)
    ends: dict[str, set[str]] = {}
    kinds: Counter[str] = Counter()
    for request in receiver.requests("/ends"):
        body = json.loads(request["body"])
        ends.setdefault(body["data"]["id"], set()).add(request["headers"]["webhook-id"])
        kinds[body["type"]] += 1
    assert set(ends) == set(ids)
    assert [job for job, hooks in ends.items() if len(hooks) > 1] == []
    assert kinds == Counter({"video.completed": final["completed"], "video.canceled": final["canceled"]}), kinds
    records = [json.loads(r) for r in client.mget([f"wanq:job:{i}" for i in ids]) if r]
    done = [r for r in records if r["status"] == "completed"]
    runs = [r["completed_at"] - r["started_at"] for r in done]

    record(
        "load",
        {
            "test": "tests/e2e/test_load.py",
            "summary": f"{JOBS} jobs through the API ({SUBMITTERS} submitting threads) with {WORKERS} workers: every job "
            f"ended once ({final['completed']} completed in {RUN_WINDOW_S:g} s, {final['canceled']} drained); "
            f"create p50/p99 {percentiles(create_s)['p50_ms']}/{percentiles(create_s)['p99_ms']} ms",
            "jobs": JOBS,
            "workers": WORKERS,
            "submit_threads": SUBMITTERS,
            "submit_s": round(submit_s, 1),
            "submitted_per_s": round(JOBS / submit_s, 1),
            "api_create_latency": percentiles(create_s),
            "api_read_latency_while_submitting": percentiles(read_s),
            "api_answers": {str(k): v for k, v in sorted(answers.items())},
            "states_after_window": dict(mid),
            "completed": final["completed"],
            "canceled_by_drain": final["canceled"],
            "attempts_of_completed": {str(k): v for k, v in sorted(Counter(r["attempts"] for r in done).items())},
            "job_run_s_median": round(statistics.median(runs), 2) if runs else None,
            "lost": 0,
            "ended_twice": 0,
            "total_s": round(total_s, 1),
            "completed_per_minute": round(mid["completed"] * 60 / RUN_WINDOW_S, 1),
            "minutes_all_would_take": round(JOBS / max(1, mid["completed"]) * RUN_WINDOW_S / 60),
            "note": "the rest of the queue is drained after the window, to keep the test to a few minutes",
        },
    )
