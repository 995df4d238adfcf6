#!/usr/bin/env python
"""GPU benchmark of the worker's engine (a script, not a test). Results: benchmarks/RESULTS.md.

Runs the worker's engine (`worker.startup.start_engine`) on a GPU. The speed options of issue 19 (FA4, FP8,
cache-dit, decode) are measured by benchmarks/gpu_engine.py. Without `--model-path` the
pipelines are the real-size architectures (TI2V-5B, T2V-A14B) with random bf16 weights, built on
the GPU by benchmarks/gpu_models.py and handed to the engine as a factory, so the engine's own option path
(worker/accel.py, worker/parallel/) is what is measured. Each part runs in its own process and
adds to one JSON file; `report` prints the tables.

  python benchmarks/gpu_pipeline.py plan call1 --out OUT     # TI2V-5B: 1 GPU, then 2 GPUs
  python benchmarks/gpu_pipeline.py plan call2 --out OUT     # 2 GPUs again, T2V-A14B offload, A14B 2 GPUs
  python benchmarks/gpu_pipeline.py <part> --out OUT         # one part (see PARTS)
  python benchmarks/gpu_pipeline.py plan call1 --tiny --out /tmp/b   # the same logic on CPU, tiny models

Parts: env, matmul (the card's bf16 rate), baseline (plain diffusers `WanPipeline`, its defaults),
forward (one transformer forward per attention backend, eager and compiled, against the FLOP
floor), engine (compiled engine: end to end 50 steps with stage times, three back-to-back jobs
with the export overlapped and the GPU's idle time, an oversized job that runs out of memory
followed by a normal one), multi (2 GPUs: cfg-parallel or
Ulysses, per-step time and output against the 1-GPU output), a14b-offload (T2V-A14B at
1280x720x81 per offload mode), a14b-multi (T2V-A14B cfg-parallel on 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import PROMPT, cuda, export_all, gib, median, reset_peak, sync, timed_job  # noqa: E402
from benchmarks.harness import memory as peak  # noqa: E402

# -- helpers ---------------------------------------------------------------------------------------


def spec_for(args: argparse.Namespace, **overrides: Any) -> Any:
    if args.flow_shift is not None:
        overrides = {"flow_shift": args.flow_shift, **overrides}
    return harness.spec_for(args.variant, (args.width, args.height, args.frames), args.steps, **overrides)


def engine_settings(args: argparse.Namespace, **overrides: Any) -> Any:
    return harness.engine_settings(overrides, tiny=args.tiny, command_line=args.engine)


def make_engine(args: argparse.Namespace, settings: Any, **factory_kwargs: Any) -> Any:
    return harness.make_engine(settings, args.variant, tiny=args.tiny, model_path=args.model_path, **factory_kwargs)


def build_pipeline(args: argparse.Namespace, **kwargs: Any) -> Any:
    from benchmarks import gpu_models

    device, dtype = harness.device_and_dtype()
    if args.model_path:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(args.model_path, dtype=dtype).to(device)
    return gpu_models.build(device=device, dtype=dtype, variant=args.variant, tiny=args.tiny, **kwargs)


def weight_checksum(pipe: Any) -> float:
    block = pipe.transformer.blocks[0]
    return float(sum(p.detach().double().sum().item() for p in block.parameters()))


def tokens_of(args: argparse.Namespace, spec: Any) -> int:
    from benchmarks import gpu_models

    return gpu_models.video_tokens(args.variant, spec.width, spec.height, spec.num_frames)


def flop_view(args: argparse.Namespace, spec: Any, seconds_per_forward: float | None) -> dict[str, Any]:
    """Seconds per forward against the FLOP floor at the card's measured matmul rate."""
    rate = args.results.load().get("matmul", {}).get("tflops")
    return harness.flop_view(args.variant, spec, seconds_per_forward, rate, args.tiny)


# -- parts -----------------------------------------------------------------------------------------


def part_env(args: argparse.Namespace) -> None:
    args.results.save("env", harness.environment("diffusers"))


def part_matmul(args: argparse.Namespace) -> None:
    """bf16 8192^3 matmul on random data, median of CUDA-event timings."""
    args.results.save("matmul", harness.matmul_rate())


