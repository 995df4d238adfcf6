"""Tiny random-weight Wan2.2 pipelines for tests and offline development.

`write_tiny_model(path, variant)` saves a few-layer pipeline made of the *real* diffusers and
transformers classes, so the service's loading and generation code paths run unchanged on CPU
in well under a second. Weights are random; only the architecture and configs are faithful.

What is kept from the real checkpoints (Wan-AI/Wan2.2-*-Diffusers, diffusers'
``scripts/convert_wan_to_diffusers.py``) and why:

* Transformers: ``WanTransformer3DModel`` with the real ``patch_size=(1, 2, 2)``,
  ``cross_attn_norm=True``, ``qk_norm="rms_norm_across_heads"``, ``eps=1e-6``, ``freq_dim=256``
  and ``rope_max_seq_len=1024``; only the width/depth shrink (2 layers, 2 heads x 12,
  ffn 32, ``text_dim`` 32 = the tiny text encoder's ``d_model``). ``image_dim`` and
  ``added_kv_proj_dim`` are ``None`` for every Wan2.2 model: none has a CLIP image branch.
* A14B variants are mixture-of-experts: ``transformer`` (high noise) and ``transformer_2``
  (low noise) are switched at ``boundary_ratio * 1000`` (0.875 for T2V, 0.9 for I2V). The two
  experts get different seeds so that a bug routing steps to the wrong expert stays visible.
* I2V-A14B conditions on the first frame only through the VAE latent: ``in_channels=36``
  (16 noise + 4 frame mask + 16 image latent), no ``image_encoder``/``image_processor``.
* A14B uses the Wan2.1 VAE (z 16, 8x spatial / 4x temporal, the real ``latents_mean``/``std``
  defaults of ``AutoencoderKLWan``); ``base_dim=3``, one res block per stage.
* TI2V-5B uses the Wan2.2 VAE: ``is_residual=True``, ``patch_size=2`` (pixels are patchified
  into ``in/out_channels=12`` = 3 x 2 x 2), z 48, ``scale_factor_spatial=16``,
  ``scale_factor_temporal=4``, the real 48-channel ``latents_mean``/``latents_std``, and a
  decoder wider than the encoder like the real one (160 -> 256, here 1 -> 2: ``base_dim=1`` is the
  smallest that runs; diffusers' own fast tests use 3). Its transformer has
  48 in/out channels, ``expand_timesteps=True`` is stored in the pipeline config (per-token
  timesteps, which is how the 5B model does image conditioning), and it is saved as a
  ``WanPipeline``; image mode is ``WanImageToVideoPipeline(**pipe.components,
  expand_timesteps=True)``. Height and width must be multiples of 32 (16 VAE x 2 patch).
* Text encoder: ``UMT5EncoderModel`` with umt5-xxl's structure (gated-gelu FFN, 32 relative
  attention buckets, max distance 128, pad 0 / eos 1 / unk 2) at ``d_model`` 32 and 2 layers.
  The tokenizer is a WordPiece model built in-process from a few sentences (no hub access),
  wrapped as ``PreTrainedTokenizerFast`` with a pad token and an ``</s>`` appended like T5's,
  so the pipelines' ``padding="max_length"``/``truncation``/attention-mask calls behave.
* Scheduler: ``UniPCMultistepScheduler(prediction_type="flow_prediction",
  use_flow_sigmas=True)`` with Wan2.2's sample shifts: 12.0 (T2V-A14B), 5.0 (I2V-A14B, TI2V-5B).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Final

import torch

# Concrete module paths (not ``from diffusers import ...``) so type checkers see the real classes
# rather than diffusers' dummy placeholders.
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from worker.taehv import TINY_FILE, save_taehv, tiny_taehv_for

__all__ = ["VARIANTS", "build_tiny_pipeline", "write_tiny_model"]

VARIANTS: Final = ("t2v-a14b", "i2v-a14b", "ti2v-5b")

TEXT_DIM: Final = 32
MAX_SEQUENCE_LENGTH: Final = 512  # umt5-xxl's model_max_length, the pipelines' default

_CORPUS: Final = (
    "a cat walks along the beach at sunset, waves rolling in",
    "a dog runs through a green park in the morning light",
    "two astronauts dance on the moon, cinematic, slow motion",
    "a red car drives down a city street at night in the rain",
    "close up of a flower blooming, time lapse, high detail",
    "blurry, low quality, static, overexposed, worst quality",
)

# Real Wan2.2 VAE (TI2V-5B) per-channel latent statistics.
_WAN22_LATENTS_MEAN: Final = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
_WAN22_LATENTS_STD: Final = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-like WordPiece tokenizer: ids pad 0, eos 1, unk 2; ``</s>`` appended.

    The vocabulary is derived from `_CORPUS` directly (sorted words, plus single characters and
    ``##`` continuations so unseen words still split into known pieces) because the `tokenizers`
    WordPiece trainer orders equal-count pieces nondeterministically.
    """
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = {word for line in _CORPUS for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line))}
    chars = set("".join(words)) | set(string.ascii_lowercase + string.digits)
    pieces = ["<pad>", "</s>", "<unk>", *sorted(chars), *sorted("##" + c for c in chars)]
    pieces += sorted(words - set(pieces))
    tok.model = models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def _text_encoder(vocab_size: int, seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(config)


def _transformer(in_channels: int, out_channels: int, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )


def _wan21_vae(seed: int) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def _wan22_vae(seed: int) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=1,
        decoder_base_dim=2,
        z_dim=48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=list(_WAN22_LATENTS_MEAN),
        latents_std=list(_WAN22_LATENTS_STD),
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
    )


