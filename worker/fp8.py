"""Dynamic FP8 (rowwise scales, torchao) for the linear layers of the transformer blocks, at every size a job asks.

`quantize_blocks(transformer)` runs torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`
on the nn.Linear layers under `blocks.*` (attention projections and FFN; not the embedders, norms or
`proj_out`): weights become FP8 e4m3 with one scale per output row, activations are quantized per
token row on each call, and the GEMM is torch's `_scaled_mm`. Lossy (see docs/ENGINE.md: FP8).

The small-size failure, and the fix. On Hopper with cuBLAS >= 12.9, torch sends rowwise-scaled FP8
GEMMs to cuBLASLt and asks it for one algorithm; for the FFN's down projection (ffn.net.2: K 14336 ->
3072 on TI2V-5B, 13824 -> 5120 on A14B) with the bias fused into the epilogue and fast accumulation on,
cuBLASLt 13.1 has none when the GEMM has few rows (M <= 42 on TI2V-5B, <= 25 on A14B; measured on an
H200 over M = 1..19951), and torch raises CUBLAS_STATUS_NOT_SUPPORTED. The engine's warmup (32 video
tokens) hit exactly that. Without the fused bias every Wan shape works at every M (eager and
compiled), so a layer that sees fewer than `BIAS_OUTSIDE_BELOW` rows adds its bias after the GEMM;
at or above it (every real video size: 18,480+ tokens at 1280x704x81) the stock fused call runs,
because there the bias-free cuBLASLt algorithm was 13-28 % slower. wanq compiles one static graph
per video size, so the branch is settled at trace time: no graph break, no guard on a dynamic size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

BIAS_OUTSIDE_BELOW = 1024
"""Token rows below which the bias leaves the FP8 GEMM's epilogue (the largest failing M seen anywhere is 256)."""
MIN_CAPABILITY = (8, 9)


def gpu_problem(name: str, capability: tuple[int, int]) -> str | None:
    if capability < MIN_CAPABILITY:
        return (
            f"--quantization fp8 needs FP8 tensor cores (Ada sm89, Hopper sm90 or newer); {name} is "
            f"sm{capability[0]}{capability[1]}: use --quantization none"
        )
    return None


def missing_package() -> str | None:
    try:
        import torchao.quantization  # noqa: F401
    except Exception as exc:
        return f"--quantization fp8 needs torchao >= 0.18 ({type(exc).__name__}: {str(exc)[:120]}): pip install 'torchao>=0.18'"
    return None


def blocks_linear(module: nn.Module, fqn: str) -> bool:
    """nn.Linear under blocks.* whose sizes `_scaled_mm` accepts (multiples of 16). Not a LoRA slot's own small
    linears (peft's lora_A / lora_B, worker/lora_slots.py): their weights are rewritten in place per job."""
    return (
        isinstance(module, nn.Linear)
        and (fqn.startswith("blocks.") or ".blocks." in fqn)
        and ".lora_" not in fqn
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


class Fp8Linear(nn.Linear):
    """An nn.Linear whose weight torchao has made a Float8Tensor (same parameters and state dict): below
    `bias_outside_below` token rows the bias is added after the GEMM, otherwise torchao's fused call runs."""

    bias_outside_below: int = BIAS_OUTSIDE_BELOW

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows >= self.bias_outside_below or self.bias is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, None) + self.bias


@dataclass
class Fp8Report:
    quantized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """nn.Linear layers left in bf16 (outside blocks.*, or sizes `_scaled_mm` does not take)."""


def quantize_blocks(transformer: nn.Module, *, bias_outside_below: int = BIAS_OUTSIDE_BELOW, prefix: str = "") -> Fp8Report:
    """Quantizes the linears under blocks.* in place (weights now, activations per call). The weights must be
    bf16 and on the GPU; call after placement and before compile. torchao's process-wide inductor settings
    (`set_inductor_config`) are left alone, so the bf16 paths compile as before. `prefix`: the module's own
    name in its transformer when it is one block ("blocks.3."); the report's names carry it."""
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    report = Fp8Report()
    chosen: dict[str, nn.Linear] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear):
            if blocks_linear(module, prefix + name):
                chosen[name] = module
            else:
                report.skipped.append(prefix + name)
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), mm_config=Float8MMConfig(use_fast_accum=True), set_inductor_config=False
    )
    quantize_(transformer, config, filter_fn=lambda module, fqn: chosen.get(fqn) is module)
    for name, module in chosen.items():
        if not isinstance(module.weight, Float8Tensor):
            report.skipped.append(prefix + name)
            continue
        module.__class__ = Fp8Linear
        module.bias_outside_below = bias_outside_below  # type: ignore[assignment]
        report.quantized.append(prefix + name)
    return report


def place_quantized(
    transformer: nn.Module,
    device: torch.device,
    *,
    park: torch.device | None = None,
    bias_outside_below: int = BIAS_OUTSIDE_BELOW,
) -> Fp8Report:
    """Moves a transformer from the CPU to `device` one block at a time, each block quantized as it lands, so
    at most one bf16 block is on the GPU beside the FP8 ones: an A14B expert needs ~14 GiB there, not the 27 GiB
    of its bf16 weights, and two experts are never resident in bf16 at once (they were: 64 GiB at load).
    `park`: each quantized block then goes there (the CPU, for --offload model: its hooks bring it back).
    The rest (embedders, norms, proj_out, the modulation table) stays bf16 and moves whole."""
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        transformer.to(device)
        report = quantize_blocks(transformer, bias_outside_below=bias_outside_below)
        if park is not None:
            transformer.to(park)
        return report
    report = Fp8Report()
    for index, block in enumerate(blocks):
        block.to(device)
        part = quantize_blocks(block, bias_outside_below=bias_outside_below, prefix=f"blocks.{index}.")
        report.quantized += part.quantized
        report.skipped += part.skipped
        if park is not None:
            block.to(park)
    # Everything but the blocks, which are where they belong already.
    transformer._modules["blocks"] = nn.ModuleList()
    try:
        transformer.to(park or device)
    finally:
        transformer._modules["blocks"] = blocks
    report.skipped += [
        name for name, module in transformer.named_modules() if isinstance(module, nn.Linear) and not name.startswith("blocks.")
    ]
    return report
