#!/usr/bin/env python
"""GPU benchmark of the engine's speed options (issue 19): FA4, FP8 linears, cache-dit, decode. A script, not a test.

One invocation measures, in this order of priority, within a time budget (`--budget-s`), and writes what it
has measured to `<out>/results.json` after every variant (a crash or a timeout keeps the rest):

  --plan ti2v (default; TI2V-5B, one GPU, ~9-10 min at full length, 560 s budget by default):
    1. env and the card's bf16 matmul rate
    2. plain diffusers `WanPipeline`, eager, per step, 1280x704x81 (real-size random bf16 weights)
    3. the engine compiled, native SDPA (the lossless reference for every error below)
    4. compiled + fa4          5. compiled + fp8 (after the engine's warmup: the size that failed)
    6. compiled + fa4 + fp8    (3-6: per step from steps 2..K of a K-step job; latents' relative error
                                against 3 and against 2, same seed)
    7. cache-dit: the defaults (SGLang's: the share of blocks skipped) and a fixed setting that skips a known
       share (rdt 1, warmup 4, mc 3), each against the same engine uncached
    8. decode variants (stock, cudnn.benchmark, channels-last, both, compiled decoder): time and max abs
       difference of the frames against stock; MP4 export time
    9. 50 steps end to end at x81 for the fastest lossless and the fastest lossy variant: stages, peak memory
   10. per step at 1280x704x121 for the fastest lossless variant and fa4 + fp8
  --plan a14b (T2V-A14B, both experts resident, ~7 min, 480 s budget by default): the matmul rate; per step
    at 1280x720x81 (steps 2.. of those on the high-noise expert: one expert, CFG = two forwards per step) for
    the compiled engine and compiled + fa4 + fp8; decode variants (Wan2.1 VAE); then fa4 and fp8 alone.
  --plan a14b-fit (issue 26; pick variants with --only): A14B with fp8 held to 48 GB (48/80 of an H100's memory)
    and unlimited, native SDPA and fa4; fa4 + fp8 + --offload model held to 24 GB; the lossless fa4 step. 6 steps at
    shift 5 (3 on each expert): each expert's step, the load peak and the job's peak. Weights parked in RAM first.

Each variant runs in a child process that takes the variants in order; a variant that raises is recorded with
its error and the next one starts; a child that dies or hangs is replaced and the variant it was on is
recorded as failed; past the deadline nothing new starts. Per-step and end-to-end times are measured;
`estimate_*` fields are sums of measured stages, labelled so.

  python benchmarks/gpu_engine.py --out /tmp/ge --mirror $OUT                 # TI2V-5B
  python benchmarks/gpu_engine.py --plan a14b --out /tmp/ga --mirror $OUT     # T2V-A14B
  python benchmarks/gpu_engine.py --plan a14b-fit --only matmul --only steps:fa4+fp8@48GB --only steps:fa4+fp8 --out /tmp/gf
  python benchmarks/gpu_engine.py --tiny --out /tmp/gt                        # the whole logic on CPU, < 2 min
  python benchmarks/gpu_engine.py --tiny --plan a14b --out /tmp/gta
  python benchmarks/gpu_engine.py --report --out /tmp/ge                      # the table again

Random weights: speed, memory and numerical differences mean something; picture quality does not, and the
cache-dit defaults' residual test is rarely passed by random weights (hence the fixed setting).

A new plan: a function `plan_NAME(tiny) -> list[Variant]` under `@plan_named("NAME", model=..., budget_s=...)`
(then `--plan NAME` and `--only VARIANT` work). A new kind of measurement (a decode stage, a post-processing model...): a function
`run_KIND(args, variant) -> dict` under `@runs("KIND")`, listed in a plan as `Variant("NAME", "KIND", cap_s, ...)`;
the result dict is what results.json records for it. benchmarks/harness.py has the rest (GPU helpers, timings,
the engine factory, the results file, the child processes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import PROMPT, export_all, free, gib, limit_bytes, median, memory, reset_peak, sync, timed_job  # noqa: E402

FIXED_CACHE = {"rdt": 1.0, "warmup": 4, "mc": 3}
"""rdt >= 1 is 'always similar': 4 computed steps, then 3 cached and 1 computed, repeated (per expert)."""


# -- the plans: a function per plan -----------------------------------------------------------------


@dataclass
class Variant:
    name: str
    kind: str
    """env, matmul, baseline, steps, cache, decode, e2e."""
    cap_s: float
    """Longest this variant may run (it is also never given more than the time left)."""
    engine: dict[str, Any] = field(default_factory=dict)
    frames: int | None = None
    warmup: bool = False
    pick: str = ""
    """e2e / steps at another size: "lossless" or "lossy" = the fastest such steps variant measured."""
    lossy: bool = False
    budget_gb: int | None = None
    """Hold the process to this much of an 80 GB card (`set_per_process_memory_fraction(budget_gb / 80)`)."""
    place: str = "device"
    """The factory's `place`: "cpu" parks the random weights in RAM first, as `from_pretrained` leaves them."""
    steps: int | None = None
    flow_shift: float | None = None
    """A14B: shift 5 with 6 steps puts 3 steps on each expert (the first of each untimed)."""


