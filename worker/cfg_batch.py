"""Both classifier-free-guidance branches as one batch-2 forward on one GPU (`--cfg-batch`).

diffusers' Wan pipelines call the transformer twice per step: the "cond" call with the prompt, then the "uncond"
call with the negative prompt, on the same latents and timestep. The hook below, on each transformer, turns the
"cond" call into one forward of batch 2 (the latents and timestep twice, the prompt and the negative prompt
stacked), returns the first half, and answers the "uncond" call that follows with the second half without
computing anything: the same two results, from one forward whose matrix products are twice as tall. Whether that
is faster depends on the card and size (the products are already large at 720p); benchmarks/gpu_engine.py times
it against the two calls. Activations double for the forward.

The engine turns it on per job (`set_negative`) only when the job guides (guidance > 1) and runs without the step
cache (cache-dit keeps separate state per branch). The call names come from the pipeline's
`cache_context("cond" / "uncond")`, which diffusers hands to stateful hooks (the same as worker/parallel/mesh.py's
CFG-parallel hook).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import ModelHook, StateManager

from worker.model_hooks import NoState, as_output

HOOK_NAME = "wanq_cfg_batch"


class CfgBatchHook(ModelHook):  # type: ignore[misc]
    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.negative: torch.Tensor | None = None
        """The job's negative prompt embeddings; None: the hook passes every call through."""
        self.state = StateManager(NoState)  # type: ignore[arg-type]
        self._uncond: torch.Tensor | None = None
        self._latents: torch.Tensor | None = None
        self.batched = 0
        """Forwards run as batch 2 since the last `set_negative` (the job's start)."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        context = self.state._context
        original: Any = self.fn_ref.original_forward
        if self.negative is None or context is None or args:
            return original(*args, **kwargs)
        latents = kwargs["hidden_states"]
        if context.name == "uncond":
            if self._uncond is None or self._latents is not latents:
                return original(*args, **kwargs)  # not the call the batch answered: computed as asked
            sample, self._uncond, self._latents = self._uncond, None, None
            return as_output(sample, kwargs)
        prompt = kwargs["encoder_hidden_states"]
        if prompt.shape != self.negative.shape:
            return original(*args, **kwargs)
        batch = latents.shape[0]
        both = dict(kwargs)
        both["hidden_states"] = torch.cat([latents, latents])
        both["timestep"] = torch.cat([kwargs["timestep"], kwargs["timestep"]])
        both["encoder_hidden_states"] = torch.cat([prompt, self.negative.to(prompt.dtype)])
        image = kwargs.get("encoder_hidden_states_image")
        if image is not None:
            both["encoder_hidden_states_image"] = torch.cat([image, image])
        both["return_dict"] = False
        sample = original(**both)[0]
        self.batched += 1
        self._uncond, self._latents = sample[batch:], latents
        return as_output(sample[:batch], kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._uncond = self._latents = None
        return module


def enable(transformers: list[Any], *_: Any) -> None:
    """Registers the hook on each transformer (off until `set_negative`)."""
    for model in transformers:
        HookRegistry.check_if_exists_or_initialize(model).register_hook(CfgBatchHook(), HOOK_NAME)


def hooks(transformers: list[Any]) -> list[CfgBatchHook]:
    found = []
    for model in transformers:
        registry = getattr(model, "_diffusers_hook", None)
        hook = registry.get_hook(HOOK_NAME) if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found


def set_negative(transformers: list[Any], negative: torch.Tensor | None) -> None:
    """Per job: the negative prompt's embeddings batch with the prompt's; None turns batching off."""
    for hook in hooks(transformers):
        hook.negative = negative
        hook._uncond = hook._latents = None
        hook.batched = 0
