"""Reliability through the real stack: killed workers, warm shutdown, poison jobs, out of memory,
time limits and a storage outage. Each test runs its own workers (with fault injection on) for a
model the shared workers don't serve, so nothing here disturbs the rest of the suite."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import S3Settings
from shared.storage import Storage
from shared.store import JobStore
from tests.conftest import wait_for_status
from tests.faulty import TerminalLog, Workers, pid_of, processes_of, running_process, submit
from tests.proxy import Proxy
from tests.reliability_report import record as record_figures
from tests.runs import tally
from wanq.stack import Stack
from worker import journal


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
    killed_pids: set[int] = set()
    deadline = time.monotonic() + 240
    while len(kills) < 20 and time.monotonic() < deadline:
        running = [
            r for r in store.get_many(ids) if r.status.value == "in_progress" and r.stage.value == "denoising" and r.worker
        ]
        running = [r for r in running if killed_per_job[r.id] < 3 and store.worker_info(str(r.worker)) is not None]
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
                killed_pids |= processes_of(owner)
                owner.stop(signal.SIGKILL)
                pool.remove(owner)
        else:
            pid = pid_of(str(victim.worker))
            if not running_process(pid):
                continue  # killed already (a zombie until its parent reaps it: a kill would "succeed")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed_pids.add(pid)
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
    # Runs, from the workers' own journal: each job ran once more than it was killed, and uploaded once.
    runs = tally(journal.read(str(workers.journal)), ids, killed_pids, {f["id"]: f["attempts"] for f in finals})
    assert all(r.exactly_once() for r in runs.values()), {j: r for j, r in runs.items() if not r.exactly_once()}
    assert all(f["attempts"] == runs[f["id"]].runs for f in finals)
    record_figures(
        "sigkill",
        {
            "test": "tests/e2e/test_reliability.py::test_twenty_sigkills_mid_denoise_lose_nothing_and_complete_each_job_once",
            "summary": f"{len(kills)} SIGKILLs (one of a whole worker) across {len(ids)} jobs: all completed, each once",
            "kills": len(kills),
            "jobs": len(ids),
            "jobs_killed_at_least_once": len(set(kills)),
            "attempts": sum(f["attempts"] for f in finals),
            "runs": sum(r.runs for r in runs.values()),
            "runs_interrupted_by_a_kill": sum(r.killed for r in runs.values()),
            "uploads": sum(r.uploads for r in runs.values()),
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


class FlakyProxy(Proxy):
    """A TCP proxy in front of the S3 endpoint that can refuse connections (storage outage)."""

    def __init__(self, target_port: int) -> None:
        self.up = True
        super().__init__(target_port)

    def intercept(self, client: socket.socket) -> bool:
        if self.up:
            return False
        client.close()
        return True


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
def test_s3_restarted_during_the_upload_the_job_completes_with_one_copy_of_each_output(
    api: httpx.Client, stack: Stack, store: JobStore, workers: Workers, tmp_path: Path
) -> None:
    """moto's server killed as the job's outputs are due, and back within the retry window (with its bucket, as a
    durable store comes back): the upload is retried, not failed, and leaves exactly one copy of each output."""
    own = Stack(tmp_path / "s3")
    proxy = None
    try:
        url = own.start_s3()
        port = int(url.rsplit(":", 1)[1])
        own_storage = Storage(S3Settings(endpoint_url=url, bucket=stack.env["WANQ_S3_BUCKET"]))
        own_storage.ensure_bucket()
        # The worker reaches moto through a proxy that stays shut until the bucket is back: no try of the worker's
        # lands between moto's start and its bucket (a durable store comes back with its buckets).
        proxy = FlakyProxy(port)
        workers.start(
            1, WANQ_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", WANQ_S3_UPLOAD_ATTEMPTS="8", WANQ_S3_UPLOAD_BACKOFF_S="0.5"
        )
        video_id = submit(api, "the store restarts [[fault:sleep@1]]")
        while (record := store.get(video_id)) is not None and record.step < 3 and not record.status.is_terminal():
            time.sleep(0.02)
        proxy.up = False
        next(p for p in own.processes if p.name == f"s3-{port}" and p.alive()).stop(signal.SIGKILL)
        while (record := store.get(video_id)) is not None and record.stage.value not in ("encoding_video", "uploading", "done"):
            assert not record.status.is_terminal(), record
            time.sleep(0.02)
        time.sleep(1.0)  # the upload meets the outage
        own.start_s3(port)
        own_storage.ensure_bucket()
        proxy.up = True
        video = wait_for_status(api, video_id, {"completed", "failed"}, timeout=120)
        assert video["status"] == "completed", video
        keys = own_storage.list_keys(own_storage.job_prefix(video_id))
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["spritesheet.jpg", "thumbnail.webp", "video.mp4"], keys
    finally:
        if proxy is not None:
            proxy.close()
        own.stop()


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
