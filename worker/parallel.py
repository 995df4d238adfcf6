"""Several GPUs for one worker: rank 0 (the process that takes jobs) plus N-1 follower ranks.

Layout. The ranks form one process group (NCCL on GPUs, gloo on CPU) and one DeviceMesh with the
dimensions ("cfg", "ring", "ulysses"). Within a CFG group, diffusers' own context parallelism
(`ContextParallelConfig` + `enable_parallelism`, Wan's `_cp_plan`) splits the video tokens over
ring x ulysses ranks. With `--cfg-parallel`, the two CFG groups compute the conditional and the
unconditional branch at the same time: `CfgParallelHook` answers the pipeline's "cond" call with
its own branch, all-gathers between the groups, and answers the "uncond" call from the gathered
result, so diffusers' denoising loop runs unchanged on every rank.

Control. Rank 0 starts the followers as fresh interpreters (`python -m worker.parallel`, never a
fork: CUDA is not fork-safe) and talks to them over pipes: the job (spec, image) goes down the
follower's stdin, "ready"/"error" come back on a report pipe. Idle followers wait on that pipe,
not inside a collective, so an idle worker never hits the NCCL timeout. Prompt embeddings are
broadcast from rank 0 (followers load no text encoder). After each step rank 0 broadcasts a
stop flag, so a cancel stops every rank at the same step.

Failure. A dead follower takes rank 0 down at once (`os._exit(EXIT_RANK_DIED)`: rank 0 may be
blocked inside a collective that can never finish), and followers exit when rank 0 goes (EOF on
stdin, or their parent changes). The Celery parent then starts a fresh child and the job is
redelivered. If rank 0 fails in the middle of a denoise (out of memory, say), it kills its
followers at once (they are stuck in a collective) and the engine is marked broken: the job fails
with its own error, and the next `generate` restarts the process.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from shared.settings import EngineSettings

log = logging.getLogger("wanq.parallel")

EXIT_RANK_DIED = 70
"""Exit status of rank 0 when a follower died (the worker restarts; the job is redelivered)."""
EXIT_BROKEN = 71
"""Exit status of rank 0 when a job failed mid-denoise and the ranks can no longer agree."""
PROCESS_GROUP_TIMEOUT_S = 600
"""Backstop only: a collective that waits this long aborts the process (the watchdogs act first)."""
HOOK_NAME = "wanq_cfg_parallel"


# -- Messages over pipes: 8-byte length + pickle. Both ends are our own processes. ----------------


def send_message(stream: IO[bytes], message: dict[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_message(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next message, or None at end of stream (the other side is gone)."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # type: ignore[no-any-return]


# -- Membership: what every rank knows about the group. -------------------------------------------


@dataclass
class Member:
    rank: int
    world_size: int
    device: torch.device
    mesh: Any
    cfg_rank: int
    _flag: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(1))

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def agree_stop(self, stop: bool) -> bool:
        """Rank 0's decision, known to every rank: the same step ends the job everywhere."""
        self._flag.fill_(1 if (stop and self.is_leader) else 0)
        dist.broadcast(self._flag, src=0)
        return bool(self._flag.item())

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's weights everywhere (random-weight pipelines built per rank, for benchmarks)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def device_for(settings_device: str, rank: int) -> torch.device:
    if settings_device.startswith("cpu"):
        return torch.device("cpu")
    return torch.device("cuda", rank)


def join(rank: int, world_size: int, init_method: str, device: torch.device, settings: EngineSettings) -> Member:
    """Joins the process group and builds the mesh; every rank calls this with the same settings."""
    from torch.distributed.device_mesh import init_device_mesh

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S),
        device_id=device if cuda else None,
    )
    cfg = 2 if settings.cfg_parallel else 1
    mesh = init_device_mesh(
        device.type,
        (cfg, settings.ring_degree, settings.ulysses_degree),
        mesh_dim_names=("cfg", "ring", "ulysses"),
    )
    return Member(
        rank=rank,
        world_size=world_size,
        device=device,
        mesh=mesh,
        cfg_rank=mesh["cfg"].get_local_rank() if cfg > 1 else 0,
        _flag=torch.zeros(1, dtype=torch.int32, device=device),
    )


# -- Applying parallelism to a pipeline (called from accel.apply, after placement). ----------------


def enable(pipe: Any, settings: EngineSettings, member: Member, *, sync_weights: bool = False) -> None:
    from diffusers import ContextParallelConfig
    from diffusers.hooks import HookRegistry

    from worker.accel import context_parallel, transformers_of

    for model in transformers_of(pipe):
        if sync_weights:
            member.broadcast_module(model)
        if context_parallel(settings):
            # The mesh carries the "cfg" dimension too; diffusers uses its ("ring", "ulysses") part,
            # which is this rank's CFG group.
            model.enable_parallelism(
                config=ContextParallelConfig(
                    ulysses_degree=settings.ulysses_degree, ring_degree=settings.ring_degree, mesh=member.mesh
                )
            )
        if settings.cfg_parallel:
            hook = CfgParallelHook(member.mesh["cfg"].get_group(), member.cfg_rank)
            HookRegistry.check_if_exists_or_initialize(model).register_hook(hook, HOOK_NAME)


