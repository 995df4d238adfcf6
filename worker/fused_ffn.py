"""The feed-forward's first linear, its bias and its GELU (tanh) as one cuBLASLt matrix product with a GELU epilogue.

Wan's blocks compute `gelu_tanh(x @ W1.T + b1)` into a [tokens, ffn_dim] tensor: at TI2V-5B's 18,480 tokens and
14,336 features that is 530 MB written by the product, then read and written again by inductor's fused bias + GELU
kernel, in each of 30 blocks, twice a step. `torch._addmm_activation(..., use_gelu=True)` asks cuBLASLt for the
product with a GELU_BIAS epilogue, so the activation is applied to the fp32 accumulator as the tile is written:
the same function (cuBLASLt's GELU is the tanh approximation Wan uses), one rounding to bf16 instead of two, and
none of the intermediate tensor's extra traffic (benchmarks/gpu_fusions.py measures both).

The product is one `torch.library.custom_op` (`wanq::linear_gelu_tanh`), opaque to inductor (which would
otherwise decompose `_addmm_activation` back into a product and a pointwise kernel). The module falls back to the
stock path wherever the fused one does not apply: on a CPU (whose `_addmm_activation` applies the exact GELU, not
the tanh one), with weights that are not plain bf16/fp16 tensors (torchao's FP8 ones), and while a LoRA slot on the
linear is active (peft's layer adds its delta before the activation); a disabled slot runs the fused product on
its base layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FUSABLE_DTYPES = (torch.bfloat16, torch.float16)


@torch.library.custom_op("wanq::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias) for x [..., in]: on a CUDA device, one cuBLASLt product."""
    if not x.is_cuda:  # a CPU's _addmm_activation applies the exact GELU
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    flat = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(bias, flat, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def fusable_linear(proj: nn.Module) -> nn.Linear | None:
    """The plain linear the fused product can run: `proj` itself, or a peft LoRA layer's base while its adapters are
    disabled. None where the stock path must run."""
    base = getattr(proj, "base_layer", None)
    if base is not None:
        if not getattr(proj, "_disable_adapters", False):
            return None
        proj = base
    if not isinstance(proj, nn.Linear) or proj.bias is None:
        return None
    weight = proj.weight
    if type(weight) is not nn.Parameter or weight.dtype not in FUSABLE_DTYPES:
        return None
    if type(proj.bias) is not nn.Parameter or proj.bias.dtype != weight.dtype:
        return None
    return proj


class FusedGELU(nn.Module):
    """diffusers' `GELU(approximate="tanh")` (`ffn.net.0`, its linear kept as `proj`: the state dict's keys and LoRA
    targets are unchanged), computed by `wanq::linear_gelu_tanh` where it applies."""

    proj: nn.Module
    approximate: str

    def __init__(self, gelu: Any) -> None:
        super().__init__()
        self.proj = gelu.proj
        self.approximate = gelu.approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        linear = fusable_linear(self.proj)
        if linear is not None and hidden_states.is_cuda and hidden_states.dtype == linear.weight.dtype:
            return torch.ops.wanq.linear_gelu_tanh(hidden_states, linear.weight, linear.bias)
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


def install(transformer: Any) -> int:
    """Replaces every block's `ffn.net[0]` that is diffusers' tanh GELU; returns how many. Idempotent."""
    from diffusers.models.activations import GELU

    done = 0
    for block in getattr(transformer, "blocks", ()):
        net = getattr(getattr(block, "ffn", None), "net", None)
        if net is None or len(net) == 0:
            continue
        first = net[0]
        if isinstance(first, FusedGELU):
            done += 1
        elif isinstance(first, GELU) and first.approximate == "tanh":
            net[0] = FusedGELU(first)
            done += 1
    return done
