"""The job state machine: the statuses a job goes through, the transitions allowed, and one function each.

These functions are the only way any process changes a job once it exists (the fair queue creates it,
queued): the API (cancel), upkeep (requeue, time out, expire) and the worker (claim, progress, complete,
fail, cancel). Each is one atomic script (shared/lua/transition.lua) that checks the status the job is in
and, for a run, that the run's attempt still holds the job (`guards`), then writes, keeps the indexes and
the dispatch journal in step, publishes the new state and the webhook event.

                   claim                    complete
    (created) -> queued ----------> in_progress ----------> completed --expire--> completed, outputs gone
                  |  ^                 |  |  |
                  |  +---- requeue ----+  |  +--- fail / time_out -----> failed
                  |   (worker died)       +------ cancel_running ------> canceled
                  +--- cancel_queued ----------------------------------> canceled
                  +--- give_up (attempts used up) ---------------------> failed

`progress`, `preview` and `request_cancel` keep a running job running. Dispatch (moving a queued job from its
tenant's queue to the worker queue) is not a status change: shared/fairqueue.py does it.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from shared.errors import JobCanceled, JobTimeout, WanqError
from shared.schemas import JobRecord, JobStatus, Stage, progress_for
from shared.store import JobStore, TransitionResult

queued, in_progress = JobStatus.queued, JobStatus.in_progress
completed, failed, canceled = JobStatus.completed, JobStatus.failed, JobStatus.canceled


class Transition(NamedTuple):
    source: frozenset[JobStatus]
    target: JobStatus | None
    """None: the status stays (the record changes)."""


TRANSITIONS: dict[str, Transition] = {
    "claim": Transition(frozenset({queued}), in_progress),
    "progress": Transition(frozenset({in_progress}), None),
    "preview": Transition(frozenset({in_progress}), None),
    "request_cancel": Transition(frozenset({in_progress}), None),
    "complete": Transition(frozenset({in_progress}), completed),
    "fail": Transition(frozenset({in_progress}), failed),
    "time_out": Transition(frozenset({in_progress}), failed),
    "cancel_running": Transition(frozenset({in_progress}), canceled),
    "requeue": Transition(frozenset({in_progress}), queued),
    "cancel_queued": Transition(frozenset({queued}), canceled),
    "give_up": Transition(frozenset({queued}), failed),
    "expire": Transition(frozenset({completed}), None),
}


def _apply(store: JobStore, name: str, record: JobRecord, patch: dict[str, Any], **guards: Any) -> TransitionResult:
    transition = TRANSITIONS[name]
    if transition.target is not None:
        patch = {"status": transition.target.value, **patch}
    return store.apply(record, [s.value for s in transition.source], patch, guards)


def _ended(code: str, message: str, timings: dict[str, float] | None = None) -> dict[str, Any]:
    patch: dict[str, Any] = {"stage": Stage.done.value, "completed_at": time.time(), "error": {"code": code, "message": message}}
    if timings:
        patch["timings"] = rounded(timings)
    return patch


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()}


# The worker's run -----------------------------------------------------------------------------------


def claim(store: JobStore, record: JobRecord, *, worker: str, deadline_at: float) -> TransitionResult:
    """A run starts: only from `queued`, and only if no other run claimed it since `record` was read."""
    now = time.time()
    return _apply(
        store,
        "claim",
        record,
        {
            "stage": Stage.loading.value,
            "progress": progress_for(Stage.loading),
            "step": 0,
            "attempts": record.attempts + 1,
            "worker": worker,
            "started_at": record.started_at or now,
            "attempt_started_at": now,
            "deadline_at": deadline_at,
            "cache_stats": None,  # the previous run's, if any
            "estimated_completed_at": None,
        },
        attempts=record.attempts,
    )


def progress(
    store: JobStore, record: JobRecord, attempt: int, stage: Stage, step: int, total: int, timings: dict[str, float], **extra: Any
) -> TransitionResult:
    """The run's stage and step; refused once the run no longer holds the job (requeued, ended, deleted)."""
    patch = {"stage": stage.value, "step": step, "progress": progress_for(stage, step, total), "timings": rounded(timings)}
    return _apply(store, "progress", record, {**patch, **extra}, attempts=attempt)


