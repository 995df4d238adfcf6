#!/usr/bin/env python
"""Whole jobs on one GPU, as a worker runs them (issues 26, 27, 28). A script, not a test.

Each job goes through `WanEngine.generate` with the worker's export: the MP4 encoded beside the decode
(export.Mp4Stream, fed by the decode's temporal loop), then the thumbnail and the spritesheet. `end_to_end_s` is
generate + the encoder's tail after the decode + the stills (the upload is not timed: no S3 on the GPU host).

  --part ti2v (TI2V-5B 1280x704x81, ~7 min): the matmul rate; one engine (fa4, compiled, with the CFG-batch hook
     and a real-size tiny decoder of random weights); per step with the two CFG branches as two forwards and as one
     batch-2 forward; a kernel profile of one step of each (GEMMs, attention, the rest); 50 steps end to end with
     the faster; a 4-step guidance-1 job with the full and with the tiny decoder (issue 27's draft); 10 steps with
     and without previews every 5 steps (their cost in a run); then fa4 + fp8 end to end (lossy).
  --part ti2v-fused (TI2V-5B, ~6 min): 50 steps lossless end to end with the fused kernels and without, one
     engine each; 50 steps fa4 + fp8 end to end.
  --part ti2v-fa3 (TI2V-5B, ~6 min): 50 steps end to end, one engine each: lossless with FlashAttention-3 (fa3),
     lossy with FA3 on FP8 q, k, v and FP8 linears (fa3-fp8 + fp8), then lossless fa4 (the baseline of the same run).
  --part ti2v-e2e (TI2V-5B, ~5 min): one timestep against per-token timesteps per step; 50 steps lossless end
     to end; the 4-step drafts; 50 steps fa4 + fp8 end to end.
  --part a14b-lightning (T2V-A14B 1280x720x81, ~6 min): fa4, compiled, the text encoder on the CPU, one LoRA slot
     of rank 64; a 4-step guidance-1 job on both experts with a Lightning-shaped LoRA (rank 64 on every block
     linear of both experts, random weights), end to end; the decode's own peak memory; RIFE x2 and the compact
     x2 upscaler on its frames, and the 2560x1440 MP4 (issue 28's share of an A14B job).
     With --fused, the same LoRA fused into both experts at start (--fuse-lora) instead of a job's slot.
  --part a14b-run (T2V-A14B, ~9 min): fa4, compiled, the text encoder on the CPU; the longest real run a
     10-minute call allows (--steps, default 20, both experts, guidance on), end to end, against the sum of the
     per-step figures.

  python benchmarks/gpu_jobs.py --part ti2v --out /tmp/gj --mirror $OUT
  python benchmarks/gpu_jobs.py --part ti2v --tiny --out /tmp/gjt        # the whole logic on the CPU, ~1 min

Results go to <out>/results.json after every measurement (a crash or a timeout keeps what came before).
Random weights: times, memory and numerical differences mean something; pictures do not.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import gib, median, memory, reset_peak, sync  # noqa: E402

PARTS: dict[str, Callable[[argparse.Namespace], None]] = {}


def part(name: str) -> Callable[[Callable[[argparse.Namespace], None]], Callable[[argparse.Namespace], None]]:
    def add(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        PARTS[name] = fn
        return fn

    return add


# -- one job, as the worker runs it ------------------------------------------------------------------


def streamed_job(engine: Any, spec: Any, folder: Path, **generate: Any) -> tuple[Any, dict[str, Any]]:
    """generate with the MP4 encoded beside the decode, then the stills: what the worker's runner does."""
    from worker import export

    folder.mkdir(parents=True, exist_ok=True)
    stream = export.Mp4Stream(folder / "video.mp4", spec.output_fps, expected=spec.num_frames)
    t0 = time.perf_counter()
    result = engine.generate(spec, on_step=lambda done, total: sync(), on_frames=stream.send, **generate)
    t1 = time.perf_counter()
    stream.close()
    t2 = time.perf_counter()
    if stream.stills() is None:  # the stills made beside the decode, as the runner takes them; else from the frames
        export.write_thumbnail(result.frames, folder / "thumbnail.webp")
        export.write_spritesheet(result.frames, folder / "spritesheet.jpg")
    t3 = time.perf_counter()
    record = {
        "size": f"{spec.width}x{spec.height}x{spec.num_frames}",
        "steps": spec.num_inference_steps,
        "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
        "step_times_s": [round(t, 4) for t in result.step_times],
        "median_step_s": median(result.step_times[1:]),
        "generate_s": round(t1 - t0, 3),
        "mp4_tail_after_decode_s": round(t2 - t1, 3),
        "stills_s": round(t3 - t2, 3),
        "end_to_end_s": round(t3 - t0, 3),
        "mp4_frames": export.probe_mp4(folder / "video.mp4")["frames"],
        "upload": "not timed (no S3 on the GPU host)",
    }
    return result, record


