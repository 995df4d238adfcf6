"""The job runner without Celery: real Redis, real S3 (moto over HTTP), a tiny engine in-process.

Checks the overlap: job N's export and upload run while job N+1 is on the engine, at most one job
is finishing at a time, and the prompt cache stays within its bound.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shared import jobstate
from shared.errors import OutOfMemory
from shared.schemas import GenerationSpec, JobRecord, JobStatus, Stage
from shared.settings import EngineSettings, Settings
from shared.storage import Storage
from shared.store import JobStore
from tests.records import rewrite, store_job
from wanq.stack import Stack
from worker import journal
from worker.engine import PromptCache, WanEngine
from worker.postprocess import PostProcessors, load_post_processors
from worker.runner import Ended, JobRunner, Outcome


class SlowUploads(Storage):
    """The real storage client, with each upload held back until the test lets it go."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.s3)
        self.release = threading.Event()
        self.started = threading.Event()

    def upload_file(self, path: Path, key: str, content_type: str) -> None:
        self.started.set()
        self.release.wait(30)
        super().upload_file(path, key, content_type)


@pytest.fixture(scope="module")
def engine(stack: Stack) -> WanEngine:
    torch.set_num_threads(1)
    return WanEngine(
        stack.model_paths["tiny-t2v-a14b"], EngineSettings(device="cpu", prompt_cache_size=2), model_id="tiny-runner"
    )


@pytest.fixture
def runner(settings: Settings, store: JobStore, engine: WanEngine) -> Iterator[tuple[JobRunner, SlowUploads]]:
    storage = SlowUploads(settings)
    job_runner = JobRunner(settings, store, storage, engine, worker_id=f"test-runner:{time.time_ns()}")
    # Beats as a worker's heartbeat does (worker/service.py): without it, upkeep takes a job that runs longer than the
    # heartbeat TTL (a loaded machine) for one whose worker died, and requeues it.
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            jobs = job_runner.busy_with()
            store.heartbeat(job_runner.worker_id, "tiny-runner", {"job": jobs[0] if jobs else None, "jobs": jobs}, 5.0)
            stop.wait(0.5)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    yield job_runner, storage
    stop.set()
    beating.join()
    storage.release.set()


def tiny_spec(prompt: str = "p", **fields: Any) -> GenerationSpec:
    base: dict[str, Any] = dict(
        model="tiny-runner", prompt=prompt, negative_prompt="", width=64, height=64, num_frames=5, fps=8,
        num_inference_steps=2, guidance_scale=2.0, guidance_scale_2=2.0, flow_shift=5.0, seed=1,
    )  # fmt: skip
    return GenerationSpec(**{**base, **fields})


def make_job(store: JobStore, prompt: str, **fields: Any) -> str:
    record = JobRecord(id=f"video_runner_{time.time_ns()}", tenant="runner-test", spec=tiny_spec(prompt, **fields))
    store_job(store, record)
    return record.id


def test_the_next_job_takes_the_engine_while_the_previous_one_uploads(
    runner: tuple[JobRunner, SlowUploads], store: JobStore
) -> None:
    job_runner, storage = runner
    first, second = make_job(store, "first"), make_job(store, "second")

    assert job_runner.run(first) == "finishing"  # handed to the background: the engine is free
    assert storage.started.wait(10)
    record = store.get(first)
    assert record is not None and record.status is JobStatus.in_progress and record.stage.value in ("encoding_video", "uploading")

    # The second job generates while the first upload is held; handing it off waits for the first.
    done = threading.Event()
    threading.Thread(target=lambda: (job_runner.run(second), done.set()), daemon=True).start()
    deadline = time.monotonic() + 30
    while (r := store.get(second)) is not None and r.generated_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r is not None and r.generated_at is not None, "the second job never reached the end of decoding"
    assert not done.is_set(), "at most one job may be finishing: the second must wait for the first upload"
    assert store.get(first).status is JobStatus.in_progress  # type: ignore[union-attr]

    storage.release.set()
    assert done.wait(30)
    assert job_runner.wait_pending() == "completed"
    a, b = store.get(first), store.get(second)
    assert a is not None and b is not None
    assert a.status is JobStatus.completed and b.status is JobStatus.completed
    assert b.attempt_started_at is not None and a.completed_at is not None
    assert b.attempt_started_at < a.completed_at  # the overlap really happened
    assert a.completed_at <= b.completed_at  # and outcomes are recorded in order
    assert set(a.outputs) == {"video", "thumbnail", "spritesheet"}


