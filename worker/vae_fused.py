"""The Wan VAE decoder's memory-bound parts, fused: RMS norm + SiLU in one kernel, spatial padding inside the conv.

The decoder (diffusers' `AutoencoderKLWan`, both Wan2.1's and Wan2.2's) is called once per latent frame, which its
upsamplers make four frames at up to 1280x704 with 96-256 channels: each activation is hundreds of MB, and the
convolutions are not the whole cost:
- `WanRMS_norm` then `SiLU` run as eight eager kernels (to fp32, the norm's reduction, clamp, divide, back to
  bf16, two scalings, the bias, the activation), each reading and writing the whole activation. `NormSiLU` is the
  same arithmetic in one compiled (inductor) kernel: one read, one write. Where the activation followed a norm, the
  block's `nonlinearity` becomes the identity (the residual blocks and the decoder's head: nothing else there uses it).
- `WanCausalConv3d` pads the input with `F.pad` (a copy of the activation) before a conv with no padding; the
  spatial zero padding is the conv's own (`padding=(0, h, w)`, the same zeros, no copy); only the causal temporal
  padding of a chunk without cache is still `F.pad`.
The frames differ from the stock decode only by rounding (inductor keeps the norm in fp32 up to the activation);
benchmarks/gpu_fusions.py gives the largest difference in 8-bit levels. On a CPU the norm runs eagerly, with the
stock arithmetic in the stock order (bit-identical frames: tests/worker/test_vae_fused.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanDecoder3d, WanResidualBlock, WanRMS_norm
from torch import nn

BACKEND = "inductor"
COMPILE_ON_CPU = False
"""Tests compile on the CPU too (with the "eager" backend: dynamo's graphs and guards, no C++ compiler)."""
RECOMPILE_LIMIT = 64
_compiled: Callable[..., torch.Tensor] | None = None


def norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, scale: float, dim: int) -> torch.Tensor:
    """`WanRMS_norm.forward` followed by SiLU, in the stock order of operations."""
    low = x.dtype in (torch.float16, torch.bfloat16)
    normalized = F.normalize(x.float() if low else x, dim=dim).to(x.dtype)
    out = normalized * scale * gamma
    if bias is not None:
        out = out + bias
    return F.silu(out)


def _norm_silu_kernel(x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Compiled on a GPU, with dynamic shapes: a few graphs per process (a chunk of one frame, the layouts met), not
    one per channel count and size; eager elsewhere. Not `fullgraph`: past the recompile limit dynamo runs the
    function eagerly instead of failing the decode."""
    global _compiled
    if x.device.type != "cuda" and not COMPILE_ON_CPU:
        return norm_silu
    if _compiled is None:
        _compiled = torch.compile(norm_silu, dynamic=True, backend=BACKEND)
    return _compiled


class NormSiLU(nn.Module):
    """A `WanRMS_norm` and the SiLU after it; the norm's parameters are kept under their names (`gamma`, `bias`)."""

    gamma: nn.Parameter
    bias: nn.Parameter | float

    def __init__(self, norm: Any) -> None:
        super().__init__()
        self.channel_first = norm.channel_first
        self.scale = norm.scale
        self.gamma = norm.gamma
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Detached: dynamo keeps a Parameter's shape static (a graph per channel count); a plain tensor's is dynamic.
        bias = self.bias.detach() if isinstance(self.bias, torch.Tensor) else None  # else the stock 0.0: exact to add
        return _norm_silu_kernel(x)(x, self.gamma.detach(), bias, self.scale, 1 if self.channel_first else -1)


class PaddedInConv(WanCausalConv3d):
    """`WanCausalConv3d` with the spatial zero padding done by the convolution itself, set as an instance's class (its
    weights stay). A hook that wrapped the instance's forward before keeps calling the stock one: the option is
    refused with the VAE's offload hooks (worker/options/decode.py)."""

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        pw, _, ph, _, pt, _ = (int(p) for p in self._padding)
        if cache_x is not None and pt > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            pt -= cache_x.shape[2]
        if pt > 0:
            x = F.pad(x, (0, 0, 0, 0, pt, 0))
        elif pt < 0:  # a cache longer than the causal padding: the stock path crops
            x = x[:, :, -pt:]
        return F.conv3d(x, self.weight, self.bias, self.stride, (0, ph, pw), self.dilation, self.groups)


def install(decoder: nn.Module) -> dict[str, int]:
    """Fuses `decoder` (an `AutoencoderKLWan`'s `.decoder`) in place; returns what was changed. Idempotent."""
    for limit in ("recompile_limit", "cache_size_limit"):  # as worker/accel.py does for --compile
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, limit)))
    counts = {"norms": 0, "convs": 0}
    for module in decoder.modules():
        norm_names: tuple[str, ...] = ()
        if isinstance(module, WanResidualBlock):
            norm_names = ("norm1", "norm2")
        elif isinstance(module, WanDecoder3d):
            norm_names = ("norm_out",)
        if (
            norm_names
            and isinstance(getattr(module, "nonlinearity", None), nn.SiLU)
            and all(isinstance(getattr(module, n), WanRMS_norm) for n in norm_names)
        ):
            for name in norm_names:
                setattr(module, name, NormSiLU(getattr(module, name)))
                counts["norms"] += 1
            module.nonlinearity = nn.Identity()
        if type(module) is WanCausalConv3d:
            pw, pw2, ph, ph2, _, after = module._padding
            if pw == pw2 and ph == ph2 and after == 0 and tuple(module.padding) == (0, 0, 0):
                module.__class__ = PaddedInConv
                counts["convs"] += 1
    return counts
