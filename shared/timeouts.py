"""When a running attempt counts as timed out (shared by the worker's claim and the API's upkeep)."""

from __future__ import annotations

import time

from shared.schemas import JobRecord
from shared.settings import Settings


def deadline(settings: Settings, now: float) -> float:
    """When an attempt started now must have ended: the claiming worker's own soft time limit."""
    return now + settings.jobs.soft_time_limit_s


def overran(record: JobRecord) -> bool:
    """True if the attempt in progress has run past its deadline: its worker was killed by the hard
    limit (or died after overrunning), so the job ends as `timeout` instead of running again."""
    return record.deadline_at is not None and time.time() >= record.deadline_at


def timeout_message(record: JobRecord) -> str:
    limit = (record.deadline_at or 0) - (record.attempt_started_at or 0)
    return f"the job ran past its {limit:.0f} s time limit"
