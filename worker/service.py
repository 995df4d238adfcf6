"""The GPU worker process: a Celery consumer of one model's queue with the engine resident.

Celery runs a prefork pool of one child. The parent never touches CUDA; the child loads the model
in `worker_process_init` (CUDA is not fork-safe) and keeps it for every job. A child killed by the
hard time limit or a crash is replaced by a fresh one, which loads the model again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun, worker_process_init, worker_process_shutdown

from shared import logs
from shared.deployment import Deployment
from shared.errors import WanqError
from shared.queue import GENERATE_TASK, make_celery, queue_name
from shared.settings import Settings
from shared.storage import Storage
from shared.store import JobStore
from worker import metrics
from worker.exits import ExitStatus
from worker.runner import Ended, JobRunner, Outcome

log = logging.getLogger("wanq.worker")


class WorkerProcess:
    """What one worker child holds: the engine, the runner and the heartbeat."""

    def __init__(self, settings: Settings, model_id: str, model_path: Path) -> None:
        self.settings = settings
        self.model_id = model_id
        self.model_path = model_path
        self.runner: JobRunner | None = None
        self.engine: Any = None
        """The engine the runner drives (its `close` and `broken` are read here)."""
        self.worker_id = ""
        self.node = ""
        """The Celery node name (`wanq worker-drain` finds it in the heartbeat)."""
        self._stop = threading.Event()
        self._info: dict[str, Any] = {}
        # Made in the parent, shared with its children through the fork: set by a child whose engine
        # failed to load, so the parent stops (and says why) instead of taking jobs it cannot run.
        self.load_failed = multiprocessing.get_context("fork").Value("b", 0)

    def load(self) -> None:
        from worker.engine import rank_device
        from worker.postprocess import load_post_processors
        from worker.startup import start_engine  # torch is imported here, in the child

        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        store = JobStore.from_settings(self.settings, retry_s=self.settings.worker.redis_retry_s)
        storage = Storage(self.settings.s3)
        if self.settings.s3.create_bucket:
            storage.ensure_bucket()
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": self.node,
            "state": "loading",
            "started_at": time.time(),
        }
        # Post-processing first (a bad file refuses the start at once), so the heartbeat says what this worker can
        # do from its first beat, while it loads (the API checks jobs against it).
        post = load_post_processors(self.settings.engine, self.model_path, rank_device(self.settings.engine, 0))
        self._info.update(post.capabilities())
        self._start_heartbeat(
            store, Deployment(store.redis, store.keys, storage, fresh_start=self.settings.maintenance.fresh_start)
        )
        metrics.serve(self.settings.worker.metrics_port)
        engine = start_engine(self.model_path, self.settings.engine, model_id=self.model_id, loras=self.settings.loras)
        metrics.model_loaded(self.model_id, engine.load_time_s)
        self._info.update(load_time_s=round(engine.load_time_s, 3), variant=engine.variant, plan=engine.plan.__dict__)
        if self.settings.engine.warmup:
            self._info["state"] = "warming_up"
            self._info["warmup_s"] = round(engine.warmup(), 3)
        self.engine = engine
        self.runner = JobRunner(
            self.settings, store, storage, metrics.MeteredEngine(engine, self.model_id), self.worker_id, post=post
        )
        self._info["state"] = "ready"
        log.info("worker ready", extra={"model": self.model_id, "worker": self.worker_id, **self._info})

    def _start_heartbeat(self, store: JobStore, deployment: Deployment) -> None:
        interval = self.settings.worker.heartbeat_interval_s
        ttl = self.settings.worker.heartbeat_ttl_s

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    job = self.runner.current_job if self.runner is not None else None
                    jobs = self.runner.busy_with() if self.runner is not None else []
                    store.heartbeat(self.worker_id, self.model_id, {**self._info, "job": job, "jobs": jobs}, ttl)
                except Exception as exc:  # Redis away for a moment: keep beating once it is back
                    log.warning("heartbeat failed: %s", exc)
                self._stop.wait(interval)

        def check_deployment() -> None:
            # On a thread of its own: with Redis's marker gone the check asks S3, whose retries could otherwise hold
            # the heartbeat past its TTL (the job taken for dead and run again).
            while not self._stop.is_set():
                try:
                    deployment.problem()  # a Redis that came back empty is logged at critical level, once
                except Exception as exc:
                    log.warning("could not check the deployment marker: %s", exc)
                self._stop.wait(max(interval, 10.0))

        self._store = store
        threading.Thread(target=beat, name="wanq-heartbeat", daemon=True).start()
        threading.Thread(target=check_deployment, name="wanq-deployment-check", daemon=True).start()

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.wait_pending()  # a warm shutdown finishes the upload in flight
            close = getattr(self.engine, "close", None)
            if close is not None:
                close()  # stops follower ranks of a several-GPU engine
        self._stop.set()
        if self.worker_id:
            try:
                self._store.forget_worker(self.worker_id, self.model_id)
            except Exception:
                pass

    def run_job(self, job_id: str) -> str:
        """Runs one delivery; returns its outcome's label (`finishing` while the upload goes on)."""
        if self.runner is None:
            raise RuntimeError("worker process has no engine loaded")
        metrics.IN_FLIGHT.labels(self.model_id).inc()
        ended: list[Ended] = []

        def on_ended(outcome: Ended) -> None:
            # With the export overlapped, the outcome is known once the background upload is recorded.
            ended.append(outcome)
            self._job_ended(outcome)

        try:
            outcome = self.runner.run(job_id, on_ended=on_ended)
        except BaseException:
            if not ended:
                self._job_ended(Ended(job_id, Outcome.failed, WanqError.code))
            raise
        label = ended[0].label if ended and outcome is not Outcome.finishing else outcome.value
        if getattr(self.engine, "broken", False):
            # A several-GPU job failed mid-denoise and took its follower ranks down: this child can't
            # run another job. Finish the upload in flight, then exit; Celery starts a fresh child.
            log.critical(
                "engine broken after job %s; replacing this worker process",
                job_id,
                extra={"job_id": job_id, "model": self.model_id},
            )
            self.runner.wait_pending()
            os._exit(ExitStatus.BROKEN)
        return label

    def _job_ended(self, ended: Ended) -> None:
        metrics.IN_FLIGHT.labels(self.model_id).dec()
        try:
            record = self._store.get(ended.job_id) if ended.outcome is not Outcome.skipped else None
        except Exception:
            record = None
        metrics.job_ended(self.model_id, ended.label, record)

    # Log context: Celery's lines about the task (its "succeeded" line included) and ours carry the job.
    def enter_job(self, job_id: str) -> Any:
        try:
            record = self._store.get(job_id)
        except Exception:
            record = None
        # "job started" is logged by the claim, once a run has really started (a dropped duplicate logs why).
        return logs.enter_job(job_id, record.tenant if record else None, record.spec.model if record else self.model_id)