def step_seconds(engine: Any, spec: Any, **generate: Any) -> list[float]:
    """Seconds of steps 2..N of a job stopped after its last step (no decode)."""
    from shared.errors import JobCanceled

    marks: list[float] = []

    def on_step(done: int, total: int) -> None:
        sync()
        marks.append(time.perf_counter())
        if done >= spec.num_inference_steps:
            raise JobCanceled("measured")

    with contextlib.suppress(JobCanceled):
        engine.generate(spec, on_step=on_step, **generate)
    return [round(b - a, 4) for a, b in itertools.pairwise(marks)]


def cfg_batched(engine: Any, on: bool) -> None:
    """The engine's --cfg-batch for the next jobs (the hook stays registered; off, it passes every call through)."""
    engine.settings = engine.settings.model_copy(update={"cfg_batch": on})


KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attn", "attention", "softmax")),
    ("gemm", ("gemm", "xmma", "nvjet", "cutlass", "sm90_", "cublas", "matmul", "wgmma")),
    ("fused (inductor)", ("triton",)),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(n in lowered for n in needles):
            return kind
    return "other"


def profile_steps(engine: Any, spec: Any) -> dict[str, Any]:
    """CUDA kernel time of one job of `spec` (a few steps, already compiled), by kind, and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if harness.cuda() else [])
    with profile(activities=activities) as prof:
        step_seconds(engine, spec)
        sync()
    attr = "device_time_total" if harness.cuda() else "cpu_time_total"
    events = [e for e in prof.key_averages() if (getattr(e, attr, 0) or 0) > 0]
    if harness.cuda():
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(e, attr) for e in events) or 1
    kinds: dict[str, float] = {}
    for e in events:
        kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + getattr(e, attr)
    top = sorted(events, key=lambda e: -getattr(e, attr))[:14]
    steps = spec.num_inference_steps
    return {
        "steps_profiled": steps,
        "kernel_s_per_step": round(total / 1e6 / steps, 4),
        "share_by_kind": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": e.key[:110], "kind": kernel_kind(e.key), "share": round(getattr(e, attr) / total, 4), "calls": e.count}
            for e in top
        ],
    }


def tiny_decoder_file(engine: Any, folder: Path, tiny: bool) -> Path:
    """A real-size TAEHV of random weights (published widths) for the engine's VAE, written as safetensors."""
    from worker import taehv

    vae = engine.pipe.vae
    if tiny:
        model = taehv.tiny_taehv_for(vae)
    else:
        model = taehv.Taehv(taehv.PUBLISHED["taew2_2" if int(vae.config.z_dim) == 48 else "taew2_1"]).eval()
    return taehv.save_taehv(model, folder / "taehv.safetensors")


def with_tiny_decoder(engine: Any, args: argparse.Namespace) -> None:
    """Loads a tiny decoder into a built engine as --preview-vae-path would (rank 0's `preview_decoder`)."""
    path = tiny_decoder_file(engine, args.out, args.tiny)
    engine.settings = engine.settings.model_copy(update={"preview_vae_path": str(path)})
    engine.preview_decoder = engine._preview_decoder()


# -- the parts ---------------------------------------------------------------------------------------


