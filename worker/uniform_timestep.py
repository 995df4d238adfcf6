"""TI2V-5B's text-to-video jobs with one timestep instead of one per video token: the same numbers, less work.

diffusers' TI2V-5B pipelines (`expand_timesteps`) give the transformer a timestep per video token, so that an
image-to-video job can hold its first frame at t = 0. The transformer then embeds 18,480 timesteps per forward at
1280x704x81 (an fp32 matrix product of that height) and every block reads a [tokens, 6, 3072] fp32 modulation
tensor instead of a [6, 3072] one. In a text-to-video job every token has the same timestep (the mask is all
ones), so handing the transformer that one timestep takes the Wan2.1/A14B path of the same code: the embedding of
one row, broadcast over the tokens, which is what the per-token rows hold. Same math; on an H100 the per-token
path's fp32 product and modulation reads are a few per cent of a step (benchmarks/gpu_jobs.py's kernel profile).

The engine turns the hook on per job (`set_uniform`) only for jobs without an image, and never with context
parallelism (diffusers splits the per-token timestep over the ranks there). A14B's experts already get one
timestep per sample: the hook is never installed on them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import ModelHook

HOOK_NAME = "wanq_uniform_timestep"


class UniformTimestepHook(ModelHook):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.applied = 0
        """Forwards given one timestep per sample since the last `set_uniform`."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        original: Any = self.fn_ref.original_forward
        timestep = kwargs.get("timestep")
        if self.active and not args and timestep is not None and timestep.ndim == 2:
            kwargs["timestep"] = timestep[:, 0]  # every token's value: the job has no image
            self.applied += 1
        return original(*args, **kwargs)


def install(transformer: Any) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(UniformTimestepHook(), HOOK_NAME)


def hook_of(transformer: Any) -> UniformTimestepHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None  # type: ignore[no-any-return]


def set_uniform(transformer: Any, active: bool) -> None:
    """Per job: on for a job whose tokens share one timestep (no image), off otherwise."""
    hook = hook_of(transformer)
    if hook is not None:
        hook.active = active
        hook.applied = 0
