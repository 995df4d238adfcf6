"""Applies the engine options to a loaded pipeline, through diffusers' (and torch's, torchao's) own mechanisms.

Attention backend (`set_attention_backend`, FA4 registered as the named backend "fa4" by
worker/fa4.py), placement (device, `enable_model_cpu_offload`, `enable_sequential_cpu_offload`,
`enable_group_offload` / `apply_group_offloading` with CUDA streams), context parallelism
(`enable_parallelism` with a `ContextParallelConfig`, see worker/parallel/mesh.py), FP8 linears
(torchao, worker/fp8.py), the VAE's decode options (tiling, channels-last, cuDNN autotuning, a compiled
decoder) and regional compile (`compile_repeated_blocks`). The step cache (cache-dit) is the engine's,
set per job (worker/cache.py). Impossible combinations are refused by `validate` before anything
loads, and missing packages or GPU features by `environment_problems`, with a message that says what
to change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.settings import EngineSettings
from worker.parallel import mesh

log = logging.getLogger("wanq.engine")

# diffusers backends whose dispatch function implements Ulysses / ring attention (attention_dispatch.py,
# `supports_context_parallel=True`). "" means diffusers' default, which is `native` (SDPA).
CONTEXT_PARALLEL_BACKENDS = frozenset(
    {
        "",
        "native",
        "_native_cudnn",
        "_native_flash",
        "flash",
        "flash_hub",
        "flash_varlen_hub",
        "_flash_3_hub",
        "sage",
        "sage_hub",
        "fa4",
    }
)


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
    num_gpus: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False
    rank: int = 0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def uses_group_offload(settings: EngineSettings) -> bool:
    return settings.offload == "group" or settings.text_encoder_cpu_offload or settings.vae_cpu_offload


def validate(
    settings: EngineSettings,
    *,
    num_heads: int | None = None,
    device: str | None = None,
    gpu_count: int | None = None,
) -> None:
    """Refuses configurations that cannot work, with a message saying what to change.

    `num_heads` (from the model's config), `device` (resolved) and `gpu_count` are checked when given.
    """
    problems: list[str] = []
    cfg = 2 if settings.cfg_parallel else 1
    groups = settings.ulysses_degree * settings.ring_degree * cfg
    device = device or (settings.device if settings.device != "auto" else None)
    on_cpu = device is not None and device.startswith("cpu")
    if groups != settings.num_gpus:
        problems.append(
            f"ulysses_degree ({settings.ulysses_degree}) x ring_degree ({settings.ring_degree}) x cfg ({cfg}) = {groups} "
            f"must equal num_gpus ({settings.num_gpus}): change --num-gpus or the degrees"
        )
    if num_heads is not None and num_heads % settings.ulysses_degree:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0 and d <= 8]
        problems.append(
            f"the transformer's {num_heads} attention heads are not divisible by --ulysses-degree "
            f"{settings.ulysses_degree}: use one of {divisors}, or --ring-degree for the rest"
        )
    if settings.compile and settings.offload in ("sequential", "group"):
        problems.append(
            f"--compile cannot be combined with --offload {settings.offload} (its hooks move weights inside the compiled "
            "blocks); use --offload model or none with --compile"
        )
    if settings.num_gpus > 1 and settings.offload != "none":
        problems.append(
            f"--offload {settings.offload} is single-GPU only; with --num-gpus > 1 use --offload none "
            "(with --text-encoder-cpu-offload / --vae-cpu-offload if memory is short)"
        )
    if mesh.context_parallel(settings) and settings.cache != "none":
        problems.append(
            "--cache with --ulysses-degree / --ring-degree is not supported (every rank must skip the same blocks and "
            "this is verified only for --cfg-parallel); use --cache none, or --cfg-parallel alone"
        )
    if settings.offload != "none" and (settings.text_encoder_cpu_offload or settings.vae_cpu_offload):
        problems.append(
            f"--offload {settings.offload} already offloads the text encoder and the VAE; "
            "drop --text-encoder-cpu-offload / --vae-cpu-offload, or use --offload none"
        )
    if settings.pin_cpu_memory and not uses_group_offload(settings):
        problems.append(
            "--pin-cpu-memory applies to group offloading only; add --offload group (or --text-encoder-cpu-offload / "
            "--vae-cpu-offload) or drop it"
        )
    if on_cpu and mesh.context_parallel(settings):
        problems.append(
            "--ulysses-degree / --ring-degree need CUDA GPUs (diffusers' context parallelism); use --cfg-parallel on CPU"
        )
    if on_cpu and settings.offload == "sequential":
        problems.append("--offload sequential streams weights to a GPU layer by layer; on CPU use --offload none")
    if on_cpu and settings.dtype == "fp16":
        problems.append("--dtype fp16 is not supported on CPU; use bf16 or fp32")
    if settings.num_gpus > 1 and device is not None and ":" in device:
        problems.append(
            f"--device {device} names one GPU but --num-gpus is {settings.num_gpus}: use --device cuda "
            "(ranks take cuda:0..N-1; pick GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if gpu_count is not None and not on_cpu and settings.num_gpus > gpu_count:
        problems.append(f"--num-gpus {settings.num_gpus} but this machine has {gpu_count} visible GPU(s)")
    if mesh.context_parallel(settings) and settings.attention_backend not in CONTEXT_PARALLEL_BACKENDS:
        problems.append(
            f"attention backend {settings.attention_backend!r} has no context-parallel support in diffusers; "
            f"use one of {sorted(b for b in CONTEXT_PARALLEL_BACKENDS if b)}"
        )
    if settings.attention_backend:
        known = _known_backends()
        if known and settings.attention_backend not in known:
            problems.append(f"unknown --attention-backend {settings.attention_backend!r}; diffusers knows {sorted(known)}")
    problems.extend(_speed_option_problems(settings, on_cpu))
    if problems:
        raise ValueError("impossible engine configuration: " + "; ".join(problems))


def _speed_option_problems(settings: EngineSettings, on_cpu: bool) -> list[str]:
    """FA4, FP8 and the VAE options: what they cannot be combined with."""
    problems: list[str] = []
    fa4 = settings.attention_backend == "fa4"
    fp8 = settings.quantization == "fp8"
    if fa4 and on_cpu:
        problems.append("--attention-backend fa4 needs a CUDA GPU (Hopper or newer); on CPU leave --attention-backend empty")
    if fa4 and settings.dtype == "fp32":
        problems.append("--attention-backend fa4 computes in bf16 or fp16; use --dtype bf16 (or auto) with it")
    if fp8 and on_cpu:
        problems.append("--quantization fp8 needs a CUDA GPU with FP8 tensor cores (Ada, Hopper or newer); on CPU use none")
    if fp8 and settings.dtype not in ("auto", "bf16"):
        problems.append(
            f"--quantization fp8 quantizes bf16 weights (torchao's rowwise scales); use --dtype bf16, not {settings.dtype}"
        )
    if fp8 and settings.offload not in ("none", "model"):
        problems.append(
            f"--quantization fp8 quantizes whole transformers, which --offload {settings.offload} splits into groups; "
            "use --offload none (with --text-encoder-cpu-offload if memory is short) or --offload model"
        )
    if settings.vae_compile and (settings.offload in ("sequential", "group") or settings.vae_cpu_offload):
        problems.append(
            "--vae-compile cannot be combined with offload hooks on the VAE (--offload sequential/group, "
            "--vae-cpu-offload): they move its weights inside the compiled graph; drop one"
        )
    if settings.vae_path and not Path(settings.vae_path).exists():
        problems.append(f"--vae-path {settings.vae_path} does not exist: give a diffusers VAE directory or a weights file")
    return problems


def environment_problems(settings: EngineSettings, device: torch.device | None = None) -> list[str]:
    """What this machine lacks for the options asked for: packages (flash-attn-4, torchao, cache-dit) and GPU
    features (FA4: sm90+, FP8: sm89+), each with what to install or change. Touches CUDA only where a CUDA
    device is given (a Celery parent must not: `wanq worker` runs this in a fresh interpreter, worker/probe.py)."""
    from worker import fa4, fp8
    from worker.packages import missing_packages

    problems: list[str] = []
    wants_fa4 = settings.attention_backend == "fa4"
    wants_fp8 = settings.quantization == "fp8"
    if wants_fa4 and (missing := fa4.missing_package()):
        problems.append(missing)
    if wants_fp8 and (missing := fp8.missing_package()):
        problems.append(missing)
    problems.extend(missing_packages(settings))
    if device is not None and device.type == "cuda" and (wants_fa4 or wants_fp8) and torch.cuda.is_available():
        name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        for problem in (
            fa4.gpu_problem(name, capability) if wants_fa4 else None,
            fp8.gpu_problem(name, capability) if wants_fp8 else None,
        ):
            if problem:
                problems.append(problem)
    return problems


def validate_before_loading(settings: EngineSettings, model_path: Path | None, device: torch.device) -> None:
    """`validate` with what is known before the pipeline loads: the model directory's head count,
    the device this rank computes on and how many GPUs the machine shows; then `environment_problems`."""
    validate(
        settings,
        num_heads=num_heads_of(model_path) if model_path is not None else None,
        device=device.type,
        gpu_count=torch.cuda.device_count() if device.type == "cuda" else None,
    )
    problems = environment_problems(settings, device)
    if problems:
        raise ValueError("engine options this machine cannot run: " + "; ".join(problems))


def _known_backends() -> set[str]:
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:  # the API process has no diffusers; the worker checks again
        return set()
    return {b.value for b in AttentionBackendName} | {"fa4"}  # fa4 is registered by worker/fa4.py when used


def num_heads_of(model_path: Path) -> int | None:
    """The transformer's head count from its config.json, read before anything loads."""
    for name in ("transformer", "transformer_2"):
        config = model_path / name / "config.json"
        if config.exists():
            return int(json.loads(config.read_text())["num_attention_heads"])
    return None


def transformers_of(pipe: Any) -> list[Any]:
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


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
    validate(
        settings,
        num_heads=transformers[0].config.num_attention_heads if transformers else None,
        device=device.type,
    )

    # 1. Attention backend (before parallelism, which checks it, and before compile, which bakes it in)
    if settings.attention_backend == "fa4":
        from worker import fa4

        fa4.register()
    if settings.attention_backend:
        for model in transformers:
            model.set_attention_backend(settings.attention_backend)

    # 2. Placement. With FP8 on one GPU each transformer is quantized block by block as it is placed (two bf16
    # A14B experts never share the GPU); with --offload model each quantized expert is then parked on the CPU.
    fp8_as_placed = settings.quantization == "fp8" and member is None
    _place(pipe, settings, device, fp8_as_placed=fp8_as_placed)

    # 3. Several GPUs: context parallelism on every transformer, CFG branches on two rank groups
    if member is not None:
        mesh.enable(transformers, settings, member, sync_weights=sync_weights)

    # 4. FP8 linears on several GPUs: after rank 0's weights reached every rank, before compile (which traces them)
    if settings.quantization == "fp8" and not fp8_as_placed:
        from worker import fp8

        for model in transformers:
            _log_fp8(fp8.quantize_blocks(model))

    # 5. The VAE's decode
    decode = _prepare_vae(pipe.vae, settings)

    # 6. Regional compile of the repeated transformer blocks. fullgraph where nothing in the block
    # breaks the graph; context parallelism's collectives run inside attention, so it is left to dynamo.
    if settings.compile or settings.vae_compile:
        # One static graph per video size: a worker sees few sizes, and dynamic-shape kernels are slower.
        torch._dynamo.config.automatic_dynamic_shapes = False
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    if settings.compile:
        fullgraph = not mesh.context_parallel(settings)
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
        num_gpus=settings.num_gpus,
        ulysses_degree=settings.ulysses_degree,
        ring_degree=settings.ring_degree,
        cfg_parallel=settings.cfg_parallel,
        rank=member.rank if member is not None else 0,
    )


