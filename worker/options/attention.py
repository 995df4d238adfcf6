"""Attention backends: diffusers' own (`set_attention_backend`), FlashAttention-4 (worker/fa4.py) and FlashAttention-3
with its FP8 variant (worker/fa3.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shared.settings import EngineSettings
from worker.options.option import Option, Rule, cuda, dtype, rule

# diffusers backends whose dispatch function implements Ulysses / ring attention (attention_dispatch.py,
# `supports_context_parallel=True`).
CONTEXT_PARALLEL = (
    "native",
    "_native_cudnn",
    "_native_flash",
    "flash",
    "flash_hub",
    "flash_varlen_hub",
    "_flash_3_hub",
    "sage",
    "sage_hub",
)


def set_backend(transformers: list[Any], settings: EngineSettings, _device: Any) -> None:
    for model in transformers:
        model.set_attention_backend(settings.attention_backend)


OWN = ("fa4", "fa3", "fa3-fp8")


def known_backends() -> set[str]:
    """Every name diffusers knows, and the registry's own (fa4, fa3, fa3-fp8); empty where diffusers is not installed."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:  # the API process has no diffusers; the worker checks again
        return set()
    return {b.value for b in AttentionBackendName} | set(OWN)  # registered by worker/fa4.py and fa3.py when used


DEFAULT = Option(
    flag="--attention-backend (empty)",
    kind="attention",
    summary="diffusers' default: `native`, torch SDPA (cuDNN attention on Hopper)",
    names=("",),
    applied="nothing to set",
)

DIFFUSERS = Option(
    flag="--attention-backend " + "|".join(CONTEXT_PARALLEL),
    kind="attention",
    summary="a diffusers backend with Ulysses / ring attention",
    names=CONTEXT_PARALLEL,
    applies_to="transformers",
    apply=set_backend,
    applied="`set_attention_backend` on each transformer",
)

OTHER = Option(
    flag="--attention-backend NAME",
    kind="attention",
    summary="any other backend diffusers knows (e.g. xformers): one GPU or --cfg-parallel only",
    needs=(
        rule(
            "a name diffusers knows",
            lambda s, _e: bool(known := known_backends()) and s.attention_backend not in known,
            lambda s, _e: f"unknown --attention-backend {s.attention_backend!r}; diffusers knows {sorted(known_backends())}",
        ),
    ),
    context_parallel=False,
    applies_to="transformers",
    apply=set_backend,
    applied="`set_attention_backend` on each transformer",
)


def _module(name: str, attr: str) -> Callable[..., Any]:
    """`worker.<name>.<attr>`, imported when first called: nothing here imports torch before the options are checked."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"worker.{name}"), attr)(*args)

    return call


def _registering(name: str) -> Callable[[list[Any], EngineSettings, Any], None]:
    """Registers `worker.<name>`'s backends with diffusers, then sets the chosen one on each transformer."""

    def apply(transformers: list[Any], settings: EngineSettings, device: Any) -> None:
        _module(name, "register")()
        set_backend(transformers, settings, device)

    return apply


FA4 = Option(
    flag="--attention-backend fa4",
    kind="attention",
    summary="FlashAttention-4 (flash-attn-4, local): exact, faster on Hopper/Blackwell; Ulysses and ring",
    names=("fa4",),
    needs=(
        cuda("--attention-backend fa4 needs a CUDA GPU (Hopper or newer); on CPU leave --attention-backend empty"),
        dtype(("auto", "bf16", "fp16"), "--attention-backend fa4 computes in bf16 or fp16; use --dtype bf16 (or auto) with it"),
    ),
    package=_module("fa4", "missing_package"),
    package_doc="`pip install 'wanq[fa4]'`",
    min_capability=(9, 0),
    gpu=_module("fa4", "gpu_problem"),
    applies_to="transformers",
    apply=_registering("fa4"),
    applied="registered as diffusers backend `fa4` (worker/fa4.py), then `set_attention_backend`",
)


def _fa3_needs(backend: str, dtypes: tuple[str, ...]) -> tuple[Rule, ...]:
    say = f"--attention-backend {backend} needs a Hopper GPU (sm90); on CPU leave --attention-backend empty"
    return (
        cuda(say),
        dtype(
            dtypes,
            f"--attention-backend {backend} computes in {'/'.join(d for d in dtypes if d != 'auto')}; use --dtype bf16 (or auto) with it",
        ),
    )


FA3 = Option(
    flag="--attention-backend fa3",
    kind="attention",
    summary="FlashAttention-3 (flash-attn-3, built from flash-attention's hopper/): exact, Hopper only; Ulysses and ring",
    names=("fa3",),
    # deploy/docker/build-fa3.sh builds bf16 and FP8 kernels only (a full FA3 build also has fp16)
    needs=_fa3_needs("fa3", ("auto", "bf16")),
    package=_module("fa3", "missing_package"),
    package_doc="a FlashAttention-3 wheel (`deploy/docker/build-fa3.sh`)",
    min_capability=(9, 0),
    capability_doc="sm90 only",
    gpu=_module("fa3", "gpu_problem"),
    applies_to="transformers",
    apply=_registering("fa3"),
    applied="registered as diffusers backend `fa3` (worker/fa3.py), then `set_attention_backend`",
)

FA3_FP8 = Option(
    flag="--attention-backend fa3-fp8",
    kind="attention",
    summary="FlashAttention-3 on FP8 e4m3 q, k, v (per-head scales, centred keys): lossy, 1.3x FA4's attention on an H100",
    names=("fa3-fp8",),
    needs=_fa3_needs("fa3-fp8", ("auto", "bf16", "fp16")),
    package=_module("fa3", "missing_package"),
    package_doc="a FlashAttention-3 wheel (`deploy/docker/build-fa3.sh`)",
    min_capability=(9, 0),
    capability_doc="sm90 only",
    gpu=_module("fa3", "gpu_problem"),
    applies_to="transformers",
    apply=_registering("fa3"),
    applied="registered as diffusers backend `fa3-fp8` (worker/fa3.py), then `set_attention_backend`",
)
