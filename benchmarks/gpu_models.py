"""Real-size Wan2.2 pipelines with random weights, built straight on the GPU (no download, no disk).

Used by benchmarks/gpu_pipeline.py as the engine's factory: `start_engine(None, settings,
factory="benchmarks.gpu_models:build", factory_kwargs={"variant": "ti2v-5b"})`, so the engine's
own `accel.apply` path runs on them. The architectures are the released checkpoints' configs
(/work/shared/FACTS.md §1; diffusers' conversion script for the VAEs); the weights are random, so
outputs are noise and only speed and memory mean anything. Parameters listed in a class's
`_keep_in_fp32_modules` stay in fp32 as `from_pretrained(dtype=bf16)` would keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from transformers import UMT5Config, UMT5EncoderModel

from worker import tiny_model

M = TypeVar("M", bound=torch.nn.Module)

TRANSFORMER = {
    "ti2v-5b": dict(
        num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30
    ),
    "t2v-a14b": dict(
        num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40
    ),
}
TRANSFORMER_COMMON = dict(
    patch_size=(1, 2, 2),
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    tie_word_embeddings=False,
)
WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_temporal=4,
    scale_factor_spatial=16,
    latents_mean=list(tiny_model._WAN22_LATENTS_MEAN),
    latents_std=list(tiny_model._WAN22_LATENTS_STD),
)
WAN21_VAE: dict[str, Any] = {}  # AutoencoderKLWan's defaults are the Wan2.1 VAE (base 96, z 16)
FLOW_SHIFT = {"ti2v-5b": 5.0, "t2v-a14b": 12.0}


def make_component(factory: Callable[[], M], device: torch.device, dtype: torch.dtype, seed: int) -> M:
    """Initialises directly on `device` in `dtype` (fp32 on the CPU first would take minutes)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(previous)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if isinstance(module, WanTransformer3DModel):
        for name, param in module.named_parameters():
            if any(k in name.split(".") for k in keep):
                param.data = param.data.float()
    return module.eval().requires_grad_(False)


def build(
    *,
    device: torch.device,
    dtype: torch.dtype,
    text_encoder: bool = True,
    variant: str = "ti2v-5b",
    place: str = "device",
    seed: int = 0,
    tiny: bool = False,
    limit_bytes: int | None = None,
) -> Any:
    """A WanEngine factory. `place="cpu"` builds on the GPU and parks the weights in RAM (offload modes).
    `limit_bytes`: once everything is built (and parked), the process is held to that much GPU memory
    (`set_per_process_memory_fraction`) and the peak is reset, so a memory budget and the load peak are the
    engine's placement's, not this build's."""
    if tiny:  # the CPU check of the benchmark script itself
        pipe = tiny_model.build_tiny_pipeline(variant, seed)
        if not text_encoder:
            pipe.register_modules(text_encoder=None)
        return pipe.to(dtype=dtype)
    build_on = device if device.type == "cuda" else torch.device("cpu")
    park = torch.device("cpu") if place == "cpu" else device

    def made(factory: Callable[[], M], offset: int) -> M:
        return make_component(factory, build_on, dtype, seed + offset).to(park)

    config = {**TRANSFORMER_COMMON, **TRANSFORMER[variant]}
    components: dict[str, Any] = {
        "tokenizer": tiny_model.tiny_tokenizer(),
        "text_encoder": made(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)), 1) if text_encoder else None,
        "scheduler": tiny_model.flow_scheduler(FLOW_SHIFT[variant]),
        "transformer": made(lambda: WanTransformer3DModel(**config), 2),
    }
    if variant == "ti2v-5b":
        components |= {"vae": made(lambda: AutoencoderKLWan(**WAN22_VAE), 3), "transformer_2": None}
        pipe = WanPipeline(**components, boundary_ratio=None, expand_timesteps=True)
    else:
        components |= {
            "vae": made(lambda: AutoencoderKLWan(**WAN21_VAE), 3),
            "transformer_2": made(lambda: WanTransformer3DModel(**config), 4),
        }
        pipe = WanPipeline(**components, boundary_ratio=0.875)
    if limit_bytes is not None and device.type == "cuda":
        if device.index is None:  # the engine with --offload model names plain "cuda"; the cap needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # the load peak is then the engine's placement alone
        torch.cuda.set_per_process_memory_fraction(limit_bytes / torch.cuda.get_device_properties(device).total_memory, device)
    return pipe


def transformer_config(variant: str) -> dict[str, Any]:
    return {**TRANSFORMER_COMMON, **TRANSFORMER[variant]}


def forward_flops(variant: str, tokens: int, text_tokens: int = 512) -> float:
    """FLOPs of one transformer forward (matmuls and attention; FACTS.md §3's count)."""
    c = TRANSFORMER[variant]
    d = c["num_attention_heads"] * c["attention_head_dim"]
    ffn, layers, length, text = c["ffn_dim"], c["num_layers"], tokens, text_tokens
    per_layer = length * (12 * d * d + 4 * d * ffn) + 4 * length * length * d + 4 * length * text * d + 4 * text * d * d
    return float(layers * per_layer)


def video_tokens(variant: str, width: int, height: int, frames: int) -> int:
    spatial = 32 if variant == "ti2v-5b" else 16  # VAE x patch
    return ((frames - 1) // 4 + 1) * (height // spatial) * (width // spatial)


def full_vae(variant: str, *, tiny: bool) -> Any:
    """The model's full Wan VAE: the tiny pipeline's on the CPU (`tiny`), else the real-size one in bf16 on the GPU."""
    if tiny:
        return tiny_model.build_tiny_pipeline(variant).vae.eval()
    config = WAN22_VAE if variant == "ti2v-5b" else WAN21_VAE
    return make_component(lambda: AutoencoderKLWan(**config), torch.device("cuda"), torch.bfloat16, 3)