def preview(store: JobStore, record: JobRecord, attempt: int, step: int, key: str) -> TransitionResult:
    """The run stored a new preview (after `step` steps) at `key`: the record's `preview_step` and its `preview`
    output (the only output before the job completes); refused once the run no longer holds the job."""
    return _apply(store, "preview", record, {"preview_step": step, "outputs": {"preview": key}}, attempts=attempt)


def complete(
    store: JobStore, record: JobRecord, attempt: int, *, outputs: dict[str, str], timings: dict[str, float], retention_s: int
) -> TransitionResult:
    now = time.time()
    patch = {
        "stage": Stage.done.value,
        "progress": 100,
        "step": record.spec.num_inference_steps,
        "completed_at": now,
        "expires_at": now + retention_s,
        "outputs": outputs,
        "timings": rounded(timings),
        "error": None,
    }
    # A job whose cancel was accepted never completes, whichever step the cancel arrived at.
    return _apply(store, "complete", record, patch, attempts=attempt, cancel_requested=False)


def fail(
    store: JobStore, record: JobRecord, attempt: int, error: WanqError, timings: dict[str, float] | None = None
) -> TransitionResult:
    """The run ends the job as failed, with the error's stable code and message."""
    return _apply(store, "fail", record, _ended(error.code, error.message, timings), attempts=attempt)


def cancel_running(store: JobStore, record: JobRecord, attempt: int, timings: dict[str, float] | None = None) -> TransitionResult:
    """The run stopped at a step because a cancel was requested."""
    return _apply(store, "cancel_running", record, _ended(JobCanceled.code, "canceled while running", timings), attempts=attempt)


def give_up(store: JobStore, record: JobRecord) -> TransitionResult:
    """A queued job whose runs all died with their workers: no further run."""
    message = f"gave up after {record.attempts} attempts: the worker running it died each time"
    return _apply(store, "give_up", record, _ended(WanqError.code, message), attempts=record.attempts)


# The API and upkeep ---------------------------------------------------------------------------------


def cancel_queued(store: JobStore, record: JobRecord, message: str) -> TransitionResult:
    """Ends a job that has not started (it never will); refused once it runs or has ended."""
    return _apply(store, "cancel_queued", record, _ended(JobCanceled.code, message))


def request_cancel(store: JobStore, record: JobRecord) -> TransitionResult:
    """Flags a running job: its run stops at its next denoising step (cancel_running)."""
    return _apply(store, "request_cancel", record, {"cancel_requested": True})


def requeue(store: JobStore, record: JobRecord) -> TransitionResult:
    """Upkeep puts back the job of a worker that died (or lost the run): back to `queued`, straight into the
    worker queue and the dispatch journal in the same step; the caller then sends its message."""
    patch = {"stage": Stage.queued.value, "progress": 0, "step": 0, "worker": None}
    return _apply(store, "requeue", record, patch, attempts=record.attempts, worker=record.worker)


def time_out(store: JobStore, record: JobRecord, message: str) -> TransitionResult:
    """Upkeep ends a run that died past its time limit (killed by the hard limit): no retry."""
    return _apply(store, "time_out", record, _ended(JobTimeout.code, message), attempts=record.attempts)


def expire(store: JobStore, record: JobRecord) -> TransitionResult:
    """The outputs were deleted at `expires_at`: the record no longer names them."""
    return _apply(store, "expire", record, {"outputs": {}})


def transition_table() -> str:
    """TRANSITIONS as a markdown table (docs/ARCHITECTURE.md's is generated from it)."""
    rows = ["| transition | from | to |", "|---|---|---|"]
    for name, transition in TRANSITIONS.items():
        source = ", ".join(sorted(s.value for s in transition.source))
        rows.append(f"| `{name}` | {source} | {transition.target.value if transition.target else '(unchanged)'} |")
    return "\n".join(rows)