def test_prompt_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = PromptCache(capacity=2)
    for text in ("a", "b"):
        cache.put(("m", text), torch.zeros(1))
    assert cache.get(("m", "a")) is not None  # "a" is now the most recent
    cache.put(("m", "c"), torch.zeros(1))
    assert len(cache) == 2
    assert cache.get(("m", "b")) is None and cache.get(("m", "a")) is not None and cache.get(("m", "c")) is not None
    disabled = PromptCache(capacity=0)
    disabled.put(("m", "x"), torch.zeros(1))
    assert len(disabled) == 0


def test_the_engine_cache_holds_at_most_its_size(engine: WanEngine) -> None:
    for n in range(5):
        engine.encode_text(f"prompt number {n}")
    assert len(engine.prompt_cache) == 2


# Exactly once per delivery: the claim is fenced, and a run whose job was requeued stops without writing.


def requeue_as_upkeep_does(store: JobStore, job_id: str, attempts: int) -> None:
    record = store.get(job_id)
    assert record is not None and record.attempts == attempts
    assert jobstate.requeue(store, record).ok


def test_a_duplicate_message_for_the_job_this_worker_is_finishing_is_dropped_untouched(
    runner: tuple[JobRunner, SlowUploads], store: JobStore
) -> None:
    job_runner, storage = runner
    job = make_job(store, "exported while its duplicate arrives")
    assert job_runner.run(job) == "finishing"
    assert storage.started.wait(10)
    before = store.get(job)
    assert before is not None and before.status is JobStatus.in_progress and before.worker == job_runner.worker_id
    assert job_runner.run(job) == "skipped"  # the same worker, the same job, while its upload is held
    after = store.get(job)
    assert after is not None and after.version == before.version and after.attempts == 1
    storage.release.set()
    assert job_runner.wait_pending() == "completed"
    done = store.get(job)
    assert done is not None and done.status is JobStatus.completed and done.attempts == 1


def test_a_stale_run_never_overwrites_the_run_that_replaced_it(
    settings: Settings, store: JobStore, storage: Storage, runner: tuple[JobRunner, SlowUploads], engine: WanEngine
) -> None:
    stale, held = runner
    job = make_job(store, "requeued while its first run uploads")
    assert stale.run(job) == "finishing"
    assert held.started.wait(10)
    # Upkeep took the first run's worker for dead and requeued the job; another worker runs it to the end.
    requeue_as_upkeep_does(store, job, attempts=1)
    other = JobRunner(settings, store, storage, engine, worker_id=f"test-runner-2:{time.time_ns()}")
    assert other.run(job, wait=True) == "completed"
    winner = store.get(job)
    assert winner is not None and winner.attempts == 2 and winner.worker == other.worker_id
    # The first run's upload goes through now: its completion is refused and what it stored is deleted.
    held.release.set()
    assert stale.wait_pending() == "superseded"
    final = store.get(job)
    assert final is not None and final.version == winner.version and final.outputs == winner.outputs
    keys = storage.list_keys(storage.job_prefix(job))
    assert sorted(keys) == sorted(winner.outputs.values()) and all(k.startswith(storage.attempt_prefix(job, 2)) for k in keys)


def test_a_run_whose_job_was_requeued_stops_at_its_next_step(
    settings: Settings, store: JobStore, storage: Storage, engine: WanEngine
) -> None:
    job = make_job(store, "requeued mid-denoise")

    class RequeuedAfterStepOne:
        def generate(self, spec, image=None, *, on_stage=None, on_step=None, on_preview=None, on_frames=None):  # type: ignore[no-untyped-def]
            def step(done: int, total: int) -> None:
                if done == 1:
                    requeue_as_upkeep_does(store, job, attempts=1)
                assert on_step is not None
                on_step(done, total)

            return engine.generate(spec, image, on_stage=on_stage, on_step=step, on_frames=on_frames)

    run = JobRunner(settings, store, storage, RequeuedAfterStepOne(), worker_id=f"test-runner-3:{time.time_ns()}")
    assert run.run(job, wait=True) == "superseded"
    record = store.get(job)
    assert record is not None and record.status is JobStatus.queued and record.attempts == 1 and record.step == 0
    assert storage.list_keys(storage.job_prefix(job)) == []


def test_the_attempt_cap_fails_only_a_queued_job(
    settings: Settings, store: JobStore, storage: Storage, engine: WanEngine
) -> None:
    capped = make_job(store, "died every time")
    rewrite(store, capped, attempts=settings.jobs.max_attempts)
    run = JobRunner(settings, store, storage, engine, worker_id=f"test-runner-4:{time.time_ns()}")
    assert run.run(capped) == "skipped"
    record = store.get(capped)
    assert record is not None and record.status is JobStatus.failed
    assert record.error is not None and f"gave up after {settings.jobs.max_attempts} attempts" in record.error.message
    # A run at the cap that is finishing is never failed by a late duplicate message.
    last = make_job(store, "last attempt completes")
    rewrite(store, last, attempts=settings.jobs.max_attempts - 1)
    assert run.run(last) == "finishing"
    assert run.run(last) == "skipped"
    assert run.wait_pending() == "completed"
    done = store.get(last)
    assert done is not None and done.status is JobStatus.completed and done.attempts == settings.jobs.max_attempts


