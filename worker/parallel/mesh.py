"""What every rank knows about its group (`Member`), joining it, and the parallelism applied to a
pipeline's transformers: diffusers' context parallelism and the CFG-parallel hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks.hooks import ModelHook, StateManager

from shared.settings import EngineSettings
from worker.model_hooks import NoState, as_output
from worker.options.option import context_parallel

PROCESS_GROUP_TIMEOUT_S = 600
"""Backstop only: a collective that waits this long aborts the process (the watchdogs act first)."""
HOOK_NAME = "wanq_cfg_parallel"


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


# -- Applying parallelism to a pipeline's transformers (from accel.apply, after placement). -------


def enable(transformers: list[Any], settings: EngineSettings, member: Member, *, sync_weights: bool = False) -> None:
    from diffusers import ContextParallelConfig
    from diffusers.hooks import HookRegistry

    for model in transformers:
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


def set_cfg_active(transformers: list[Any], active: bool) -> None:
    """Per job: the hook splits branches only when the pipeline runs both (guidance > 1)."""
    for model in transformers:
        registry = getattr(model, "_diffusers_hook", None)
        hook = registry.get_hook(HOOK_NAME) if registry is not None else None
        if hook is not None:
            hook.active = active
            hook.reset_state(model)


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
        self.state = StateManager(NoState)  # type: ignore[arg-type]
        self._uncond: torch.Tensor | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        context = self.state._context
        if not self.active or context is None:
            return self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        if context.name == "uncond":
            if self._uncond is None:
                raise RuntimeError("cfg-parallel: 'uncond' call without a preceding 'cond' call")
            sample, self._uncond = self._uncond, None
            return as_output(sample, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        sample = output[0] if isinstance(output, tuple) else output.sample
        batch = sample.shape[0]
        gathered = torch.empty((2 * batch, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        dist.all_gather_into_tensor(gathered, sample.contiguous(), group=self.group)
        self._uncond = gathered[batch:]
        return as_output(gathered[:batch], kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._uncond = None
        return module
