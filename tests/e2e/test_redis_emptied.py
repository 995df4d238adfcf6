"""Redis killed and restarted without persistence comes back empty: the API notices (its `/readyz` answers 503
naming the cause, its log says it at critical level), a restarted API does not take the empty Redis for a first
start, and one start with WANQ_MAINTENANCE_FRESH_START=true begins afresh; restarted with its AOF, it is still
ready. A stack of its own: redis-server, moto's S3 server and the API; nothing else is needed to show it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from shared.deployment import Deployment
from tests.private_stack import redis_process
from wanq.stack import Stack, wait_until


def readiness(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.api_url}/readyz", timeout=10)


def test_a_redis_that_comes_back_empty_is_not_ready_until_a_deliberate_fresh_start(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.env["WANQ_MAINTENANCE_INTERVAL_S"] = "0.5"
    stack.seed_admin_key()
    try:
        stack.start_redis(appendonly=True)
        stack.start_s3()
        stack.start_api()
        ready = readiness(stack)
        assert ready.status_code == 200 and ready.json()["checks"]["deployment"] == "ok", ready.text

        # Stopped and started again with its AOF (as deploy/ runs it): its data, the marker with it, is back.
        port, managed = redis_process(stack)
        managed.stop()  # type: ignore[attr-defined]
        stack.start_redis(port, appendonly=True)
        wait_until(lambda: readiness(stack).status_code == 200, 30, "/readyz after a restart with the AOF", interval=0.2)
        time.sleep(1.0)  # an upkeep round or two
        assert readiness(stack).json()["checks"]["deployment"] == "ok"

        # Killed and started again on its port with no persistence: it comes back empty.
        port, managed = redis_process(stack)
        managed.stop(signal.SIGKILL)  # type: ignore[attr-defined]
        stack.start_redis(port)

        def refused() -> bool:
            answer = readiness(stack)
            return answer.status_code == 503 and answer.json()["checks"].get("deployment") == Deployment.LOST

        wait_until(refused, 30, "/readyz to say that Redis lost its data", interval=0.2)
        api = next(p for p in stack.processes if p.name.startswith("api-") and p.alive())
        critical = '"level": "critical", "logger": "wanq.deployment", "msg": "redis lost its data'
        wait_until(lambda: critical in api.log(), 10, "the critical log line")

        # A restarted API does not take the empty Redis for a first start (the bucket keeps the other half).
        api.stop()
        stack.start_api()
        time.sleep(1.0)  # an upkeep round or two
        assert readiness(stack).status_code == 503

        # One deliberate fresh start.
        next(p for p in stack.processes if p.name.startswith("api-") and p.alive()).stop()
        stack.env["WANQ_MAINTENANCE_FRESH_START"] = "true"
        stack.start_api()
        ready = readiness(stack)
        assert ready.status_code == 200 and ready.json()["checks"]["deployment"] == "ok", ready.text
    finally:
        stack.stop()
