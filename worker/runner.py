"""Runs one job: claim it, generate, export, upload, record the outcome. No Celery in here.

Exactly once per delivery. A claim is fenced: only a `queued` job can be claimed, so a message for a job
that is already running or finishing anywhere (this worker included, while it exports the previous run)
is acknowledged and dropped without touching the record. A job goes back to `queued` only through upkeep
(api/daemons/upkeep.py), when its worker's heartbeat stops. `attempts` counts the runs that started, and
the attempt travels with every later write of the run (a guard on each transition, the run's own folder
in storage): a run whose job was requeued meanwhile finds its claim lost at its next step and stops,
without touching the progress, outputs or outcome of the run that replaced it.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from shared import jobstate
from shared.errors import ClaimLost, JobCanceled, JobTimeout, WanqError
from shared.estimate import RunClock, tail_pixel_frames, video_tokens
from shared.schemas import LAST_FRAME, GenerationSpec, JobRecord, JobStatus, Stage
from shared.settings import Settings
from shared.storage import CONTENT_TYPES, Storage
from shared.store import JobStore
from shared.timeouts import deadline, timeout_message
from worker import cache, export, extension, faults
from worker.journal import RunJournal
from worker.lora_cache import LoraCache
from worker.postprocess import PostProcessors

log = logging.getLogger("wanq.worker")


class Engine(Protocol):
    def generate(
        self,
        spec: GenerationSpec,
        image: Image.Image | None = None,
        *,
        on_stage: Any = None,
        on_step: Any = None,
        on_preview: Any = None,
        on_frames: Any = None,
    ) -> Any: ...


class Outcome(StrEnum):
    """How one delivery of a job ended on this worker: what `JobRunner.run` returns and `Ended` carries."""

    skipped = "skipped"
    """The message was dropped without a run: the job was not `queued` (a duplicate, deleted, canceled before it
    started, its attempts used up)."""
    finishing = "finishing"
    """Generated; the export and upload go on in the background and the outcome comes later (`on_ended`)."""
    completed = "completed"
    failed = "failed"
    """The job failed and its record says why (`Ended.code`)."""
    canceled = "canceled"
    deleted = "deleted"
    """The record was deleted while the job ran: what the run stored is deleted too."""
    superseded = "superseded"
    """The job was requeued meanwhile (this worker was taken for dead): the run stopped, another has the job."""

    @classmethod
    def of_status(cls, status: JobStatus) -> Outcome:
        """The outcome of a run whose job another party ended meanwhile, by the status it left (still `queued` or
        `in_progress` under the same attempt: requeued, so superseded)."""
        ended = {JobStatus.completed: cls.completed, JobStatus.failed: cls.failed, JobStatus.canceled: cls.canceled}
        return ended.get(status, cls.superseded)


@dataclass(frozen=True)
class Ended:
    """A delivery's outcome once it is recorded."""

    job_id: str
    outcome: Outcome
    code: str | None = None
    """A failed run's error code (`out_of_memory`, `timeout`, ...), which its record holds too."""
    journaled: bool = field(default=False, compare=False)
    """Its `ended` line was written to the run journal already, or tried (a completion's, the moment it is recorded)."""

    @property
    def label(self) -> str:
        """The outcome as the run journal and `wanq_worker_jobs_total` name it: a failed run by its error code."""
        return self.code if self.outcome is Outcome.failed and self.code else self.outcome.value


OnEnded = Callable[[Ended], None]


def _ignore(ended: Ended) -> None:
    pass


@dataclass
class Generated:
    """What the GPU part of a run hands to its export: the engine's result, the stage timings so far, its start."""

    result: Any
    timings: dict[str, float]
    started: float
    stream: export.Mp4Stream | None = None
    """The MP4 encoder the decode fed (`_mp4_stream`): the export waits for its tail and adds the stills."""


class JobVanished(Exception):
    """The record was deleted while the job ran (DELETE /v1/videos/{id})."""


