"""Rank 0's view of a several-GPU worker: it starts the follower ranks as fresh interpreters, joins
the group with them, sends them each job over their pipes, and takes the worker down when one dies."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from shared.settings import EngineSettings, LoraSettings
from worker.exits import ExitStatus
from worker.parallel.mesh import Member, device_for, join
from worker.parallel.messages import Failed, Job, Launch, Ready, Stop, receive, send

log = logging.getLogger("wanq.parallel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Follower:
    rank: int
    process: subprocess.Popen[bytes]
    reports: IO[bytes]


class Group:
    """Rank 0's view: the follower processes, their pipes and the watchdog."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        model_path: Path | None,
        model_id: str,
        factory: str | None,
        factory_kwargs: dict[str, Any] | None,
        loras: LoraSettings | None = None,
    ) -> None:
        self.settings = settings
        self.world_size = settings.num_gpus
        self.init_method = f"tcp://127.0.0.1:{free_port()}"
        self.followers: list[Follower] = []
        self._closing = False
        self._launch = Launch(
            rank=0,
            world_size=self.world_size,
            init_method=self.init_method,
            settings=settings,
            model_path=model_path,
            model_id=model_id,
            factory=factory,
            factory_kwargs=factory_kwargs or {},
            loras=loras,
        )

    def start(self) -> Member:
        """Starts ranks 1..N-1, joins the group as rank 0 and starts the watchdog."""
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        for rank in range(1, self.world_size):
            read_fd, write_fd = os.pipe()
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.follower", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=env,
                close_fds=True,
            )
            os.close(write_fd)
            assert process.stdin is not None
            send(process.stdin, replace(self._launch, rank=rank))
            self.followers.append(Follower(rank, process, os.fdopen(read_fd, "rb")))
        log.info("started follower ranks", extra={"pids": [f.process.pid for f in self.followers], "world_size": self.world_size})
        threading.Thread(target=self._watch, name="wanq-rank-watchdog", daemon=True).start()
        device = device_for(self.settings.device, 0)
        return join(0, self.world_size, self.init_method, device, self.settings)

    @property
    def pids(self) -> list[int]:
        return [f.process.pid for f in self.followers]

    def wait_ready(self) -> None:
        for follower in self.followers:
            report = receive(follower.reports)
            if not isinstance(report, Ready):
                detail = report.message if isinstance(report, Failed) else "exited"
                raise RuntimeError(f"rank {follower.rank} failed to load: {detail}")

    def send_job(self, job: Job) -> None:
        for follower in self.followers:
            assert follower.process.stdin is not None
            send(follower.process.stdin, job)

    def _watch(self) -> None:
        while not self._closing:
            self.exit_if_one_died()
            time.sleep(0.2)

    def exit_if_one_died(self, within_s: float = 0.0) -> None:
        """A dead follower takes rank 0 down (ExitStatus.RANK_DIED), whoever notices first: the watchdog, or a collective
        that failed because its peer went away (`within_s`: how long to wait for the kernel to report the death)."""
        deadline = time.monotonic() + within_s
        while True:
            for follower in self.followers:
                code = follower.process.poll()
                if code is not None and not self._closing:
                    log.critical(
                        "rank %d (pid %d) died with status %s: taking the worker down so the job is redelivered",
                        follower.rank,
                        follower.process.pid,
                        code,
                    )
                    self.kill()
                    logging.shutdown()
                    os._exit(ExitStatus.RANK_DIED)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """Ends every follower now (they may be blocked in a collective that cannot finish)."""
        self._closing = True
        for follower in self.followers:
            if follower.process.poll() is None:
                follower.process.kill()
        for follower in self.followers:
            follower.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        for follower in self.followers:
            try:
                assert follower.process.stdin is not None
                send(follower.process.stdin, Stop())
                follower.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout_s
        for follower in self.followers:
            try:
                follower.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                follower.process.kill()
                follower.process.wait()
