"""Applies the engine options to a loaded pipeline, through diffusers' (and torch's, torchao's) own mechanisms, in
the order diffusers needs; each option's own part is its registry entry's (worker/options/).

Attention backend (the entry's `apply`: `set_attention_backend`, FA4 registered as the named backend "fa4" by
worker/fa4.py), placement (device, `enable_model_cpu_offload`, `enable_sequential_cpu_offload`,
`enable_group_offload` / `apply_group_offloading` with CUDA streams), context parallelism
(`enable_parallelism` with a `ContextParallelConfig`, see worker/parallel/mesh.py), FP8 linears
(torchao, worker/fp8.py), the VAE's decode options (tiling, channels-last, cuDNN autotuning, a compiled
decoder) and regional compile (`compile_repeated_blocks`). The step cache (cache-dit) is the engine's,
set per job (worker/cache.py). `validate_before_loading` runs the registry's one check before anything loads
(worker/startup.py): impossible combinations, missing packages and GPU features, each with what to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.settings import EngineSettings
from worker.options import parallel, registry
from worker.options.option import Environment, Option, context_parallel
from worker.parallel import mesh
from worker.pipeline_dir import TRANSFORMERS, transformers_of


@dataclass(frozen=True)
class Plan:
    device: str
    offload: str
    attention_backend: str
    cache: str
    compiled: bool
    quantization: str = "none"
    vae: str = "the model's"
    decode: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    num_gpus: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False
    rank: int = 0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def environment(
    settings: EngineSettings,
    *,
    num_heads: int | None = None,
    device: torch.device | str | None = None,
    gpu_count: int | None = None,
    machine: bool = False,
) -> Environment:
    """What the options are checked against. With `machine`, a CUDA `device` is asked for its name and compute
    capability (which initializes CUDA: a Celery parent must not, worker/probe.py)."""
    if isinstance(device, torch.device):
        name: str | None = device.type
    else:
        name = device or (settings.device if settings.device != "auto" else None)
    gpu = None
    if machine and isinstance(device, torch.device) and device.type == "cuda" and torch.cuda.is_available():
        gpu = (torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    return Environment(device=name, num_heads=num_heads, gpu_count=gpu_count, gpu=gpu, machine=machine)


def validate(
    settings: EngineSettings,
    *,
    num_heads: int | None = None,
    device: str | None = None,
    gpu_count: int | None = None,
) -> None:
    """Refuses configurations that cannot work (the registry's rules, worker/options/), with a message saying
    what to change. `num_heads` (from the model's config), `device` (resolved) and `gpu_count` are checked when given.
    """
    problems = registry.validate(settings, environment(settings, num_heads=num_heads, device=device, gpu_count=gpu_count))
    problems.machine.clear()
    problems.raise_if_any()


def environment_problems(settings: EngineSettings, device: torch.device | None = None) -> list[str]:
    """What this machine lacks for the options asked for: packages (flash-attn-4, torchao, cache-dit) and GPU
    features (FA4: sm90+, FP8: sm89+), each with what to install or change. Touches CUDA only where a CUDA
    device is given (a Celery parent must not: `wanq worker` runs this in a fresh interpreter, worker/probe.py)."""
    return registry.validate(settings, environment(settings, device=device, machine=True)).machine


def validate_before_loading(settings: EngineSettings, model_path: Path | None, device: torch.device) -> None:
    """The one check of an engine's options, before anything loads (worker/startup.py): the registry's rules with
    the model directory's head count, the device this rank computes on, how many GPUs the machine shows, and the
    packages and GPU features the options need."""
    env = environment(
        settings,
        num_heads=num_heads_of(model_path) if model_path is not None else None,
        device=device,
        gpu_count=torch.cuda.device_count() if device.type == "cuda" else None,
        machine=True,
    )
    registry.validate(settings, env).raise_if_any()


def num_heads_of(model_path: Path) -> int | None:
    """The transformer's head count from its config.json, read before anything loads."""
    for name in TRANSFORMERS:
        config = model_path / name / "config.json"
        if config.exists():
            return int(json.loads(config.read_text())["num_attention_heads"])
    return None


def module_device(module: Any) -> torch.device:
    from diffusers.hooks.group_offloading import _get_group_onload_device

    try:
        return torch.device(_get_group_onload_device(module))
    except ValueError:
        pass
    from diffusers.utils.torch_utils import get_module_execution_device  # type: ignore[attr-defined]

    try:
        return torch.device(get_module_execution_device(module))
    except Exception:
        return next(module.parameters()).device  # type: ignore[no-any-return]


def apply(
    pipe: Any, settings: EngineSettings, device: torch.device, *, member: mesh.Member | None = None, sync_weights: bool = False
) -> Plan:
    """Applies every option to `pipe` in the order diffusers needs.

    `member` is given on every rank of a several-GPU worker;
    `sync_weights` copies rank 0's transformer weights to the others (random-weight pipelines).
    """
    transformers = transformers_of(pipe)

    # 1. Attention backend (before parallelism, which checks it, and before compile, which bakes it in)
    backend = registry.one(settings, "attention")
    if backend is not None and backend.apply is not None:
        backend.apply(transformers, settings, device)

    # 2. Placement. A quantization that places (FP8 on one GPU) quantizes each transformer block by block as it is
    # placed (two bf16 A14B experts never share the GPU); with --offload model each quantized expert is then parked
    # on the CPU.
    quantization = registry.one(settings, "quantization")
    quantize_as_placed = quantization if quantization is not None and member is None else None
    _place(pipe, settings, device, quantize_as_placed=quantize_as_placed)

    # 3. Several GPUs: context parallelism on every transformer, CFG branches on two rank groups
    if member is not None:
        mesh.enable(transformers, settings, member, sync_weights=sync_weights)

    if parallel.CFG_BATCH.is_chosen(settings) and parallel.CFG_BATCH.apply is not None:
        parallel.CFG_BATCH.apply(transformers, settings, device)  # both CFG branches as one forward, on one GPU

    # 4. Quantization on several GPUs: after rank 0's weights reached every rank, before compile (which traces them)
    if quantization is not None and quantize_as_placed is None and quantization.apply is not None:
        quantization.apply(transformers, settings, device)

    # 5. Fused kernels in the transformer blocks
    kernels = []
    for option in registry.chosen(settings, "kernels"):
        if option.apply is not None:
            option.apply(transformers, settings, device)
            kernels.append(option.name)

    # 6. The VAE's decode
    decode = prepare_vae(pipe.vae, settings)

    # 7. Regional compile of the repeated transformer blocks. fullgraph where nothing in the block
    # breaks the graph; context parallelism's collectives run inside attention, so it is left to dynamo.
    if settings.compile or settings.vae_compile:
        # One static graph per video size: a worker sees few sizes, and dynamic-shape kernels are slower.
        torch._dynamo.config.automatic_dynamic_shapes = False
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    if settings.compile:
        fullgraph = not context_parallel(settings)
        for model in transformers:
            model.compile_repeated_blocks(fullgraph=fullgraph)

    return Plan(
        device=str(device),
        offload=settings.offload,
        attention_backend=settings.attention_backend or "default",
        cache=settings.cache,
        compiled=settings.compile,
        quantization=settings.quantization,
        vae=settings.vae_path or "the model's",
        decode=decode,
        kernels=tuple(kernels),
        num_gpus=settings.num_gpus,
        ulysses_degree=settings.ulysses_degree,
        ring_degree=settings.ring_degree,
        cfg_parallel=settings.cfg_parallel,
        rank=member.rank if member is not None else 0,
    )


def _place(pipe: Any, settings: EngineSettings, device: torch.device, *, quantize_as_placed: Option | None = None) -> None:
    cuda = device.type == "cuda"
    transformers = {name for name in TRANSFORMERS if pipe.components.get(name) is not None}
    place = quantize_as_placed.place_transformer if quantize_as_placed is not None else None
    if settings.offload == "model":
        if place is not None:
            for name in sorted(transformers):
                place(pipe.components[name], device, torch.device("cpu"))
        pipe.enable_model_cpu_offload(device=device)
    elif settings.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif settings.offload == "group":
        # Transformers block by block (one block ahead on a side stream), the text encoder and the VAE
        # leaf by leaf: only what computes now is on the GPU.
        for name, component in pipe.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            if name.startswith("transformer"):
                component.enable_group_offload(  # type: ignore[operator]
                    onload_device=device,
                    offload_type="block_level",
                    num_blocks_per_group=1,
                    use_stream=cuda,
                    record_stream=cuda,
                    low_cpu_mem_usage=not settings.pin_cpu_memory,
                )
            else:
                _group_offload_leaves(component, device, settings)
    else:
        for name, component in pipe.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            if cuda and (
                (name == "text_encoder" and settings.text_encoder_cpu_offload) or (name == "vae" and settings.vae_cpu_offload)
            ):
                _group_offload_leaves(component, device, settings)
            elif not (place is not None and name in transformers):
                component.to(device)
        if place is not None:
            for name in sorted(transformers):
                place(pipe.components[name], device, None)


def _group_offload_leaves(module: torch.nn.Module, device: torch.device, settings: EngineSettings) -> None:
    from diffusers.hooks import apply_group_offloading

    cuda = device.type == "cuda"
    apply_group_offloading(
        module,
        onload_device=device,
        offload_type="leaf_level",
        use_stream=cuda,
        record_stream=cuda,
        low_cpu_mem_usage=not settings.pin_cpu_memory,
    )


def share_placement(source: Any, target: Any) -> None:
    """The image pipeline of TI2V-5B reuses the text pipeline's modules; offload hooks come with them."""
    for name in ("_offload_gpu_id", "_offload_device"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
    if getattr(source, "model_cpu_offload_seq", None) and getattr(source, "_all_hooks", None):
        target._all_hooks = source._all_hooks


def prepare_vae(vae: Any, settings: EngineSettings) -> tuple[str, ...]:
    """The decode options, in the registry's order; returns their names for the plan."""
    applied: list[str] = []
    for option in registry.chosen(settings, "decode"):
        if option.apply is not None:
            option.apply(vae, settings, None)
            applied.append(option.name)
    return tuple(applied)
