"""A LoRA fused into the transformer's weights at start (`--fuse-lora FILE`, `--fuse-lora-2 FILE`): for a worker that
serves one step-distilled LoRA (Lightning's, say) on every job, so that its steps cost what the base model's do.

A job's LoRAs run in adapter slots (worker/lora_slots.py): unfused, so that switching is free and the base weights
never drift, but every slotted linear re-reads its input for the rank-r products (on T2V-A14B at 720p, a rank-64
adapter costs 0.3 s of a 10 s forward). A fused LoRA is part of the weights instead: W <- W + scale * B @ A, summed in
fp32 and rounded once to the weights' dtype, before the adapter slots, the quantization and compile, so FP8 quantizes
the fused weights and jobs may still add LoRAs of their own on top. The files are read as the slots read a job's
(diffusers' Wan loader: original Wan, ComfyUI, musubi or diffusers keys; per-module rank and alpha; `read_lora`).

T2V-A14B: `--fuse-lora` goes into both experts unless `--fuse-lora-2` names the low-noise expert's own file (the
Wan2.2-Lightning releases have one file per expert); TI2V-5B has one transformer.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from shared.settings import EngineSettings
from worker.lora_slots import TARGETS, read_lora

log = logging.getLogger("wanq.engine")


def shapes_of(transformer: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of every block linear a LoRA may touch, by module name ("blocks.0.attn1.to_q")."""
    target = re.compile(TARGETS, re.ASCII)
    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and target.fullmatch(name)
    }


def fuse(transformer: Any, path: Path, strength: float = 1.0) -> int:
    """Adds the LoRA in `path` to `transformer`'s weights; returns the number of linears changed. A file that does
    not fit raises ValueError in one sentence naming the file."""
    shapes = shapes_of(transformer)
    try:
        modules = read_lora(path, shapes, rank=1 << 16)  # any rank: nothing is allocated per rank
    except (OSError, ValueError) as exc:
        raise ValueError(f"--fuse-lora {path}: {exc}") from None
    with torch.no_grad():
        for name, lora in modules.items():
            weight = transformer.get_submodule(name).weight
            a = lora.a.to(device=weight.device, dtype=torch.float32)
            b = lora.b.to(device=weight.device, dtype=torch.float32)
            weight.copy_((weight.float() + (b @ a) * lora.scale(strength)).to(weight.dtype))
    return len(modules)


def fuse_configured(pipe: Any, settings: EngineSettings) -> dict[str, int]:
    """The settings' fused LoRAs into the pipeline's transformers; {expert: linears changed}."""
    if not settings.fuse_lora:
        return {}
    started = time.perf_counter()
    files = {"transformer": settings.fuse_lora, "transformer_2": settings.fuse_lora_2 or settings.fuse_lora}
    if settings.fuse_lora_2 and getattr(pipe, "transformer_2", None) is None:
        raise ValueError("--fuse-lora-2 names the low-noise expert's LoRA, but this model has one transformer: drop it")
    done: dict[str, int] = {}
    for expert, file in files.items():
        model = getattr(pipe, expert, None)
        if model is not None:
            done[expert] = fuse(model, Path(file), settings.fuse_lora_strength)
    log.info("LoRA fused into the weights", extra={"files": files, "linears": done, "s": round(time.perf_counter() - started, 2)})
    return done
