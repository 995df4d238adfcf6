"""TAEHV, the tiny video autoencoder (madebyollin/taehv, MIT), in our own implementation: a draft and preview
decoder for Wan latents that loads the published checkpoints by their key names.

The architecture is TAEHV's: 2D convolutions applied frame by frame, `MemBlock`s that also see the previous frame's
input (their only memory), `TGrow`/`TPool` 1x1 convolutions that trade channels for frames, nearest-neighbour 2x
upsampling, and for TI2V-5B a pixel (un)shuffle of 2. The module indices are the reference's, so a published state
dict (`encoder.N...`, `decoder.N...`) loads with `strict=True`:

* `taew2_1`: 16 latent channels (the Wan2.1 VAE of the A14B models), patch size 1, 8x spatial / 4x temporal.
* `taew2_2`: 48 latent channels (the Wan2.2 VAE of TI2V-5B), patch size 2 (16x spatial), 4x temporal.

Everything that varies is read from the state dict's shapes (latent channels, patch size, channel widths, whether
an encoder is present), which is also how the tiny random-weight decoders of the tiny test models (narrow widths,
same layout) load. The "super" decoder (ConvNeXt-style blocks, `taew2_2_super`) is another layout and is refused.

Conventions (those of the reference and of every server that uses it for Wan): the decoder takes the latents the
transformer works on (normalized: the pipeline's `latents` before `latents / latents_std + latents_mean`), and
makes RGB in [0, 1]; T latent frames give 4T frames of which the first 3 are dropped, so 4T - 3 frames like the
Wan VAEs, at the same size. `decode_frames` returns what `worker.engine.decode_latents` returns: uint8
[frames, height, width, 3].

Memory: a MemBlock needs only the previous frame's input, so the video is decoded in chunks of latent frames,
each block holding one frame of memory between chunks. This gives the same frames as decoding all at once (the
reference's parallel mode) while the activations stay bounded by the chunk, sized from `chunk_bytes`. The reduced
decode for previews (`time_upscale=False`, and `space_upscale` off for the last stage) reuses the same weights:
with the temporal upsampling off, the `TGrow` keeps its last sub-frame's output channels, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker import weights

__all__ = [
    "PUBLISHED",
    "TINY_FILE",
    "Taehv",
    "TaehvConfig",
    "build_tiny_taehv",
    "default_dtype",
    "infer_config",
    "load_taehv",
    "read_state_dict",
    "save_taehv",
    "tiny_taehv_for",
]

TEMPORAL_UPSCALE: Final = 4
"""Output frames per latent frame: Wan's VAEs and TAEHV's decoder (two of its three TGrows double)."""
FRAMES_TO_TRIM: Final = TEMPORAL_UPSCALE - 1
DEFAULT_CHUNK_BYTES: Final = 2 << 30


@dataclass(frozen=True)
class TaehvConfig:
    latent_channels: int
    patch_size: int = 1
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    encoder_width: int | None = 64
    """None: a decoder-only model (the file has no `encoder.` keys)."""


PUBLISHED: Final = {
    "taew2_1": TaehvConfig(latent_channels=16, patch_size=1),
    "taew2_2": TaehvConfig(latent_channels=48, patch_size=2),
}
"""The published checkpoints for Wan (madebyollin/taehv taew2_1.pth / taew2_2.pth, and their .safetensors)."""

TINY_FILE: Final = "taehv.safetensors"
"""The tiny random-weight TAEHV's file in a tiny model's directory (worker/tiny_model.py writes it)."""
TINY_DECODER_WIDTHS: Final = (16, 16, 8, 8)
TINY_ENCODER_WIDTH: Final = 8


def _conv(n_in: int, n_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """A residual block that sees its input and the previous frame's input (zeros before the first frame)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in * 2, n_out), nn.ReLU(inplace=True), _conv(n_out, n_out), nn.ReLU(inplace=True), _conv(n_out, n_out)
        )
        self.skip: nn.Module = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))  # type: ignore[no-any-return]