def flow_scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
    )


def build_tiny_pipeline(variant: str, seed: int = 0) -> DiffusionPipeline:
    """Build (without saving) the tiny pipeline for `variant`; see the module docstring."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    tokenizer = tiny_tokenizer()
    # A plain dict: diffusers annotates `scheduler` as FlowMatchEulerDiscreteScheduler and the CLIP
    # components as non-optional, although the real Wan2.2 checkpoints ship UniPC and no CLIP.
    components: dict[str, Any] = {"tokenizer": tokenizer, "text_encoder": _text_encoder(len(tokenizer), seed)}
    if variant == "t2v-a14b":
        components |= {
            "vae": _wan21_vae(seed + 1),
            "scheduler": flow_scheduler(12.0),
            "transformer": _transformer(16, 16, seed + 2),
            "transformer_2": _transformer(16, 16, seed + 3),
        }
        return WanPipeline(**components, boundary_ratio=0.875)
    if variant == "i2v-a14b":
        components |= {
            "vae": _wan21_vae(seed + 1),
            "scheduler": flow_scheduler(5.0),
            "transformer": _transformer(36, 16, seed + 2),
            "transformer_2": _transformer(36, 16, seed + 3),
            "image_encoder": None,
            "image_processor": None,
        }
        return WanImageToVideoPipeline(**components, boundary_ratio=0.9)
    components |= {
        "vae": _wan22_vae(seed + 1),
        "scheduler": flow_scheduler(5.0),
        "transformer": _transformer(48, 48, seed + 2),
        "transformer_2": None,
    }
    return WanPipeline(**components, boundary_ratio=None, expand_timesteps=True)


def write_tiny_model(path: str | Path, variant: str, seed: int = 0) -> Path:
    """Save the tiny `variant` pipeline to `path` (created if needed) and return it.

    Reload with ``DiffusionPipeline.from_pretrained(path)``. The same seed gives the same weights. Beside it,
    ``taehv.safetensors``: a tiny random-weight TAEHV decoder for the pipeline's latents.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(variant, seed)
    pipe.save_pretrained(out)
    save_taehv(tiny_taehv_for(pipe.vae, seed), out / TINY_FILE)  # the tiny preview/draft decoder (worker/taehv.py)
    return out
