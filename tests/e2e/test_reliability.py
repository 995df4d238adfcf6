"""Reliability through the real stack: killed workers, warm shutdown, poison jobs, out of memory,
time limits and a storage outage. Each test runs its own workers (with fault injection on) for a
model the shared workers don't serve, so nothing here disturbs the rest of the suite."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.storage import Storage
from shared.store import JobStore
from tests.conftest import LATE, wait_for_status
from tests.reliability_report import record as record_figures
from wanq.stack import Managed, Stack, free_port

FAULTY = {
    "WANQ_ENGINE_FAULT_INJECTION": "true",
    "WANQ_JOBS_MAX_ATTEMPTS": "6",
    "WANQ_WORKER_HEARTBEAT_INTERVAL_S": "0.3",
    "WANQ_WORKER_HEARTBEAT_TTL_S": "1.5",
}
TINY_JOB = {"model": LATE, "size": "64x64", "num_frames": 5, "num_inference_steps": 6, "guidance_scale_2": 2.0}


class Workers:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.started: list[Managed] = []

    def start(self, count: int = 1, **env: str) -> list[Managed]:
        new = [self.stack.start_worker(LATE, extra_env={**FAULTY, **env}) for _ in range(count)]
        self.started.extend(new)
        self.stack.wait_for_workers(LATE, len([w for w in self.started if w.alive()]), timeout=180)
        return new

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop(signal.SIGKILL)


@pytest.fixture
def workers(stack: Stack, store: JobStore) -> Iterator[Workers]:
    pool = Workers(stack)
    yield pool
    pool.stop_all()
    # Leave no queued LATE job behind for other tests' workers.
    for job_id in store.redis.zrange(store.queued_key(LATE), 0, -1):
        store.transition(job_id.decode(), allowed=[], patch={"status": "canceled"})


class TerminalLog:
    """Counts terminal transitions per job from the store's pub/sub (one per job, or a bug)."""

    def __init__(self, store: JobStore) -> None:
        self.counts: Counter[str] = Counter()
        self._pubsub = store.redis.pubsub()
        self._pubsub.psubscribe(f"{store.prefix}:events:*")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message and json.loads(message["data"])["status"] in ("completed", "failed", "canceled"):
                self.counts[json.loads(message["data"])["id"]] += 1

    def close(self) -> None:
        time.sleep(0.5)
        self._stop.set()
        self._thread.join()
        self._pubsub.close()


def submit(api: httpx.Client, prompt: str, **fields: Any) -> str:
    response = api.post("/v1/videos", json={"prompt": prompt, **TINY_JOB, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[1])


@pytest.mark.slow
def test_twenty_sigkills_mid_denoise_lose_nothing_and_complete_each_job_once(
    api: httpx.Client, store: JobStore, storage: Storage, workers: Workers
) -> None:
    pool = workers.start(3)
    log = TerminalLog(store)
    rng = random.Random(20)
    ids = [submit(api, f"survivor {n} [[fault:sleep@1]]") for n in range(10)]
    kills: list[str] = []
    killed_per_job: Counter[str] = Counter()
    deadline = time.monotonic() + 240
    while len(kills) < 20 and time.monotonic() < deadline:
        running = [
            r for r in store.get_many(ids) if r.status.value == "in_progress" and r.stage.value == "denoising" and r.worker
        ]
        running = [r for r in running if killed_per_job[r.id] < 3 and store.worker_alive(str(r.worker))]
        if not running:
            if all(r.status.is_terminal() for r in store.get_many(ids)):
                ids.append(submit(api, f"survivor {len(ids)} [[fault:sleep@1]]"))
            time.sleep(0.1)
            continue
        victim = rng.choice(running)
        time.sleep(rng.uniform(0, 0.6))
        if len(kills) == 9:
            # Once, a whole worker (parent and child) dies: its job must go to another worker.
            owner = next((w for w in pool if w.alive()), None)
            if owner is not None:
                owner.stop(signal.SIGKILL)
                pool.remove(owner)
        else:
            try:
                os.kill(pid_of(str(victim.worker)), signal.SIGKILL)
            except ProcessLookupError:
                continue
        kills.append(victim.id)
        killed_per_job[victim.id] += 1
    assert len(kills) == 20, f"only {len(kills)} kills happened"

    finals = [wait_for_status(api, i, {"completed", "failed", "canceled"}, timeout=240) for i in ids]
    log.close()
    assert [f["status"] for f in finals] == ["completed"] * len(ids), [(f["id"], f["status"], f["error"]) for f in finals]
    for video in finals:
        assert log.counts[video["id"]] == 1, (video["id"], log.counts[video["id"]])
        keys = storage.list_keys(storage.job_prefix(video["id"]))
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["spritesheet.jpg", "thumbnail.webp", "video.mp4"]
    assert sum(f["attempts"] for f in finals) >= len(ids) + len(set(kills)) - 2
    record_figures(
        "sigkill",
        {
            "test": "tests/e2e/test_reliability.py::test_twenty_sigkills_mid_denoise_lose_nothing_and_complete_each_job_once",
            "summary": f"{len(kills)} SIGKILLs (one of a whole worker) across {len(ids)} jobs: all completed, each once",
            "kills": len(kills),
            "jobs": len(ids),
            "jobs_killed_at_least_once": len(set(kills)),
            "attempts": sum(f["attempts"] for f in finals),
            "completed": len(finals),
            "lost": 0,
            "completed_twice": 0,
        },
    )


def test_sigterm_is_a_warm_shutdown_that_finishes_the_running_job(api: httpx.Client, store: JobStore, workers: Workers) -> None:
    (worker,) = workers.start(1)
    video_id = submit(api, "finish me [[fault:sleep@1]]")
    deadline = time.monotonic() + 60
    while (record := store.get(video_id)) is not None and record.step < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker.proc.pid, signal.SIGTERM)  # as Kubernetes does: the main process only
    worker.proc.wait(60)
    video = api.get(f"/v1/videos/{video_id}").json()
    assert video["status"] == "completed", video
    assert worker.proc.returncode == 0
    record_figures(
        "sigterm",
        {
            "test": "tests/e2e/test_reliability.py::test_sigterm_is_a_warm_shutdown_that_finishes_the_running_job",
            "summary": "SIGTERM mid-denoise: the job completed on the same attempt, the worker exited 0",
            "signals": 1,
            "job_status": video["status"],
            "attempts": video["attempts"],
            "worker_exit_code": worker.proc.returncode,
            "lost": 0,
        },
    )


