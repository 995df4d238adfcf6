"""worker/fused_ffn.py: where the fused GELU product runs, and that the transformer computes what it did."""

from __future__ import annotations

import copy

import torch
from diffusers.models.activations import GELU
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from worker import fused_ffn


def transformer() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    ).eval()  # fmt: skip


def test_installed_blocks_compute_what_they_did_with_the_same_weights() -> None:
    stock = transformer()
    fused = copy.deepcopy(stock)
    assert fused_ffn.install(fused) == 2 and fused_ffn.install(fused) == 2  # idempotent
    assert all(isinstance(b.ffn.net[0], fused_ffn.FusedGELU) for b in fused.blocks)
    assert set(fused.state_dict()) == set(stock.state_dict())  # `ffn.net.0.proj` as before: checkpoints and LoRAs
    args = {
        "hidden_states": torch.randn(1, 4, 3, 4, 4),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 5, 16),
        "return_dict": False,
    }
    with torch.no_grad():
        assert torch.equal(fused(**args)[0], stock(**args)[0])


def test_the_fused_product_runs_on_plain_half_precision_linears_and_disabled_lora_layers_only() -> None:
    plain = nn.Linear(8, 16).to(torch.bfloat16)
    assert fused_ffn.fusable_linear(plain) is plain
    assert fused_ffn.fusable_linear(nn.Linear(8, 16)) is None  # fp32: the stock path
    assert fused_ffn.fusable_linear(nn.Linear(8, 16, bias=False).to(torch.bfloat16)) is None
    holder = nn.Module()
    holder.proj = nn.Linear(8, 16).to(torch.bfloat16)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["proj"]), holder)
    layer = holder.proj
    assert fused_ffn.fusable_linear(layer) is None  # an active adapter adds its delta before the activation
    layer._disable_adapters = True  # how worker/lora_slots.py turns a job's unused slots off
    assert fused_ffn.fusable_linear(layer) is layer.base_layer


def test_the_custom_op_is_the_tanh_gelu_of_the_linear_and_traceable() -> None:
    gelu = GELU(8, 16, approximate="tanh").to(torch.bfloat16)
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    got = torch.ops.wanq.linear_gelu_tanh(x, gelu.proj.weight, gelu.proj.bias)
    assert got.shape == (2, 3, 16) and torch.equal(got, gelu(x))
    torch.library.opcheck(fused_ffn.linear_gelu_tanh, (x, gelu.proj.weight.detach(), gelu.proj.bias.detach()))
