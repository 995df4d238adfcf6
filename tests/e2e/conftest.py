from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import jobstate
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
    for record in store.get_many(store.queued_ids(LATE)):
        jobstate.cancel_queued(store, record, "the test that made it ended")
