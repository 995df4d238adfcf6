#!/usr/bin/env python
"""GPU benchmark of per-job LoRA (issue 18), in one invocation on one H200 (a script, not a test).

    python benchmarks/gpu_lora.py --out /tmp/lora --mirror $OUT --budget-s 230     # one H200, ~3.5 min
    python benchmarks/gpu_lora.py --out /tmp/lora-tiny --tiny                       # the same logic on the CPU

Real-size architectures with random bf16 weights (benchmarks/gpu_models.py), rank-64 LoRAs of the real module
shapes (random, written to the local disk as a worker's LoRA file cache holds them). Parts, in order; each one
writes its results to OUT/results.json (and --mirror) as soon as it ends, and a part that would not fit in what is
left of `--budget-s` is skipped with the reason:

  env    card, driver, versions.
  ti2v   TI2V-5B through the engine (`WanEngine`, `--compile`, LoRA slots 2 x rank 64, 1280x704x81, guidance 1):
         seconds per step without LoRA, with one and with two active adapters (unfused); the cost of switching
         between resident adapters and of loading a new one from the disk cache (page cache warm, and cold after
         posix_fadvise(DONTNEED)); the graphs compiled by those switches (dynamo's counter: expected 0); then a
         4-step guidance-1 job end to end with a LoRA, with its stages (encode, LoRA load, denoise, decode, MP4,
         thumbnail and spritesheet).
  a14b   One T2V-A14B expert (40 blocks, 5120 wide; the transformer alone): load of a rank-64 LoRA from the disk cache
         into a slot (585 MiB, original Wan format with alpha tensors, as Lightning files are; warm and cold), switch
         between resident adapters; one forward at 832x480x17 eager without slots, eager with slots disabled, and
         compiled with no / one / two active adapters.

Targets (issue 18): switch between resident adapters <= 0.2 s; load from the disk cache <= 3 s for a rank-64
A14B LoRA; a step with one active adapter <= 1.10x the step without.

`--tiny` runs everything on the CPU with the tiny models and compiles with `aot_eager` instead of inductor (the
script's logic, not the kernels: inductor on CPU is covered by tests/worker/test_lora_compile.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import cuda, gib, ms, sync, timed  # noqa: E402

RANK = 64
ESTIMATE_S = {"env": 5, "ti2v": 100, "a14b": 80}
"""Rough seconds per part on one H200 (random init, compile, LoRA files written, timings): what the budget checks."""


# -- helpers ---------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget = harness.Budget(args.budget_s)
        self.results = harness.Results(self.out, [Path(m) for m in args.mirror])
        self.results.write({})  # each invocation's results alone, never merged with an earlier run's

    def left(self) -> float:
        return self.budget.left()

    def save(self, key: str, value: Any) -> None:
        self.results.save(key, value, show=2000)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def lora_file(
    folder: Path,
    name: str,
    shapes: dict[str, tuple[int, int]],
    *,
    rank: int,
    seed: int,
    original: bool = False,
    device: str = "cpu",
) -> tuple[Any, Path]:
    """A random LoRA of every slot layer, written into the cache folder under its sha256 (as the worker's
    file cache holds them). `original`: Wan / ComfyUI keys with an alpha per module (what Lightning files are)."""
    import torch
    from safetensors.torch import save_file

    from shared.schemas import JobLora

    generator = torch.Generator(device=device).manual_seed(seed)
    names = {
        "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
        "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
        "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
    }  # fmt: skip
    tensors: dict[str, torch.Tensor] = {}
    for module, (in_features, out_features) in shapes.items():
        a = (torch.randn(rank, in_features, generator=generator, device=device) * 0.01).to(torch.bfloat16).cpu()
        b = (torch.randn(out_features, rank, generator=generator, device=device) * 0.01).to(torch.bfloat16).cpu()
        if original:
            block, kind = module.split(".", 2)[1:]
            stem = f"diffusion_model.blocks.{block}.{names[kind]}"
            tensors |= {f"{stem}.lora_down.weight": a, f"{stem}.lora_up.weight": b, f"{stem}.alpha": torch.tensor(float(rank))}
        else:
            tensors |= {f"transformer.{module}.lora_A.weight": a, f"transformer.{module}.lora_B.weight": b}
    path = folder / f"{name}.tmp"
    save_file(tensors, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    final = folder / f"{digest}.safetensors"
    path.rename(final)
    lora = JobLora(name=name, sha256=digest, storage_key=name, size_bytes=final.stat().st_size, strength=1.0, expert="both")
    return lora, final


def drop_page_cache(path: Path) -> bool:
    """Asks the kernel to forget the file's cached pages (no root needed for clean pages): a cold read next."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def tiny_compile_backend() -> None:
    """--tiny: compile with aot_eager (seconds on the CPU) instead of inductor (minutes)."""
    from diffusers.models.modeling_utils import ModelMixin

    original = ModelMixin.compile_repeated_blocks

    def compile_repeated_blocks(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **{"backend": "aot_eager", **kwargs})

    ModelMixin.compile_repeated_blocks = compile_repeated_blocks  # type: ignore[method-assign]


