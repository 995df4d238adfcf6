"""A whole stack of its own for one test that breaks or floods it (Redis restarts, load), so the session's
shared stack never sees it: redis-server (AOF on, as deploy/ runs it), moto's S3 server, the API, the
dispatcher, the webhook delivery process and `workers` Celery workers of one tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from wanq.stack import Stack

MODEL = "tiny-t2v-a14b"
ADMIN_UNLIMITED = {"admin": {"max_queued_jobs": 100_000, "max_running_jobs": 1_000, "requests_per_minute": 10_000_000}}


@contextmanager
def private_stack(root: Path, *, workers: int, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    stack = Stack(root)
    stack.env.update(
        {
            "WANQ_MODELS": json.dumps([MODEL]),
            "WANQ_S3_BUCKET": "wanq-private",
            "WANQ_S3_CREATE_BUCKET": "true",
            "WANQ_S3_UPLOAD_BACKOFF_S": "0.2",
            "WANQ_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
            "WANQ_WORKER_HEARTBEAT_TTL_S": "5",
            "WANQ_MAINTENANCE_INTERVAL_S": "1",
            "WANQ_WEBHOOKS_ALLOWLIST": '["127.0.0.1/32"]',
            "WANQ_WEBHOOKS_RETRY_SCHEDULE_S": "[0, 0.5, 1, 2, 4]",
            "WANQ_WEBHOOKS_POLL_INTERVAL_S": "0.1",
            "WANQ_QUOTAS_TENANTS": json.dumps(ADMIN_UNLIMITED),
            "WANQ_DISPATCH_IN_API": "false",
            # Two workers' worth of jobs in the broker list: jobs wait in Redis, in the tenants' queues.
            "WANQ_DISPATCH_RECOVER_AFTER_S": "5",
            **(env or {}),
        }
    )
    stack.seed_admin_key()
    try:
        stack.start_redis(appendonly=True)
        stack.start_s3()
        stack.build_tiny_models([MODEL], root / "models")
        stack.start_api()
        stack.start_webhooks()
        stack.start_dispatcher()
        for _ in range(workers):
            stack.start_worker(MODEL)
        stack.wait_for_workers(MODEL, workers, timeout=240)
        yield stack
    finally:
        stack.stop()


def redis_process(stack: Stack) -> tuple[int, object]:
    """The stack's redis-server process and its port."""
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    managed = next(p for p in reversed(stack.processes) if p.name == f"redis-{port}" and p.alive())
    return port, managed
