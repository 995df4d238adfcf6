"""Frame interpolation: RIFE's IFNet (v4.x of hzwer/Practical-RIFE) in our own implementation, loading the published
weights by key name, and `interpolate`, which turns F frames into (F-1)*k+1 with the given frames kept exactly.

Why our own: no well-kept package implements RIFE (`ccvfi` 0.0.3 is the closest: a young single-maintainer
release that downloads weights itself). The network is small: a feature head and 4-5 flow blocks of plain
convolutions, each refining a bidirectional flow and a blend mask at a finer scale, images warped with grid_sample.

One class covers the published v4.x flow nets that share this layout, read from the state dict's shapes:
4.25 and 4.26 have 5 blocks of widths 192, 128, 96, 64, 32 (scales 16..1); 4.22-lite, the model SGLang-diffusion
uses, has 4 blocks of 192, 128, 64, 32 (scales 8..1). The weights (`flownet.pkl`) are a plain state dict whose keys
carry the `module.` prefix of the DataParallel they were trained in; they are read with `weights_only=True` (or from
.safetensors), never as an arbitrary pickle.
"""

from __future__ import annotations

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
    "FACTORS",
    "IFNet",
    "IFNetConfig",
    "Interpolator",
    "InterpolatorFileError",
    "interpolate",
    "load_interpolator",
    "read_state_dict",
    "write_tiny_interpolator",
]

FACTORS: Final = (1, 2, 4)
# Published layouts, for building a net at the real widths (tests) and for naming what a file holds.
RIFE_4_25: Final = (192, 128, 96, 64, 32)
RIFE_4_22_LITE: Final = (192, 128, 64, 32)
# Each block predicts 4 flow channels (both directions), 1 mask channel and 8 feature channels for the next block,
# at twice its working resolution: a transposed convolution to 4 x 13 channels, then a pixel shuffle.
_BLOCK_OUT: Final = 4 + 1 + 8


class InterpolatorFileError(ValueError):
    """An interpolator weights file that cannot be used; the message says what is wrong in one sentence."""


@dataclass(frozen=True)
class IFNetConfig:
    """The shapes that tell published versions apart (and make a tiny test model)."""

    block_widths: tuple[int, ...] = RIFE_4_25
    head_width: int = 16
    feature_channels: int = 4

    @property
    def scales(self) -> tuple[int, ...]:
        """The downscale each block works at, coarsest first: 16, 8, 4, 2, 1 for five blocks."""
        return tuple(2**i for i in reversed(range(len(self.block_widths))))

    @property
    def pad_multiple(self) -> int:
        """Height and width must divide by this: the coarsest block downsamples by its scale, then by 4 in its own
        two strided convolutions, and must come back to exactly the input size."""
        return 4 * self.scales[0]


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2, True))


class _Head(nn.Module):
    """Per-frame features at full resolution, warped along with the frames. Keys: encode.cnn0..cnn3."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, width, 3, 2, 1)
        self.cnn1 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn2 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(width, out_channels, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        out: torch.Tensor = self.cnn3(x)
        return out


class _ResConv(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, width, 1, 1)))
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.conv(x) * self.beta + x)
        return out


class _IFBlock(nn.Module):
    """One refinement at 1/scale resolution. Keys: conv0.{0,1}.0, convblock.{0..7}.conv/.beta, lastconv.0."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*(_ResConv(width) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * _BLOCK_OUT, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=float(scale), mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


def _warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp by a flow in pixels. In float32 whatever the network's dtype: in half precision the sampling
    grid of a 1280-wide frame would be off by up to half a pixel (fp16) or several (bf16)."""
    batch, _, height, width = flow.shape
    flow = flow.float()
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device).view(1, 1, width).expand(batch, height, width)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device).view(1, height, 1).expand(batch, height, width)
    grid = torch.stack(
        (xs + flow[:, 0] / ((width - 1.0) / 2.0), ys + flow[:, 1] / ((height - 1.0) / 2.0)),
        dim=3,
    )
    warped = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.to(image.dtype)


class IFNet(nn.Module):
    """RIFE v4.x flow network: (img0, img1 in [0, 1], timestep in (0, 1)) -> the frame at that time."""

    def __init__(self, config: IFNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IFNetConfig()
        feat = config.feature_channels
        first = 3 + 3 + 2 * feat + 1  # both frames, both features, the timestep plane
        later = first + 1 + (_BLOCK_OUT - 5) + 4  # + the mask, the previous block's features, its flow
        for i, width in enumerate(config.block_widths):
            self.add_module(f"block{i}", _IFBlock(first if i == 0 else later, width))
        self.encode = _Head(config.head_width, feat)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """img0, img1: [B, 3, H, W], H and W multiples of config.pad_multiple; timestep: [B]. Returns [B, 3, H, W]."""
        t = timestep.to(img0.dtype).view(-1, 1, 1, 1).expand(-1, 1, img0.shape[2], img0.shape[3])
        f0, f1 = self.encode(img0), self.encode(img1)
        warped0, warped1 = img0, img1
        flow: torch.Tensor | None = None
        mask = feat = img0[:, :0]
        for i, scale in enumerate(self.config.scales):
            block = self.get_submodule(f"block{i}")
            if flow is None:
                flow, mask, feat = block(torch.cat((img0, img1, f0, f1, t), 1), None, scale)
            else:
                wf0, wf1 = _warp(f0, flow[:, :2]), _warp(f1, flow[:, 2:4])
                delta, mask, feat = block(torch.cat((warped0, warped1, wf0, wf1, t, mask, feat), 1), flow, scale)
                flow = flow + delta
            warped0, warped1 = _warp(img0, flow[:, :2]), _warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by key from .safetensors, or from a plain PyTorch state dict (.pkl/.pth/.pt) read with
    weights_only=True; the DataParallel `module.` prefix of the published files is removed."""
    return weights.read_state_dict(path, "interpolator weights", InterpolatorFileError)