def test_each_delivery_reports_its_outcome_once_a_failed_one_by_its_error_code(
    settings: Settings, store: JobStore, runner: tuple[JobRunner, SlowUploads], engine: WanEngine
) -> None:
    job_runner, storage = runner
    reports: list[tuple[Ended, str]] = []

    def on_ended(ended: Ended) -> None:
        reports.append((ended, threading.current_thread().name))

    job = make_job(store, "reported when its upload is recorded")
    assert job_runner.run(job, on_ended=on_ended) is Outcome.finishing
    assert storage.started.wait(10)
    assert reports == []  # not before the outcome is recorded
    assert job_runner.run(job, on_ended=on_ended) is Outcome.skipped  # the duplicate: reported at once
    assert [(e.outcome, e.label, thread) for e, thread in reports] == [(Outcome.skipped, "skipped", "MainThread")]
    storage.release.set()
    assert job_runner.wait_pending() is Outcome.completed
    (completed, thread) = reports[1]
    assert (completed.job_id, completed.outcome, completed.code) == (job, Outcome.completed, None)
    assert thread.startswith("wanq-finish") and len(reports) == 2

    class OutOfMemoryAtStepOne:
        def generate(self, spec, image=None, *, on_stage=None, on_step=None, on_preview=None, on_frames=None):  # type: ignore[no-untyped-def]
            def step(done: int, total: int) -> None:
                raise OutOfMemory("CUDA out of memory (at step one)")

            return engine.generate(spec, image, on_stage=on_stage, on_step=step, on_frames=on_frames)

    failing = JobRunner(settings, store, storage, OutOfMemoryAtStepOne(), worker_id=f"test-runner-5:{time.time_ns()}")
    doomed = make_job(store, "out of memory")
    assert failing.run(doomed, on_ended=on_ended) is Outcome.failed
    assert reports[2][0] == Ended(doomed, Outcome.failed, "out_of_memory") and reports[2][0].label == "out_of_memory"
    record = store.get(doomed)
    assert record is not None and record.status is JobStatus.failed and record.error is not None
    assert record.error.code == "out_of_memory" and len(reports) == 3


def test_a_run_that_another_party_ended_names_the_outcome_it_left() -> None:
    ended = {status: Outcome.of_status(status) for status in JobStatus}
    assert ended[JobStatus.failed] is Outcome.failed and ended[JobStatus.canceled] is Outcome.canceled
    assert ended[JobStatus.queued] is Outcome.superseded  # requeued under the same attempt, not yet claimed again
    assert Ended("video_x", Outcome.superseded, "ignored").label == "superseded"  # only a failure is named by its code


def test_a_stage_this_worker_lacks_fails_the_job_before_any_gpu_work(
    settings: Settings, store: JobStore, engine: WanEngine
) -> None:
    class Untouched:
        def generate(self, spec, image=None, *, on_stage=None, on_step=None):  # type: ignore[no-untyped-def]
            raise AssertionError("the engine ran for a job this worker cannot post-process")

    plain = JobRunner(settings, store, SlowUploads(settings), Untouched(), worker_id=f"test-runner-6:{time.time_ns()}")
    job_id = make_job(store, "smoother", interpolate=2)
    assert plain.run(job_id, wait=True) is Outcome.failed
    failed = store.get(job_id)
    assert failed is not None and failed.error is not None and failed.error.code == "invalid_request"
    assert failed.error.message == "invalid 'interpolate' 2: this worker can interpolate by [1] only"


def test_post_processing_stages_are_recorded_as_each_begins(
    stack: Stack, settings: Settings, store: JobStore, engine: WanEngine
) -> None:
    seen: list[tuple[str, str, int]] = []  # (the stage beginning, the record's stage then, its progress)
    job_id = ""

    class Watched(PostProcessors):
        def apply(self, frames, spec, timings, on_stage=None):  # type: ignore[no-untyped-def]
            def begin(stage: Stage) -> None:
                assert on_stage is not None
                on_stage(stage)
                record = store.get(job_id)
                assert record is not None
                seen.append((stage.value, record.stage.value, record.progress))

            return super().apply(frames, spec, timings, begin)

    tiny = load_post_processors(EngineSettings(), stack.model_paths["tiny-t2v-a14b"])
    post = Watched(tiny.interpolator, tiny.upscaler)
    storage = SlowUploads(settings)
    storage.release.set()
    runner = JobRunner(settings, store, storage, engine, worker_id=f"test-runner-7:{time.time_ns()}", post=post)
    job_id = make_job(store, "smoother and larger", interpolate=2, upscale=2)
    assert runner.run(job_id, wait=True) is Outcome.completed
    assert seen == [("interpolating", "interpolating", 92), ("upscaling", "upscaling", 94)]
    done = store.get(job_id)
    assert done is not None and done.stage is Stage.done
    assert {"decoding", "interpolating", "upscaling", "encoding_video", "uploading"} <= set(done.timings)
    assert post.stages(done.spec) == [Stage.interpolating, Stage.upscaling]
    assert post.stages(done.spec.model_copy(update={"interpolate": 1})) == [Stage.upscaling]
    assert post.stages(done.spec.model_copy(update={"kind": "image", "interpolate": 1, "upscale": 1})) == []