class TPool(nn.Module):
    """`stride` consecutive frames -> one (their channels side by side, then a 1x1 convolution)."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))  # type: ignore[no-any-return]


class TGrow(nn.Module):
    """One frame -> `stride` frames (a 1x1 convolution to stride x channels, split in time order). With
    `grow=False` only the last sub-frame's channels are computed: one frame out per frame in."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor, grow: bool = True) -> torch.Tensor:
        _, c, h, w = x.shape
        if not grow:
            return F.conv2d(x, self.conv.weight[-c:])
        return self.conv(x).reshape(-1, c, h, w)  # type: ignore[no-any-return]


def _encoder(config: TaehvConfig, width: int) -> nn.Sequential:
    pixels = 3 * config.patch_size**2
    layers: list[nn.Module] = [_conv(pixels, width), nn.ReLU(inplace=True)]
    for pool in (2, 2, 1):  # 4x temporal downsampling, like the Wan VAEs
        layers += [TPool(width, pool), _conv(width, width, stride=2, bias=False)]
        layers += [MemBlock(width, width) for _ in range(3)]
    layers.append(_conv(width, config.latent_channels))
    return nn.Sequential(*layers)


def _decoder(config: TaehvConfig) -> nn.Sequential:
    w = config.decoder_widths
    layers: list[nn.Module] = [Clamp(), _conv(config.latent_channels, w[0]), nn.ReLU(inplace=True)]
    for stage, grow in enumerate((1, 2, 2)):
        layers += [MemBlock(w[stage], w[stage]) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TGrow(w[stage], grow), _conv(w[stage], w[stage + 1], bias=False)]
    layers += [nn.ReLU(inplace=True), _conv(w[3], 3 * config.patch_size**2)]
    return nn.Sequential(*layers)


def _run(
    blocks: nn.Sequential,
    x: torch.Tensor,
    memory: list[torch.Tensor | None],
    *,
    time_upscale: bool = True,
    space_upscale: tuple[bool, bool, bool] = (True, True, True),
) -> torch.Tensor:
    """One chunk of frames [T, C, H, W] through `blocks`, all frames at once block by block; `memory` holds each
    MemBlock's last input frame from the previous chunk, so chunk after chunk equals the whole video at once."""
    upscales = iter(space_upscale)
    for i, block in enumerate(blocks):
        if isinstance(block, MemBlock):
            past = memory[i]
            previous = torch.cat([torch.zeros_like(x[:1]) if past is None else past, x[:-1]])
            memory[i] = x[-1:].clone()  # one frame, not a view that would keep the whole chunk alive
            x = block(x, previous)
        elif isinstance(block, TGrow):
            x = block(x, grow=time_upscale)
        elif isinstance(block, nn.Upsample):
            if next(upscales):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = block(x)
    return x


