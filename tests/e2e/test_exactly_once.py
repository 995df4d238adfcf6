"""Exactly once per delivery, under kills: a killed worker's job runs again once, never twice.

The operator's scenario (issue 15): two workers, jobs whose export is slow (so a worker takes its next
job while it still exports the previous one), SIGKILL of one worker's Celery child mid-denoise, then of
the whole other worker, and a replacement worker that comes up only after upkeep has requeued the dead
worker's job. The killed child's parent is held (SIGSTOP) until upkeep has requeued its job, so its new
child too comes up after the requeue: the timing in which a second message for the same job reached the
same worker while it was still exporting the first run, and ran the whole job again.

Counted from the workers' own run journal, for every job: runs = kills + 1, the completed run uploaded
its objects once, the store holds exactly those three objects, and the MP4 decodes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.schemas import JobRecord
from shared.storage import Storage
from shared.store import JobStore
from tests.conftest import wait_for_status
from tests.faulty import TerminalLog, Workers, pid_of, processes_of, submit
from tests.reliability_report import record as record_figures
from tests.runs import tally
from wanq.stack import Managed
from worker import journal
from worker.export import probe_mp4

ROUNDS = 4
JOBS_PER_ROUND = 4
PROMPT = "exactly once r{round} j{n} [[fault:sleep@1]] [[fault:slowexport@2]]"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def denoising_on(store: JobStore, ids: list[str], workers: list[Managed], exclude: set[str]) -> tuple[JobRecord, Managed] | None:
    """A job past its first step of denoising on one of `workers`, and that worker."""
    for record in store.get_many(ids):
        if record.id in exclude or record.status.value != "in_progress" or record.stage.value != "denoising":
            continue
        if record.step < 2 or record.worker is None:
            continue
        child = pid_of(record.worker)
        for worker in workers:
            if child in processes_of(worker):
                return record, worker
    return None


def requeued(store: JobStore, job_id: str, attempts: int) -> bool:
    record = store.get(job_id)
    return record is not None and (record.status.value == "queued" or record.attempts > attempts)


@pytest.mark.slow
def test_killed_workers_jobs_run_once_more_each_never_twice(
    api: httpx.Client, store: JobStore, storage: Storage, workers: Workers, tmp_path: Path
) -> None:
    live = workers.start(2)
    log = TerminalLog(store)
    killed_pids: set[int] = set()
    ids: list[str] = []
    for round_ in range(ROUNDS):
        batch = [submit(api, PROMPT.format(round=round_, n=n)) for n in range(JOBS_PER_ROUND)]
        ids += batch
        killed_pids |= _kill_twice_and_replace(store, workers, live, batch)
        for job_id in batch:
            wait_for_status(api, job_id, {"completed", "failed", "canceled"}, timeout=180)

    finals = [wait_for_status(api, i, {"completed", "failed", "canceled"}, timeout=10) for i in ids]
    log.close()
    assert [f["status"] for f in finals] == ["completed"] * len(ids), [(f["id"], f["status"], f["error"]) for f in finals]
    runs = tally(journal.read(str(workers.journal)), ids, killed_pids, {f["id"]: f["attempts"] for f in finals})
    wrong = {job: r for job, r in runs.items() if not r.exactly_once()}
    assert not wrong, f"jobs not run exactly once more than they were killed: {wrong}"
    for video in finals:
        assert log.counts[video["id"]] == 1, (video["id"], log.counts[video["id"]])
        assert video["attempts"] == runs[video["id"]].runs, video
        keys = storage.list_keys(storage.job_prefix(video["id"]))
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["spritesheet.jpg", "thumbnail.webp", "video.mp4"], keys
        _check_mp4(api, video["id"], tmp_path)
    record_figures(
        "exactly_once",
        {
            "test": "tests/e2e/test_exactly_once.py::test_killed_workers_jobs_run_once_more_each_never_twice",
            "summary": f"{ROUNDS} rounds of a child kill and a whole-worker kill mid-denoise, exports in flight, a "
            f"replacement worker after the requeue: {len(ids)} jobs, each run kills + 1 times and uploaded once",
            "rounds": ROUNDS,
            "jobs": len(ids),
            "kills_of_a_child": ROUNDS,
            "kills_of_a_whole_worker": ROUNDS,
            "runs": sum(r.runs for r in runs.values()),
            "runs_interrupted_by_a_kill": sum(r.killed for r in runs.values()),
            "uploads": sum(r.uploads for r in runs.values()),
            "duplicate_messages_dropped": sum(r.dropped for r in runs.values()),
            "runs_per_job": {job[-6:]: f"{r.runs} runs, {r.killed} killed, {r.uploads} upload" for job, r in runs.items()},
            "run_twice": sum(1 for r in runs.values() if r.runs > r.killed + 1),
            "lost": sum(1 for f in finals if f["status"] != "completed"),
        },
    )


def _kill_twice_and_replace(store: JobStore, workers: Workers, live: list[Managed], batch: list[str]) -> set[int]:
    """One round: a child kill, a whole-worker kill, a replacement (`live` is updated). Returns the killed pids."""
    # 1. The Celery child of one worker dies mid-denoise; its parent is held until upkeep has requeued
    # the job, so the new child comes up after the requeue.
    record, first = wait_for("a job denoising", lambda: denoising_on(store, batch, live, set()))
    killed = {pid_of(str(record.worker))}
    parent = psutil.Process(first.proc.pid)
    parent.suspend()
    try:
        os.kill(pid_of(str(record.worker)), signal.SIGKILL)
        wait_for(f"upkeep to requeue {record.id}", lambda: requeued(store, record.id, record.attempts), timeout=60)
    finally:
        parent.resume()

    # 2. The whole other worker dies mid-denoise (perhaps while it exports another job).
    others = [w for w in live if w is not first]
    record_2, second = wait_for("a job denoising on the other worker", lambda: denoising_on(store, batch, others, {record.id}))
    killed |= processes_of(second)
    second.stop(signal.SIGKILL)
    live.remove(second)

    # 3. A replacement worker, started after upkeep has requeued the dead worker's job.
    wait_for(f"upkeep to requeue {record_2.id}", lambda: requeued(store, record_2.id, record_2.attempts), timeout=60)
    live += workers.start(1)
    return killed


def _check_mp4(api: httpx.Client, video_id: str, folder: Path) -> None:
    path = folder / f"{video_id}.mp4"
    path.write_bytes(api.get(f"/v1/videos/{video_id}/content").content)
    info = probe_mp4(path)
    assert "h264" in str(info["codec"]) and info["frames"] == 5 and info["size"] == (64, 64), info
