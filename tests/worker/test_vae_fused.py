"""worker/vae_fused.py: the fused decoder decodes what the stock one does, in both Wan VAEs, with and without a cache."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan, WanRMS_norm
from torch import nn

from benchmarks.gpu_models import WAN22_VAE
from worker import vae_fused


def wan21(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def wan22(seed: int = 0, *, dim_mult: tuple[int, ...] = (1, 2, 2, 2), blocks: int = 1, width: int = 12) -> AutoencoderKLWan:
    """The released Wan2.2 VAE's layout (benchmarks/gpu_models.py), narrow."""
    torch.manual_seed(seed)
    narrow = {"base_dim": 8, "decoder_base_dim": width, "dim_mult": list(dim_mult), "num_res_blocks": blocks}
    return AutoencoderKLWan(**{**WAN22_VAE, **narrow})


def wan22_shaped(seed: int = 0) -> AutoencoderKLWan:
    """With the released one's channel multipliers and blocks (three channel counts in the decoder)."""
    return wan22(seed, dim_mult=(1, 2, 4, 4), blocks=2, width=16)


def randomized(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """Norm gains away from 1, so that a norm the fusion mishandled shows in the frames."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, WanRMS_norm):
                module.gamma.copy_(0.5 + torch.rand(module.gamma.shape, generator=generator))
    return vae.eval()


@pytest.mark.parametrize("make", [wan21, wan22], ids=["wan2.1-vae", "wan2.2-vae"])
def test_the_fused_decoder_gives_the_stock_frames(make) -> None:  # type: ignore[no-untyped-def]
    stock = randomized(make())
    fused = copy.deepcopy(stock)
    counts = vae_fused.install(fused.decoder)
    blocks = sum(1 for m in stock.decoder.modules() if type(m).__name__ == "WanResidualBlock")
    convs = sum(1 for m in stock.decoder.modules() if type(m).__name__ == "WanCausalConv3d")
    assert counts == {"norms": 2 * blocks + 1, "convs": convs}
    assert isinstance(fused.decoder.norm_out, vae_fused.NormSiLU)
    assert set(fused.state_dict()) == set(stock.state_dict())  # weights load into it unchanged
    # Five latent frames: the first chunk (no cache, the causal padding), then four with the conv cache.
    latents = torch.randn(1, stock.config.z_dim, 5, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = stock.decode(latents).sample
        got = fused.decode(latents).sample
    assert got.shape == want.shape and want.shape[2] == 17
    assert torch.equal(got, want)  # on a CPU: the stock arithmetic, in the stock order
    assert vae_fused.install(fused.decoder) == {"norms": 0, "convs": 0}  # idempotent


def test_a_norm_followed_by_no_activation_is_left_alone() -> None:
    vae = wan21()
    vae_fused.install(vae.decoder)
    attention_norms = [m.norm for m in vae.decoder.modules() if type(m).__name__ == "WanAttentionBlock"]
    assert attention_norms and all(isinstance(n, WanRMS_norm) for n in attention_norms)
    residual = next(m for m in vae.decoder.modules() if type(m).__name__ == "WanResidualBlock")
    assert isinstance(residual.nonlinearity, nn.Identity) and isinstance(residual.norm1, vae_fused.NormSiLU)


def test_norm_silu_is_the_stock_norm_then_silu_in_low_precision() -> None:
    norm = WanRMS_norm(6, images=False)
    with torch.no_grad():
        norm.gamma.copy_(torch.linspace(0.5, 1.5, 6).view(6, 1, 1, 1))
    x = torch.randn(1, 6, 2, 3, 4).to(torch.bfloat16)
    norm = norm.to(torch.bfloat16)
    want = torch.nn.functional.silu(norm(x))
    assert torch.equal(vae_fused.NormSiLU(norm)(x), want)


@pytest.mark.parametrize("make", [wan21, wan22_shaped], ids=["wan2.1-vae", "wan2.2-vae"])
def test_the_compiled_norm_takes_a_few_graphs_for_every_size_and_never_falls_back(make, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On a GPU the norm + SiLU is compiled with dynamic shapes. Compiled here with dynamo's "eager" backend (its graphs
    and guards, no C++ compiler): two video sizes and both chunk lengths must share a handful of graphs, well under
    the recompile limit past which dynamo would run it eagerly (a Parameter's shape, static to dynamo, would give a
    graph per channel count)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(vae_fused, "BACKEND", "eager")
    monkeypatch.setattr(vae_fused, "COMPILE_ON_CPU", True)
    monkeypatch.setattr(vae_fused, "_compiled", None)
    torch._dynamo.reset()
    counters.clear()
    stock = randomized(make())
    fused = copy.deepcopy(stock)
    vae_fused.install(fused.decoder)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for height, width in ((4, 6), (6, 4)):
            latents = torch.randn(1, stock.config.z_dim, 3, height, width, generator=generator)
            torch.testing.assert_close(fused.decode(latents).sample, stock.decode(latents).sample, rtol=0, atol=1e-6)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 6, f"{graphs} graphs for the norm"  # 4-5 measured; 7-9 with the Parameter's static shape
    torch._dynamo.reset()