def head(args: argparse.Namespace) -> None:
    args.results.save("env", harness.environment("diffusers", "torchao", "flash-attn-4", "transformers"))
    args.results.save("matmul", harness.matmul_rate(args.tiny))
    args.results.save("fa4_sm90_tile", harness.fa4_tile_from_env() or "worker/fa4.py's SM90_TILES")


def options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"compile": not args.tiny, "attention_backend": "native" if args.tiny else "fa4"}
    return {**base, **extra}


@part("ti2v")
def part_ti2v(args: argparse.Namespace) -> None:
    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 704, 81)
    settings = harness.engine_settings(options(args, cfg_batch=True), tiny=args.tiny, command_line=args.engine)
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "ti2v-5b", tiny=args.tiny)
    with_tiny_decoder(engine, args)
    args.results.save(
        "ti2v_engine", {"options": settings.model_dump(exclude_defaults=True), "load_s": round(time.perf_counter() - t0, 2)}
    )

    def spec(steps: int, **over: Any) -> Any:
        return harness.spec_for("ti2v-5b", size, steps, **over)

    # 1. Both graphs at this size compiled (two forwards, one batch-2 forward), then per-step times of each
    record: dict[str, Any] = {}
    for on in (False, True):
        cfg_batched(engine, on)
        t0 = time.perf_counter()
        step_seconds(engine, spec(2))
        record[f"compile_job_s_{'batched' if on else 'two_forwards'}"] = round(time.perf_counter() - t0, 2)
    for on in (False, True, False, True):  # alternated: a drift of the card's clock shows
        cfg_batched(engine, on)
        record.setdefault("batched" if on else "two_forwards", []).extend(step_seconds(engine, spec(6 if not args.tiny else 3)))
    two, one = median(record["two_forwards"]), median(record["batched"])
    record.update(median_two_forwards_s=two, median_batched_s=one, batched_vs_two=round(one / two, 4) if one and two else None)
    args.results.save("ti2v_cfg_batch", record)
    batched = bool(one and two and one < two)

    # 2. Where a step's time goes (kernels by kind), each way
    for on in (False, True):
        cfg_batched(engine, on)
        args.results.save(f"ti2v_profile_{'batched' if on else 'two_forwards'}", profile_steps(engine, spec(2)))

    # 3. 50 steps end to end, the faster way; what the export would have added unstreamed
    cfg_batched(engine, batched)
    reset_peak()
    result, e2e = streamed_job(engine, spec(4 if args.tiny else 50, prompt=harness.PROMPT + ", wide shot"), args.out / "e2e")
    e2e.update(cfg_batch=batched, **memory())
    e2e["unstreamed_export_for_comparison"] = harness.export_all(result.frames, 24, args.out / "e2e_unstreamed")
    args.results.save("ti2v_e2e_lossless", e2e)
    del result

    # 4. Issue 27: a 4-step guidance-1 job, full decoder and tiny decoder (the draft)
    drafts: dict[str, Any] = {}
    for decoder in ("full", "tiny", "full", "tiny"):
        _, job = streamed_job(engine, spec(4, guidance_scale=1.0, decoder=decoder), args.out / f"four_{decoder}")
        drafts.setdefault(decoder, []).append(job)
    args.results.save("ti2v_four_steps", {k: v[-1] | {"first_run_s": v[0]["end_to_end_s"]} for k, v in drafts.items()})

    # 5. Issue 27: previews every 5 steps in a run, against none (the publish callback is a no-op here)
    previews: dict[str, Any] = {}
    for every in (0, 5, 0, 5):
        published: list[int] = []
        marks = step_seconds(engine, spec(10, preview_every=every), on_preview=lambda done, path, out=published: out.append(done))
        entry = previews.setdefault(f"every_{every}", {"step_times_s": [], "published": []})
        entry["step_times_s"] += marks
        entry["published"] = published
    for entry in previews.values():
        entry["mean_step_s"] = round(statistics.fmean(entry["step_times_s"]), 4)
    base, with_previews = previews["every_0"]["mean_step_s"], previews["every_5"]["mean_step_s"]
    previews["overhead_share"] = round(with_previews / base - 1, 4)
    args.results.save("ti2v_previews_in_run", previews)
    engine.close()
    del engine
    harness.free()

    # 6. Lossy: fa4 + fp8 end to end
    ti2v_lossy_e2e(args, spec, room_s=150, cfg_batch=batched)


