"""The worker's own record of its runs: one JSON line per event, appended to `WANQ_WORKER_RUN_LOG`.

Events: `claimed` (a run started: the job, its attempt, this worker), `dropped` (a message that was not
run, and why), `uploaded` (the run's stored objects), `ended` (the run's outcome). An audit trail an
operator can keep, and what the fault suite counts runs and uploads from: a run is a `claimed` line,
whatever the logs or the job record say. Several worker processes may append to one file: each event
is one `write` of one line to a file opened with O_APPEND, which local filesystems keep whole.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


class RunJournal:
    def __init__(self, path: str, worker_id: str) -> None:
        self.path = path
        self.worker_id = worker_id

    def write(self, event: str, job_id: str, **fields: Any) -> None:
        if not self.path:
            return
        line = json.dumps(
            {"event": event, "job": job_id, "worker": self.worker_id, "pid": os.getpid(), "t": time.time(), **fields}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def read(path: str) -> list[dict[str, Any]]:
    """Every event in the file, in order (a line cut short by a kill at the end is skipped)."""
    events = []
    try:
        with open(path) as file:
            for line in file:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        return []
    return events