class Taehv(nn.Module):
    """The encoder (if the config has one) and the decoder; see the module docstring."""

    def __init__(self, config: TaehvConfig) -> None:
        super().__init__()
        self.config = config
        if config.encoder_width is not None:
            self.encoder = _encoder(config, config.encoder_width)
        self.decoder = _decoder(config)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def has_encoder(self) -> bool:
        return self.config.encoder_width is not None

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Taehv:
        """A model of the state dict's layout (infer_config) with its weights, loaded with strict key matching."""
        config = infer_config(state)
        model = cls(config)
        own = model.state_dict()
        weights = dict(state)
        for i, block in enumerate(model.decoder):
            key = f"decoder.{i}.conv.weight"
            if isinstance(block, TGrow) and key in weights and weights[key].shape[0] > own[key].shape[0]:
                # A checkpoint trained with this level's temporal upsampling on: keep the last sub-frame's output.
                weights[key] = weights[key][-own[key].shape[0] :]
        model.load_state_dict(weights, strict=True)
        return model.eval()

    def output_size(
        self, latent_height: int, latent_width: int, *, space_upscale: tuple[bool, bool, bool] = (True, True, True)
    ) -> tuple[int, int]:
        scale = 2 ** sum(space_upscale) * self.config.patch_size
        return latent_height * scale, latent_width * scale

    def iter_decode(
        self,
        latents: torch.Tensor,
        *,
        time_upscale: bool = True,
        space_upscale: tuple[bool, bool, bool] = (True, True, True),
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> Iterator[torch.Tensor]:
        """Normalized latents [C, T, H, W] (or [1, C, T, H, W]) -> RGB frames [n, 3, H', W'] in [0, 1], chunk by chunk,
        on the model's device. With `time_upscale`: 4T - 3 frames in all (the Wan VAEs' count), else T."""
        x = _frames_first(latents, self.config.latent_channels)
        param = next(self.decoder.parameters())
        _, _, height, width = x.shape
        out_h, out_w = self.output_size(height, width, space_upscale=space_upscale)
        grow = TEMPORAL_UPSCALE if time_upscale else 1
        # The widest activation: a MemBlock's concatenated input and its convolutions at the last stage's size.
        per_frame = 5 * self.config.decoder_widths[2] * (out_h // self.config.patch_size) * (out_w // self.config.patch_size)
        chunk = max(1, chunk_bytes // (per_frame * grow * param.element_size()))
        memory: list[torch.Tensor | None] = [None] * len(self.decoder)
        to_trim = FRAMES_TO_TRIM if time_upscale else 0
        with torch.no_grad():
            for start in range(0, x.shape[0], chunk):
                part = x[start : start + chunk].to(device=param.device, dtype=param.dtype)
                frames = _run(self.decoder, part, memory, time_upscale=time_upscale, space_upscale=space_upscale)
                if self.config.patch_size > 1:
                    frames = F.pixel_shuffle(frames, self.config.patch_size)
                if to_trim:
                    dropped = min(to_trim, frames.shape[0])
                    frames, to_trim = frames[dropped:], to_trim - dropped
                if frames.shape[0]:
                    yield frames.clamp_(0, 1)

    def decode_frames(
        self,
        latents: torch.Tensor,
        *,
        time_upscale: bool = True,
        space_upscale: tuple[bool, bool, bool] = (True, True, True),
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> np.ndarray:
        """Normalized latents -> uint8 frames [F, H, W, 3], what worker.engine.decode_latents makes of the same latents."""
        chunks = [
            to_uint8(frames)
            for frames in self.iter_decode(
                latents, time_upscale=time_upscale, space_upscale=space_upscale, chunk_bytes=chunk_bytes
            )
        ]
        return np.concatenate(chunks)

    def encode(self, frames: torch.Tensor, *, chunk_frames: int = 16) -> torch.Tensor:
        """RGB frames [F, 3, H, W] in [0, 1] -> normalized latents [C, ceil(F / 4), H / s, W / s] (the last frame is
        repeated up to a multiple of 4, as the reference does). `chunk_frames` is rounded up to a multiple of 4."""
        if not self.has_encoder:
            raise ValueError("this TAEHV checkpoint has no encoder (no `encoder.` keys)")
        param = next(self.encoder.parameters())
        pad = -frames.shape[0] % TEMPORAL_UPSCALE
        if pad:
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        chunk = math.ceil(chunk_frames / TEMPORAL_UPSCALE) * TEMPORAL_UPSCALE
        memory: list[torch.Tensor | None] = [None] * len(self.encoder)
        parts = []
        with torch.no_grad():
            for start in range(0, frames.shape[0], chunk):
                x = frames[start : start + chunk].to(device=param.device, dtype=param.dtype)
                if self.config.patch_size > 1:
                    x = F.pixel_unshuffle(x, self.config.patch_size)
                parts.append(_run(self.encoder, x, memory))
        return torch.cat(parts).permute(1, 0, 2, 3)


def _frames_first(latents: torch.Tensor, channels: int) -> torch.Tensor:
    """[1, C, T, H, W] or [C, T, H, W] -> [T, C, H, W]."""
    if latents.ndim == 5:
        if latents.shape[0] != 1:
            raise ValueError(f"TAEHV decodes one video at a time; got a batch of {latents.shape[0]}")
        latents = latents[0]
    if latents.ndim != 4 or latents.shape[0] != channels:
        raise ValueError(f"expected latents [C={channels}, T, H, W], got {tuple(latents.shape)}")
    return latents.permute(1, 0, 2, 3)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [0, 1] -> uint8 [n, H, W, 3] on the CPU, rounded like decode_latents."""
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # type: ignore[no-any-return]


def infer_config(state: Mapping[str, torch.Tensor]) -> TaehvConfig:
    """The layout a TAEHV state dict was saved from, read from its shapes."""
    if "decoder.1.weight" not in state or "decoder.22.weight" not in state:
        if "decoder.0.weight" in state:
            raise ValueError("this is a TAEHV 'super' decoder (taew2_2_super), which wanq does not implement; use taew2_2")
        raise ValueError("not a TAEHV state dict: it has no decoder.1.weight / decoder.22.weight")
    missing = [key for key in ("decoder.8.weight", "decoder.14.weight", "decoder.20.weight") if key not in state]
    if missing:
        raise ValueError(f"not a TAEHV state dict: it has no {', '.join(missing)}")
    first, last = state["decoder.1.weight"], state["decoder.22.weight"]
    patch = math.isqrt(last.shape[0] // 3)
    if 3 * patch * patch != last.shape[0]:
        raise ValueError(f"decoder.22.weight makes {last.shape[0]} channels, not 3 x a square patch")
    widths = (
        first.shape[0],
        state["decoder.8.weight"].shape[0],
        state["decoder.14.weight"].shape[0],
        state["decoder.20.weight"].shape[0],
    )
    encoder = state["encoder.0.weight"].shape[0] if "encoder.0.weight" in state else None
    return TaehvConfig(latent_channels=first.shape[1], patch_size=patch, decoder_widths=widths, encoder_width=encoder)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a plain state dict saved by torch.save (read with weights_only=True: no pickle code)."""
    return weights.read_state_dict(path, "preview VAE")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on a GPU (the dtype the reference runs its checkpoints in), fp32 on the CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def load_taehv(
    path: str | Path, *, latent_channels: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Taehv:
    """A TAEHV checkpoint for a model whose latents have `latent_channels`; refused (ValueError) if it is not one."""
    model = Taehv.from_state_dict(read_state_dict(path))
    if model.latent_channels != latent_channels:
        raise ValueError(
            f"preview VAE {path} has {model.latent_channels} latent channels but the model's latents have "
            f"{latent_channels}: TI2V-5B needs taew2_2 (48), the A14B models taew2_1 (16)"
        )
    return model.to(device=device, dtype=dtype or default_dtype(device))


def build_tiny_taehv(latent_channels: int, patch_size: int, seed: int = 0) -> Taehv:
    """Random weights at narrow widths, same layout and key names as the published checkpoints (tiny test models)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Taehv(
            TaehvConfig(latent_channels, patch_size, decoder_widths=TINY_DECODER_WIDTHS, encoder_width=TINY_ENCODER_WIDTH)
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def tiny_taehv_for(vae: Any, seed: int = 0) -> Taehv:
    """The tiny random-weight TAEHV for a (tiny) pipeline's Wan VAE: its latent channels and pixel patch size."""
    return build_tiny_taehv(int(vae.config.z_dim), int(vae.config.get("patch_size") or 1), seed)


def save_taehv(model: Taehv, path: str | Path) -> Path:
    """As .safetensors (the published files' key names)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    return path