def config_from_state_dict(state: dict[str, torch.Tensor]) -> IFNetConfig:
    """The layout a state dict was saved from: block count and widths, head width, feature channels."""
    widths: list[int] = []
    while (weight := state.get(f"block{len(widths)}.conv0.1.0.weight")) is not None:
        widths.append(int(weight.shape[0]))
    head, features = state.get("encode.cnn0.weight"), state.get("encode.cnn3.weight")
    if not widths or head is None or features is None:
        raise InterpolatorFileError(
            "the interpolator weights are not a RIFE v4.x IFNet: no block0.conv0.1.0.weight or encode.cnn0.weight "
            "(expected the flownet.pkl of Practical-RIFE 4.22-4.26)"
        )
    return IFNetConfig(tuple(widths), head_width=int(head.shape[0]), feature_channels=int(features.shape[1]))


def build_ifnet(state: dict[str, torch.Tensor]) -> IFNet:
    """An IFNet of the state dict's layout with its weights; every key must match by name and shape."""
    net = IFNet(config_from_state_dict(state))
    expected = net.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise InterpolatorFileError(
            f"the interpolator weights do not fit a RIFE IFNet of widths {list(net.config.block_widths)}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class Interpolator:
    """A loaded IFNet on its device, in the dtype it runs in (float16 on CUDA, float32 on CPU by default)."""

    net: IFNet
    device: torch.device
    dtype: torch.dtype


def load_interpolator(path: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Interpolator:
    """Reads `path` (see read_state_dict) and places the net. fp16 is the default on CUDA: Practical-RIFE's own
    half-precision mode; the warps stay in float32 (see _warp). bf16 works too but its 8-bit mantissa costs more."""
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    net = build_ifnet(read_state_dict(path)).to(device=device, dtype=dtype)
    return Interpolator(net, device, dtype)


@overload
def interpolate(frames: np.ndarray, k: int, *, model: Interpolator, batch_size: int = ...) -> np.ndarray: ...
@overload
def interpolate(frames: torch.Tensor, k: int, *, model: Interpolator, batch_size: int = ...) -> torch.Tensor: ...
def interpolate(
    frames: np.ndarray | torch.Tensor, k: int, *, model: Interpolator, batch_size: int = 8
) -> np.ndarray | torch.Tensor:
    """uint8 [F, H, W, 3] -> uint8 [(F-1)*k+1, H, W, 3], the input frames unchanged (bit for bit) at i*k and k-1
    generated ones between each pair at times j/k. Returns the kind it was given (an array, or a tensor on the
    frames' device). `batch_size`: generated frames per forward pass."""
    # 1. Check inputs
    if k not in FACTORS:
        raise ValueError(f"interpolate: k must be one of {list(FACTORS)}, got {k!r}")
    if batch_size < 1:
        raise ValueError(f"interpolate: batch_size must be at least 1, got {batch_size!r}")
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[3] != 3 or video.shape[0] < 1:
        raise ValueError(f"interpolate: frames must be uint8 [F, H, W, 3] with F >= 1, got {video.dtype} {list(video.shape)}")
    # 2. Interpolate
    out = video if k == 1 or video.shape[0] == 1 else _interpolate(video, k, model, batch_size)
    return out.numpy() if isinstance(frames, np.ndarray) else out


def _interpolate(video: torch.Tensor, k: int, model: Interpolator, batch_size: int) -> torch.Tensor:
    count, height, width, _ = video.shape
    out = torch.empty(((count - 1) * k + 1, height, width, 3), dtype=torch.uint8, device=video.device)
    out[::k] = video  # the generated frames, copied: never through the network or a dtype round trip
    multiple = model.net.config.pad_multiple
    pad = (0, -width % multiple, 0, -height % multiple)
    # Every (pair, time) to fill, as (index of the pair's first frame, j) with the frame at time j/k.
    todo = [(i, j) for i in range(count - 1) for j in range(1, k)]
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            first = torch.tensor([i for i, _ in chunk], device=video.device)
            img0 = _to_input(video[first], model, pad)
            img1 = _to_input(video[first + 1], model, pad)
            times = torch.tensor([j / k for _, j in chunk], device=model.device)
            merged = model.net(img0, img1, times)[:, :, :height, :width]
            pixels = (merged.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            out[torch.tensor([i * k + j for i, j in chunk], device=video.device)] = pixels.to(video.device)
    return out


def _to_input(frames: torch.Tensor, model: Interpolator, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> the net's [B, 3, H', W'] in [0, 1], zero-padded right and bottom to its multiple."""
    x = frames.to(model.device, non_blocking=True).permute(0, 3, 1, 2).to(model.dtype) / 255
    return F.pad(x, pad)


def write_tiny_interpolator(path: Path, *, seed: int = 0) -> Path:
    """A random-weight IFNet of the real layout at tiny widths (2 blocks of 8 and 4 channels, head 4), saved as
    .safetensors under the published key names with the `module.` prefix, for the dev stack and tests: every code
    path of load_interpolator and interpolate runs in milliseconds on a CPU. Frames need sides that are multiples
    of 8 only after padding, which interpolate does."""
    generator = torch.Generator().manual_seed(seed)
    net = IFNet(IFNetConfig(block_widths=(8, 4), head_width=4))
    state = {}
    for key, value in net.state_dict().items():
        # beta scales the residual: kept at 1 like a trained net's order of magnitude; the rest small and random.
        random = torch.randn(value.shape, generator=generator) * 0.1
        state[f"module.{key}"] = torch.ones_like(value) if key.endswith(".beta") else random
    save_safetensors(state, str(path))
    return path