def build_app(settings: Settings, model_id: str, model_path: Path) -> tuple[Celery, WorkerProcess]:
    app = make_celery(settings)
    process = WorkerProcess(settings, model_id, model_path)

    @worker_process_init.connect(weak=False)
    def _load(**_: Any) -> None:
        try:
            process.load()
        except Exception as exc:
            # A child that can't hold the model must not consume jobs (each would fail and be put back
            # forever), and a fresh child would fail the same way: stop the whole worker, loudly.
            log.critical("the model failed to load: %s; stopping this worker", exc, exc_info=True, extra={"model": model_id})
            process.load_failed.value = 1
            process.shutdown()  # its heartbeat goes: no "loading" worker is left counted as live
            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(ExitStatus.LOAD_FAILED)

    @worker_process_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        process.shutdown()

    @setup_logging.connect(weak=False)
    def _logging(loglevel: int | str = logging.INFO, **_: Any) -> None:
        # Connected, so Celery leaves logging alone: its lines go through our JSON handler too.
        logs.configure(loglevel)

    tokens: dict[str, Any] = {}

    @task_prerun.connect(weak=False)
    def _enter(task_id: str, args: Any = (), **_: Any) -> None:
        if args:
            tokens[task_id] = process.enter_job(str(args[0]))

    @task_postrun.connect(weak=False)
    def _leave(task_id: str, **_: Any) -> None:
        token = tokens.pop(task_id, None)
        if token is not None:
            logs.leave_job(token)

    @app.task(name=GENERATE_TASK, acks_late=True)
    def generate(job_id: str) -> str:
        return process.run_job(job_id)

    return app, process


def run(settings: Settings, model_id: str, model_path: Path, *, loglevel: str = "INFO") -> None:
    if model_id not in settings.catalog():
        raise SystemExit(f"model {model_id!r} is not in WANQ_MODELS {settings.models}; add it there or pick one of them")
    if not (model_path / "model_index.json").exists():
        raise SystemExit(f"--model-path {model_path} holds no model_index.json (a diffusers pipeline directory)")
    # Import torch and diffusers in the parent (no CUDA is touched by importing), so that a child
    # replacing a dead one only has to load the weights.
    try:
        import peft  # noqa: F401  (the LoRA slots, imported by the child)

        import worker.engine  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"wanq worker: its dependencies are not installed ({exc}); run `make install-worker` "
            "(or pip install 'wanq[worker]') in the environment that has torch"
        ) from None

    app, process = build_app(settings, model_id, model_path)
    process.node = f"wanq-{model_id}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    logs.bind(model=model_id)
    # Celery's "Task received" line is written before any job context exists; "job started" replaces it.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    app.worker_main(
        [
            "--quiet",  # no banner: every line on stderr is JSON
            "worker",
            "--queues",
            queue_name(model_id),
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--hostname",
            process.node,
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            loglevel,
            "-O",
            "fair",
        ]
    )
    if process.load_failed.value:
        raise SystemExit(f"wanq worker: {model_id} stopped: the model failed to load (the log above says why)")