def part_baseline(args: argparse.Namespace) -> None:
    """Plain diffusers: `WanPipeline` with its defaults (eager, default attention), same card."""
    pipe = build_pipeline(args)
    spec = spec_for(args, num_inference_steps=args.baseline_steps)
    reset_peak()
    _, step_times = harness.plain_steps(pipe, spec)
    step = median(step_times[1:] or step_times)
    args.results.save(
        "baseline",
        {
            "what": "diffusers WanPipeline defaults, eager, native SDPA, everything on the GPU",
            "size": f"{spec.width}x{spec.height}x{spec.num_frames}",
            "tokens": tokens_of(args, spec),
            "step_times_s": [round(t, 4) for t in step_times],
            "median_step_s": step,
            **flop_view(args, spec, step / 2 if step else None),
            **peak(),
            "checksum": weight_checksum(pipe),
        },
    )


def part_forward(args: argparse.Namespace) -> None:
    """One transformer forward per variant: attention backend x eager/compiled (x fused QKV)."""
    import torch

    from benchmarks import gpu_models

    if args.tiny:
        from worker.tiny_model import build_tiny_pipeline

        model = build_tiny_pipeline(args.variant).transformer
        text_dim = model.config.text_dim
    else:
        device = torch.device("cuda")
        model = gpu_models.make_component(
            lambda: gpu_models.WanTransformer3DModel(**gpu_models.transformer_config(args.variant)), device, torch.bfloat16, 2
        )
        text_dim = 4096
    device = next(model.parameters()).device
    dtype = torch.bfloat16 if cuda() else torch.float32
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per size, as the engine does
    results: dict[str, Any] = {}

    def inputs_for(frames: int) -> dict[str, Any]:
        spec = spec_for(args, num_frames=frames)
        latent = (frames - 1) // 4 + 1
        spatial = 16 if args.variant == "ti2v-5b" else 8
        channels = model.config.in_channels
        hidden = torch.randn(1, channels, latent, spec.height // spatial, spec.width // spatial, device=device, dtype=dtype)
        tokens = latent * (spec.height // spatial // 2) * (spec.width // spatial // 2)
        timestep = (
            torch.full((1, tokens), 900.0, device=device) if args.variant == "ti2v-5b" else torch.full((1,), 900.0, device=device)
        )
        text = torch.randn(1, 512, text_dim, device=device, dtype=dtype)
        return {"hidden_states": hidden, "timestep": timestep, "encoder_hidden_states": text, "return_dict": False}

    variants = [v.split(":") for v in args.forward_variants.split(",")]
    for name, backend, mode, frames_text in variants:
        frames = int(frames_text)
        key = f"{name}@{frames}f"
        try:
            for block in model.blocks:
                block._compiled_call_impl = None
            torch._dynamo.reset()
            if mode == "fused":
                model.fuse_qkv_projections()
            model.set_attention_backend(backend)
            if mode in ("compiled", "fused"):
                model.compile_repeated_blocks(fullgraph=True)
            inputs = inputs_for(frames)
            with torch.no_grad():
                t0 = time.perf_counter()
                model(**inputs)
                sync()
                first = time.perf_counter() - t0
                model(**inputs)
                seconds = harness.event_seconds(lambda: model(**inputs), args.reps)  # noqa: B023 (called here)
            spec = spec_for(args, num_frames=frames)
            results[key] = {"backend": backend, "mode": mode, "first_call_s": round(first, 2), **flop_view(args, spec, seconds)}
            print(f"[forward] {key}: {results[key]}", flush=True)
        except Exception as exc:  # one backend missing must not lose the others
            results[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"[forward] {key}: {results[key]}", flush=True)
        finally:
            if mode == "fused":
                model.unfuse_qkv_projections()
    args.results.save("forward", results)


def best_backend(args: argparse.Namespace) -> str:
    """The fastest compiled backend the forward part measured (native if none)."""
    forward = args.results.load().get("forward", {})
    frames = args.frames
    timed = [
        (v["s_per_forward"], v["backend"])
        for k, v in forward.items()
        if "s_per_forward" in v and v.get("mode") == "compiled" and k.endswith(f"@{frames}f")
    ]
    return min(timed)[1] if timed else "native"


class UtilSampler:
    """NVML GPU-utilisation samples (percent of the last sample period with a kernel running)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.samples: list[tuple[float, int]] = []
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:
            self._handle = None

    def __enter__(self) -> UtilSampler:
        if self._handle is not None:
            threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.perf_counter(), int(util)))
            time.sleep(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    def idle_share(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return round(sum(1 for u in window if u == 0) / len(window), 3) if window else None


def part_engine(args: argparse.Namespace) -> None:
    """The compiled engine end to end, back-to-back jobs (issue 7) and out of memory (issue 8)."""
    import torch

    from shared.errors import OutOfMemory

    backend = args.backend or best_backend(args)
    settings = engine_settings(args, compile=not args.tiny, attention_backend=backend)
    t0 = time.perf_counter()
    engine = make_engine(args, settings)
    load_s = time.perf_counter() - t0
    warmup_s = engine.warmup()
    info: dict[str, Any] = {"settings": settings.model_dump(), "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2)}
    info["checksum"] = weight_checksum(engine.pipe)

    # 1. Reference job (first at this size: includes its compile); its latents are the 2-GPU reference
    spec = spec_for(args, num_inference_steps=args.ref_steps)
    result, total = timed_job(engine, spec)
    torch.save(result.latents.float().cpu(), args.out / f"ref_latents_{args.variant}.pt")
    info["first_job_at_size"] = {"total_s": round(total, 2), "step_times_s": [round(t, 3) for t in result.step_times]}
    args.results.save("engine", info)

    # 2. End to end, 50 steps (new prompt: a real text encode)
    spec = spec_for(args, prompt=PROMPT + ", wide shot")
    reset_peak()
    result, total = timed_job(engine, spec)
    export = export_all(result.frames, spec.fps, args.out / "e2e")
    step = median(result.step_times[1:])
    e2e = {
        "size": f"{spec.width}x{spec.height}x{spec.num_frames}",
        "steps": spec.num_inference_steps,
        "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
        "median_step_s": step,
        "step_times_s": [round(t, 3) for t in result.step_times],
        "generate_s": round(total, 2),
        "export": export,
        "upload_s": None,
        "upload_note": "no S3 endpoint on the GPU machine; upload is timed by the CPU stack tests against moto",
        "end_to_end_s": round(total + export["mp4_s"] + export["thumbnail_spritesheet_s"], 2),
        **flop_view(args, spec, step / 2 if step else None),
        **peak(),
    }
    args.results.save("e2e", e2e)

    # 3. Issue 7: three back-to-back jobs, each export overlapped with the next job's generate
    jobs: list[dict[str, Any]] = []
    with UtilSampler() as sampler, ThreadPoolExecutor(max_workers=1) as pool:
        futures = []
        window_start = time.perf_counter()
        for n in range(3):
            spec = spec_for(args, num_inference_steps=args.job_steps, prompt=f"{PROMPT}, take {n}", seed=100 + n)
            start = time.perf_counter()
            result = engine.generate(spec)
            end = time.perf_counter()
            jobs.append(
                {"generate_start": start, "generate_end": end, "stages_s": {k: round(v, 3) for k, v in result.timings.items()}}
            )
            futures.append(pool.submit(export_all, result.frames, spec.fps, args.out / f"job{n}"))
        exports = [f.result() for f in futures]
        window_end = time.perf_counter()
    gaps = [jobs[i + 1]["generate_start"] - jobs[i]["generate_end"] for i in range(2)]
    busy_span = jobs[-1]["generate_end"] - jobs[0]["generate_start"]
    args.results.save(
        "jobs",
        {
            "how": "3 jobs through WanEngine.generate; export (mp4+thumbnail+spritesheet) of job N in a thread while job N+1 "
            "generates; idle = time between one generate returning and the next starting (host clock; generate ends after "
            "the frames are copied to the CPU); NVML utilisation sampled every 20 ms for a second view",
            "steps_per_job": args.job_steps,
            "size": f"{args.width}x{args.height}x{args.frames}",
            "generate_s": [round(j["generate_end"] - j["generate_start"], 3) for j in jobs],
            "stages_s": [j["stages_s"] for j in jobs],
            "exports": exports,
            "idle_between_jobs_s": [round(g, 4) for g in gaps],
            "idle_share_of_busy_span": round(sum(gaps) / busy_span, 5),
            "busy_span_s": round(busy_span, 2),
            "nvml_zero_util_share_in_span": sampler.idle_share(jobs[0]["generate_start"], jobs[-1]["generate_end"]),
            "nvml_samples": len(sampler.samples),
            "tail_export_after_last_job_s": round(window_end - jobs[-1]["generate_end"], 3),
            "sequential_export_would_idle_s": round(sum(e["mp4_s"] + e["thumbnail_spritesheet_s"] for e in exports[:2]), 3),
            "window_s": round(window_end - window_start, 2),
        },
    )

    # 4. Issue 8: an oversized job runs out of memory; the next job completes
    oom: dict[str, Any] = {}
    big = spec_for(args, width=args.oom_width, height=args.oom_height, num_frames=args.oom_frames, num_inference_steps=2)
    oom["request"] = f"{big.width}x{big.height}x{big.num_frames}"
    oom["allocated_before_gib"] = gib(torch.cuda.memory_allocated()) if cuda() else None
    reset_peak()
    t0 = time.perf_counter()
    try:
        engine.generate(big)
        oom["raised"] = None
    except OutOfMemory as exc:
        oom["raised"] = f"OutOfMemory(code={exc.code}): {exc.message[:200]}"
    except Exception as exc:
        oom["raised"] = f"UNEXPECTED {type(exc).__name__}: {str(exc)[:300]}"
    oom["fail_s"] = round(time.perf_counter() - t0, 2)
    oom["peak_during_gib"] = peak().get("peak_allocated_gib")
    oom["allocated_after_gib"] = gib(torch.cuda.memory_allocated()) if cuda() else None
    oom["reserved_after_gib"] = gib(torch.cuda.memory_reserved()) if cuda() else None
    spec = spec_for(args, num_inference_steps=2, prompt=PROMPT + ", after oom")
    reset_peak()
    try:
        result = engine.generate(spec)
        oom["next_job"] = {
            "ok": True,
            "frames": list(result.frames.shape),
            "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
            **peak(),
        }
    except Exception as exc:
        oom["next_job"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    args.results.save("oom", oom)


def part_multi(args: argparse.Namespace) -> None:
    """Two GPUs (cfg-parallel or Ulysses): per-step time and output against the 1-GPU engine."""
    import torch

    mode = args.mode
    # cfg / ulysses: two GPUs; cfg-ulysses2 / ulysses4: four GPUs (issue 11's two lossless layouts).
    layouts = {"cfg": (2, True, 1), "ulysses": (2, False, 2), "cfg-ulysses2": (4, True, 2), "ulysses4": (4, False, 4)}
    num_gpus, cfg, ulysses = layouts[mode]
    extra: dict[str, Any] = {"num_gpus": num_gpus, "cfg_parallel": cfg, "ulysses_degree": ulysses}
    backend = args.backend or best_backend(args)
    settings = engine_settings(args, compile=not args.tiny and not args.eager, attention_backend=backend, **extra)
    t0 = time.perf_counter()
    engine = make_engine(args, settings)
    load_s = time.perf_counter() - t0
    warmup_s = engine.warmup()
    # T2V-A14B: the spec of the 1-GPU no-offload run (2 steps, one per expert)
    spec = spec_for(args, num_inference_steps=args.ref_steps if args.variant == "ti2v-5b" else 2)
    reset_peak()
    result, _total = timed_job(engine, spec)
    steady = result.step_times[1:]
    out: dict[str, Any] = {
        "settings": {
            k: v
            for k, v in settings.model_dump().items()
            if k in ("num_gpus", "cfg_parallel", "ulysses_degree", "compile", "attention_backend")
        },
        "load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 2),
        "size": f"{spec.width}x{spec.height}x{spec.num_frames}",
        "step_times_s": [round(t, 3) for t in result.step_times],
        "median_step_s": median(steady),
        "checksum": weight_checksum(engine.pipe),
        **peak(),
    }
    ref_path = args.out / f"ref_latents_{args.variant}.pt"
    if ref_path.exists():
        out["rel_error_vs_1gpu"] = harness.rel_err(result.latents, torch.load(ref_path))
        out["finite"] = bool(torch.isfinite(result.latents).all())
    results = args.results.load()
    if args.variant == "ti2v-5b":
        single = results.get("engine", {}).get("first_job_at_size", {}).get("step_times_s", [])[1:] or []
        one_gpu = results.get("e2e", {}).get("median_step_s") or (median(single) if single else None)
        if args.eager:  # against plain diffusers (eager) on one GPU
            one_gpu = results.get("baseline", {}).get("median_step_s")
        out["weights_match_1gpu"] = results.get("engine", {}).get("checksum") == out["checksum"]
    else:  # T2V-A14B: against the 1-GPU run without offload (eager, same spec)
        none = results.get("a14b_offload", {}).get("none", {})
        one_gpu = none.get("s_per_step")
        out["median_step_s"] = round(statistics.mean(result.step_times), 3)
        out["weights_match_1gpu"] = none.get("checksum") == out["checksum"]
    if one_gpu:
        out["one_gpu_step_s"] = one_gpu
        out["speedup_vs_1gpu"] = round(one_gpu / out["median_step_s"], 3)
    engine.close()
    args.results.save(f"multi_{mode}{'_eager' if args.eager else ''}", out)


def part_a14b_offload(args: argparse.Namespace) -> None:
    """T2V-A14B at 1280x720x81 on one card: s/step and peak memory for one offload mode."""
    mode = args.mode
    overrides: dict[str, Any] = {"offload": mode}
    if mode == "none":
        overrides["text_encoder_cpu_offload"] = True  # 2 x 28.6 GB experts + 11 GB UMT5 + activations > 80 GB
    if mode == "group":
        overrides["pin_cpu_memory"] = True
    settings = engine_settings(args, attention_backend="native", **overrides)
    record: dict[str, Any] = {
        "settings": {
            k: v for k, v in settings.model_dump().items() if k in ("offload", "text_encoder_cpu_offload", "pin_cpu_memory")
        }
    }
    reset_peak()
    t0 = time.perf_counter()
    try:
        engine = make_engine(args, settings, place="device" if mode == "none" else "cpu")
        record["load_s"] = round(time.perf_counter() - t0, 2)
        # flow_shift 1.0 with 2 steps puts step 1 on the high-noise and step 2 on the low-noise expert
        spec = spec_for(args, num_inference_steps=2, flow_shift=1.0, seed=7)
        result, total = timed_job(engine, spec)
        if mode == "none":
            import torch

            torch.save(result.latents.float().cpu(), args.out / f"ref_latents_{args.variant}.pt")
            record["checksum"] = weight_checksum(engine.pipe)
        record.update(
            size=f"{spec.width}x{spec.height}x{spec.num_frames}",
            step_times_s=[round(t, 2) for t in result.step_times],
            s_per_step=round(statistics.mean(result.step_times), 2),
            stages_s={k: round(v, 2) for k, v in result.timings.items()},
            total_s=round(total, 2),
            **peak(),
        )
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        record.update(peak())
    results = args.results.load().get("a14b_offload", {})
    results[mode] = record
    args.results.save("a14b_offload", results)


def part_repeat(args: argparse.Namespace) -> None:
    """The 1-GPU compiled engine again, in a new process: its run-to-run difference is the noise floor
    for the 2-GPU comparison (random weights amplify bf16 rounding over the steps)."""
    import torch

    settings = engine_settings(args, compile=not args.tiny, attention_backend=args.backend or "native")
    engine = make_engine(args, settings)
    engine.warmup()
    result, _ = timed_job(engine, spec_for(args, num_inference_steps=args.ref_steps))
    ref = torch.load(args.out / f"ref_latents_{args.variant}.pt")
    error = harness.rel_err(result.latents, ref)
    args.results.save("repeat_1gpu", {"rel_error_vs_first_1gpu_run": error, "checksum": weight_checksum(engine.pipe)})


def part_report(args: argparse.Namespace) -> None:
    print(json.dumps(args.results.load(), indent=1, default=str)[:20000])


PARTS = {
    "env": part_env,
    "matmul": part_matmul,
    "baseline": part_baseline,
    "forward": part_forward,
    "engine": part_engine,
    "multi": part_multi,
    "a14b-offload": part_a14b_offload,
    "repeat": part_repeat,
    "report": part_report,
}

DEFAULT_VARIANTS = (
    "eager-native:native:eager:81,compiled-native:native:compiled:81,"
    "compiled-cudnn:_native_cudnn:compiled:81,compiled-flash:_native_flash:compiled:81,"
    "eager-native:native:eager:121,compiled-native:native:compiled:121"
)

A14B = ["--variant", "t2v-a14b", "--width", "1280", "--height", "720", "--flow-shift", "1.0"]

# Each plan: (part, extra argv, timeout s). Parts run as separate processes; a failure is logged and the plan goes on.
PLANS: dict[str, list[tuple[str, list[str], int]]] = {
    "call1": [
        ("env", [], 60),
        ("matmul", [], 60),
        ("baseline", [], 120),
        ("forward", [], 180),
        ("engine", ["--ref-steps", "5"], 260),
        ("multi", ["--mode", "cfg", "--ref-steps", "5"], 140),
        ("multi", ["--mode", "ulysses", "--ref-steps", "5"], 140),
        ("multi", ["--mode", "ulysses", "--ref-steps", "5", "--eager", "--if-missing", "multi_ulysses"], 100),
    ],
    "call2": [
        ("multi", ["--mode", "cfg", "--ref-steps", "5"], 130),
        ("multi", ["--mode", "ulysses", "--ref-steps", "5"], 130),
        ("a14b-offload", [*A14B, "--mode", "none"], 150),
        ("multi", [*A14B, "--mode", "cfg", "--ref-steps", "2", "--eager", "--engine", "text_encoder_cpu_offload=true"], 150),
    ],
    "four": [
        ("env", [], 40),
        ("multi", [*A14B, "--mode", "cfg-ulysses2", "--eager", "--engine", "text_encoder_cpu_offload=true"], 130),
        ("multi", [*A14B, "--mode", "ulysses4", "--eager", "--engine", "text_encoder_cpu_offload=true"], 130),
    ],
    "call3": [
        ("repeat", ["--ref-steps", "5"], 90),
        ("a14b-offload", [*A14B, "--mode", "model"], 130),
        ("a14b-offload", [*A14B, "--mode", "group"], 130),
        ("a14b-offload", [*A14B, "--mode", "sequential"], 150),
    ],
}


def run_plan(args: argparse.Namespace, argv: list[str]) -> None:
    plan = PLANS[args.plan_name]
    if args.prior and not (args.out / "results.json").exists():
        # Results of an earlier call (matmul rate, baseline, best backend) for this call's comparisons
        (args.out / "results.json").write_text(Path(args.prior).read_text())
    base = [a for a in argv if a not in ("plan", args.plan_name)]
    budget = harness.Budget(args.budget_s)
    for part, extra, timeout in plan:
        if "--if-missing" in extra:  # a fallback, run only when the entry it replaces produced nothing
            index = extra.index("--if-missing")
            wanted, extra = extra[index + 1], extra[:index] + extra[index + 2 :]
            if wanted in args.results.load():
                continue
        left = budget.left()
        if left < 20:
            print(f"[plan] skipping {part} {extra}: budget spent", flush=True)
            continue
        command = harness.child_command(__file__, part, *base, *extra)
        print(f"[plan] {' '.join(command[2:])} (timeout {min(timeout, int(left))} s)", flush=True)
        started = time.monotonic()
        code = harness.run_child(command, min(timeout, left))
        print(f"[plan] {part} {extra} -> {code} in {time.monotonic() - started:.0f} s", flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=[*PARTS, "plan"])
    parser.add_argument("plan_name", nargs="?", default="")
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    parser.add_argument("--model-path", default="", help="a real diffusers Wan2.2 directory instead of random weights")
    parser.add_argument("--variant", default="ti2v-5b", choices=["ti2v-5b", "t2v-a14b"])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script's logic")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--baseline-steps", type=int, default=5)
    parser.add_argument("--ref-steps", type=int, default=6)
    parser.add_argument("--job-steps", type=int, default=10)
    parser.add_argument("--forward-variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mode", default="cfg")
    parser.add_argument("--backend", default="")
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--oom-width", type=int, default=8192)
    parser.add_argument("--oom-height", type=int, default=4096)
    parser.add_argument("--oom-frames", type=int, default=481)
    parser.add_argument("--budget-s", type=float, default=560)
    parser.add_argument("--prior", default="", help="results.json of an earlier call, to compare against")
    parser.add_argument("--flow-shift", type=float, default=None)
    parser.add_argument("--mirror", type=Path, default=None, help="also keep results.json here")
    parser.add_argument("--engine", action="append", default=[], help="extra EngineSettings key=value")
    args = parser.parse_args(argv)
    if args.tiny:  # tiny pipelines: small sizes, few steps
        args.width, args.height, args.frames = 64, 64, 9
        args.steps, args.ref_steps, args.job_steps, args.baseline_steps = 3, 3, 2, 2
        args.oom_width, args.oom_height, args.oom_frames = 64, 64, 9
        args.reps = 2
        args.forward_variants = "eager-native:native:eager:9"
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.results = harness.Results(args.out, [args.mirror] if args.mirror is not None else [])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part == "plan":
        run_plan(args, argv)
        return
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
