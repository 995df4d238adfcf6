"""Fused kernels in the transformer blocks: the same functions, fewer round trips through memory."""

from __future__ import annotations

from typing import Any

from shared.settings import EngineSettings
from worker.options.option import Option, rule


def _fused_ffn(transformers: list[Any], _settings: EngineSettings, _device: Any) -> None:
    from worker import fused_ffn

    for transformer in transformers:
        fused_ffn.install(transformer)


FUSED_FFN = Option(
    flag="--fused-ffn",
    name="fused_ffn",
    kind="kernels",
    summary="the FFN's first product, bias and tanh GELU as one cuBLASLt product (GELU epilogue); on by default on a GPU",
    chosen=lambda s: bool(s.fused_ffn),
    conflicts=(
        rule(
            "--offload sequential",
            lambda s, _e: s.offload == "sequential",
            "--fused-ffn cannot be combined with --offload sequential (its hooks move each weight as its own layer is "
            "called, which the fused product skips); use --offload group or model, or drop --fused-ffn",
        ),
        rule(
            "--quantization fp8",
            lambda s, _e: s.quantization == "fp8",
            "--fused-ffn does nothing with --quantization fp8 (FP8 quantizes the FFN's linear, which then runs "
            "torchao's product); drop one",
        ),
    ),
    applies_to="transformers",
    apply=_fused_ffn,
    applied="each block's `ffn.net.0` replaced by worker/fused_ffn.py's `FusedGELU` (same weights), before compile",
)