def ti2v_lossy_e2e(args: argparse.Namespace, spec: Callable[..., Any], *, room_s: float, **extra: Any) -> None:
    """fa4 + fp8, 50 steps end to end (after a 2-step job compiles it), if `room_s` is left before the deadline."""
    if time.time() > args.deadline - (20 if args.tiny else room_s):
        args.results.save("ti2v_e2e_lossy", {"skipped": "deadline"})
        return
    lossy = harness.engine_settings(
        options(args, quantization="none" if args.tiny else "fp8", **extra), tiny=args.tiny, command_line=args.engine
    )
    engine = harness.make_engine(lossy, "ti2v-5b", tiny=args.tiny)
    streamed_job(engine, spec(2), args.out / "warm_lossy")  # compiles the blocks and (--vae-fused) the decode's norm
    reset_peak()
    _, e2e = streamed_job(engine, spec(4 if args.tiny else 50, prompt=harness.PROMPT + ", wide shot"), args.out / "e2e_lossy")
    args.results.save("ti2v_e2e_lossy", e2e | extra | {"quantization": lossy.quantization} | memory())
    engine.close()


@part("ti2v-e2e")
def part_ti2v_e2e(args: argparse.Namespace) -> None:
    """The shorter TI2V-5B run: one timestep against per-token timesteps (per step), 50 steps lossless end to end,
    the 4-step drafts, 50 steps lossy end to end."""
    from worker import uniform_timestep

    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 704, 81)

    def spec(steps: int, **over: Any) -> Any:
        return harness.spec_for("ti2v-5b", size, steps, **over)

    settings = harness.engine_settings(options(args), tiny=args.tiny, command_line=args.engine)
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "ti2v-5b", tiny=args.tiny)
    with_tiny_decoder(engine, args)
    record: dict[str, Any] = {"options": settings.model_dump(exclude_defaults=True), "load_s": round(time.perf_counter() - t0, 2)}
    transformer = engine.pipe.transformer
    for label in ("one_timestep", "per_token", "one_timestep", "per_token"):
        if label == "per_token":
            uniform_timestep.uninstall(transformer)
        elif uniform_timestep.hook_of(transformer) is None:
            uniform_timestep.install(transformer)
        step_seconds(engine, spec(2))  # compiles this path's graph the first time
        record.setdefault(label, []).extend(step_seconds(engine, spec(3 if args.tiny else 7)))
    if uniform_timestep.hook_of(transformer) is None:
        uniform_timestep.install(transformer)
    one, per = median(record["one_timestep"]), median(record["per_token"])
    record.update(median_one_timestep_s=one, median_per_token_s=per, ratio=round(one / per, 4) if one and per else None)
    args.results.save("ti2v_timesteps", record)

    reset_peak()
    _, e2e = streamed_job(engine, spec(4 if args.tiny else 50, prompt=harness.PROMPT + ", wide shot"), args.out / "e2e")
    args.results.save("ti2v_e2e_lossless", e2e | memory())
    drafts: dict[str, Any] = {}
    for decoder in ("full", "tiny", "full", "tiny"):
        _, job = streamed_job(engine, spec(4, guidance_scale=1.0, decoder=decoder), args.out / f"four_{decoder}")
        drafts[decoder] = job
    args.results.save("ti2v_four_steps", drafts)
    engine.close()
    del engine
    harness.free()
    ti2v_lossy_e2e(args, spec, room_s=130)


@part("ti2v-fused")
def part_ti2v_fused(args: argparse.Namespace) -> None:
    """TI2V-5B 50 steps lossless end to end with the fused kernels (the default on a GPU: worker/fused_ffn.py,
    worker/vae_fused.py) and without them, one engine each in this run; then 50 steps lossy (fa4 + fp8)."""
    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 704, 81)

    def spec(steps: int, **over: Any) -> Any:
        return harness.spec_for("ti2v-5b", size, steps, **over)

    for label, fused in (("fused", True), ("stock", False)):
        ti2v_warm_then_e2e(args, spec, label, fused_ffn=fused, vae_fused=fused)
    ti2v_lossy_e2e(args, spec, room_s=130, vae_fused=True)


