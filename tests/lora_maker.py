"""Tiny LoRA files for the tiny Wan2.2 models, made locally with peft (the way trainers make them).

`make_lora(transformer, path, rank=..., seed=..., blocks=..., alpha=...)` attaches a peft adapter to a copy of the
transformer, fills lora_A and lora_B with random values (peft starts lora_B at zero, which would change nothing)
and saves it with diffusers' `save_lora_weights` (keys `transformer.blocks.N.<module>.lora_A.weight`, the
LoraConfig in the file's `lora_adapter_metadata`). `to_original_format` rewrites such a file the way Wan / ComfyUI
files look (`diffusion_model.blocks.N.self_attn.q.lora_down.weight` plus `.alpha` tensors).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from shared.lora_files import BLOCK_MODULES

_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def make_lora(
    transformer: torch.nn.Module,
    path: Path,
    *,
    rank: int,
    seed: int,
    blocks: list[int] | None = None,
    modules: tuple[str, ...] = BLOCK_MODULES,
    alpha: float | None = None,
    std: float = 0.3,
    dtype: torch.dtype = torch.float32,
) -> Path:
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # Full names (peft matches a target as the whole name or as a ".suffix").
    targets = [f"blocks.{b}.{m}" for b in blocks for m in modules] if blocks is not None else list(modules)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets)
    model = copy.deepcopy(transformer).float()
    model.add_adapter(config, adapter_name="made")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    state = {k: v.to(dtype).contiguous() for k, v in get_peft_model_state_dict(model, adapter_name="made").items()}
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    WanPipeline.save_lora_weights(
        save_directory=str(path.parent),
        transformer_lora_layers=state,
        weight_name=path.name,
        transformer_lora_adapter_metadata=metadata,
    )
    return path


def to_original_format(source: Path, out: Path, *, alpha: float | None = None) -> Path:
    """The same adapter as the original Wan / ComfyUI format writes it: lora_down/lora_up and an alpha per module
    (alpha = rank unless given, so that diffusers' converter folds alpha / rank into the weights)."""
    from safetensors.torch import load_file, save_file

    tensors: dict[str, Any] = {}
    for key, value in load_file(str(source)).items():
        name = key.removeprefix("transformer.")
        for ours, theirs in (("lora_A", "lora_down"), ("lora_B", "lora_up")):
            suffix = f".{ours}.weight"
            if name.endswith(suffix):
                module = name.removesuffix(suffix)
                head, block, kind = module.split(".", 2)
                original = f"diffusion_model.{head}.{block}.{_TO_ORIGINAL[kind]}"
                tensors[f"{original}.{theirs}.weight"] = value
                if ours == "lora_A":
                    tensors[f"{original}.alpha"] = torch.tensor(float(alpha if alpha is not None else value.shape[0]))
    save_file(tensors, str(out))
    return out


def save_raw(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=metadata)
    return out