@dataclass
class Claim:
    record: JobRecord
    attempt: int
    source: extension.Source | None = None
    """An extension's source, fetched when it starts, read again by its export."""
    clock: RunClock | None = None
    """The run's times and its estimate of when it completes."""
    preview_key: str | None = None
    """Where this run's latest preview is stored (the `preview` output, kept when the job completes)."""


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        engine: Engine,
        worker_id: str,
        *,
        post: PostProcessors | None = None,
    ) -> None:
        self.post = post or PostProcessors()
        """Interpolation and upscaling between the decode and the MP4 (worker/postprocess.py)."""
        self.settings = settings
        self.store = store
        self.storage = storage
        self.engine = engine
        self.worker_id = worker_id
        self.current_job: str | None = None
        self._finishing: str | None = None
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanq-finish")
        self._pending: Future[Outcome] | None = None
        self.journal = RunJournal(settings.worker.run_log, worker_id)
        self.lora_files = LoraCache.from_settings(settings.loras, download=storage.download)

    # -----------------------------------------------------------------------------------------
    def run(self, job_id: str, *, wait: bool = False, on_ended: OnEnded | None = None) -> Outcome:
        """Runs the job if this message should. The GPU part runs here; the export and upload run
        on a background thread so that the next job can take the GPU meanwhile (at most one job is
        finishing at a time). Returns what happened, or `finishing` while the upload goes on.

        `on_ended` is called once with the recorded outcome: on this thread, or on the background one once the
        upload is recorded; not at all if this call raises before the outcome is known."""
        report = on_ended or _ignore
        claim = self.claim(job_id)
        if claim is None:
            report(Ended(job_id, Outcome.skipped))
            return Outcome.skipped
        self.current_job = job_id
        try:
            generated = self._generate(claim)
            if isinstance(generated, Ended):
                self.journal.write("ended", job_id, attempt=claim.attempt, outcome=generated.label)
                report(generated)
                return generated.outcome
            try:
                self.wait_pending()
                # Marked as finishing before it stops being current: the heartbeat always names it (see busy_with).
                self._finishing = job_id
                self._pending = self._finisher.submit(self._finalize, claim, generated, report)
            except BaseException:
                self._close_stream(generated.stream, None)  # its encoder thread and folder go with the run
                self._release(claim)  # an extension's source folder too
                if self._finishing == job_id:
                    self._finishing = None
                raise
        finally:
            self.current_job = None
        if wait or not self.settings.worker.overlap_export:
            return self._pending.result()
        return Outcome.finishing

    def busy_with(self) -> list[str]:
        """The jobs this worker is running or finishing, for its heartbeat: a job in progress under this worker's
        name that the heartbeat does not list has lost its attempt (e.g. Redis was away too long) and is requeued."""
        return [j for j in (self.current_job, self._finishing) if j]

    def wait_pending(self) -> Outcome | None:
        """Blocks until the job being exported and uploaded (if any) is recorded."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def claim(self, job_id: str) -> Claim | None:
        """Starts a run of the job if this message should: the job must be `queued`. Anything else (running or
        finishing anywhere, ended, deleted) means the message is a duplicate: it is dropped, the record untouched."""
        record = self.store.get(job_id)
        if record is None or record.status is not JobStatus.queued:
            self._drop(job_id, "no such job" if record is None else f"already {record.status.value}")
            return None
        if record.cancel_requested:
            jobstate.cancel_queued(self.store, record, "canceled before it started")
            self._drop(job_id, "canceled")
            return None
        if record.attempts >= self.settings.jobs.max_attempts:
            jobstate.give_up(self.store, record)
            self._drop(job_id, "attempts used up")
            return None
        result = jobstate.claim(self.store, record, worker=self.worker_id, deadline_at=deadline(self.settings, time.time()))
        if not result.ok or result.record is None:
            self._drop(job_id, "claimed by another run meanwhile")
            return None
        attempt = result.record.attempts
        self.journal.write("claimed", job_id, attempt=attempt)
        log.info("job started", extra={"job_id": job_id, "attempt": attempt, "worker": self.worker_id})
        return Claim(record=result.record, attempt=attempt)

    def _drop(self, job_id: str, why: str) -> None:
        self.journal.write("dropped", job_id, why=why)
        log.info("message dropped: %s", why, extra={"job_id": job_id, "worker": self.worker_id})

    # -----------------------------------------------------------------------------------------
    def _generate(self, claim: Claim) -> Generated | Ended:
        """Encode -> denoise -> decode on the GPU. Returns what the export needs, or how the run ended early."""
        record, attempt = claim.record, claim.attempt
        spec = record.spec
        timings: dict[str, float] = {}
        started = time.perf_counter()
        clock = claim.clock = RunClock(
            spec.num_inference_steps,
            self.store.run_times(spec.model, video_tokens(spec)),
            started=time.time(),
            tail_work=tail_pixel_frames(spec),
        )
        stream: export.Mp4Stream | None = None
        try:
            self.post.check(spec)  # a stage this worker lacks fails the job now, before any GPU work
            if spec.extend_from is not None:
                t0 = time.perf_counter()
                claim.source = extension.fetch_source(self.store, self.storage, record)
                timings["fetching_source"] = time.perf_counter() - t0
                image: Image.Image | None = Image.fromarray(claim.source.last)
            else:
                image = self._load_image(spec)
            if spec.loras:
                # The LoRA files onto this host's disk (verified against their sha256), for every rank to read.
                self._progress(record, attempt, Stage.loading, 0, spec.num_inference_steps, timings)
                t0 = time.perf_counter()
                self.lora_files.ensure(spec.loras)
                timings["fetching_loras"] = time.perf_counter() - t0

            def on_stage(stage: Stage) -> None:
                now = time.time()
                if stage is Stage.denoising:
                    clock.denoising_from = now
                elif stage is Stage.decoding:
                    clock.denoising_until = now
                eta = clock.completes_at(now)
                self._progress(record, attempt, stage, 0, spec.num_inference_steps, timings, estimated_completed_at=eta)

            def on_step(done: int, total: int) -> None:
                eta = clock.completes_at(time.time(), done)
                self._progress(record, attempt, Stage.denoising, done, total, timings, estimated_completed_at=eta)
                if self.settings.engine.fault_injection:
                    faults.inject(spec, done)

            def on_preview(done: int, path: Path) -> None:
                # On the engine's preview thread: replaces the run's preview, then says so (an SSE `video.preview`).
                key = self.storage.output_key(record.id, attempt, "preview")
                self.storage.upload_file(path, key, CONTENT_TYPES["preview"])
                if jobstate.preview(self.store, record, attempt, done, key).ok:
                    claim.preview_key = key

            stream = self._mp4_stream(spec)
            result = self.engine.generate(
                spec,
                image,
                on_stage=on_stage,
                on_step=on_step,
                on_preview=on_preview,
                **({"on_frames": stream.send} if stream is not None else {}),
            )
            timings.update(result.timings)
            stats = cache.summary(result.cache)
            self._progress(
                record,
                attempt,
                self._export_stages(spec)[0],
                0,
                0,
                timings,
                generated_at=time.time(),
                cache_stats=stats.model_dump() if stats else None,
            )
            return Generated(result, timings, started, stream)
        except Exception as exc:
            self._close_stream(stream, None)
            self._release(claim)
            return self._fail(record, attempt, exc, timings)

    @staticmethod
    def _mp4_stream(spec: GenerationSpec) -> export.Mp4Stream | None:
        """An MP4 encoder fed by the decode, for a video whose frames go to the MP4 as decoded: no post-processing
        (it needs every frame first). An extension's stream is its new part, joined to the source by the export;
        its stills are the joined video's, made by the export. Its folder is removed by `_close_stream` or the export."""
        if spec.kind == "image" or spec.interpolate != 1 or spec.upscale != 1:
            return None
        folder = Path(tempfile.mkdtemp(prefix="wanq-mp4-"))
        if spec.extend_from is not None:
            return export.Mp4Stream(folder / "part.mp4", spec.output_fps, skip=extension.NEW_PART_SKIPS)
        return export.Mp4Stream(folder / "video.mp4", spec.output_fps, expected=spec.num_frames)  # and the stills

    @staticmethod
    def _close_stream(stream: export.Mp4Stream | None, frames: int | None) -> Path | None:
        """The streamed MP4 if it was fed all `frames` (None: the run failed): the video, or an extension's new part
        (all but its first frame); else it is dropped, and the export encodes the frames itself (an engine that did
        not feed it, or fed it only part)."""
        if stream is None:
            return None
        if frames is not None and stream.frames == frames:
            try:
                return stream.close()
            except RuntimeError:
                log.exception("the MP4 encoded beside the decode failed: encoding it again from the frames")
        stream.abort()
        shutil.rmtree(stream.path.parent, ignore_errors=True)
        return None

    @staticmethod
    def _release(claim: Claim) -> None:
        if claim.source is not None:
            claim.source.close()
            claim.source = None

    def _finalize(self, claim: Claim, generated: Generated, report: OnEnded) -> Outcome:
        """Export -> upload -> record the outcome; runs while the next job is on the GPU."""
        ended = Ended(claim.record.id, Outcome.failed, WanqError.code)  # unless it is recorded below
        try:
            ended = self._export_and_record(claim, generated)  # the recorded outcome, whatever the journal does
            if not ended.journaled:
                self.journal.write("ended", claim.record.id, attempt=claim.attempt, outcome=ended.label)
            return ended.outcome
        finally:
            self._release(claim)
            self._finishing = None
            report(ended)

    def _export_and_record(self, claim: Claim, generated: Generated) -> Ended:
        record, attempt = claim.record, claim.attempt
        spec, timings, started = record.spec, generated.timings, generated.started
        stream = generated.stream
        try:
            t0 = time.perf_counter()
            video = self._close_stream(stream, len(generated.result.frames))
            tail = time.perf_counter() - t0  # what was left of the encode when the decode ended
            stills = stream.stills() if stream is not None and video is not None else None
            outputs = self._export_and_upload(
                record, attempt, generated.result.frames, timings, claim.source, video=video, stills=stills
            )
            if stream is not None:
                timings["encoding_video"] = timings.get("encoding_video", 0.0) + tail
        except Exception as exc:
            return self._fail(record, attempt, exc, timings)
        finally:
            if stream is not None:
                shutil.rmtree(stream.path.parent, ignore_errors=True)
        if claim.preview_key is not None:
            outputs["preview"] = claim.preview_key  # kept after the job ends
        timings["total"] = time.perf_counter() - started
        # The estimates learn from this run before it is seen completed: a client that submits the next job the moment
        # it sees this one done gets an ETA from it. Best effort: an estimate never fails a run.
        try:
            self.store.record_duration(spec.model, timings["total"])
            if claim.clock is not None:
                claim.clock.finished_at = time.time()
                times = claim.clock.times()
                if times is not None:
                    self.store.record_run_times(spec.model, video_tokens(spec), times)
        except Exception as exc:
            log.warning("could not record the run's times for the estimates: %s", exc, extra={"job_id": record.id})
        done = jobstate.complete(
            self.store, record, attempt, outputs=outputs, timings=timings, retention_s=self.settings.jobs.retention_s
        )
        if done.record is None:
            self.storage.delete_prefix(self.storage.job_prefix(record.id))
            return Ended(record.id, Outcome.deleted)
        if not done.ok:
            # Requeued or canceled meanwhile: what this run stored is nobody's output.
            self.storage.delete_prefix(self.storage.attempt_prefix(record.id, attempt))
            if done.record.attempts != attempt:
                return Ended(record.id, Outcome.superseded)
            if done.record.status is JobStatus.in_progress and done.record.cancel_requested:
                jobstate.cancel_running(self.store, done.record, attempt, timings)
                return Ended(record.id, Outcome.canceled)
            return Ended(record.id, Outcome.of_status(done.record.status))
        # Recorded completed: whatever happens below, that is the outcome. Journaled the moment it is recorded,
        # before the cleanup's round trips, so that a kill during them leaves the journal agreeing with the record.
        try:
            self.journal.write("ended", record.id, attempt=attempt, outcome=Outcome.completed.value)
        except OSError as exc:
            log.warning("could not journal the run's end: %s", exc, extra={"job_id": record.id})
        log.info(
            "job completed",
            extra={"job_id": record.id, "model": spec.model, "tenant": record.tenant, "total_s": round(timings["total"], 3)},
        )
        try:
            self._forget_other_runs(record, attempt)
        except Exception as exc:  # left for the job's expiry, which deletes its whole prefix
            log.warning("could not delete what interrupted runs stored: %s", exc, extra={"job_id": record.id})
        return Ended(record.id, Outcome.completed, journaled=True)

    def _forget_other_runs(self, record: JobRecord, attempt: int) -> None:
        """Deletes what interrupted runs of the job left in storage (a run killed mid-upload)."""
        keep = self.storage.attempt_prefix(record.id, attempt)
        inputs = {record.spec.image_key}
        stale = [
            k for k in self.storage.list_keys(self.storage.job_prefix(record.id)) if not k.startswith(keep) and k not in inputs
        ]
        for key in stale:
            self.storage.delete(key)

    def _fail(self, record: JobRecord, attempt: int, exc: Exception, timings: dict[str, float]) -> Ended:
        """Records why the job ended early and returns the outcome."""
        if isinstance(exc, JobCanceled):
            jobstate.cancel_running(self.store, record, attempt, timings)
            return Ended(record.id, Outcome.canceled)
        if isinstance(exc, JobVanished):
            self.storage.delete_prefix(self.storage.job_prefix(record.id))
            return Ended(record.id, Outcome.deleted)
        if isinstance(exc, ClaimLost):
            log.warning(
                "run stopped: its job was requeued and another run took it over",
                extra={"job_id": record.id, "attempt": attempt, "worker": self.worker_id},
            )
            self.storage.delete_prefix(self.storage.attempt_prefix(record.id, attempt))
            return Ended(record.id, Outcome.superseded)
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            exc = JobTimeout(timeout_message(record))
        if not isinstance(exc, WanqError):
            log.exception("job failed", extra={"job_id": record.id, "model": record.spec.model, "tenant": record.tenant})
            exc = WanqError(f"{type(exc).__name__}: {exc}")
        jobstate.fail(self.store, record, attempt, exc, timings)
        return Ended(record.id, Outcome.failed, exc.code)

    def _load_image(self, spec: GenerationSpec) -> Image.Image | None:
        if spec.image_key is None:
            return None
        return Image.open(io.BytesIO(self.storage.get_bytes(spec.image_key))).convert("RGB")

    def _export_stages(self, spec: GenerationSpec) -> list[Stage]:
        """The stages after the decode, up to the upload: post-processing (if any), then the MP4's encode. The first
        is reported as the GPU part ends, each later one as it begins (`_export_and_upload`)."""
        return [*self.post.stages(spec), Stage.encoding_video]

    def _export_and_upload(
        self,
        record: JobRecord,
        attempt: int,
        frames: Any,
        timings: dict[str, float],
        source: extension.Source | None = None,
        *,
        video: Path | None = None,
        stills: dict[str, Path] | None = None,
    ) -> dict[str, str]:
        """`video`: the MP4 already encoded beside the decode (`_mp4_stream`; an extension's new part, joined here),
        `stills` the thumbnail and spritesheet made beside it; `encoding_video` then times what is left (the encode's
        tail is waited for before)."""
        spec = record.spec
        stages = self._export_stages(spec)

        def begin(stage: Stage) -> None:
            if stage is not stages[0]:  # the first was reported when the GPU part ended
                self._progress(record, attempt, stage, 0, 0, timings)

        with tempfile.TemporaryDirectory(prefix="wanq-") as tmp:
            folder = Path(tmp)
            t0 = time.perf_counter()
            if self.settings.engine.fault_injection:
                time.sleep(faults.export_delay(spec))
            if spec.kind == "image":
                files = {
                    "image": export.write_png(frames[0], folder / "image.png"),
                    "thumbnail": export.write_thumbnail(frames, folder / "thumbnail.webp"),
                }
            else:
                # decode -> interpolate -> upscale -> MP4; thumbnail and spritesheet from the final frames
                generated_last = frames[-1]
                whole: export.Frames = (frames := self.post.apply(frames, spec, timings, on_stage=begin))
                begin(Stage.encoding_video)
                t0 = time.perf_counter()
                if source is not None:
                    # the new part's first frame (the source's last, generated) is left out; both at output_fps
                    video, whole = extension.write_video(source, frames, spec.output_fps, folder, part=video)
                elif video is None:
                    video = export.write_mp4(frames, spec.output_fps, folder / "video.mp4")
                if stills is None or source is not None:
                    stills = {
                        "thumbnail": export.write_thumbnail(whole, folder / "thumbnail.webp"),
                        "spritesheet": export.write_spritesheet(whole, folder / "spritesheet.jpg"),
                    }
                files = {"video": video, **stills}
                if spec.upscale != 1:
                    # An extension continues from the generated last frame, which the upscaled MP4 no longer holds.
                    files[LAST_FRAME] = export.write_png(generated_last, folder / "last_frame.png")
            timings["encoding_video"] = time.perf_counter() - t0
            self._progress(record, attempt, Stage.uploading, 0, 0, timings)
            t0 = time.perf_counter()
            outputs = {}
            for variant, path in files.items():
                key = self.storage.output_key(record.id, attempt, variant)
                self.storage.upload_file(path, key, CONTENT_TYPES[variant])
                outputs[variant] = key
            timings["uploading"] = time.perf_counter() - t0
        self.journal.write("uploaded", record.id, attempt=attempt, keys=sorted(outputs.values()))
        return outputs

    # -----------------------------------------------------------------------------------------
    def _progress(
        self, record: JobRecord, attempt: int, stage: Stage, step: int, total: int, timings: dict[str, float], **extra: Any
    ) -> None:
        """Records the stage and step; raises JobCanceled if a cancel was requested, ClaimLost if the job is no
        longer this run's (requeued: another run has it or will), JobVanished if it was deleted."""
        result = jobstate.progress(self.store, record, attempt, stage, step, total, timings, **extra)
        if result.record is None:
            raise JobVanished(record.id)
        if not result.ok:
            raise ClaimLost(
                f"job {record.id} is {result.record.status.value} at attempt {result.record.attempts}, not run {attempt}'s"
            )
        if result.record.cancel_requested:
            raise JobCanceled("canceled")