# -- parts -----------------------------------------------------------------------------------------


def part_env(run: Run) -> None:
    info = harness.environment("diffusers", "peft")
    info["gpu"] = info["gpus"][0]
    run.save("env", info)


def part_ti2v(run: Run) -> None:
    import torch

    from shared.errors import JobCanceled
    from shared.settings import EngineSettings, LoraSettings

    tiny = run.args.tiny
    cache = Path(tempfile.mkdtemp(prefix="wanq-lora-cache-", dir=run.out))
    width, height, frames = (64, 64, 9) if tiny else (1280, 704, 81)
    settings = EngineSettings(device="cpu" if tiny else "cuda", compile=True)
    loras = LoraSettings(max_resident=2, max_rank=8 if tiny else RANK, cache_dir=str(cache))
    result: dict[str, Any] = {"size": f"{width}x{height}x{frames}", "slots": 2, "rank": loras.max_rank, "compile": True}

    # 1. The engine (random weights, built on the GPU), with its LoRA slots, compiled
    t0 = time.perf_counter()
    engine = harness.make_engine(settings, "ti2v-5b", tiny=tiny, loras=loras)
    result["engine_build_s"] = round(time.perf_counter() - t0, 2)
    assert engine.adapters is not None
    result["slot_bytes_gib"] = gib(engine.adapters.nbytes())
    run.save("ti2v", result)
    device = "cuda" if cuda() else "cpu"
    shapes, rank = engine.adapters.shapes, loras.max_rank
    a, _ = lora_file(cache, "lightning-like", shapes, rank=rank, seed=1, device=device)
    b, _ = lora_file(cache, "style", shapes, rank=rank, seed=2, device=device)
    c, c_path = lora_file(cache, "new", shapes, rank=rank, seed=3, original=True, device=device)
    result["lora_file_mib"] = round(a.size_bytes / 2**20, 1)

    spec = harness.spec_for("ti2v-5b", (width, height, frames), 8, negative_prompt="", guidance_scale=1.0)

    def step_seconds(*job_loras: Any, steps: int = 4) -> list[float]:
        """Per-step seconds of steps 2..`steps` (the job is stopped there: no decode)."""
        marks: list[float] = []

        def on_step(done: int, total: int) -> None:
            sync()
            marks.append(time.perf_counter())
            if done >= steps:
                raise JobCanceled("measured")

        with contextlib.suppress(JobCanceled):
            engine.generate(spec.model_copy(update={"loras": job_loras}), on_step=on_step)
        return [round(t1 - t0, 4) for t0, t1 in itertools.pairwise(marks)]

    # 2. The first job of each graph at this size pays its compile (no LoRA: LoRA layers off; with LoRA: on)
    t0 = time.perf_counter()
    step_seconds(steps=2)
    result["first_job_no_lora_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    step_seconds(a, steps=2)
    result["first_job_lora_s"] = round(time.perf_counter() - t0, 2)
    run.save("ti2v", result)

    # 3. Seconds per step (guidance 1: one forward per step), no / one / two active adapters, unfused
    before = graphs()
    none, one, two = step_seconds(), step_seconds(a), step_seconds(a, b.model_copy(update={"strength": 0.7}))
    result["step_s"] = {"no_lora": none, "one_adapter": one, "two_adapters": two}
    base = statistics.median(none)
    result["step_ratio"] = {
        "one_adapter": round(statistics.median(one) / base, 4),
        "two_adapters": round(statistics.median(two) / base, 4),
    }
    run.save("ti2v", result)

    # 4. Switches between resident adapters, and loads from the disk cache (warm, then cold)
    slots, path_of = engine.adapters, engine.lora_cache.path  # type: ignore[union-attr]

    def apply(*job_loras: Any) -> float:
        return timed(lambda: slots.apply(slots.plan(job_loras), path_of))

    apply(a, b)
    switches = {
        "a_only": apply(a),
        "b_only": apply(b),
        "a_and_b_new_strengths": apply(a.model_copy(update={"strength": 0.3}), b.model_copy(update={"strength": 1.2})),
        "none": apply(),
        "a_again": apply(a),
    }
    result["switch_resident_ms"] = {k: ms(v) for k, v in switches.items()}
    result["load_from_disk_warm_s"] = round(apply(c), 3)  # evicts the least recently used slot (b)
    apply(a, b)  # c out again
    result["page_cache_dropped"] = drop_page_cache(c_path)
    result["load_from_disk_cold_s"] = round(apply(c), 3)
    result["graphs_compiled_by_steps_and_switches"] = graphs() - before
    run.save("ti2v", result)

    # 5. End to end: a 4-step guidance-1 job with the LoRA (resident, as a worker serving it keeps it), then the export
    apply(a)
    job = spec.model_copy(update={"num_inference_steps": 4, "loras": (a,)})
    generation, generate_s = harness.timed_job(engine, job)
    exported = harness.export_all(generation.frames, job.fps, Path(tempfile.mkdtemp(dir=run.out)))
    stages = {k: round(v, 3) for k, v in generation.timings.items()}
    stages |= {"mp4": exported["mp4_s"], "thumbnail_and_spritesheet": exported["thumbnail_spritesheet_s"]}
    result["end_to_end"] = {
        "job": "TI2V-5B 1280x704x81, 4 steps, guidance 1, one rank-64 LoRA resident, compiled" if not tiny else "tiny",
        "generate_s": round(generate_s, 3),
        "total_s": round(generate_s + stages["mp4"] + stages["thumbnail_and_spritesheet"], 3),
        "stages_s": stages,
        "step_times_s": [round(t, 4) for t in generation.step_times],
        "upload": "not timed (no S3 on the GPU host)",
    }
    if cuda():
        result["end_to_end"]["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    run.save("ti2v", result)
    engine.close()


def part_a14b(run: Run) -> None:
    import torch
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    from benchmarks import gpu_models
    from worker.lora_slots import LoraSlots

    tiny = run.args.tiny
    device, dtype = harness.device_and_dtype()
    result: dict[str, Any] = {"what": "one T2V-A14B expert (the transformer alone), slots 2 x rank 64"}

    # 1. One expert of random weights, and the inputs of an 832x480x17 step (5 x 30 x 52 = 7,800 video tokens)
    t0 = time.perf_counter()
    if tiny:
        model = gpu_models.build(device=device, dtype=dtype, variant="t2v-a14b", tiny=True).transformer
        latent, text_dim = (1, 16, 2, 8, 8), 32
    else:
        config = gpu_models.transformer_config("t2v-a14b")
        model = gpu_models.make_component(lambda: WanTransformer3DModel(**config), device, dtype, seed=2)
        latent, text_dim = (1, 16, 5, 60, 104), 4096
    result["build_s"] = round(time.perf_counter() - t0, 2)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(latent, generator=generator, device=device, dtype=dtype),
        timestep=torch.tensor([900], device=device),
        encoder_hidden_states=torch.randn((1, 512, text_dim), generator=generator, device=device, dtype=dtype),
        return_dict=False,
    )
    result["forward_size"] = "tiny" if tiny else "832x480x17 (7,800 tokens)"

    def forward_s(reps: int = 3) -> float:
        with torch.no_grad():
            timed(lambda: model(**inputs))  # warm (and compile, the first time)
            return round(statistics.median(timed(lambda: model(**inputs)) for _ in range(reps)), 4)

    forward: dict[str, float] = {"eager_without_slots": forward_s()}
    run.save("a14b", result)

    # 2. The slots, and LoRA files of the real shapes in a cache folder
    t0 = time.perf_counter()
    holder = type("Expert", (), {"transformer": model})()
    slots = LoraSlots(holder, slots=2, rank=8 if tiny else RANK, device=device)
    result["slots_create_s"] = round(time.perf_counter() - t0, 2)
    result["slot_bytes_gib"] = gib(slots.nbytes())
    forward["eager_slots_disabled"] = forward_s()
    cache = Path(tempfile.mkdtemp(prefix="wanq-lora-cache-", dir=run.out))
    files = {}
    t0 = time.perf_counter()
    for name, seed in (("high-1", 11), ("high-2", 12), ("high-3", 13)):
        files[name] = lora_file(cache, name, slots.shapes, rank=slots.rank, seed=seed, original=True, device=str(device))
    result["write_3_files_s"] = round(time.perf_counter() - t0, 2)
    result["lora_file_mib"] = round(files["high-1"][0].size_bytes / 2**20, 1)

    def path_of(sha: str) -> Path:
        return cache / f"{sha}.safetensors"

    def apply(*names: str) -> float:
        job = [files[n][0] for n in names]
        return timed(lambda: slots.apply(slots.plan(job), path_of))

    # 3. Loads from the disk cache (the file's pages warm right after writing it; then dropped: cold) and switches
    loads_warm = [apply("high-1"), apply("high-2")]
    loads_warm.append(apply("high-3"))  # evicts high-1
    drop_page_cache(files["high-1"][1])
    load_cold = apply("high-1")  # evicts high-2
    result["load_from_disk_s"] = {"page_cache_warm": [round(x, 3) for x in loads_warm], "cold": round(load_cold, 3)}
    switch = [apply("high-1"), apply("high-3"), apply("high-1", "high-3"), apply(), apply("high-3")]
    result["switch_resident_ms"] = [ms(x) for x in switch]
    run.save("a14b", result)

    # 4. Compiled (regional, fullgraph, as the engine does): a forward with no / one / two active adapters
    if run.left() < 40 and not tiny:
        result["compiled"] = "skipped: not enough of the time budget left"
        run.save("a14b", result)
        return
    torch._dynamo.config.automatic_dynamic_shapes = False  # as worker/accel.py sets it
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    model.compile_repeated_blocks(fullgraph=True)
    t0 = time.perf_counter()
    apply()
    forward["compiled_no_lora"] = forward_s()
    apply("high-1")
    forward["compiled_one_adapter"] = forward_s()
    result["compile_two_graphs_s"] = round(time.perf_counter() - t0, 1)
    before = graphs()
    apply("high-1", "high-3")
    forward["compiled_two_adapters"] = forward_s()
    apply("high-2")  # a load into a compiled model
    apply()
    forward["compiled_no_lora_again"] = forward_s()
    result["graphs_compiled_after_warm"] = graphs() - before
    result["forward_s"] = forward
    result["ratio_one_adapter"] = round(forward["compiled_one_adapter"] / forward["compiled_no_lora"], 4)
    result["ratio_two_adapters"] = round(forward["compiled_two_adapters"] / forward["compiled_no_lora"], 4)
    if cuda():
        result["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    run.save("a14b", result)


PARTS: dict[str, Callable[[Run], None]] = {"env": part_env, "ti2v": part_ti2v, "a14b": part_a14b}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/gpu-lora"))
    parser.add_argument("--mirror", action="append", default=[], help="also write results.json here (the device tool's $OUT)")
    parser.add_argument("--budget-s", type=float, default=230.0, help="stop starting parts past this many seconds")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {list(PARTS)}")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script's logic")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.tiny:
        tiny_compile_backend()
    run = Run(args)
    for name in args.parts.split(","):
        estimate = ESTIMATE_S[name] if not args.tiny else 0
        if run.left() < estimate:
            run.save(name, {"skipped": f"{run.left():.0f} s of the budget left, the part needs about {estimate} s"})
            continue
        t0 = time.monotonic()
        try:
            PARTS[name](run)
        except Exception as exc:
            run.save(f"{name}_error", {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        run.save(f"{name}_wall_s", round(time.monotonic() - t0, 1))
        harness.free(dynamo=False)
    run.save("total_wall_s", round(run.budget.spent(), 1))


if __name__ == "__main__":
    main()