def ti2v_warm_then_e2e(args: argparse.Namespace, spec: Callable[..., Any], label: str, **chosen: Any) -> None:
    """One engine with `chosen` options: a whole 2-step job (compiles the blocks and the decode's norm), then 50 steps
    end to end, saved as ti2v_e2e_<label>."""
    settings = harness.engine_settings(options(args, **chosen), tiny=args.tiny, command_line=args.engine)
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "ti2v-5b", tiny=args.tiny)
    load_s = round(time.perf_counter() - t0, 2)
    _, warm = streamed_job(engine, spec(2), args.out / f"warm_{label}")
    reset_peak()
    _, e2e = streamed_job(engine, spec(4 if args.tiny else 50, prompt=harness.PROMPT + ", wide shot"), args.out / label)
    extra = {"load_s": load_s, "warm_job_s": warm["generate_s"], "plan": str(engine.plan), **chosen}
    args.results.save(f"ti2v_e2e_{label}", e2e | extra | memory())
    engine.close()
    del engine
    harness.free()


@part("ti2v-fa3")
def part_ti2v_fa3(args: argparse.Namespace) -> None:
    """TI2V-5B 50 steps end to end under FlashAttention-3: lossless (fa3) and lossy (fa3-fp8 + fp8 linears), then the
    fa4 baseline; one engine each, with the fused kernels (the GPU default)."""
    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 704, 81)

    def spec(steps: int, **over: Any) -> Any:
        return harness.spec_for("ti2v-5b", size, steps, **over)

    runs = (("fa3", "fa3", "none"), ("fa3_fp8_lossy", "fa3-fp8", "fp8"), ("fa4", "fa4", "none"))
    for label, backend, quantization in runs:
        if time.time() > args.deadline - (20 if args.tiny else 100):
            args.results.save(f"ti2v_e2e_{label}", {"skipped": "deadline"})
            continue
        backend, quantization = ("native", "none") if args.tiny else (backend, quantization)
        ti2v_warm_then_e2e(args, spec, label, attention_backend=backend, quantization=quantization)


def lightning_lora_file(rank: int, folder: Path, tiny: bool) -> Any:
    """A random LoRA of Lightning's shape (rank `rank` on every block linear, for both experts) in the worker's cache
    folder, made before any engine: the block linears' shapes from the architecture (on the meta device)."""
    import torch
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    from benchmarks import gpu_models
    from benchmarks.gpu_lora import lora_file
    from worker.fused_lora import shapes_of

    if tiny:
        transformer = gpu_models.build(device=torch.device("cpu"), dtype=torch.float32, variant="t2v-a14b", tiny=True).transformer
    else:
        with torch.device("meta"):
            transformer = WanTransformer3DModel(**gpu_models.transformer_config("t2v-a14b"))
    lora, _ = lora_file(folder, "lightning-like", shapes_of(transformer), rank=rank, seed=1)
    return lora


