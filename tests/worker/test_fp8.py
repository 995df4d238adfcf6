"""FP8 linears (torchao's Float8Tensor path on the CPU) and the small-size fix, with a stand-in for cuBLASLt.

torchao quantizes only on CUDA sm89+ (its hardware check is bypassed here), and the failure being fixed
is cuBLASLt's: on an H200 (torch 2.11, cuBLAS 13.1) `_scaled_mm` with rowwise scales, a fused bias and fast
accumulation has no algorithm for the FFN down projection (K 14336) at M <= 42 rows and raises
CUBLAS_STATUS_NOT_SUPPORTED; the engine's warmup has 32 video tokens. The stand-in raises under exactly that
rule ("large K" scaled down to this small model) and otherwise computes with torch's CPU `_scaled_mm`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from worker import fp8

LARGE_K = 64  # this model's ffn.net.2 in_features, standing in for 14336 / 13824
FAIL_MAX_M = 42
_REAL_SCALED_MM = torch._scaled_mm


@torch.library.custom_op("wanq_test::cublaslt_scaled_mm", mutates_args=())
def cublaslt_scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None, fast_accum: bool
) -> torch.Tensor:
    if bias is not None and fast_accum and a.shape[1] >= LARGE_K and a.shape[0] <= FAIL_MAX_M:
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmulAlgoGetHeuristic (stand-in)")
    return _REAL_SCALED_MM(a, b, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)


@cublaslt_scaled_mm.register_fake
def _(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, bias: Any, fast_accum: bool
) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)


GEMMS: list[tuple[int, int, bool]] = []
"""(M, K, bias fused) of every eager FP8 GEMM."""


def scaled_mm(
    a: Any,
    b: Any,
    scale_a: Any,
    scale_b: Any,
    bias: Any = None,
    scale_result: Any = None,
    out_dtype: Any = None,
    use_fast_accum: bool = False,
) -> Any:
    if not torch.compiler.is_compiling():
        GEMMS.append((a.shape[0], a.shape[1], bias is not None))
    return torch.ops.wanq_test.cublaslt_scaled_mm(a, b, scale_a, scale_b, bias, use_fast_accum)


@pytest.fixture(autouse=True)
def cuda_like(monkeypatch: pytest.MonkeyPatch) -> Any:
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    GEMMS.clear()
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_wan() -> Any:
    """A Wan transformer whose linears qualify for FP8 (sizes multiples of 16), in bf16 as in production."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=LARGE_K,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )
    return model.to(torch.bfloat16).eval()


def inputs(frames: int, height: int, width: int) -> dict[str, Any]:
    """frames x height x width latents: frames * height/2 * width/2 video tokens (the warmup's 2x8x8 -> 32)."""
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 16, frames, height, width, generator=g).to(torch.bfloat16),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 512, 32, generator=g).to(torch.bfloat16),
        return_dict=False,
    )


def test_the_ten_linears_of_every_block_are_quantized_and_nothing_else() -> None:
    model = small_wan()
    report = fp8.quantize_blocks(model)
    attention = [f"attn{n}.{p}" for n in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
    block_0 = sorted(n.removeprefix("blocks.0.") for n in report.quantized if n.startswith("blocks.0."))
    assert block_0 == sorted([*attention, "ffn.net.0.proj", "ffn.net.2"])
    assert len(report.quantized) == 10 * 2 and all(n.startswith("blocks.") for n in report.quantized)
    assert "proj_out" in report.skipped
    assert isinstance(model.blocks[0].ffn.net[2], fp8.Fp8Linear)


def test_stock_torchao_fails_at_the_warmup_size() -> None:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    model = small_wan()
    quantize_(
        model,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
        filter_fn=fp8.blocks_linear,
    )
    with torch.no_grad(), pytest.raises(RuntimeError, match="CUBLAS_STATUS_NOT_SUPPORTED"):
        model(**inputs(2, 8, 8))
    assert (32, LARGE_K, True) in GEMMS  # ffn.net.2 at 32 rows, bias fused

    # The threshold must lie above every failing size: at 40, the 42-token GEMM is fused again and fails.
    model = small_wan()
    fp8.quantize_blocks(model, bias_outside_below=40)
    with torch.no_grad():
        model(**inputs(2, 8, 8))  # 32 tokens: bias outside, works
        with pytest.raises(RuntimeError, match="CUBLAS_STATUS_NOT_SUPPORTED"):
            model(**inputs(1, 12, 14))  # 42 tokens


@pytest.mark.parametrize(("below", "compile"), [(fp8.BIAS_OUTSIDE_BELOW, True), (48, False)], ids=["1024-compiled", "48-eager"])
def test_every_size_works_eager_and_compiled(below: int, compile: bool) -> None:
    """48: both branches on these small sizes (1..43 tokens unfused, 400 fused)."""
    reference = small_wan()
    model = small_wan()
    fp8.quantize_blocks(model, bias_outside_below=below)
    compiled = model
    if compile:
        compiled = small_wan()
        fp8.quantize_blocks(compiled, bias_outside_below=below)
        compiled.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    # 1, 32 (the warmup), 42, 43 and 400 video tokens
    for frames, height, width in [(1, 2, 2), (2, 8, 8), (1, 12, 14), (1, 2, 86), (4, 20, 20)]:
        batch = inputs(frames, height, width)
        with torch.no_grad():
            want = reference(**batch)[0].float()
            got = model(**batch)[0].float()
            got_compiled = compiled(**batch)[0].float()
        assert float((got - want).norm() / want.norm()) < 0.08  # FP8 against bf16, random weights
        torch.testing.assert_close(got_compiled, got, atol=2e-2, rtol=2e-2)
    assert GEMMS
    for rows, _k, fused in GEMMS:
        assert fused == (rows >= below), (rows, fused)  # production sizes keep torchao's fused epilogue


def test_each_block_is_quantized_as_it_is_placed_and_the_rest_moves_whole() -> None:
    model = small_wan()
    reference = fp8.quantize_blocks(small_wan())
    events: list[tuple[str, object]] = []
    for index, block in enumerate(model.blocks):
        real_to = block.to

        def logged_to(*args: Any, _index: int = index, _to: Any = real_to, **kwargs: Any) -> Any:
            events.append(("to", _index))
            return _to(*args, **kwargs)

        block.to = logged_to  # type: ignore[method-assign]
    real_quantize = fp8.quantize_blocks

    def logged_quantize(block: Any, **kwargs: Any) -> fp8.Fp8Report:
        events.append(("quantize", kwargs["prefix"]))
        return real_quantize(block, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fp8, "quantize_blocks", logged_quantize)
        report = fp8.place_quantized(model, torch.device("cpu"), park=torch.device("cpu"))
    assert events == [
        ("to", 0), ("quantize", "blocks.0."), ("to", 0),
        ("to", 1), ("quantize", "blocks.1."), ("to", 1),
    ]  # fmt: skip
    assert sorted(report.quantized) == sorted(reference.quantized)
    assert sorted(report.skipped) == sorted(reference.skipped)
    assert len(model.blocks) == 2 and isinstance(model.blocks[1].ffn.net[2], fp8.Fp8Linear)
    with torch.no_grad():
        out = model(**inputs(2, 8, 8))[0]
    assert torch.isfinite(out.float()).all()
