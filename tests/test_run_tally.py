"""tests/runs.py's tally, which the fault suite's exactly-once checks rest on: what explains a run, and what not."""

from __future__ import annotations

from typing import Any

from tests.runs import tally


def event(name: str, pid: int, attempt: int, **fields: Any) -> dict[str, Any]:
    return {"event": name, "job": "video_a", "pid": pid, "attempt": attempt, **fields}


def test_a_run_killed_after_its_completion_was_recorded_is_the_completed_run() -> None:
    events = [
        event("claimed", 10, 1),
        event("claimed", 11, 2),
        event("uploaded", 11, 2),  # recorded completed, then killed before its `ended` line
    ]
    told = tally(events, ["video_a"], killed_pids={10, 11}, completed={"video_a": 2})["video_a"]
    assert told.exactly_once() and told.completed_then_killed == 1 and told.killed == 1 and told.uploads == 1
    # Without the record's word, the same journal is two killed runs and no completion.
    blind = tally(events, ["video_a"], killed_pids={10, 11})["video_a"]
    assert not blind.exactly_once() and blind.killed == 2 and blind.outcomes == []


def test_the_record_explains_only_its_own_attempt_and_only_a_run_that_uploaded() -> None:
    uploaded_earlier = [event("claimed", 10, 1), event("uploaded", 10, 1), event("claimed", 11, 2)]
    told = tally(uploaded_earlier, ["video_a"], killed_pids={10, 11}, completed={"video_a": 2})["video_a"]
    assert not told.exactly_once() and told.killed == 2 and told.completed_then_killed == 0
    never_uploaded = [event("claimed", 10, 1), event("claimed", 11, 2)]
    told = tally(never_uploaded, ["video_a"], killed_pids={10, 11}, completed={"video_a": 2})["video_a"]
    assert not told.exactly_once() and told.completed_then_killed == 0


def test_a_run_that_was_not_killed_and_never_ended_stays_unexplained() -> None:
    events = [event("claimed", 10, 1), event("claimed", 12, 2), event("ended", 12, 2, outcome="completed")]
    told = tally(events, ["video_a"], killed_pids=set(), completed={"video_a": 2})["video_a"]
    assert told.unexplained == [1] and not told.exactly_once()
    # The record's word explains only a kill: a completing run that lost its `ended` line otherwise is a fault.
    lost_line = [event("claimed", 12, 1), event("uploaded", 12, 1)]
    told = tally(lost_line, ["video_a"], killed_pids=set(), completed={"video_a": 1})["video_a"]
    assert told.unexplained == [1] and told.completed_then_killed == 0 and not told.exactly_once()
