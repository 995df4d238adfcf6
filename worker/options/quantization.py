"""Weight quantization: FP8 linears (torchao, worker/fp8.py)."""

from __future__ import annotations

import logging
from typing import Any

from shared.settings import EngineSettings
from worker.options.option import Option, cuda, dtype, offload

log = logging.getLogger("wanq.engine")


def log_fp8(report: Any) -> None:
    log.info("fp8 linears", extra={"quantized": len(report.quantized), "kept_bf16": len(report.skipped)})


def _missing() -> str | None:
    from worker import fp8

    return fp8.missing_package()


def _gpu(name: str, capability: tuple[int, int]) -> str | None:
    from worker import fp8

    return fp8.gpu_problem(name, capability)


def _quantize(transformers: list[Any], _settings: EngineSettings, _device: Any) -> None:
    from worker import fp8

    for model in transformers:
        log_fp8(fp8.quantize_blocks(model))


def _place(transformer: Any, device: Any, park: Any) -> None:
    from worker import fp8

    log_fp8(fp8.place_quantized(transformer, device, park=park))


FP8 = Option(
    flag="--quantization fp8",
    kind="quantization",
    summary="FP8 linears in the transformer blocks, rowwise scales (torchao); lossy",
    chosen=lambda s: s.quantization == "fp8",
    needs=(
        cuda(
            "--quantization fp8 needs a CUDA GPU with FP8 tensor cores (Ada, Hopper or newer); on CPU use none",
            doc="a CUDA GPU",
        ),
        dtype(
            ("auto", "bf16"),
            lambda s, _e: (
                f"--quantization fp8 quantizes bf16 weights (torchao's rowwise scales); use --dtype bf16, not {s.dtype}"
            ),
        ),
        offload(
            ("none", "model"),
            lambda s, _e: (
                f"--quantization fp8 quantizes whole transformers, which --offload {s.offload} splits into groups; "
                "use --offload none (with --text-encoder-cpu-offload if memory is short) or --offload model"
            ),
        ),
    ),
    package=_missing,
    package_doc="torchao >= 0.18",
    min_capability=(8, 9),
    gpu=_gpu,
    applies_to="transformers",
    apply=_quantize,
    place_transformer=_place,
    applied="one GPU: each transformer quantized block by block as it is placed; several: after the weights sync",
)
