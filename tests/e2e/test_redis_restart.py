"""Redis restarted under load: every job still ends, exactly once, and the API says 503 meanwhile.

A stack of its own (tests/private_stack.py) with AOF on, as deploy/ runs Redis. Hundreds of tiny jobs
are queued and some run when redis-server is stopped (SIGTERM: it writes its AOF and exits, like a
pod being moved) and started again on the same port and data folder. Every process reconnects by
itself: the API, the dispatcher, the webhook delivery process, the Celery workers and their heartbeats.

What could fail: a job lost (never ends), a job completed twice (two `video.completed` events with
different ids at the tenant's webhook receiver), a 500 or a dropped connection from the API while
Redis is away, or an API, worker or dispatcher that never comes back without a restart.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.schemas import JobRecord
from shared.settings import Settings
from shared.specs import VideoRequest, resolve_spec
from shared.store import JobStore
from tests.conftest import wait_for_status
from tests.private_stack import MODEL, private_stack, redis_process
from tests.records import write_stray
from tests.reliability_report import record
from tests.sse import Follower
from tests.webhook_receiver import Receiver
from wanq.stack import Stack

JOBS = 500
OUTAGE_S = 5.0
AFTER = 20  # completions after the restart before the rest is drained (2 CPU workers take ~3 s a job)
# One prompt for all: the workers' prompt cache spares the text encoder.
TINY = {"prompt": "a red kite over a grey sea", "model": MODEL, "size": "64x64", "num_frames": 5, "num_inference_steps": 1}
ENDS = ["video.completed", "video.failed", "video.canceled"]


class Hammer:
    """Threads that keep calling the API (reads and writes) and tally what comes back."""

    def __init__(self, stack: Stack, ids: list[str], threads: int = 3) -> None:
        self.url = stack.api_url
        self.headers = stack.admin_headers()
        self.ids = ids
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str, int | str, str | None]] = []  # (time, call, status or error, Retry-After)
        self.created: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, n: int) -> None:
        calls = ["retrieve", "list", "create", "models", "queues", "events"]
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            i = n
            while not self.stop.is_set():
                call = calls[i % len(calls)]
                i += 1
                try:
                    response = self._call(client, call, i)
                    outcome: int | str = response.status_code
                    retry_after = response.headers.get("retry-after")
                    if call == "create" and response.status_code == 202:
                        with self.lock:
                            self.created.append(response.json()["id"])
                except httpx.HTTPError as exc:
                    outcome, retry_after = type(exc).__name__, None
                with self.lock:
                    self.seen.append((time.monotonic(), call, outcome, retry_after))
                time.sleep(0.02)

    def _call(self, client: httpx.Client, call: str, i: int) -> httpx.Response:
        video_id = self.ids[i % len(self.ids)]
        if call == "retrieve":
            return client.get(f"/v1/videos/{video_id}")
        if call == "list":
            return client.get("/v1/videos", params={"limit": 5})
        if call == "create":
            return client.post("/v1/videos", json=TINY)
        if call == "models":
            return client.get("/v1/models")
        if call == "queues":
            return client.get("/v1/admin/queues")
        # The SSE stream: its first event (or its refusal) is enough.
        with client.stream("GET", f"/v1/videos/{video_id}/events") as response:
            if response.status_code == 200:
                next(response.iter_lines(), None)
            else:
                response.read()
            return response


def statuses(client: redis.Redis, ids: list[str]) -> Counter[str]:
    raws = client.mget([f"wanq:job:{i}" for i in ids])
    return Counter(json.loads(r)["status"] if r else "missing" for r in raws)


def test_a_job_stored_but_never_queued_is_put_back_by_upkeep(
    stack: Stack, api: httpx.Client, settings: Settings, store: JobStore
) -> None:
    """The API stores and queues a job in one script (shared/lua/create.lua), so it never leaves a record outside
    every queue; a record written on its own (an older API during a rolling upgrade, a hand-made repair) is
    still not left `queued` forever: upkeep's reconciler finds it in no queue twice in a row and puts it back."""
    request = VideoRequest(prompt="half submitted", model="tiny-ti2v-5b", size="64x64", num_frames=5, num_inference_steps=1)
    spec = resolve_spec(request, settings.catalog(), settings.default_model, settings.jobs, has_image=False)
    record = JobRecord(id=f"video_{uuid.uuid4().hex}", tenant="admin", spec=spec, total_steps=spec.num_inference_steps)
    write_stray(store, record)  # the record only, as an older API could leave it
    first = api.get(f"/v1/videos/{record.id}").json()
    # In no queue: upkeep puts it back only once it has seen it so twice (two rounds, 0.5 s apart here).
    assert first["status"] == "queued" and first["queue_position"] is None, first
    video = wait_for_status(api, record.id, {"completed", "failed"})
    assert video["status"] == "completed" and video["attempts"] == 1, video
    logs = [path.read_text(errors="replace") for path in (stack.workdir / "logs").glob("api-*.log")]
    assert any("put back a queued job that no queue held" in text and record.id in text for text in logs)


