"""Runs per job, counted from the workers' run journal (worker/journal.py), and the kills that explain them.

A run is a `claimed` event. A run that `ended` has an outcome; one that never ended was interrupted, and
is explained only if the test killed the process it ran in. Exactly once means, for every job: one run
ended `completed`, no run ended otherwise, every other run was interrupted by a kill (runs = kills + 1),
and only the completed run's objects were uploaded (an interrupted run may have uploaded before it died).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobRuns:
    job: str
    runs: int = 0
    outcomes: list[str] = field(default_factory=list)
    """Outcomes of the runs that ended, in order."""
    killed: int = 0
    """Runs interrupted by a kill of their process."""
    unexplained: list[int] = field(default_factory=list)
    """Attempts of runs that never ended although their process was not killed."""
    uploads: int = 0
    """Uploads by runs that were not interrupted."""
    dropped: int = 0
    """Messages for the job that a worker acknowledged without running them (duplicates)."""
    completed_then_killed: int = 0
    """Runs killed after their completion was recorded, before the journal's `ended` line (told by the record)."""

    def exactly_once(self) -> bool:
        return self.outcomes == ["completed"] and not self.unexplained and self.runs == self.killed + 1 and self.uploads == 1

    def row(self) -> dict[str, Any]:
        return {"runs": self.runs, "kills": self.killed, "uploads": self.uploads, "duplicates_dropped": self.dropped}


def tally(
    events: Iterable[dict[str, Any]],
    jobs: Iterable[str],
    killed_pids: set[int],
    completed: dict[str, int] | None = None,
) -> dict[str, JobRuns]:
    """`completed`: each completed job's attempt, from its record. The worker journals a completion right after it
    records it; a kill between the two leaves that run without an `ended` line: the record says how it ended."""
    wanted = set(jobs)
    completed = completed or {}
    by_job = {job: JobRuns(job) for job in wanted}
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for event in events:
        job = event.get("job")
        if job not in wanted:
            continue
        key = (job, event.get("attempt", -1))
        if event["event"] == "claimed":
            by_job[job].runs += 1
            runs[key] = {"pid": event["pid"], "ended": None, "uploaded": False}
        elif event["event"] == "ended" and key in runs:
            runs[key]["ended"] = event["outcome"]
        elif event["event"] == "uploaded" and key in runs:
            runs[key]["uploaded"] = True
        elif event["event"] == "dropped":
            by_job[job].dropped += 1
    for (job, attempt), run in runs.items():
        tallied = by_job[job]
        if run["ended"] is None and run["uploaded"] and run["pid"] in killed_pids and completed.get(job) == attempt:
            run["ended"] = "completed"  # recorded completed, killed before its journal line
            tallied.completed_then_killed += 1
        if run["ended"] is not None:
            tallied.outcomes.append(run["ended"])
            tallied.uploads += int(run["uploaded"])
        elif run["pid"] in killed_pids:
            tallied.killed += 1
        else:
            tallied.unexplained.append(attempt)
    return by_job