def _log_fp8(report: Any) -> None:
    log.info("fp8 linears", extra={"quantized": len(report.quantized), "kept_bf16": len(report.skipped)})


def _place(pipe: Any, settings: EngineSettings, device: torch.device, *, fp8_as_placed: bool = False) -> None:
    cuda = device.type == "cuda"
    transformers = {name for name, module in pipe.components.items() if name.startswith("transformer") and module is not None}
    if fp8_as_placed:
        from worker import fp8
    if settings.offload == "model":
        if fp8_as_placed:
            for name in sorted(transformers):
                _log_fp8(fp8.place_quantized(pipe.components[name], device, park=torch.device("cpu")))
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
            elif not (fp8_as_placed and name in transformers):
                component.to(device)
        if fp8_as_placed:
            for name in sorted(transformers):
                _log_fp8(fp8.place_quantized(pipe.components[name], device))


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


def _prepare_vae(vae: Any, settings: EngineSettings) -> tuple[str, ...]:
    """The decode options, in the order they must be applied; returns their names for the plan."""
    applied: list[str] = []
    # Tiling bounds decode memory (it grows with frames x pixels).
    if settings.vae_tiling:
        vae.enable_tiling()
        applied.append("tiling")
    # cuDNN times its algorithms for each new conv shape and keeps the fastest (process-wide).
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        applied.append("cudnn_benchmark")
    # Channels-last weights (NDHWC for conv3d, NHWC for the 2D upsamplers' convs); decode's input follows.
    if settings.vae_channels_last:
        for module in vae.modules():
            for param in module.parameters(recurse=False):
                if param.dim() == 5:
                    param.data = param.data.to(memory_format=torch.channels_last_3d)
                elif param.dim() == 4:
                    param.data = param.data.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    # The decoder compiled in place (its module tree and state dict unchanged); diffusers calls it once per
    # latent frame with its causal-conv cache, which gives a few graphs per video size (first, second, steady).
    if settings.vae_compile:
        vae.decoder.compile()
        applied.append("compiled_decoder")
    return tuple(applied)