def final_status(client: redis.Redis, video_id: str) -> str:
    raw = client.get(f"wanq:job:{video_id}")
    return str(json.loads(raw)["status"]) if raw else "missing"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_redis_restart_loses_no_job_and_the_api_answers_503_meanwhile(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path)
    started = time.monotonic()
    try:
        with private_stack(tmp_path / "stack", workers=2) as stack:
            _restart_under_load(stack, receiver, started)
    finally:
        receiver.stop()


def _restart_under_load(stack: Stack, receiver: Receiver, started: float) -> None:
    api = httpx.Client(base_url=stack.api_url, headers=stack.admin_headers(), timeout=30)
    client = redis.Redis.from_url(stack.redis_url)
    # The tenant's endpoint receives every job's end: a job that ended twice would send two events.
    hooked = api.put("/v1/webhook_endpoint", json={"url": receiver.url("/ends"), "events": ENDS})
    assert hooked.status_code == 200, hooked.text

    # 1. Queue the jobs
    def submit(n: int) -> str:
        response = api.post("/v1/videos", json=TINY)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(submit, range(JOBS)))
    submitted_s = time.monotonic() - started

    # 2. Let some finish and some run, then stop Redis while the API is being called
    deadline = time.monotonic() + 300
    while (done := statuses(client, ids))["completed"] < 10 or not done["in_progress"]:
        assert time.monotonic() < deadline, f"no progress before the outage: {done}"
        time.sleep(0.05)
    before = statuses(client, ids)
    running_then = [i for i in ids if final_status(client, i) == "in_progress"]
    # A client that follows a running job's events across the outage: its stream must end cleanly.
    follower = Follower(stack, running_then[0]) if running_then else None
    if follower:
        follower.start()
    hammer = Hammer(stack, ids)
    hammer.start()
    time.sleep(1.0)
    port, server = redis_process(stack)
    down_at = time.monotonic()
    server.stop()  # type: ignore[attr-defined]  # SIGTERM: Redis writes its AOF and exits
    time.sleep(OUTAGE_S)
    stack.start_redis(port, appendonly=True)
    up_at = time.monotonic()

    # 3. The API recovers by itself: every kind of call succeeds again
    deadline = time.monotonic() + 60
    while True:
        with hammer.lock:
            ok_after = {call for at, call, outcome, _ in hammer.seen if at > up_at and outcome in (200, 202)}
        if ok_after >= {"retrieve", "list", "create", "models", "queues", "events"}:
            break
        assert time.monotonic() < deadline, f"the API did not recover within 60 s: only {ok_after} succeed"
        time.sleep(0.2)
    recovered_s = time.monotonic() - up_at
    time.sleep(1.0)
    hammer.join()
    during = [(call, outcome, retry) for at, call, outcome, retry in hammer.seen if down_at <= at <= up_at]
    tally = Counter(f"{call} {outcome}" for call, outcome, _ in (s[1:] for s in hammer.seen))
    bad = [(call, outcome) for _, call, outcome, _ in hammer.seen if outcome not in (200, 202, 503)]
    assert bad == [], f"the API answered other than 2xx or 503: {Counter(bad)}"
    assert all(retry is not None and int(retry) > 0 for _, outcome, retry in during if outcome == 503)
    assert sum(1 for _, outcome, _ in during if outcome == 503) >= 10
    if follower:
        # Either the job ended before Redis stopped, or the stream said why it ended (never a cut connection).
        follower.join(60)
        assert follower.error is None and follower.events, (follower.error, follower.events)
        last_event, last_data = follower.events[-1]
        assert last_event == "interrupted" or last_data["status"] in ("completed", "failed", "canceled"), follower.events[-1]
        if last_event == "interrupted":
            assert last_data["error"]["code"] == "store_unavailable", last_data

    # Every job the API acknowledged exists. A create whose answer was lost (Redis applied it, then went
    # away before answering: the client saw a 503 or a dropped connection) may exist too: it must run and
    # end once like any other; clients who must know use an Idempotency-Key, whose retry replays it.
    stored = {i.decode() for i in client.zrange("wanq:jobs:admin", 0, -1)}
    acknowledged = set(ids + hammer.created)
    assert acknowledged <= stored, f"acknowledged jobs missing: {acknowledged - stored}"
    unacknowledged = stored - acknowledged
    failed_creates = sum(1 for _, call, outcome, _ in hammer.seen if call == "create" and outcome != 202)
    assert len(unacknowledged) <= failed_creates, (unacknowledged, failed_creates)

    # 4. Workers take jobs again; once they have shown it, the rest of the queue is drained (canceled)
    everything = sorted(stored)
    deadline = time.monotonic() + 300
    while statuses(client, everything)["completed"] < before["completed"] + AFTER:
        assert time.monotonic() < deadline, f"workers did not resume: {statuses(client, everything)}"
        time.sleep(0.2)
    resumed_s = time.monotonic() - up_at
    after_restart = statuses(client, everything)["completed"] - before["completed"]
    drained = api.post(f"/v1/admin/models/{MODEL}/drain")
    assert drained.status_code == 200, drained.text

    # 5. Every job ends, each once: the ones queued before and those created around the outage
    deadline = time.monotonic() + 300
    while (final := statuses(client, everything))["queued"] + final["in_progress"] + final["missing"]:
        assert time.monotonic() < deadline, f"jobs did not end within 300 s: {final}"
        time.sleep(0.5)
    assert set(final) <= {"completed", "canceled"}, final
    # The jobs that were running when Redis went away paused and finished (not failed, not restarted from scratch).
    assert [final_status(client, i) for i in running_then] == ["completed"] * len(running_then)
    receiver.wait_for("/ends", len(everything), timeout=120)
    time.sleep(2.0)  # a second end of some job would have arrived by now
    ends_per_job: dict[str, list[tuple[str, str]]] = {}
    for request in receiver.requests("/ends"):
        body: dict[str, Any] = json.loads(request["body"])
        ends_per_job.setdefault(body["data"]["id"], []).append((body["type"], request["headers"]["webhook-id"]))
    assert set(ends_per_job) == set(everything)
    twice = {job: ends for job, ends in ends_per_job.items() if len({webhook_id for _, webhook_id in ends}) > 1}
    assert twice == {}, f"jobs that ended twice: {twice}"
    for video_id, ((event, _), *_) in ends_per_job.items():
        assert event == f"video.{final_status(client, video_id)}", (video_id, event)
    for process in stack.processes:
        assert process.alive() or process is server, f"{process.name} died"

    record(
        "redis_restart",
        {
            "test": "tests/e2e/test_redis_restart.py",
            "summary": f"{len(everything)} jobs, Redis down {OUTAGE_S:g} s mid-run; every job ended once "
            f"({final['completed']} completed, {final['canceled']} drained); API only 2xx/503, back {recovered_s:.1f} s after Redis",
            "jobs_queued_before_outage": JOBS,
            "jobs_created_around_outage": len(hammer.created),
            "creates_not_answered_202_that_had_landed": len(unacknowledged),
            "states_when_redis_stopped": dict(before),
            "workers": 2,
            "outage_s": OUTAGE_S,
            "api_calls_during_outage": len(during),
            "api_answers": dict(tally),
            "api_recovered_after_s": round(recovered_s, 2),
            "event_stream_across_outage": (
                "no job was running" if follower is None else f"ended cleanly with a {follower.events[-1][0]!r} event"
            ),
            "completed": final["completed"],
            "completed_after_restart_before_drain": after_restart,
            "workers_resumed_within_s": round(resumed_s, 1),
            "canceled_by_drain": final["canceled"],
            "lost": 0,
            "ended_twice": 0,
            "terminal_webhooks": sum(len(e) for e in ends_per_job.values()),
            "submit_s": round(submitted_s, 1),
            "minutes_all_would_take": round(len(everything) / after_restart * resumed_s / 60),
            "note": "the rest of the queue is drained once the workers have shown they carry on, to keep the test short",
        },
    )
