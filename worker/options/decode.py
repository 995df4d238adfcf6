"""The VAE's decode options, in the order they must be applied (the registry keeps it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.settings import EngineSettings
from worker.options.option import Apply, Option, Rule, rule


def _tiling(vae: Any, _settings: EngineSettings, _device: Any) -> None:
    vae.enable_tiling()  # bounds decode memory (it grows with frames x pixels)


def _cudnn_benchmark(_vae: Any, _settings: EngineSettings, _device: Any) -> None:
    import torch

    torch.backends.cudnn.benchmark = True  # process-wide: cuDNN times its algorithms per new conv shape


def _channels_last(vae: Any, _settings: EngineSettings, _device: Any) -> None:
    import torch

    # NDHWC for conv3d, NHWC for the 2D upsamplers' convs; decode's input follows.
    for module in vae.modules():
        for param in module.parameters(recurse=False):
            if param.dim() == 5:
                param.data = param.data.to(memory_format=torch.channels_last_3d)
            elif param.dim() == 4:
                param.data = param.data.to(memory_format=torch.channels_last)


def _compile_decoder(vae: Any, _settings: EngineSettings, _device: Any) -> None:
    # In place (module tree and state dict unchanged); diffusers calls it once per latent frame with its
    # causal-conv cache, which gives a few graphs per video size (first, second, steady).
    vae.decoder.compile()


def _fused(vae: Any, _settings: EngineSettings, _device: Any) -> None:
    from worker import vae_fused

    vae_fused.install(vae.decoder)


def _decode(flag: str, name: str, setting: str, summary: str, apply: Apply, applied: str, *conflicts: Rule) -> Option:
    return Option(
        flag=flag,
        name=name,
        kind="decode",
        summary=summary,
        chosen=lambda s: bool(getattr(s, setting)),
        conflicts=conflicts,
        applies_to="vae",
        apply=apply,
        applied=applied,
    )


TILING = _decode(
    "--vae-tiling", "tiling", "vae_tiling", "decode in tiles: bounded decode memory", _tiling, "`vae.enable_tiling()`"
)
CUDNN_BENCHMARK = _decode(
    "--cudnn-benchmark",
    "cudnn_benchmark",
    "cudnn_benchmark",
    "cuDNN times its conv algorithms per shape and keeps the fastest",
    _cudnn_benchmark,
    "`torch.backends.cudnn.benchmark` (process-wide)",
)
CHANNELS_LAST = _decode(
    "--vae-channels-last",
    "channels_last",
    "vae_channels_last",
    "channels-last VAE weights for cuDNN's NDHWC kernels",
    _channels_last,
    "the VAE's conv weights in channels-last memory format",
)


def vae_hooks(flag: str, why: str) -> Rule:
    return rule(
        "VAE offload hooks (--offload sequential/group, --vae-cpu-offload)",
        lambda s, _e: vae_has_hooks(s),
        f"{flag} cannot be combined with offload hooks on the VAE (--offload sequential/group, --vae-cpu-offload): "
        f"{why}; drop one",
    )


def vae_has_hooks(settings: EngineSettings) -> bool:
    return settings.offload in ("sequential", "group") or settings.vae_cpu_offload


FUSED = _decode(
    "--vae-fused",
    "fused",
    "vae_fused",
    "the decoder's RMS norm + SiLU as one compiled kernel, spatial padding inside the convs; on by default on a GPU",
    _fused,
    "worker/vae_fused.py on `vae.decoder` (same weights)",
    vae_hooks(
        "--vae-fused", "they wrap the forwards of the modules it replaces, so the fused ones would not run or not be onloaded"
    ),
)
COMPILE_DECODER = _decode(
    "--vae-compile",
    "compiled_decoder",
    "vae_compile",
    "torch.compile of the VAE decoder (a few graphs per video size)",
    _compile_decoder,
    "`vae.decoder.compile()`",
    vae_hooks("--vae-compile", "they move its weights inside the compiled graph"),
)

VAE_PATH = Option(
    flag="--vae-path DIR|FILE",
    kind="vae",
    summary="decode with another VAE (diffusers directory or one weights file)",
    chosen=lambda s: bool(s.vae_path),
    needs=(
        rule(
            "an existing path",
            lambda s, _e: not Path(s.vae_path).exists(),
            lambda s, _e: f"--vae-path {s.vae_path} does not exist: give a diffusers VAE directory or a weights file",
        ),
    ),
    applied="loaded in place of the model's VAE (worker/engine.py)",
)

PREVIEW_VAE_PATH = Option(
    flag="--preview-vae-path FILE",
    kind="vae",
    summary="the tiny TAEHV decoder of previews (`preview_every`) and draft decodes (`decoder: tiny`); a tiny model's "
    "own without the flag",
    chosen=lambda s: bool(s.preview_vae_path),
    needs=(
        rule(
            "an existing file",
            lambda s, _e: not Path(s.preview_vae_path).is_file(),
            lambda s, _e: (
                f"--preview-vae-path {s.preview_vae_path} is not a file: give a TAEHV checkpoint "
                "(taew2_1 for the A14B models, taew2_2 for TI2V-5B; .safetensors or .pth)"
            ),
        ),
    ),
    applied="loaded beside the VAE on rank 0, its latent channels checked (worker/engine.py)",
)