def set_cfg_active(pipe: Any, active: bool) -> None:
    """Per job: the hook splits branches only when the pipeline runs both (guidance > 1)."""
    from worker.accel import transformers_of

    for model in transformers_of(pipe):
        registry = getattr(model, "_diffusers_hook", None)
        hook = registry.get_hook(HOOK_NAME) if registry is not None else None
        if hook is not None:
            hook.active = active
            hook.reset_state(model)


class _NoState(BaseState):  # type: ignore[misc]
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class CfgParallelHook(ModelHook):  # type: ignore[misc]
    """Both CFG branches at once on two rank groups, inside diffusers' unchanged denoising loop.

    The engine gives CFG rank 1 the negative prompt as its "prompt", so on the pipeline's "cond"
    call each group computes its own branch; one all-gather between the groups gives every rank
    both results. The "cond" call returns group 0's (the conditional) result, the "uncond" call
    that follows returns group 1's without computing anything. The call names come from the
    pipeline's `cache_context("cond" / "uncond")`, which diffusers hands to stateful hooks.
    """

    _is_stateful = True

    def __init__(self, group: Any, cfg_rank: int) -> None:
        super().__init__()
        self.group = group
        self.cfg_rank = cfg_rank
        self.active = False
        self.state = StateManager(_NoState)  # type: ignore[arg-type]
        self._uncond: torch.Tensor | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        context = self.state._context
        if not self.active or context is None:
            return self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        if context.name == "uncond":
            if self._uncond is None:
                raise RuntimeError("cfg-parallel: 'uncond' call without a preceding 'cond' call")
            sample, self._uncond = self._uncond, None
            return _as_output(sample, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        sample = output[0] if isinstance(output, tuple) else output.sample
        batch = sample.shape[0]
        gathered = torch.empty((2 * batch, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        dist.all_gather_into_tensor(gathered, sample.contiguous(), group=self.group)
        self._uncond = gathered[batch:]
        return _as_output(gathered[:batch], kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._uncond = None
        return module


def _as_output(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("return_dict", True):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)


# -- Rank 0: starting and watching the followers. --------------------------------------------------


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
        model_path: str,
        model_id: str,
        factory: str | None,
        factory_kwargs: dict[str, Any] | None,
    ) -> None:
        self.settings = settings
        self.world_size = settings.num_gpus
        self.init_method = f"tcp://127.0.0.1:{free_port()}"
        self.followers: list[Follower] = []
        self._closing = False
        self._launch = {
            "world_size": self.world_size,
            "init_method": self.init_method,
            "model_path": model_path,
            "model_id": model_id,
            "factory": factory,
            "factory_kwargs": factory_kwargs or {},
            "settings": settings.model_dump(),
        }

    def start(self) -> Member:
        """Starts ranks 1..N-1, joins the group as rank 0 and starts the watchdog."""
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        for rank in range(1, self.world_size):
            read_fd, write_fd = os.pipe()
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.parallel", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=env,
                close_fds=True,
            )
            os.close(write_fd)
            assert process.stdin is not None
            send_message(process.stdin, {**self._launch, "rank": rank})
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
            message = read_message(follower.reports)
            if message is None or message.get("op") != "ready":
                detail = message.get("message") if message else "exited"
                raise RuntimeError(f"rank {follower.rank} failed to load: {detail}")

    def send_job(self, job: dict[str, Any]) -> None:
        for follower in self.followers:
            assert follower.process.stdin is not None
            send_message(follower.process.stdin, {"op": "generate", **job})

    def _watch(self) -> None:
        while not self._closing:
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
                    os._exit(EXIT_RANK_DIED)
            time.sleep(0.2)

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
                send_message(follower.process.stdin, {"op": "stop"})
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


def encode_image(image: Any) -> bytes | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes | None) -> Any:
    if data is None:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


# -- Follower ranks. -------------------------------------------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    """Rank 0 may die without closing our stdin (SIGKILL of a process group member): poll too."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(EXIT_RANK_DIED)
        time.sleep(0.5)


def follower_main(report_fd: int) -> None:
    from shared.errors import JobCanceled
    from worker.engine import WanEngine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank-follower %(levelname)s %(name)s: %(message)s")
    stdin = sys.stdin.buffer
    reports = os.fdopen(report_fd, "wb")
    launch = read_message(stdin)
    if launch is None:
        return
    rank = int(launch["rank"])
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="wanq-parent-watchdog", daemon=True).start()
    settings = EngineSettings.model_validate(launch["settings"])
    try:
        member = join(rank, launch["world_size"], launch["init_method"], device_for(settings.device, rank), settings)
        engine = WanEngine(
            launch["model_path"] or None,
            settings,
            model_id=launch["model_id"],
            factory=launch["factory"],
            factory_kwargs=launch["factory_kwargs"],
            member=member,
        )
    except BaseException as exc:
        log.exception("rank %d failed to load", rank)
        send_message(reports, {"op": "error", "message": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    send_message(reports, {"op": "ready"})
    while True:
        message = read_message(stdin)
        if message is None or message["op"] == "stop":
            break
        try:
            engine.follow(message)
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