class JournalWatch(Storage):
    """The real storage client; notes what the run journal said when the completed run's cleanup began."""

    def __init__(self, settings: Settings, journal: Path) -> None:
        super().__init__(settings.s3)
        self.journal = journal
        self.at_cleanup: list[dict[str, Any]] | None = None

    def list_keys(self, prefix: str) -> list[str]:
        if self.at_cleanup is None:
            self.at_cleanup = journal.read(str(self.journal))
        return super().list_keys(prefix)


def test_a_completion_is_journaled_before_the_cleanup_that_follows_it(
    settings: Settings, store: JobStore, engine: WanEngine, tmp_path: Path
) -> None:
    """A kill during the cleanup after a run is recorded completed must find the journal agreeing with the record:
    the fault suite counts runs from the journal (tests/runs.py)."""
    path = tmp_path / "runs.jsonl"
    watched = settings.model_copy(update={"worker": settings.worker.model_copy(update={"run_log": str(path)})})
    storage = JournalWatch(watched, path)
    job_runner = JobRunner(watched, store, storage, engine, worker_id=f"test-journal:{time.time_ns()}")
    job = make_job(store, "journaled")
    assert job_runner.run(job, wait=True) == "completed"
    assert storage.at_cleanup is not None, "the completed run never cleaned up after other runs"
    assert [(e["event"], e.get("outcome")) for e in storage.at_cleanup] == [
        ("claimed", None),
        ("uploaded", None),
        ("ended", "completed"),
    ]
    events = journal.read(str(path))
    assert [e["event"] for e in events] == ["claimed", "uploaded", "ended"], events  # not journaled twice
    assert {e["attempt"] for e in events} == {1} and {e["job"] for e in events} == {job}


@pytest.mark.parametrize(
    ("fields", "stream"),
    [
        ({}, "video.mp4 with its stills"),
        ({"extend_from": "video_source", "source_frames": 17}, "part.mp4 without its first frame"),
        ({"upscale": 2}, None),  # post-processing needs every frame first
        ({"interpolate": 2}, None),
        ({"kind": "image", "num_frames": 1}, None),
    ],
)
def test_which_jobs_encode_their_mp4_beside_the_decode(fields: dict[str, Any], stream: str | None) -> None:
    spec = tiny_spec(**{"num_frames": 9, **fields})
    made = JobRunner._mp4_stream(spec)
    if stream is None:
        assert made is None
        return
    assert made is not None
    made.abort()
    shutil.rmtree(made.path.parent)
    if made.expected == spec.num_frames and made.skip == 0:
        described = f"{made.path.name} with its stills"
    elif made.expected is None and made.skip == 1:
        described = f"{made.path.name} without its first frame"
    else:
        described = f"{made.path.name}: expected {made.expected}, skip {made.skip}"
    assert described == stream


def test_a_run_that_cannot_be_handed_to_the_export_lets_go_of_what_it_holds(
    runner: tuple[JobRunner, SlowUploads], store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If waiting for the previous export raises, the run's stream and its claim's source (an extension's folder) are
    released, and the heartbeat names no job as finishing; the record is left to the requeue of lost attempts."""
    job_runner, _ = runner
    released: list[str] = []
    streams: list[Path] = []
    real_stream = JobRunner._mp4_stream

    def stream(spec: GenerationSpec) -> Any:
        made = real_stream(spec)
        streams.append(made.path.parent)
        return made

    def broken_wait() -> None:
        raise RuntimeError("the previous export failed")

    monkeypatch.setattr(JobRunner, "_mp4_stream", staticmethod(stream))
    monkeypatch.setattr(JobRunner, "_release", staticmethod(lambda claim: released.append(claim.record.id)))
    monkeypatch.setattr(job_runner, "wait_pending", broken_wait)
    job = make_job(store, "handed off to nobody")
    with pytest.raises(RuntimeError, match="the previous export failed"):
        job_runner.run(job)
    assert released == [job]
    assert job_runner.busy_with() == []
    assert streams and not streams[0].exists()  # the encoder's folder went with the run