@part("a14b-lightning")
def part_a14b_lightning(args: argparse.Namespace) -> None:
    import torch

    from shared.settings import LoraSettings
    from worker import postprocess
    from worker.cache import expert_steps
    from worker.interpolate import RIFE_4_22_LITE, IFNet, IFNetConfig, load_interpolator
    from worker.upscale import SRVGGNetCompact, load_upscaler

    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 720, 81)
    cache = Path(tempfile.mkdtemp(prefix="wanq-lora-", dir=args.out))
    rank = 8 if args.tiny else 64
    lora = lightning_lora_file(rank, cache, args.tiny)
    # --fused: the LoRA summed into both experts' weights at start, jobs name none; else each job names it (a slot)
    extra = {"fuse_lora": str(cache / f"{lora.sha256}.safetensors")} if args.fused else {}
    loras = None if args.fused else LoraSettings(max_resident=1, max_rank=rank, cache_dir=str(cache))
    settings = harness.engine_settings(
        options(args, text_encoder_cpu_offload=True, **extra), tiny=args.tiny, command_line=args.engine
    )
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "t2v-a14b", tiny=args.tiny, loras=loras)
    record: dict[str, Any] = {"options": settings.model_dump(exclude_defaults=True), "load_s": round(time.perf_counter() - t0, 2)}
    record["lora"] = {"rank": rank, "expert": lora.expert, "mib": round(lora.size_bytes / 2**20, 1), "fused": args.fused}
    # Lightning's schedule: 4 steps, guidance 1 (one forward per step), shift 5
    spec = harness.spec_for(
        "t2v-a14b",
        size,
        4,
        negative_prompt="",
        guidance_scale=1.0,
        guidance_scale_2=1.0,
        flow_shift=5.0,
        loras=() if args.fused else (lora,),
    )
    record["steps_per_expert"] = expert_steps(engine.pipe, engine.pipe.scheduler, 4)
    t0 = time.perf_counter()
    streamed_job(engine, spec.model_copy(update={"prompt": harness.PROMPT + ", first"}), args.out / "lightning_first")
    record["first_job_s_with_compile"] = round(time.perf_counter() - t0, 2)
    args.results.save("a14b_lightning", record)
    runs = []
    for n in range(2):
        reset_peak()
        result, job = streamed_job(engine, spec.model_copy(update={"seed": 11 + n}), args.out / f"lightning_{n}")
        runs.append(job | memory())
    record["jobs"] = runs
    record["end_to_end_s"] = [r["end_to_end_s"] for r in runs]
    args.results.save("a14b_lightning", record)

    # The decode's own peak (the experts resident): what a 48 or 24 GB card must hold beside them
    latents = result.latents
    torch.cuda.empty_cache() if harness.cuda() else None
    before = torch.cuda.memory_allocated() if harness.cuda() else 0
    reset_peak()
    t0 = time.perf_counter()
    frames = engine.decode(engine.pipe, latents)
    sync()
    record["decode_alone"] = {
        "s": round(time.perf_counter() - t0, 3),
        "allocated_before_gib": gib(before),
        "own_peak_gib": gib(torch.cuda.max_memory_allocated() - before) if harness.cuda() else None,
        **memory(),
    }
    args.results.save("a14b_lightning", record)
    engine.close()
    del engine
    harness.free()
    if args.fused:
        return

    # Issue 28: interpolation x2 and upscale x2 of this job's frames, and the MP4 of the result
    device = "cuda" if harness.cuda() else "cpu"
    work = Path(tempfile.mkdtemp(dir=args.out))
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(
        {f"module.{k}": v for k, v in IFNet(IFNetConfig(RIFE_4_22_LITE)).state_dict().items()}, str(work / "rife.safetensors")
    )
    save_file(SRVGGNetCompact(2, features=64, convs=16).state_dict(), str(work / "compact.safetensors"))
    post = postprocess.PostProcessors(
        load_interpolator(work / "rife.safetensors", device=device),
        load_upscaler(work / "compact.safetensors", scale=2, device=device),
    )
    share: dict[str, Any] = {"frames_in": list(frames.shape)}
    for label, over in (
        ("interpolate_x2", {"interpolate": 2}),
        ("upscale_x2", {"upscale": 2}),
        ("both", {"interpolate": 2, "upscale": 2}),
    ):
        timings: dict[str, float] = {}
        job = spec.model_copy(update=over)
        post.apply(frames, job, timings)  # warm
        reset_peak()
        t0 = time.perf_counter()
        out = post.apply(frames, job, timings)
        sync()
        entry: dict[str, Any] = {
            "s": round(time.perf_counter() - t0, 3),
            "stages_s": {k: round(v, 3) for k, v in timings.items()},
        }
        entry["frames_out"] = list(out.shape)
        entry.update(memory())
        if label == "both":
            from worker import export

            t0 = time.perf_counter()
            export.write_mp4(out, job.output_fps, work / "big.mp4")
            entry["mp4_s"] = round(time.perf_counter() - t0, 3)
        share[label] = entry
    args.results.save("a14b_postprocess", share)