PlanFn = Callable[[bool], list[Variant]]
"""A plan: `tiny` -> its variants, in order of priority."""


@dataclass
class Plan:
    variants: PlanFn
    model: str
    """The variant of Wan2.2 every engine of the plan runs: "ti2v-5b" or "t2v-a14b"."""
    budget_s: float
    """The default `--budget-s` (110 with --tiny)."""


PLANS: dict[str, Plan] = {}
"""`--plan NAME`."""


def plan_named(name: str, *, model: str, budget_s: float) -> Callable[[PlanFn], PlanFn]:
    def add(variants: PlanFn) -> PlanFn:
        PLANS[name] = Plan(variants, model, budget_s)
        return variants

    return add


def plan(name: str, tiny: bool) -> list[Variant]:
    return PLANS[name].variants(tiny)


def engines(tiny: bool) -> dict[str, dict[str, Any]]:
    """The engine options the plans combine."""
    compiled = {"compile": not tiny, "attention_backend": "native"}
    fa4 = {**compiled, "attention_backend": "fa4"}
    fp8 = {**compiled, "quantization": "fp8"}
    return {"compiled": compiled, "fa4": fa4, "fp8": fp8, "both": {**fa4, "quantization": "fp8"}}


@plan_named("a14b-fit", model="t2v-a14b", budget_s=560.0)
def plan_a14b_fit(tiny: bool) -> list[Variant]:
    # Issue 26: A14B in 48 GB (FP8 quantized as placed) and 24 GB (+ --offload model), against the unlimited step.
    e = engines(tiny)
    fit = {**e["both"], "text_encoder_cpu_offload": True}
    fit_native = {**e["fp8"], "text_encoder_cpu_offload": True}
    each = {"place": "cpu", "steps": 6, "flow_shift": 5.0, "lossy": True}
    return [
        Variant("env", "env", 60),
        Variant("matmul", "matmul", 60),
        Variant("steps:fp8@48GB", "steps", 300, fit_native, budget_gb=48, **each),  # type: ignore[arg-type]
        Variant("steps:fp8", "steps", 300, fit_native, **each),  # type: ignore[arg-type]
        Variant("steps:fa4+fp8@48GB", "steps", 300, fit, budget_gb=48, **each),  # type: ignore[arg-type]
        Variant("steps:fa4+fp8", "steps", 300, fit, **each),  # type: ignore[arg-type]
        Variant(
            "steps:fa4+fp8+offload-model@24GB",
            "steps",
            330,
            {**e["both"], "offload": "model"},
            budget_gb=24,
            **each,  # type: ignore[arg-type]
        ),
        Variant("steps:fa4", "steps", 300, {**e["fa4"], "text_encoder_cpu_offload": True}, steps=6, flow_shift=5.0),
    ]


