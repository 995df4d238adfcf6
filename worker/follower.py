"""A follower rank (`python -m worker.follower REPORT_FD`): it joins the group, builds its engine, then denoises
each job that rank 0 sends, step for step with it, until told to stop. Outside worker/parallel/, like
worker/startup.py on rank 0: it composes that package with the engine, which itself uses the package."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import torch.distributed as dist

from shared.errors import JobCanceled
from worker.engine import WanEngine
from worker.exits import ExitStatus
from worker.parallel.mesh import device_for, join
from worker.parallel.messages import Failed, Job, Launch, Ready, receive, send

log = logging.getLogger("wanq.parallel")


def _watch_parent(parent_pid: int) -> None:
    """Rank 0 may die without closing our stdin (SIGKILL of a process group member): poll too."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(ExitStatus.RANK_DIED)
        time.sleep(0.5)


def follower_main(report_fd: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank-follower %(levelname)s %(name)s: %(message)s")
    stdin = sys.stdin.buffer
    reports = os.fdopen(report_fd, "wb")
    launch = receive(stdin)
    if not isinstance(launch, Launch):
        return
    rank = launch.rank
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="wanq-parent-watchdog", daemon=True).start()
    settings = launch.settings
    try:
        member = join(rank, launch.world_size, launch.init_method, device_for(settings.device, rank), settings)
        engine = WanEngine(
            launch.model_path,
            settings,
            model_id=launch.model_id,
            factory=launch.factory,
            factory_kwargs=launch.factory_kwargs,
            member=member,
            loras=launch.loras,
        )
    except BaseException as exc:
        log.exception("rank %d failed to load", rank)
        send(reports, Failed(f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    send(reports, Ready())
    while True:
        job = receive(stdin)
        if not isinstance(job, Job):  # end of stream (rank 0 is gone) or Stop
            break
        try:
            engine.follow(job)
        except JobCanceled:
            continue
        except BaseException:
            # Rank 0 is inside the same collectives; only a restart of every rank recovers.
            log.exception("rank %d failed during a job", rank)
            logging.shutdown()
            os._exit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    follower_main(int(sys.argv[1]))
