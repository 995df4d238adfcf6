"""A LoRA fused into the weights at start (worker/fused_lora.py fuses it; the engine, before the adapter slots)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import EngineSettings
from worker.options.option import Environment, Option, rule


def _missing(s: EngineSettings, _e: Environment) -> str:
    bad = next(f for f in (s.fuse_lora, s.fuse_lora_2) if f and not Path(f).is_file())
    flag = "--fuse-lora" if bad == s.fuse_lora else "--fuse-lora-2"
    return f"{flag} {bad} is not a file: give a LoRA .safetensors (diffusers, original Wan, ComfyUI or musubi keys)"


FUSED = Option(
    flag="--fuse-lora FILE [--fuse-lora-2 FILE]",
    kind="lora",
    summary="a LoRA fused into the transformer's weights at start: every job runs with it at no cost per step",
    chosen=lambda s: bool(s.fuse_lora or s.fuse_lora_2),
    needs=(
        rule(
            "existing files",
            lambda s, _e: any(f and not Path(f).is_file() for f in (s.fuse_lora, s.fuse_lora_2)),
            _missing,
        ),
        rule(
            "--fuse-lora with --fuse-lora-2",
            lambda s, _e: bool(s.fuse_lora_2) and not s.fuse_lora,
            "--fuse-lora-2 is the low-noise expert's file: give the high-noise expert's with --fuse-lora too",
        ),
    ),
    applied="fused at load, before the adapter slots, quantization and compile (worker/fused_lora.py)",
)
