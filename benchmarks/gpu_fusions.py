"""The fusions of issue 26's second pass, each against the stock path in the same run (one GPU).

    python3 benchmarks/gpu_fusions.py --out DIR [--mirror DIR] [--part attn --part gemm --part step --part decode] [--tiny]

- `attn`: FA4's sm90 forward at TI2V-5B's and A14B's attention shapes with each feasible tile shape (FA4 picks
  128 x 128 at head dim 128; FA3 picks 128 x 176); TFLOP/s and the difference from the default.
- `gemm`: the FFN's first product + bias + tanh GELU at TI2V-5B's and A14B's 720p shapes: inductor's product then
  its fused bias+GELU kernel (what the compiled block runs), against `wanq::linear_gelu_tanh` (worker/fused_ffn.py,
  cuBLASLt's GELU_BIAS epilogue); seconds and the largest difference.
- `step`: one TI2V-5B transformer forward at 1280x704x81 (fa4, regional compile), stock, with the `attn` part's
  fastest tile (when it is not FA4's default), then also with the fused FFN, and also with diffusers' fused QKV
  projections (`fuse_projections`); median of CUDA-event timings, the relative error of the output against stock.
- `decode`: the VAE decode at 720p x81 (Wan2.2's for TI2V-5B, Wan2.1's for A14B), channels-last as the worker runs
  it, stock and with worker/vae_fused.py; median of 3 after a warm-up, the largest difference in 8-bit levels.
- `fa3`: FlashAttention-3's forward (worker/fa3.py) beside FA4's at the `attn` part's shapes: bf16, FP8 e4m3 alone (q, k
  and v already quantized) and FP8 with its quantization (per-head scales, centred k; compiled as the engine runs it);
  TFLOP/s, and each one's relative error against float32 attention on 512 query rows.
- `fa3step`: one compiled transformer forward of TI2V-5B (1280x704x81) and of one A14B expert (1280x720x81), with the
  fused FFN (the GPU default), under `fa4`, `fa3` and `fa3-fp8`; seconds and the output's error against fa4's.
`--tiny`: the tiny models on the CPU, to check the script (numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks import gpu_models, harness

FFN_SHAPES = {"ti2v-5b": (18_480, 3072, 14_336), "t2v-a14b": (75_600, 5120, 13_824)}
TINY_FFN = (256, 64, 128)


def part_gemm(results: harness.Results, tiny: bool) -> None:
    from worker import fused_ffn  # noqa: F401  (registers wanq::linear_gelu_tanh)

    device, dtype = harness.device_and_dtype()
    out: dict[str, Any] = {}
    for name, shape in ({"tiny": TINY_FFN} if tiny else FFN_SHAPES).items():
        out[name] = _gemm(shape, device, dtype)
        harness.free(dynamo=False)
    results.save("gemm", out)


def _gemm(shape: tuple[int, int, int], device: Any, dtype: Any) -> dict[str, Any]:
    m, k, n = shape
    stock = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b), approximate="tanh"), fullgraph=True)
    fused = torch.ops.wanq.linear_gelu_tanh
    x = torch.randn(m, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=device, dtype=dtype)
    a, c = stock(x, w, b), fused(x, w, b)
    reference = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    t_stock = harness.event_seconds(lambda: stock(x, w, b), reps=10, inner=5)
    t_fused = harness.event_seconds(lambda: fused(x, w, b), reps=10, inner=5)
    return {
        "m_k_n": [m, k, n],
        "stock_ms": harness.ms(t_stock),
        "fused_ms": harness.ms(t_fused),
        "change": round(t_fused / t_stock - 1, 4),
        "max_abs_diff": float((a.float() - c.float()).abs().max()),
        "stock_rel_err_vs_fp32": round(harness.rel_err(a, reference), 6),
        "fused_rel_err_vs_fp32": round(harness.rel_err(c, reference), 6),
    }


ATTN_SHAPES = {"ti2v-5b": (18_480, 24), "t2v-a14b": (75_600, 40)}  # 720p x81 tokens, heads (head dim 128)
TINY_ATTN = {"tiny": (1_024, 2)}
ATTN_TILES = [
    "default",
    "128x144",
    "128x160",
    "128x176",
    "128x192",
    "128x176,no-overlap",
    "128x192,no-overlap",
    "192x128,no-overlap,512",
]
"""$WANQ_BENCH_FA4_TILE's spellings (benchmarks/harness.py): FA4's own sm90 choice at head dim 128 (128 x 128, P in
registers, intra-warpgroup overlap), wider k/v tiles (128 x 176 is FA3's, hopper/tile_size.h), without the overlap,
and three consumer warpgroups on 192 rows of q."""


def part_attn(results: harness.Results, tiny: bool) -> None:
    """FA4's sm90 forward at Wan's shapes (B=1, head dim 128, no mask) for tile shapes the config search
    (flash_attn/cute/sm90_config_search.py) calls feasible: TFLOP/s = 4 B H L^2 D / t, and the largest difference
    from FA4's default output. On a CPU (--tiny) SDPA stands in and only the bookkeeping runs."""
    from worker import fa4

    device, dtype = harness.device_and_dtype()
    if not tiny:
        fa4.register()  # reads the card's compute capability, which the sm90 configurations need
    out: dict[str, Any] = {}
    for name, (length, heads) in (TINY_ATTN if tiny else ATTN_SHAPES).items():
        q, k, v = (torch.randn(1, length, heads, 128, device=device, dtype=dtype) for _ in range(3))
        row: dict[str, Any] = {"tokens": length, "heads": heads}
        reference = None
        for label in ATTN_TILES:
            if tiny:
                fn = partial(F.scaled_dot_product_attention, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            else:
                harness.apply_fa4_tile(label)
                fn = partial(fa4._fa4_kernel, q, k, v, 128**-0.5, False)
            try:
                t0 = time.perf_counter()
                result = fn()[0]
                harness.sync()
                first = time.perf_counter() - t0
                seconds = harness.event_seconds(fn, reps=5 if tiny else 7, inner=1 if tiny else 5)
            except Exception as exc:  # an infeasible config fails to compile: recorded, the next one runs
                row[label] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                continue
            if reference is None:
                reference = result.float()
            row[label] = {
                "ms": harness.ms(seconds),
                "tflops": round(4 * heads * length**2 * 128 / seconds / 1e12, 1),
                "first_call_s": round(first, 1),
                "max_abs_diff_vs_default": float((result.float() - reference).abs().max()),
            }
            results.save("attn", out | {name: row})
        timed_rows = {k: r for k, r in row.items() if isinstance(r, dict) and "ms" in r}
        row["fastest"] = min(timed_rows, key=lambda k: timed_rows[k]["ms"])
        out[name] = row
        results.save("attn", out)
        del q, k, v, reference
        harness.free(dynamo=False)
    fa4.set_sm90_tile(128, None)
    # the one configuration for both models: the smallest sum of times relative to the default
    shared = [t for t in ATTN_TILES if all("ms" in out[m].get(t, {}) for m in out)]
    out["best_for_both"] = min(shared, key=lambda t: sum(out[m][t]["ms"] / out[m]["default"]["ms"] for m in out))
    results.save("attn", out)


def _forward_args(tiny: bool, device: Any, dtype: Any) -> dict[str, Any]:
    if tiny:
        latents = torch.randn(1, 48, 3, 4, 4, device=device, dtype=dtype)
    else:
        latents = torch.randn(1, 48, 21, 44, 80, device=device, dtype=dtype)  # 1280x704x81
    text = torch.randn(1, 512, 4096 if not tiny else 32, device=device, dtype=dtype)
    return {"hidden_states": latents, "timestep": torch.tensor([500.0], device=device), "encoder_hidden_states": text}


def part_step(results: harness.Results, tiny: bool) -> None:
    from shared.settings import EngineSettings
    from worker import fused_ffn
    from worker.options import registry

    device, dtype = harness.device_and_dtype()
    results.save("step_fa4_tile", harness.fa4_tile_from_env() or "default")
    if tiny:
        transformer = gpu_models.tiny_model.build_tiny_pipeline("ti2v-5b").transformer.eval().to(dtype)
    else:
        config = gpu_models.transformer_config("ti2v-5b")
        transformer = gpu_models.make_component(lambda: gpu_models.WanTransformer3DModel(**config), device, dtype, seed=2)
        settings = EngineSettings(device="cuda", attention_backend="fa4", compile=True)
        backend = registry.one(settings, "attention")
        assert backend is not None and backend.apply is not None
        backend.apply([transformer], settings, device)
    args = _forward_args(tiny, device, dtype)
    out: dict[str, Any] = {}
    reference = None

    def measure(name: str) -> None:
        nonlocal reference
        torch._dynamo.reset()
        if not tiny:
            transformer.compile_repeated_blocks(fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            result = transformer(**args, return_dict=False)[0]
            harness.sync()
            first = time.perf_counter() - t0
            transformer(**args, return_dict=False)
            seconds = harness.event_seconds(lambda: transformer(**args, return_dict=False), reps=3 if tiny else 8)
        if reference is None:
            reference = result.float().cpu()
        out[name] = {
            "s_per_forward": round(seconds, 4),
            "first_call_s": round(first, 1),
            "rel_err_vs_stock": round(harness.rel_err(result, reference), 6),
        }
        results.save("step", out)

    measure("stock")
    best = results.load().get("attn", {}).get("best_for_both")
    if best and best != "default" and not tiny:  # the attention part's winner, under the FFN fusions too
        harness.apply_fa4_tile(best)
        measure(f"fa4 {best}")
    fused_ffn.install(transformer)
    measure("fused_ffn")
    for block in transformer.blocks:
        block.attn1.fuse_projections()
        for name in ("to_q", "to_k", "to_v"):
            delattr(block.attn1, name)  # diffusers keeps them; only to_qkv is used
    measure("fused_ffn_qkv")
    stock_s = out["stock"]["s_per_forward"]
    for name in out:
        out[name]["change"] = round(out[name]["s_per_forward"] / stock_s - 1, 4)
    results.save("step", out)


def _frames(video: torch.Tensor) -> torch.Tensor:
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def part_decode(results: harness.Results, tiny: bool) -> None:
    from shared.settings import EngineSettings
    from worker import vae_fused
    from worker.options import decode

    device, dtype = harness.device_and_dtype()
    out: dict[str, Any] = {}
    for variant in ("ti2v-5b", "t2v-a14b"):
        stock = gpu_models.full_vae(variant, tiny=tiny)
        if not tiny:
            decode.CHANNELS_LAST.apply(stock, EngineSettings(device="cuda"), None)  # type: ignore[misc]
        fused = copy.deepcopy(stock)
        counts = vae_fused.install(fused.decoder)
        channels = stock.config.z_dim
        if tiny:
            shape = (1, channels, 3, 4, 4)
        else:
            shape = (1, channels, 21, 44, 80) if variant == "ti2v-5b" else (1, channels, 21, 90, 160)
        latents = torch.randn(*shape, device=device, dtype=dtype)
        row: dict[str, Any] = {"latents": list(shape), "fused": counts}
        frames = {}
        for name, vae in (("stock", stock), ("fused", fused)):
            with torch.no_grad():
                t0 = time.perf_counter()
                video = vae.decode(latents).sample
                harness.sync()
                row[f"{name}_first_s"] = round(time.perf_counter() - t0, 2)
                times = []
                for _ in range(1 if tiny else 3):
                    harness.reset_peak()
                    times.append(harness.timed(partial(vae.decode, latents)))
                row[f"{name}_s"] = harness.median(times)
                row[f"{name}_peak_gib"] = harness.memory().get("peak_allocated_gib")
            frames[name] = _frames(video)
            del video
        diff = (frames["stock"].int() - frames["fused"].int()).abs()
        row["max_levels_apart"] = int(diff.max())
        row["share_of_values_apart"] = round(float((diff > 0).float().mean()), 6)
        if row["stock_s"]:
            row["change"] = round(row["fused_s"] / row["stock_s"] - 1, 4)
        out[variant] = row
        results.save("decode", out)
        del stock, fused, latents, frames
        harness.free(dynamo=False)


def _fa3_standins() -> None:
    """--tiny: float32 references behind both ops (no FA3 or FA4 on a CPU)."""
    from worker import fa3, fa4

    fa3.use_kernel(fa3.reference_kernel)
    fa4.use_kernel(lambda q, k, v, scale, causal: fa3.reference_kernel(q, k, v, scale, causal, None, None, None))


def _rows_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int) -> torch.Tensor:
    """float32 attention of the first `rows` queries, head by head: (rows, H, D)."""
    out = []
    for h in range(q.shape[2]):
        logits = q[0, :rows, h].float() @ k[0, :, h].float().T * q.shape[-1] ** -0.5
        out.append(torch.softmax(logits, dim=-1) @ v[0, :, h].float())
    return torch.stack(out, dim=1)


def part_fa3(results: harness.Results, tiny: bool) -> None:
    from worker import fa3, fa4

    device, dtype = harness.device_and_dtype()
    if tiny:
        _fa3_standins()
    else:
        fa4.register()
        fa3.register()
    out: dict[str, Any] = {}
    fp8_total = torch.compile(partial(fa3._forward, causal=False, fp8=True), fullgraph=True)
    for name, (length, heads) in (TINY_ATTN if tiny else ATTN_SHAPES).items():
        q, k, v = (torch.randn(1, length, heads, 128, device=device, dtype=dtype) for _ in range(3))
        k = k + 0.5 * torch.randn(1, 1, heads, 128, device=device, dtype=dtype)  # keys share an offset, as real ones do
        scale = 128**-0.5
        (q8, k8, v8, qd, kd, vd), _correction = fa3.fp8_inputs(q, k, v, scale)
        variants = {
            "fa4": partial(torch.ops.wanq.fa4_forward, q, k, v, scale, False),
            "fa3": partial(torch.ops.wanq.fa3_forward, q, k, v, scale, False, None, None, None),
            "fa3-fp8 kernel": partial(torch.ops.wanq.fa3_forward, q8, k8, v8, scale, False, qd, kd, vd),
            "fa3-fp8": partial(fp8_total, q, k, v, scale),
        }
        rows = 64 if tiny else 512
        reference = _rows_reference(q, k, v, rows)
        row: dict[str, Any] = {"tokens": length, "heads": heads}
        for label, fn in variants.items():
            try:
                t0 = time.perf_counter()
                result = fn()[0]
                harness.sync()
                first = time.perf_counter() - t0
                seconds = harness.event_seconds(fn, reps=5 if tiny else 7, inner=1 if tiny else 5)
            except Exception as exc:  # recorded; the next one runs
                row[label] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                results.save("fa3", out | {name: row})
                continue
            row[label] = {
                "ms": harness.ms(seconds),
                "tflops": round(4 * heads * length**2 * 128 / seconds / 1e12, 1),
                "first_call_s": round(first, 1),
                "rel_err_vs_fp32": round(harness.rel_err(result[0, :rows], reference), 6),
            }
            results.save("fa3", out | {name: row})
        if "ms" in row.get("fa4", {}):
            for label in variants:
                if "ms" in row.get(label, {}):
                    row[label]["speedup_vs_fa4"] = round(row["fa4"]["ms"] / row[label]["ms"], 3)
        out[name] = row
        results.save("fa3", out)
        del q, k, v, q8, k8, v8, reference
        harness.free(dynamo=False)


def part_fa3step(results: harness.Results, tiny: bool) -> None:
    from worker import fa3, fa4, fused_ffn

    device, dtype = harness.device_and_dtype()
    if tiny:
        _fa3_standins()
    fa4.register()
    fa3.register()
    out: dict[str, Any] = {}
    for variant in ("ti2v-5b", "t2v-a14b"):
        if tiny:
            transformer = gpu_models.tiny_model.build_tiny_pipeline(variant).transformer.eval().to(dtype)
            args = _forward_args(True, device, dtype)
            if variant != "ti2v-5b":
                args["hidden_states"] = torch.randn(1, transformer.config.in_channels, 3, 4, 4, device=device, dtype=dtype)
        else:
            config = gpu_models.transformer_config(variant)
            transformer = gpu_models.make_component(partial(gpu_models.WanTransformer3DModel, **config), device, dtype, seed=2)
            args = _forward_args(False, device, dtype)
            if variant != "ti2v-5b":
                args["hidden_states"] = torch.randn(1, 16, 21, 90, 160, device=device, dtype=dtype)  # 1280x720x81
        fused_ffn.install(transformer)
        forward = partial(transformer, **args, return_dict=False)
        row: dict[str, Any] = {}
        reference = None
        for backend in ("fa4", "fa3", "fa3-fp8"):
            transformer.set_attention_backend(backend)
            torch._dynamo.reset()
            if not tiny:
                transformer.compile_repeated_blocks(fullgraph=True)
            try:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    result = forward()[0]
                    harness.sync()
                    first = time.perf_counter() - t0
                    seconds = harness.event_seconds(forward, reps=3 if tiny or variant == "ti2v-5b" else 2)
            except Exception as exc:
                row[backend] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                results.save("fa3step", out | {variant: row})
                continue
            if reference is None:
                reference = result.float().cpu()
            row[backend] = {
                "s_per_forward": round(seconds, 4),
                "first_call_s": round(first, 1),
                "rel_err_vs_fa4": round(harness.rel_err(result, reference), 6),
            }
            if "s_per_forward" in row.get("fa4", {}):
                row[backend]["change_vs_fa4"] = round(seconds / row["fa4"]["s_per_forward"] - 1, 4)
            results.save("fa3step", out | {variant: row})
        out[variant] = row
        results.save("fa3step", out)
        del transformer, args, forward, reference
        harness.free()


PARTS = {
    "attn": part_attn,
    "gemm": part_gemm,
    "step": part_step,
    "decode": part_decode,
    "fa3": part_fa3,
    "fa3step": part_fa3step,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mirror", type=Path, action="append", default=[])
    parser.add_argument("--part", action="append", choices=sorted(PARTS), default=[])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = harness.Results(args.out, args.mirror)
    results.save("environment", harness.environment("torch", "diffusers", "flash-attn-4", "flash_attn_3"))
    results.save("matmul", harness.matmul_rate(args.tiny))
    for name in args.part or list(PARTS):
        started = time.perf_counter()
        PARTS[name](results, args.tiny)
        print(f"[part] {name}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
