"""The Celery app both sides share: configured for long GPU jobs on the Redis broker.

The API only sends (`enqueue`); workers register the task (worker/tasks.py). One queue per model:
`wanq.<model id>`, a Redis list of that name (what KEDA's list scaler reads).
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

GENERATE_TASK = "wanq.generate"


def queue_name(model: str) -> str:
    return f"wanq.{model}"


def make_celery(settings: Settings) -> Celery:
    jobs = settings.jobs
    # Unacked messages return to the queue after the visibility timeout; it must outlast the longest
    # job so that a running job is never handed to a second worker while the first is alive.
    visibility_timeout = jobs.hard_time_limit_s + 600
    app = Celery("wanq", broker=settings.redis.url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        # One mechanism puts a dead worker's job back: upkeep (api/daemons/upkeep.py), when the worker's heartbeat
        # stops. It sees both a killed Celery child and a whole worker gone (machine lost, pod evicted), which
        # Celery's reject-on-worker-lost cannot (that message would wait for the visibility timeout), and it counts
        # attempts and time limits on the record. So a lost child's message is acknowledged, not requeued: two
        # mechanisms made two messages for one job, and the job ran twice.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=jobs.soft_time_limit_s,
        task_time_limit=jobs.hard_time_limit_s,
        broker_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=queue_name(settings.default_model),
        worker_proc_alive_timeout=settings.worker.load_timeout_s,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_pool_limit=64,
    )
    return app


def enqueue(app: Celery, job_id: str, model: str) -> None:
    app.send_task(GENERATE_TASK, args=[job_id], queue=queue_name(model))