@plan_named("a14b", model="t2v-a14b", budget_s=480.0)
def plan_a14b(tiny: bool) -> list[Variant]:
    e = engines(tiny)
    return [
        Variant("env", "env", 60),
        Variant("matmul", "matmul", 60),
        Variant("steps:native", "steps", 220, e["compiled"]),
        Variant("steps:fa4+fp8", "steps", 240, e["both"], warmup=True, lossy=True),
        Variant("decode", "decode", 200),
        Variant("steps:fa4", "steps", 200, e["fa4"]),
        Variant("steps:fp8", "steps", 220, e["fp8"], warmup=True, lossy=True),
    ]


@plan_named("ti2v", model="ti2v-5b", budget_s=560.0)
def plan_ti2v(tiny: bool) -> list[Variant]:
    e = engines(tiny)
    frames_long = 13 if tiny else 121
    return [
        Variant("env", "env", 60),
        Variant("matmul", "matmul", 60),
        Variant("baseline", "baseline", 100),
        Variant("steps:native", "steps", 150, e["compiled"]),
        Variant("steps:fa4", "steps", 150, e["fa4"]),
        Variant("steps:fp8", "steps", 170, e["fp8"], warmup=True, lossy=True),
        Variant("steps:fa4+fp8", "steps", 170, e["both"], warmup=True, lossy=True),
        Variant("cache", "cache", 170, e["compiled"]),
        Variant("decode", "decode", 220),
        Variant("e2e:lossless", "e2e", 160, pick="lossless"),
        Variant("e2e:lossy", "e2e", 160, pick="lossy", lossy=True),
        Variant(f"steps@{frames_long}:lossless", "steps", 150, frames=frames_long, pick="lossless"),
        Variant(f"steps@{frames_long}:fa4+fp8", "steps", 170, e["both"], frames=frames_long, warmup=True, lossy=True),
    ]


# -- results ----------------------------------------------------------------------------------------


def load(args: argparse.Namespace) -> dict[str, Any]:
    return args.results.load()  # type: ignore[no-any-return]


def save_variant(args: argparse.Namespace, name: str, value: dict[str, Any], status: str = "done") -> None:
    args.results.save(name, value, status=status, show=600)


