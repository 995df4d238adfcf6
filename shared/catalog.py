"""The models wanq knows: each id with its architecture variant and the defaults of its official config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Variant = Literal["t2v-a14b", "i2v-a14b", "ti2v-5b"]
ImageMode = Literal["none", "required", "optional"]

# Wan2.2's own default negative prompt (`sample_neg_prompt` in its configs).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    variant: Variant
    hf_repo: str
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    flow_shift: float
    guidance_scale: float
    guidance_scale_2: float | None
    """Guidance of the low-noise expert (A14B only)."""
    size_multiple: int
    image: ImageMode
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    tiny: bool = False

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


# Each variant's defaults, from the Wan2.2 repository's configs and the diffusers model cards.
_FIELDS = ("hf_repo", "width", "height", "num_frames", "fps", "num_inference_steps", "flow_shift", "guidance_scale",
           "guidance_scale_2", "size_multiple", "image")  # fmt: skip
_VARIANTS: dict[str, tuple[object, ...]] = {
    "t2v-a14b": ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", 1280, 720, 81, 16, 40, 12.0, 4.0, 3.0, 16, "none"),
    "i2v-a14b": ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", 1280, 720, 81, 16, 40, 5.0, 3.5, 3.5, 16, "required"),
    "ti2v-5b": ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 1280, 704, 121, 24, 50, 5.0, 5.0, None, 32, "optional"),
}


def _variant_presets(variant: Variant) -> dict[str, object]:
    return dict(zip(_FIELDS, _VARIANTS[variant], strict=True))


def _preset(model_id: str, variant: Variant) -> ModelSpec:
    return ModelSpec(id=model_id, variant=variant, **_variant_presets(variant))  # type: ignore[arg-type]


def _tiny(model_id: str, variant: Variant) -> ModelSpec:
    """Random-weight few-layer pipelines (`wanq tiny-model`): same classes, small defaults, CPU speed."""
    base = _variant_presets(variant)
    base.update(width=64, height=64, num_frames=17, num_inference_steps=4, fps=8)
    return ModelSpec(id=model_id, variant=variant, tiny=True, **base)  # type: ignore[arg-type]


PRESETS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        _preset("wan2.2-t2v-a14b", "t2v-a14b"),
        _preset("wan2.2-i2v-a14b", "i2v-a14b"),
        _preset("wan2.2-ti2v-5b", "ti2v-5b"),
        _tiny("tiny-t2v-a14b", "t2v-a14b"),
        _tiny("tiny-i2v-a14b", "i2v-a14b"),
        _tiny("tiny-ti2v-5b", "ti2v-5b"),
    )
}
TINY_MODEL_IDS = tuple(m for m, spec in PRESETS.items() if spec.tiny)
