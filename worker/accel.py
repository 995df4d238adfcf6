"""Applies the engine options to a loaded pipeline, through diffusers' own mechanisms only.

Placement (device or one of diffusers' offload hooks), attention backend, cache hooks, VAE tiling
and regional compile. Impossible combinations are refused by `validate` before anything loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from shared.settings import EngineSettings

log = logging.getLogger("wanq.engine")


@dataclass(frozen=True)
class Plan:
    device: str
    offload: str
    attention_backend: str
    cache: str
    compiled: bool


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def validate(settings: EngineSettings, *, num_heads: int | None = None) -> None:
    """Refuses configurations that cannot work, with a message saying what to change."""
    problems: list[str] = []
    groups = settings.ulysses_degree * settings.ring_degree * (2 if settings.cfg_parallel else 1)
    if groups != settings.num_gpus:
        problems.append(
            f"ulysses_degree ({settings.ulysses_degree}) x ring_degree ({settings.ring_degree}) x "
            f"cfg ({2 if settings.cfg_parallel else 1}) = {groups} must equal num_gpus ({settings.num_gpus})"
        )
    if num_heads is not None and num_heads % settings.ulysses_degree:
        problems.append(
            f"the transformer's {num_heads} attention heads are not divisible by ulysses_degree {settings.ulysses_degree}"
        )
    if settings.compile and settings.offload == "sequential":
        problems.append("--compile cannot be combined with --offload sequential (it moves weights per layer); use group offload")
    if settings.num_gpus > 1 and settings.offload in ("model", "sequential"):
        problems.append(f"--offload {settings.offload} is single-GPU only; use --offload none or group with --num-gpus > 1")
    if settings.num_gpus > 1 and settings.cache != "none":
        problems.append("cache hooks skip steps per rank and are not used with several GPUs; use --cache none")
    if settings.pin_cpu_memory and settings.offload != "group":
        problems.append("--pin-cpu-memory applies to group offload only; add --offload group or drop it")
    if problems:
        raise ValueError("impossible engine configuration: " + "; ".join(problems))


def transformers_of(pipe: Any) -> list[Any]:
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def module_device(module: Any) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device  # type: ignore[attr-defined]

    try:
        return torch.device(get_module_execution_device(module))
    except Exception:
        return next(module.parameters()).device  # type: ignore[no-any-return]


def apply(pipe: Any, settings: EngineSettings, device: torch.device) -> Plan:
    transformers = transformers_of(pipe)
    validate(settings, num_heads=transformers[0].config.num_attention_heads if transformers else None)

    # 1. Attention backend (before compile, so the compiled graph uses it)
    if settings.attention_backend:
        for model in transformers:
            model.set_attention_backend(settings.attention_backend)

    # 2. Cache hooks (diffusers' own; lossy, opt-in)
    if settings.cache != "none":
        config = _cache_config(settings)
        for model in transformers:
            model.enable_cache(config)

    # 3. Placement
    if device.type == "cpu" or settings.offload == "none":
        pipe.to(device)
        if settings.text_encoder_cpu_offload and device.type == "cuda":
            pipe.text_encoder.to("cpu")
        if settings.vae_cpu_offload and device.type == "cuda":
            pipe.vae.to("cpu")
    elif settings.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif settings.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif settings.offload == "group":
        use_stream = device.type == "cuda"
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and hasattr(component, "enable_group_offload"):
                component.enable_group_offload(
                    onload_device=device,
                    offload_type="block_level" if name.startswith("transformer") else "leaf_level",
                    num_blocks_per_group=1 if name.startswith("transformer") else None,
                    use_stream=use_stream,
                    record_stream=use_stream,
                    low_cpu_mem_usage=not settings.pin_cpu_memory,
                )
            elif isinstance(component, torch.nn.Module):
                component.to(device)

    # 4. VAE tiling
    if settings.vae_tiling:
        pipe.vae.enable_tiling()

    # 5. Regional compile of the repeated transformer blocks
    if settings.compile:
        for model in transformers:
            model.compile_repeated_blocks(fullgraph=True)

    return Plan(
        device=str(device),
        offload=settings.offload,
        attention_backend=settings.attention_backend or "default",
        cache=settings.cache,
        compiled=settings.compile,
    )


def share_placement(source: Any, target: Any) -> None:
    """The image pipeline of TI2V-5B reuses the text pipeline's modules; offload hooks come with them."""
    for name in ("_offload_gpu_id", "_offload_device"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
    if getattr(source, "model_cpu_offload_seq", None) and getattr(source, "_all_hooks", None):
        target._all_hooks = source._all_hooks


def _cache_config(settings: EngineSettings) -> Any:
    if settings.cache == "fbcache":
        from diffusers import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=settings.cache_threshold)
    from diffusers import TaylorSeerCacheConfig

    return TaylorSeerCacheConfig(cache_interval=settings.cache_interval)