@part("a14b-run")
def part_a14b_run(args: argparse.Namespace) -> None:
    from worker.cache import expert_steps

    head(args)
    size = (64, 64, 9) if args.tiny else (1280, 720, 81)
    steps = args.steps or (4 if args.tiny else 20)
    settings = harness.engine_settings(options(args, text_encoder_cpu_offload=True), tiny=args.tiny, command_line=args.engine)
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "t2v-a14b", tiny=args.tiny)
    record: dict[str, Any] = {"options": settings.model_dump(exclude_defaults=True), "load_s": round(time.perf_counter() - t0, 2)}
    spec = harness.spec_for("t2v-a14b", size, steps)
    split = expert_steps(engine.pipe, engine.pipe.scheduler, steps)
    record["steps_per_expert"] = split
    args.results.save("a14b_run", record)
    reset_peak()
    _, job = streamed_job(engine, spec, args.out / "run")
    times = job["step_times_s"]
    high, low = times[1 : split[0]], times[split[0] + 1 :]
    record.update(job, **memory())
    record["note"] = "the first step of each expert carries its compile (a worker's --warmup pays it before any job)"
    record["median_step_s_by_expert"] = [median(high), median(low)]
    steady = (median(high) or 0) * split[0] + (median(low) or 0) * (split[1] if len(split) > 1 else 0)
    record["denoise_without_compile_s"] = round(steady, 2)
    record["estimate_40_steps_s"] = round(
        steady * 40 / steps + job["stages_s"].get("decoding", 0) + job["mp4_tail_after_decode_s"] + job["stills_s"], 1
    )
    args.results.save("a14b_run", record)
    engine.close()


def after_fusions(path: Path) -> list[str]:
    """What benchmarks/gpu_fusions.py measured, for this run: its `attn` part's tile shared by both models (in
    $WANQ_BENCH_FA4_TILE), and `--engine` items turning off a fusion whose part failed or never ran."""
    import json

    fusions = json.loads(path.read_text()) if path.exists() else {}
    best = fusions.get("attn", {}).get("best_for_both")
    if best:
        os.environ[harness.FA4_TILE_ENV] = best
    off = []
    if "fused_ffn" not in fusions.get("step", {}):
        off.append("fused_ffn=false")
    if "fused_s" not in fusions.get("decode", {}).get("ti2v-5b", {}):
        off.append("vae_fused=false")
    print(f"[after-fusions] tile {best or 'FA4 default'}; off: {off or 'none'}", flush=True)
    return off


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--out", type=Path, default=Path("out/gpu_jobs"))
    parser.add_argument("--mirror", type=Path, action="append", default=[], help="also keep results.json here ($OUT)")
    parser.add_argument("--budget-s", type=float, default=560.0, help="nothing optional starts past this")
    parser.add_argument("--steps", type=int, default=0, help="a14b-run: the run's steps (default 20)")
    parser.add_argument("--fused", action="store_true", help="a14b-lightning: the LoRA fused at start (--fuse-lora)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script's logic")
    parser.add_argument("--engine", action="append", default=[], help="extra EngineSettings key=value for every engine")
    parser.add_argument(
        "--after-fusions",
        type=Path,
        default=None,
        help="gpu_fusions.py's results.json: its fastest FA4 tile for every engine, and a fusion it could not run off",
    )
    args = parser.parse_args(argv)
    if args.after_fusions:
        args.engine = after_fusions(args.after_fusions) + args.engine
    args.out.mkdir(parents=True, exist_ok=True)
    args.results = harness.Results(args.out, args.mirror)
    args.deadline = time.time() + args.budget_s
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    args.results.save("part", {"part": args.part, "tiny": args.tiny, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    PARTS[args.part](args)
    print(f"[done] {args.part} in {time.time() - started:.0f} s; results: {args.results.path}", flush=True)


if __name__ == "__main__":
    main()
