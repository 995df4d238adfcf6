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


class UniformTimestep:
    """A forward pre-hook of torch's own (`register_forward_pre_hook(with_kwargs=True)`): it runs in the module's
    `__call__` before whatever `forward` is installed, so offload hooks that swap `forward` (accelerate's, which
    diffusers re-installs after each call with `--offload model`) never drop it."""

    def __init__(self) -> None:
        self.active = False
        self.applied = 0
        """Forwards given one timestep per sample since the last `set_uniform`."""

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        timestep = kwargs.get("timestep")
        if not self.active or args or timestep is None or timestep.ndim != 2:
            return None
        self.applied += 1
        return args, {**kwargs, "timestep": timestep[:, 0]}  # every token's value: the job has no image


def install(transformer: Any) -> UniformTimestep:
    hook = UniformTimestep()
    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    transformer._wanq_uniform_timestep = (hook, handle)
    return hook


def hook_of(transformer: Any) -> UniformTimestep | None:
    found = getattr(transformer, "_wanq_uniform_timestep", None)
    return found[0] if found is not None else None


def uninstall(transformer: Any) -> None:
    found = getattr(transformer, "_wanq_uniform_timestep", None)
    if found is not None:
        found[1].remove()
        del transformer._wanq_uniform_timestep


def set_uniform(transformer: Any, active: bool) -> None:
    """Per job: on for a job whose tokens share one timestep (no image), off otherwise (and after every job)."""
    hook = hook_of(transformer)
    if hook is not None:
        hook.active = active
        if active:
            hook.applied = 0
