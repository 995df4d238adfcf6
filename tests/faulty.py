"""Fault-injected workers of their own for the reliability tests, and what the tests count with.

Each test that kills or starves workers starts its own, for a model the session's shared workers
don't serve (LATE), so nothing it does disturbs the rest of the suite. Every such worker appends its
runs to one run journal (worker/journal.py), from which tests/runs.py counts runs and uploads.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.store import JobStore
from tests.conftest import LATE
from wanq.stack import Managed, Stack

FAULTY = {
    "WANQ_ENGINE_FAULT_INJECTION": "true",
    "WANQ_JOBS_MAX_ATTEMPTS": "6",
    "WANQ_WORKER_HEARTBEAT_INTERVAL_S": "0.3",
    "WANQ_WORKER_HEARTBEAT_TTL_S": "1.5",
}
TINY_JOB = {"model": LATE, "size": "64x64", "num_frames": 5, "num_inference_steps": 6, "guidance_scale_2": 2.0}


class Workers:
    """This test's workers; `journal` is the run journal they all append to."""

    def __init__(self, stack: Stack, journal: Path) -> None:
        self.stack = stack
        self.journal = journal
        self.started: list[Managed] = []

    def start(self, count: int = 1, **env: str) -> list[Managed]:
        extra = {**FAULTY, "WANQ_WORKER_RUN_LOG": str(self.journal), **env}
        new = [self.stack.start_worker(LATE, extra_env=extra) for _ in range(count)]
        self.started.extend(new)
        self.wait_live(len([w for w in self.started if w.alive()]))
        return new

    def wait_live(self, count: int) -> None:
        self.stack.wait_for_workers(LATE, count, timeout=180)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.alive():
                try:
                    psutil.Process(worker.proc.pid).resume()  # a SIGSTOPped worker cannot act on its SIGKILL later
                except psutil.Error:
                    pass
            worker.stop(signal.SIGKILL)


def processes_of(worker: Managed) -> set[int]:
    """The worker's main process and its children (the Celery child that holds the model)."""
    try:
        parent = psutil.Process(worker.proc.pid)
        return {parent.pid, *(child.pid for child in parent.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def running_process(pid: int) -> bool:
    """Alive and not a zombie (a killed child stays in the process table until its parent reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TerminalLog:
    """Counts terminal transitions per job from the store's pub/sub (one per job, or a bug)."""

    def __init__(self, store: JobStore) -> None:
        self.counts: Counter[str] = Counter()
        self._pubsub = store.redis.pubsub()
        self._pubsub.psubscribe(store.keys.events("*"))
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