def steps_results(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    variants = load(args).get("variants", {})
    return {k: v for k, v in variants.items() if k.startswith("steps:") and "median_step_s" in v}


def fastest(args: argparse.Namespace, lossy: bool) -> tuple[str, dict[str, Any]]:
    """The fastest measured steps variant at the plan's size, lossless or lossy, and its engine options."""
    timed = [(v["median_step_s"], k, v) for k, v in steps_results(args).items() if v.get("lossy") == lossy]
    if not timed:
        raise RuntimeError(f"no {'lossy' if lossy else 'lossless'} per-step variant was measured to pick from")
    _, name, value = min(timed)
    return name, value["engine"]


# -- this script's job and engine -------------------------------------------------------------------


def variant_name(args: argparse.Namespace) -> str:
    return PLANS[args.plan].model


def size(args: argparse.Namespace) -> tuple[int, int, int]:
    if args.tiny:
        return 64, 64, 9
    return (1280, 704, 81) if variant_name(args) == "ti2v-5b" else (1280, 720, 81)


def spec_for(args: argparse.Namespace, **overrides: Any) -> Any:
    return harness.spec_for(variant_name(args), size(args), args.steps, **overrides)


def engine_settings(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    return harness.engine_settings(options, tiny=args.tiny, command_line=args.engine)


def make_engine(args: argparse.Namespace, options: dict[str, Any], place: str = "device", limit: int | None = None) -> Any:
    kwargs: dict[str, Any] = {}
    if place != "device":
        kwargs["place"] = place
    if limit is not None:
        kwargs["limit_bytes"] = limit
    return harness.make_engine(engine_settings(args, options), variant_name(args), tiny=args.tiny, **kwargs)


def skip_decode(engine: Any) -> None:
    """Per-step variants need only the latents: the decode (measured on its own) is left out of their jobs."""
    import numpy as np

    engine.decode = lambda pipe, latents: np.zeros((1, 2, 2, 3), dtype=np.uint8)


def save_latents(args: argparse.Namespace, name: str, latents: Any) -> Path:
    import torch

    path = args.out / f"latents_{name.replace(':', '_').replace('@', '_').replace('+', '_')}.pt"
    torch.save(latents.float().cpu(), path)
    return path


def rel_error(args: argparse.Namespace, latents: Any, reference: str) -> float | None:
    import torch

    path = args.out / f"latents_{reference.replace(':', '_').replace('@', '_').replace('+', '_')}.pt"
    if not path.exists():
        return None
    ref = torch.load(path)
    mine = latents.float().cpu()
    if ref.shape != mine.shape:
        return None
    return round(harness.rel_err(mine, ref), 6)


def flop_view(args: argparse.Namespace, spec: Any, seconds_per_forward: float | None) -> dict[str, Any]:
    rate = load(args).get("variants", {}).get("matmul", {}).get("tflops")
    return harness.flop_view(variant_name(args), spec, seconds_per_forward, rate, args.tiny)


# -- variants ---------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[argparse.Namespace, Variant], dict[str, Any]]] = {}
"""A variant's `kind`: the function that measures it."""


def runs(kind: str) -> Callable[[Callable[[argparse.Namespace, Variant], dict[str, Any]]], Any]:
    def add(
        run: Callable[[argparse.Namespace, Variant], dict[str, Any]],
    ) -> Callable[[argparse.Namespace, Variant], dict[str, Any]]:
        RUNNERS[kind] = run
        return run

    return add


@runs("env")
def run_env(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    from worker import accel

    info = harness.environment(
        "diffusers", "torchao", "cache-dit", "flash-attn-4", "nvidia-cutlass-dsl", "quack-kernels", "transformers"
    )
    info["fa4_problems"] = accel.environment_problems(engine_settings(args, {"attention_backend": "fa4"}))
    return info


@runs("matmul")
def run_matmul(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    return harness.matmul_rate(args.tiny)


@runs("baseline")
def run_baseline(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """Plain diffusers: `WanPipeline` with its defaults (eager, default attention), same seed and prompts."""
    from benchmarks import gpu_models

    device, dtype = harness.device_and_dtype()
    reset_peak()
    pipe = gpu_models.build(device=device, dtype=dtype, variant=variant_name(args), tiny=args.tiny)
    spec = spec_for(args)
    latents, step_times = harness.plain_steps(pipe, spec)
    save_latents(args, variant.name, latents)
    step = median(step_times[1:])
    del pipe
    return {
        "what": "diffusers WanPipeline defaults: eager, default attention (SDPA), everything on the device",
        "size": f"{spec.width}x{spec.height}x{spec.num_frames}",
        "step_times_s": [round(t, 4) for t in step_times],
        "median_step_s": step,
        **flop_view(args, spec, step / 2 if step else None),
        **memory(),
    }


@runs("steps")
def run_steps(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    # Weights parked in RAM: the limit starts after the factory's build (one bf16 A14B expert is 26 GiB on the GPU
    # while it is made), as from_pretrained leaves them on the CPU. Built on the GPU: it holds from the start.
    with harness.held_to(variant.budget_gb, now=variant.place != "cpu"):
        return _run_steps(args, variant)


def _run_steps(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """The engine with these options: K steps of one job; steps 2..K are timed (step 1 carries the compile)."""
    from worker.cache import expert_steps

    options = dict(variant.engine)
    picked = ""
    if variant.pick:
        picked, options = fastest(args, lossy=variant.pick == "lossy")
    record: dict[str, Any] = {"engine": options, "lossy": variant.lossy, "picked_from": picked or None}
    if variant.budget_gb is not None:
        record["budget_gb"] = variant.budget_gb
        record["limit_gib"] = gib(limit_bytes(variant.budget_gb))
    record["factory_place"] = variant.place
    reset_peak()
    t0 = time.perf_counter()
    limit = limit_bytes(variant.budget_gb) if variant.budget_gb is not None and variant.place == "cpu" else None
    engine = make_engine(args, options, place=variant.place, limit=limit)
    record["load_s"] = round(time.perf_counter() - t0, 2)
    record["load_memory"] = memory()
    reset_peak()
    record["plan"] = engine.plan.__dict__
    try:
        if variant.warmup:
            # The engine's own warmup (128x128x5 on TI2V-5B: 32 video tokens), the size where FP8 used to fail.
            record["warmup_s"] = round(engine.warmup(), 2)
        skip_decode(engine)
        overrides: dict[str, Any] = {"num_frames": variant.frames or size(args)[2]}
        if variant.steps is not None:
            overrides["num_inference_steps"] = variant.steps
        if variant.flow_shift is not None:
            overrides["flow_shift"] = variant.flow_shift
        spec = spec_for(args, **overrides)
        result, total = timed_job(engine, spec)
        steps = result.step_times
        split = expert_steps(engine.pipe, engine.pipe.scheduler, spec.num_inference_steps)
        # A14B: time only the steps of the first (high-noise) expert, so the figure is one expert's.
        timed = steps[1 : split[0]] if len(split) > 1 else steps[1:]
        step = median(timed)
        if len(split) > 1:
            # The low-noise expert: its first step (the switch, and a recompile if any) apart, then the median.
            record["expert2_first_step_s"] = round(steps[split[0]], 3) if len(steps) > split[0] else None
            record["expert2_median_step_s"] = median(steps[split[0] + 1 :])
            record["expert2_timed_steps"] = len(steps[split[0] + 1 :])
        record.update(
            size=f"{spec.width}x{spec.height}x{spec.num_frames}",
            steps=spec.num_inference_steps,
            steps_per_expert=split,
            step_times_s=[round(t, 4) for t in steps],
            first_step_s=round(steps[0], 3) if steps else None,
            timed_steps=len(timed),
            median_step_s=step,
            job_s=round(total, 2),
            **flop_view(args, spec, step / 2 if step else None),
            **memory(),
        )
        name = variant.name
        save_latents(args, name, result.latents)
        reference = "steps:native" if variant.frames is None else None
        if reference and name != reference:
            record["latent_rel_err_vs_compiled_native"] = rel_error(args, result.latents, reference)
        if variant.frames is None:
            record["latent_rel_err_vs_plain_eager"] = rel_error(args, result.latents, "baseline")
        if variant.frames is not None and "lossless" not in name:
            lossless = next((k for k in load(args).get("variants", {}) if k.startswith(f"steps@{variant.frames}:lossless")), None)
            if lossless:
                record["latent_rel_err_vs_lossless_same_size"] = rel_error(args, result.latents, lossless)
        baseline = load(args).get("variants", {}).get("baseline", {}).get("median_step_s")
        if baseline and step and variant.frames is None:
            record["speedup_vs_plain"] = round(baseline / step, 3)
    finally:
        engine.close()  # its memory goes back once the variant returns (harness.child_queue)
    return record


@runs("cache")
def run_cache(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """The compiled engine, one job per cache setting: none, the defaults (SGLang's), a fixed schedule."""
    steps = 8 if args.tiny else 12
    record: dict[str, Any] = {"engine": variant.engine, "steps": steps, "fixed": FIXED_CACHE}
    engine = make_engine(args, variant.engine)
    try:
        skip_decode(engine)
        engine.generate(spec_for(args, num_inference_steps=2, cache=False))  # compile at this size first
        jobs: dict[str, Any] = {}
        for label, cache in (("none", False), ("defaults", {}), ("fixed", FIXED_CACHE)):
            result, _ = timed_job(engine, spec_for(args, num_inference_steps=steps, cache=cache))
            jobs[label] = {
                "denoise_s": round(result.timings["denoising"], 3),
                "step_times_s": [round(t, 4) for t in result.step_times],
                "blocks_skipped_share": (result.cache or {}).get("blocks_skipped_share", 0.0),
                "cached_calls": [e["cached_calls"] for e in (result.cache or {}).get("experts", [])],
                "setting": (result.cache or {}).get("setting"),
            }
            save_latents(args, f"cache_{label}", result.latents)
            if label != "none":
                jobs[label]["speedup_vs_uncached"] = round(jobs["none"]["denoise_s"] / jobs[label]["denoise_s"], 3)
                jobs[label]["latent_rel_err_vs_uncached"] = rel_error(args, result.latents, "cache_none")
        record["jobs"] = jobs
        record.update(memory())
    finally:
        engine.close()  # its memory goes back once the variant returns (harness.child_queue)
    return record


def build_vae(args: argparse.Namespace) -> Any:
    from benchmarks import gpu_models

    return gpu_models.full_vae(variant_name(args), tiny=args.tiny)


@runs("decode")
def run_decode(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """VAE decode alone, per option (worker/accel.py `prepare_vae`, the engine's code path), on one set of random
    latents; frames compared with stock's (uint8, 0..255). Then the MP4 export of stock's frames."""
    import numpy as np
    import torch
    from diffusers.video_processor import VideoProcessor

    from worker import accel
    from worker.engine import decode_latents

    width, height, frames = size(args)
    vae = build_vae(args)
    spatial = vae.config.scale_factor_spatial  # Wan2.2's VAE 16, Wan2.1's 8
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, vae.config.z_dim, (frames - 1) // 4 + 1, height // spatial, width // spatial, generator=g)
    processor = VideoProcessor(vae_scale_factor=spatial)
    del vae
    options = {
        "stock": {},
        "stock_again": {},
        "cudnn_benchmark": {"cudnn_benchmark": True},
        "channels_last": {"vae_channels_last": True},
        "channels_last+cudnn_benchmark": {"vae_channels_last": True, "cudnn_benchmark": True},
        "compiled": {"vae_compile": True},
        "compiled+channels_last+cudnn_benchmark": {"vae_compile": True, "vae_channels_last": True, "cudnn_benchmark": True},
    }
    if args.tiny:  # inductor on a CPU: minutes for the decoder's graphs
        options = {k: v for k, v in options.items() if "compiled" not in k}
    deadline = args.deadline
    record: dict[str, Any] = {"size": f"{width}x{height}x{frames}", "latents": list(latents.shape), "variants": {}}
    stock: np.ndarray | None = None
    for label, extra in options.items():
        if time.time() > deadline - 20:
            record["variants"][label] = {"skipped": "deadline"}
            continue
        try:
            torch.backends.cudnn.benchmark = False
            free()
            vae = build_vae(args)
            applied = accel.prepare_vae(vae, engine_settings(args, extra))
            reset_peak()
            t0 = time.perf_counter()
            out = decode_latents(vae, processor, latents)  # the first decode carries compile / cuDNN's search
            sync()
            first = time.perf_counter() - t0
            times = []
            for _ in range(1):  # a decode is seconds long and steady: one timed run after the first
                t0 = time.perf_counter()
                out = decode_latents(vae, processor, latents)
                sync()
                times.append(time.perf_counter() - t0)
            entry: dict[str, Any] = {"applied": list(applied), "first_s": round(first, 3), "decode_s": median(times), **memory()}
            if stock is None:
                stock = out
            else:
                diff = np.abs(out.astype(np.int16) - stock.astype(np.int16))
                entry.update(
                    max_abs_diff_vs_stock=int(diff.max()),
                    mean_abs_diff_vs_stock=round(float(diff.mean()), 4),
                    share_of_values_differing=round(float((diff > 0).mean()), 5),
                )
            stock_s = record["variants"].get("stock", {}).get("decode_s")
            if stock_s and entry["decode_s"]:
                entry["speedup_vs_stock"] = round(stock_s / entry["decode_s"], 3)
            record["variants"][label] = entry
            del vae
        except Exception as exc:
            record["variants"][label] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        finally:
            torch.backends.cudnn.benchmark = False
        save_variant(args, variant.name, record, status="running")
    if stock is not None:
        record["mp4_export"] = export_all(stock, 24 if variant_name(args) == "ti2v-5b" else 16, args.out / "decode_export")
    free()
    return record


@runs("e2e")
def run_e2e(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """The fastest variant of its kind, 50 steps through `WanEngine.generate` (decode included), then the export."""
    picked, options = fastest(args, lossy=variant.pick == "lossy")
    record: dict[str, Any] = {"picked_from": picked, "engine": options}
    t0 = time.perf_counter()
    engine = make_engine(args, options)
    record["load_s"] = round(time.perf_counter() - t0, 2)
    try:
        # The first job at a size compiles; a production worker pays that once (its --warmup covers 128x128 only).
        t0 = time.perf_counter()
        engine.generate(spec_for(args, num_inference_steps=2, prompt=PROMPT + ", compile"))
        record["first_job_at_size_2_steps_s"] = round(time.perf_counter() - t0, 2)
        steps = 4 if args.tiny else 50
        spec = spec_for(args, num_inference_steps=steps, prompt=PROMPT + ", wide shot")
        reset_peak()
        result, generate_s = timed_job(engine, spec)
        export = export_all(result.frames, spec.fps, args.out / f"e2e_{variant.pick}")
        stages = {k: round(v, 3) for k, v in result.timings.items()}
        record.update(
            size=f"{spec.width}x{spec.height}x{spec.num_frames}",
            steps=steps,
            stages_s=stages,
            median_step_s=median(result.step_times[1:]),
            generate_s=round(generate_s, 2),
            export=export,
            end_to_end_s=round(generate_s + export["mp4_s"] + export["thumbnail_spritesheet_s"], 2),
            estimate_end_to_end_sum_of_stages_s=round(
                sum(result.timings.values()) + export["mp4_s"] + export["thumbnail_spritesheet_s"], 2
            ),
            upload_note="not timed: no S3 endpoint on the GPU machine",
            **memory(),
        )
        decode = load(args).get("variants", {}).get("decode", {}).get("variants", {})
        lossless_decodes = [
            (v["decode_s"], k) for k, v in decode.items() if v.get("decode_s") and v.get("max_abs_diff_vs_stock", 0) <= 2
        ]
        if lossless_decodes and "decoding" in result.timings:
            best_s, best = min(lossless_decodes)
            record["estimate_end_to_end_with_best_decode_s"] = round(
                record["end_to_end_s"] - result.timings["decoding"] + best_s, 2
            )
            record["estimate_best_decode"] = best
    finally:
        engine.close()  # its memory goes back once the variant returns (harness.child_queue)
    return record


# -- the parent and the child -----------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    variants = {v.name: v for v in plan(args.plan, args.tiny)}
    harness.child_queue(args.results, args.deadline, lambda name: RUNNERS[variants[name].kind](args, variants[name]))


def parent_main(args: argparse.Namespace, argv: list[str]) -> None:
    budget = harness.Budget(args.budget_s)
    variants = [v for v in plan(args.plan, args.tiny) if not args.only or v.name in args.only]
    results = load(args) if args.resume else {}
    results.update(plan=args.plan, tiny=args.tiny, budget_s=args.budget_s, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    results["order"] = [v.name for v in variants]
    args.results.write(results)
    done = {n for n, state in results.get("status", {}).items() if state == "done"} if args.resume else set()
    pending = [v.name for v in variants if v.name not in done]
    passthrough = [a for a in argv if a not in ("--resume",)]
    command = harness.child_command(__file__, *passthrough, "--child")
    harness.run_queue(args.results, pending, {v.name: v.cap_s for v in variants}, command, budget)
    report(args)
    print(f"[done] {budget.spent():.0f} s of a {args.budget_s:.0f} s budget; results: {args.results.path}", flush=True)


# -- the table --------------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> None:
    results = load(args)
    variants, status = results.get("variants", {}), results.get("status", {})
    env = variants.get("env", {})
    print(
        f"\n{results.get('plan')} plan on {', '.join(env.get('gpus', ['?']))}; matmul {variants.get('matmul', {}).get('tflops')} TFLOP/s"
    )
    rows = [("variant", "status", "s/step", "vs plain", "vs native", "rel err vs native", "vs plain", "peak GiB", "notes")]
    native = variants.get("steps:native", {}).get("median_step_s")
    baseline = variants.get("baseline", {}).get("median_step_s")

    def fmt(value: Any, digits: int = 3) -> str:
        return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    for name in results.get("order", []):
        value, state = variants.get(name, {}), status.get(name, "-")
        step = value.get("median_step_s")
        notes = value.get("error") or value.get("skipped") or ""
        if name == "cache" and "jobs" in value:
            jobs = value["jobs"]
            notes = "; ".join(
                f"{k}: skipped {jobs[k]['blocks_skipped_share']:.0%} of blocks, {fmt(jobs[k].get('speedup_vs_uncached'))}x"
                for k in ("defaults", "fixed")
                if k in jobs
            )
        if name == "decode" and "variants" in value:
            parts = []
            for k, v in value["variants"].items():
                if "decode_s" in v:
                    parts.append(f"{k} {v['decode_s']:.2f}s (diff {v.get('max_abs_diff_vs_stock', 0)})")
                else:
                    parts.append(f"{k}: {v.get('error') or v.get('skipped')}"[:80])
            mp4 = value.get("mp4_export", {}).get("mp4_s")
            notes = "; ".join(parts) + (f"; mp4 {mp4} s" if mp4 is not None else "")
        if name.startswith("e2e") and "end_to_end_s" in value:
            notes = f"{value['picked_from']}: {value['end_to_end_s']} s end to end, stages {value['stages_s']}"
        if name == "matmul" and "tflops" in value:
            notes = f"{value['tflops']} TFLOP/s"
        if value.get("expert2_median_step_s") is not None or value.get("load_memory"):
            load_peak = (value.get("load_memory") or {}).get("peak_allocated_gib")
            notes = f"expert2 {value.get('expert2_median_step_s')} s/step; load peak {load_peak} GiB; {notes}"
        if value.get("warmup_s") is not None:
            notes = f"warmup ok ({value['warmup_s']} s); {notes}"
        rows.append(
            (
                name,
                state,
                fmt(step, 4),
                fmt(round(baseline / step, 3) if baseline and step and "@" not in name else None),
                fmt(round(native / step, 3) if native and step and "@" not in name else None),
                fmt(value.get("latent_rel_err_vs_compiled_native", value.get("latent_rel_err_vs_lossless_same_size")), 5),
                fmt(value.get("latent_rel_err_vs_plain_eager"), 5),
                fmt(value.get("peak_allocated_gib"), 1),
                str(notes)[:200],
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=sorted(PLANS), default="ti2v")
    parser.add_argument("--only", action="append", default=[], help="run only these variants of the plan (repeat)")
    parser.add_argument("--out", type=Path, default=Path("out/gpu_engine"))
    parser.add_argument("--mirror", type=Path, action="append", default=[], help="also keep results.json here ($OUT)")
    parser.add_argument("--budget-s", type=float, default=None, help="default: 560 (ti2v), 480 (a14b), 110 (--tiny)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the per-step jobs (default 5, a14b 4, --tiny 3)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script's logic")
    parser.add_argument("--engine", action="append", default=[], help="extra EngineSettings key=value for every engine")
    parser.add_argument("--resume", action="store_true", help="keep results.json and run what is not done yet (a second call)")
    parser.add_argument("--report", action="store_true", help="print the table of results.json and exit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 110.0 if args.tiny else PLANS[args.plan].budget_s
    if args.steps is None:
        # A14B at shift 12: 4 steps put steps 1-3 on the high-noise expert (2 timed), TI2V-5B: 4 timed of 5.
        args.steps = 3 if args.tiny else (5 if variant_name(args) == "ti2v-5b" else 4)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.results = harness.Results(args.out, args.mirror)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.report:
        report(args)
    elif args.child:
        child_main(args)
    else:
        parent_main(args, argv)


if __name__ == "__main__":
    main()
