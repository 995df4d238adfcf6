from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.store import JobStore
from tests.conftest import LATE
from tests.faulty import Workers
from wanq.stack import Stack


@pytest.fixture
def workers(stack: Stack, store: JobStore, tmp_path: Path) -> Iterator[Workers]:
    """Fault-injected workers of this test's own for LATE, all appending to one run journal."""
    pool = Workers(stack, tmp_path / "runs.jsonl")
    yield pool
    pool.stop_all()
    # Leave no queued LATE job behind for other tests' workers.
    for job_id in store.redis.zrange(store.queued_key(LATE), 0, -1):
        store.transition(job_id.decode(), allowed=[], patch={"status": "canceled"})
