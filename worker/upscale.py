"""Upscaling video frames x2 or x4 with a Real-ESRGAN-class super-resolution model, tiled to bound memory, frames
in batches, uint8 in and out.

The compact Real-ESRGAN models (SRVGGNetCompact: a few 3x3 convolutions at the input resolution and a pixel shuffle,
e.g. realesr-animevideov3, realesr-general-x4v3) are the ones fast enough for video, and are built in here, keyed
exactly as the published files and spandrel's class (body.N.weight, ...), read from .safetensors or from a .pth with
weights_only=True. Other architectures (ESRGAN RRDB, SwinIR, HAT, ...) load through spandrel, the library ComfyUI
loads upscalers with, where it is installed (the `upscalers` extra): spandrel imports torchvision, and PyPI's
torchvision wheels are CUDA builds that fail to import beside the CPU torch of the dev and test environment, and
then break diffusers' and transformers' imports too, so it cannot be a dependency of every worker install.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, overload

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file as save_safetensors
from torch import nn

from worker import weights

__all__ = [
    "SCALES",
    "SRVGGNetCompact",
    "Upscaler",
    "UpscalerFileError",
    "load_upscaler",
    "read_state_dict",
    "tiles",
    "upscale",
    "write_tiny_upscaler",
]

SCALES: Final = (1, 2, 4)
COMPACT: Final = "RealESRGAN Compact"  # spandrel's name for the architecture, so both paths report alike


class UpscalerFileError(ValueError):
    """An upscaler weights file that cannot be used; the message says what is wrong in one sentence."""


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network: conv + PReLU, `convs` x (conv + PReLU) at the input resolution, a conv to
    3 x scale^2 channels, a pixel shuffle, plus the nearest-upscaled input (the net learns the residual).
    Keys: body.{0..2*convs+2}.weight/.bias (PReLUs have weight only)."""

    def __init__(self, scale: int, *, features: int = 64, convs: int = 16) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, 3 * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        result: torch.Tensor = self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return result

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SRVGGNetCompact | None:
        """The net a state dict was saved from, with its weights; None if the keys are not this architecture's."""
        count = 0
        while f"body.{count}.weight" in state:
            count += 1
        if count < 3 or count % 2 == 0 or "body.1.bias" in state or state["body.0.weight"].shape[1] != 3:
            return None
        out_channels = state[f"body.{count - 1}.weight"].shape[0]
        scale = math.isqrt(out_channels // 3)
        if 3 * scale * scale != out_channels:
            return None
        net = cls(scale, features=int(state["body.0.weight"].shape[0]), convs=(count - 3) // 2)
        expected = net.state_dict()
        if expected.keys() != state.keys() or any(expected[k].shape != v.shape for k, v in state.items()):
            return None
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return net


@dataclass(frozen=True)
class Upscaler:
    """A loaded model on its device, in the dtype it runs in (float16 on CUDA where the architecture supports it,
    float32 otherwise). `net`: [B, 3, H, W] in [0, 1] -> [B, 3, H*scale, W*scale]."""

    net: Callable[[torch.Tensor], torch.Tensor]
    architecture: str
    scale: int
    device: torch.device
    dtype: torch.dtype


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by key from .safetensors, or from a plain PyTorch file read with weights_only=True; the
    {"params_ema": ...} / {"params": ...} wrapping of Real-ESRGAN's published .pth files and a DataParallel
    `module.` prefix are removed."""
    return weights.read_state_dict(path, "upscaler weights", UpscalerFileError, wrappers=("params_ema", "params"))


def load_upscaler(path: Path, *, scale: int, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Upscaler:
    """The model in `path`, which must enlarge by exactly `scale` (2 or 4) and map RGB to RGB."""
    if scale not in (2, 4):
        raise ValueError(f"load_upscaler: scale must be 2 or 4, got {scale!r}")
    if not path.is_file():
        raise UpscalerFileError(f"upscaler weights {path} do not exist or are not a file")
    device = torch.device(device)
    compact = SRVGGNetCompact.from_state_dict(read_state_dict(path))
    if compact is not None:
        found, architecture, half = compact.scale, COMPACT, True
        net: Callable[[torch.Tensor], torch.Tensor] = compact
        module: nn.Module = compact
    else:
        found, architecture, half, net, module = _load_with_spandrel(path)
    if found != scale:
        raise UpscalerFileError(f"upscaler weights {path} ({architecture}) enlarge x{found}, not x{scale} as asked")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" and half else torch.float32
    module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Upscaler(net, architecture, scale, device, dtype)


def _load_with_spandrel(path: Path) -> tuple[int, str, bool, Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """Any other architecture spandrel detects (it reads .pth through its own restricted unpickler)."""
    try:
        from spandrel import ImageModelDescriptor, ModelLoader
    except (ImportError, RuntimeError):  # absent, or present with a torchvision that does not fit this torch
        raise UpscalerFileError(
            f"upscaler weights {path} are not a compact Real-ESRGAN (SRVGGNetCompact), and spandrel, which loads the "
            "other architectures, is not installed here (the `upscalers` extra, with a torchvision matching torch)"
        ) from None
    try:
        descriptor = ModelLoader().load_from_file(path)
    except Exception as exc:  # spandrel raises several kinds: unknown architecture, unpickling refused, bad file
        raise UpscalerFileError(f"upscaler weights {path} could not be loaded by spandrel: {exc}") from exc
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscalerFileError(f"upscaler weights {path} are a {descriptor.architecture.name}, not an image upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerFileError(
            f"upscaler weights {path} map {descriptor.input_channels} channels to {descriptor.output_channels}, not RGB to RGB"
        )
    return descriptor.scale, descriptor.architecture.name, descriptor.supports_half, descriptor, descriptor.model


def tiles(size: int, tile: int | None, overlap: int) -> list[tuple[int, int, int, int]]:
    """Along one side of `size` pixels: (read_start, read_end, keep_start, keep_end) for each tile, in input
    pixels. Each tile keeps `tile` pixels (the last may be shorter) and reads up to `overlap` more on each side, so a
    model whose receptive field reaches no further than `overlap` gives exactly what it gives on the whole frame."""
    if tile is None or tile >= size:
        return [(0, size, 0, size)]
    return [(max(0, s - overlap), min(size, s + tile + overlap), s, min(size, s + tile)) for s in range(0, size, tile)]


@overload
def upscale(
    frames: np.ndarray, *, model: Upscaler, tile: int | None = ..., overlap: int = ..., batch_size: int = ...
) -> np.ndarray: ...
@overload
def upscale(
    frames: torch.Tensor, *, model: Upscaler, tile: int | None = ..., overlap: int = ..., batch_size: int = ...
) -> torch.Tensor: ...
def upscale(
    frames: np.ndarray | torch.Tensor,
    *,
    model: Upscaler,
    tile: int | None = 512,
    overlap: int = 32,
    batch_size: int = 4,
) -> np.ndarray | torch.Tensor:
    """uint8 [F, H, W, 3] -> uint8 [F, H*s, W*s, 3]. `tile`: the side of the square each forward pass keeps, in
    input pixels (None: whole frames), read with `overlap` pixels of context around it; `batch_size`: frames per
    forward pass. Peak memory follows batch_size x (tile + 2 overlap)^2, not the frame size. Returns the kind it was
    given (an array, or a tensor on the frames' device)."""
    # 1. Check inputs
    if tile is not None and tile < 1:
        raise ValueError(f"upscale: tile must be at least 1 or None, got {tile!r}")
    if overlap < 0:
        raise ValueError(f"upscale: overlap must be at least 0, got {overlap!r}")
    if batch_size < 1:
        raise ValueError(f"upscale: batch_size must be at least 1, got {batch_size!r}")
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[3] != 3:
        raise ValueError(f"upscale: frames must be uint8 [F, H, W, 3], got {video.dtype} {list(video.shape)}")
    # 2. Upscale
    out = _upscale(video, model, tile, overlap, batch_size)
    return out.numpy() if isinstance(frames, np.ndarray) else out


def _upscale(video: torch.Tensor, model: Upscaler, tile: int | None, overlap: int, batch_size: int) -> torch.Tensor:
    count, height, width, _ = video.shape
    s = model.scale
    out = torch.empty((count, height * s, width * s, 3), dtype=torch.uint8, device=video.device)
    rows, cols = tiles(height, tile, overlap), tiles(width, tile, overlap)
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            batch = video[start : start + batch_size].to(model.device, non_blocking=True)
            batch = batch.permute(0, 3, 1, 2).to(model.dtype) / 255
            for y0, y1, ky0, ky1 in rows:
                for x0, x1, kx0, kx1 in cols:
                    result = model.net(batch[:, :, y0:y1, x0:x1])
                    kept = result[:, :, (ky0 - y0) * s : (ky1 - y0) * s, (kx0 - x0) * s : (kx1 - x0) * s]
                    pixels = (kept.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
                    out[start : start + batch_size, ky0 * s : ky1 * s, kx0 * s : kx1 * s] = pixels.to(video.device)
    return out


def write_tiny_upscaler(path: Path, *, scale: int = 2, seed: int = 0) -> Path:
    """A random-weight compact Real-ESRGAN (4 features, 2 convolutions) saved as a .safetensors state dict under
    the published key names (body.N.weight, ...), which spandrel too detects as "RealESRGAN Compact": the dev
    stack's and tests' upscaler, milliseconds a frame on a CPU."""
    generator = torch.Generator().manual_seed(seed)
    net = SRVGGNetCompact(scale, features=4, convs=2)
    state = {k: torch.randn(v.shape, generator=generator) * 0.2 for k, v in net.state_dict().items()}
    save_safetensors(state, str(path))
    return path
