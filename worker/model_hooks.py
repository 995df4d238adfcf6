"""What the engine's diffusers hooks on a transformer share: the CFG-parallel hook (worker/parallel/mesh.py) and the
CFG-batch hook (worker/cfg_batch.py) answer a call without running it, so they keep no per-call state of diffusers'
kind and build the call's answer themselves."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks.hooks import BaseState


class NoState(BaseState):  # type: ignore[misc]
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


def as_output(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """A transformer call's answer in the form the call asked for (`return_dict`)."""
    if kwargs.get("return_dict", True):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)