@pytest.mark.slow
def test_poison_jobs_end_failed_after_bounded_attempts(api: httpx.Client, workers: Workers) -> None:
    workers.start(1, WANQ_JOBS_MAX_ATTEMPTS="2")
    raising = submit(api, "always raises [[fault:error@1]]")
    video = wait_for_status(api, raising, {"completed", "failed"}, timeout=60)
    assert video["status"] == "failed" and video["error"]["code"] == "internal_error"
    assert "injected fault" in video["error"]["message"] and video["attempts"] == 1
    crashing = submit(api, "always kills its worker [[fault:crash@1]]")
    video = wait_for_status(api, crashing, {"completed", "failed"}, timeout=120)
    assert video["status"] == "failed" and video["attempts"] == 2
    assert "gave up after 2 attempts" in video["error"]["message"]
    healthy = submit(api, "after the poison")
    assert wait_for_status(api, healthy, {"completed", "failed"}, timeout=60)["status"] == "completed"
    record_figures(
        "poison",
        {
            "test": "tests/e2e/test_reliability.py::test_poison_jobs_end_failed_after_bounded_attempts",
            "summary": "a raising job failed after 1 attempt, a worker-killing one after 2 (the cap); the next job completed",
            "raising_job_attempts": 1,
            "crashing_job_attempts": 2,
            "max_attempts": 2,
            "next_job": "completed",
            "lost": 0,
        },
    )


def test_out_of_memory_fails_the_job_and_the_worker_carries_on(api: httpx.Client, workers: Workers) -> None:
    workers.start(1)
    oom = submit(api, "too big [[fault:oom@2]]")
    video = wait_for_status(api, oom, {"completed", "failed"}, timeout=60)
    assert video["status"] == "failed" and video["error"]["code"] == "out_of_memory", video
    assert "out of GPU memory" in video["error"]["message"]
    after = submit(api, "fits")
    done = wait_for_status(api, after, {"completed", "failed"}, timeout=60)
    assert done["status"] == "completed" and done["attempts"] == 1
    record_figures(
        "oom",
        {
            "test": "tests/e2e/test_reliability.py::test_out_of_memory_fails_the_job_and_the_worker_carries_on",
            "summary": "OOM at step 2: the job failed with out_of_memory; the same worker completed the next job",
            "error_code": video["error"]["code"],
            "next_job": done["status"],
            "lost": 0,
        },
    )


@pytest.mark.slow
def test_hard_time_limit_fails_with_timeout_and_replaces_the_process(
    api: httpx.Client, store: JobStore, workers: Workers
) -> None:
    workers.start(1, WANQ_JOBS_SOFT_TIME_LIMIT_S="10", WANQ_JOBS_HARD_TIME_LIMIT_S="12")
    hung = submit(api, "never ends [[fault:hang@1]]")
    video = wait_for_status(api, hung, {"completed", "failed"}, timeout=120)
    assert video["status"] == "failed" and video["error"]["code"] == "timeout", video
    hung_worker = store.get(hung).worker  # type: ignore[union-attr]
    after = submit(api, "next one", num_inference_steps=1)
    done = wait_for_status(api, after, {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed", done["error"]["message"]
    # The hard limit killed the child that hung; a fresh process ran the next job.
    assert pid_of(str(store.get(after).worker)) != pid_of(str(hung_worker))  # type: ignore[union-attr]
    record_figures(
        "timeout",
        {
            "test": "tests/e2e/test_reliability.py::test_hard_time_limit_fails_with_timeout_and_replaces_the_process",
            "summary": "a hung job failed with timeout (soft 10 s, hard 12 s); a fresh process completed the next job",
            "error_code": video["error"]["code"],
            "next_job": done["status"],
            "process_replaced": True,
            "lost": 0,
        },
    )


class FlakyProxy:
    """A TCP proxy in front of the S3 endpoint that can refuse connections (storage outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = True
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._server.close()


@pytest.mark.slow
def test_storage_outage_is_retried_then_fails_with_storage_unavailable(
    api: httpx.Client, stack: Stack, store: JobStore, workers: Workers
) -> None:
    proxy = FlakyProxy(int(stack.s3_url.rsplit(":", 1)[1]))
    try:
        workers.start(
            1, WANQ_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", WANQ_S3_UPLOAD_ATTEMPTS="4", WANQ_S3_UPLOAD_BACKOFF_S="0.5"
        )

        def outage_during_upload(video_id: str, seconds: float | None) -> dict[str, Any]:
            while (record := store.get(video_id)) is not None and record.stage.value not in (
                "encoding_video",
                "uploading",
                "done",
            ):
                if record.status.is_terminal():
                    break
                if record.step >= 3:
                    proxy.up = False
                time.sleep(0.02)
            if seconds is not None:
                time.sleep(seconds)
                proxy.up = True
            video = wait_for_status(api, video_id, {"completed", "failed"}, timeout=60)
            proxy.up = True
            return video

        short = outage_during_upload(submit(api, "brief outage [[fault:sleep@1]]"), 1.0)
        assert short["status"] == "completed", short
        long = outage_during_upload(submit(api, "long outage [[fault:sleep@1]]"), None)
        assert long["status"] == "failed" and long["error"]["code"] == "storage_unavailable", long
        assert "after 4 attempts" in long["error"]["message"]
        record_figures(
            "storage_outage",
            {
                "test": "tests/e2e/test_reliability.py::test_storage_outage_is_retried_then_fails_with_storage_unavailable",
                "summary": "S3 refused for 1 s during upload: retried and completed; refused for good: failed with "
                "storage_unavailable after 4 attempts",
                "brief_outage": short["status"],
                "lasting_outage": long["error"]["code"],
                "upload_attempts": 4,
                "lost": 0,
            },
        )
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_crash_before_the_upload_finishes_loses_nothing(
    api: httpx.Client, stack: Stack, store: JobStore, storage: Storage, workers: Workers
) -> None:
    """Decoded, not yet uploaded (the upload runs in the background while the next job starts): a
    worker killed then must not lose the job. Its heartbeat stops, the job is requeued and redone."""
    proxy = FlakyProxy(int(stack.s3_url.rsplit(":", 1)[1]))
    try:
        (doomed,) = workers.start(
            1, WANQ_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", WANQ_S3_UPLOAD_ATTEMPTS="20", WANQ_S3_UPLOAD_BACKOFF_S="1"
        )
        video_id = submit(api, "decoded but not uploaded")
        deadline = time.monotonic() + 120
        while (record := store.get(video_id)) is not None and record.generated_at is None and time.monotonic() < deadline:
            if record.step >= 1:
                proxy.up = False  # the upload that follows the decode cannot reach the store
            time.sleep(0.01)
        assert record is not None and record.generated_at is not None and record.status.value == "in_progress"
        time.sleep(0.5)
        doomed.stop(signal.SIGKILL)
        workers.start(1)  # a healthy worker elsewhere
        video = wait_for_status(api, video_id, {"completed", "failed"}, timeout=180)
        assert video["status"] == "completed" and video["attempts"] == 2, video
        keys = storage.list_keys(storage.job_prefix(video_id))
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["spritesheet.jpg", "thumbnail.webp", "video.mp4"]
    finally:
        proxy.close()
