"""What every benchmark shares, defined once: the results file, the time budget, child processes, GPU helpers,
the job spec and the engine factory. The scripts (gpu_engine.py, gpu_pipeline.py, gpu_lora.py, scaling.py,
service_load.py) hold only what they measure.

torch, diffusers and the project's modules are imported inside the functions that need them, so this module
imports on a machine without them (scaling.py and service_load.py run on the CPU stack).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FACTORY = "benchmarks.gpu_models:build"
"""The engine factory of real-size architectures with random weights (benchmarks/gpu_models.py)."""
PROMPT = "a red fox runs through fresh snow in a pine forest at dawn, cinematic, detailed fur"
NEGATIVE = "blurry, low quality, static, overexposed, worst quality"


# -- the results file -------------------------------------------------------------------------------


class Results:
    """`<out>/results.json`, rewritten whole (atomically) after every result and copied to each `mirror` folder
    (the device tool's $OUT), so a crash or a timeout keeps what was measured before it."""

    def __init__(self, out: Path, mirror: list[Path] | None = None) -> None:
        self.out = out
        self.path = out / "results.json"
        self.mirror = list(mirror or [])

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def write(self, results: dict[str, Any]) -> None:
        text = json.dumps(results, indent=1, default=str)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        for folder in self.mirror:
            with contextlib.suppress(OSError):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "results.json").write_text(text)

    def save(self, key: str, value: Any, *, status: str | None = None, show: int = 1500) -> None:
        """`results[key] = value`; with `status`, under `variants` and `status` instead (gpu_engine.py's layout)."""
        results = self.load()
        if status is None:
            results[key] = value
        else:
            results.setdefault("variants", {})[key] = value
            results.setdefault("status", {})[key] = status
        self.write(results)
        label = key if status is None else f"{key} ({status})"
        print(f"[result] {label}: {json.dumps(value, default=str)[:show]}", flush=True)


def environment(*packages: str) -> dict[str, Any]:
    """The card, the driver and the versions, with the date and the command line: the head of every result."""
    import torch

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda() else ["cpu"],
    }
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if cuda():
        info["capability"] = list(torch.cuda.get_device_capability())
        info["gpu_memory_gib"] = gib(torch.cuda.get_device_properties(0).total_memory)
        info["cudnn"] = torch.backends.cudnn.version()
        for key, command in (
            ("nvidia_smi", ["--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"]),
            ("topology", ["topo", "-m"]),
        ):
            with contextlib.suppress(Exception):
                info[key] = subprocess.run(["nvidia-smi", *command], capture_output=True, text=True, timeout=20).stdout.strip()
    return info


def stack_head() -> dict[str, str]:
    """The head of a CPU stack benchmark's results (service_load.py): date, machine and command line."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def host_line() -> str:
    """The CPU machine in one line, with its load at the start (scaling.py's RESULTS.md entries)."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), ""
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}), load average at start {load}, Python {platform.python_version()}"
    )


# -- the time budget and child processes ------------------------------------------------------------


class Budget:
    """Seconds from now; what is left decides whether the next part starts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.time()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.time()

    def spent(self) -> float:
        return time.time() - self.started


def child_command(script: str, *argv: str) -> list[str]:
    """This Python running a benchmark script again (a part or a variant in a fresh process)."""
    return [sys.executable, str(Path(script).resolve()), *argv]


def kill_group(child: subprocess.Popen[Any]) -> None:
    """The child and everything it started (rank processes, compile workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def run_child(command: list[str], timeout: float) -> int | str:
    """One child process in its own session, killed with its whole group past `timeout`: its exit status or
    "timeout"."""
    child = subprocess.Popen(command, start_new_session=True)
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(child)
        return "timeout"


def _current(out: Path) -> dict[str, Any] | None:
    path = out / "current.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_queue(results: Results, names: list[str], caps: dict[str, float], command: list[str], budget: Budget) -> None:
    """The parent: `command` (a child running `child_queue`) takes the pending variants in order; a child that
    dies, or runs past a variant's cap or the budget, is killed with its group, the variant it was on recorded
    as failed, and a new child takes the rest. Past the budget nothing new starts: what is left is "skipped"."""
    out, deadline, pending = results.out, budget.deadline, list(names)
    while pending and time.time() < deadline - 15:
        before = dict(results.load().get("status", {}))
        (out / "queue.json").write_text(json.dumps(pending))
        (out / "current.json").unlink(missing_ok=True)
        child = subprocess.Popen([*command, "--deadline", str(deadline)], start_new_session=True)
        timed_out: str | None = None
        while child.poll() is None:
            time.sleep(1)
            current, now = _current(out), time.time()
            if now > deadline:
                timed_out = "the budget ran out while it ran"
            elif current and now - current["started"] > caps[current["name"]]:
                timed_out = f"it ran past its cap of {caps[current['name']]:.0f} s"
            if timed_out:
                kill_group(child)
                break
        status, current = results.load().get("status", {}), _current(out)
        if current is not None and status.get(current["name"]) in (None, "running"):
            why = timed_out or f"the child process died (exit status {child.returncode})"
            partial = results.load().get("variants", {}).get(current["name"], {})
            results.save(current["name"], {**partial, "error": f"stopped: {why}"}, status="error", show=600)
        status = results.load().get("status", {})
        if current is None and status == before:  # it died before starting anything: never loop on that
            error = {"error": f"the child process exited {child.returncode} before it started"}
            results.save(pending[0], error, status="error", show=600)
            status = results.load().get("status", {})
        pending = [n for n in pending if status.get(n) in (None, "running")]
    for name in pending:
        results.save(name, {"skipped": "not started: the budget ran out"}, status="skipped", show=600)
    for stale in ("queue.json", "current.json"):
        (out / stale).unlink(missing_ok=True)


def child_queue(results: Results, deadline: float, run: Callable[[str], dict[str, Any]]) -> None:
    """The child: runs the queue `run_queue` left, in order; a variant that raises is recorded with its error and
    the next one starts; `current.json` tells the parent which one runs and since when. Memory is freed after
    each variant."""
    out = results.out
    for name in json.loads((out / "queue.json").read_text()):
        left = deadline - time.time()
        if left < 15:
            results.save(name, {"skipped": "deadline reached before it started"}, status="skipped", show=600)
            continue
        (out / "current.json").write_text(json.dumps({"name": name, "started": time.time()}))
        print(f"[variant] {name}, {left:.0f} s left", flush=True)
        started = time.perf_counter()
        try:
            value = run(name)
            value["wall_s"] = round(time.perf_counter() - started, 2)
            results.save(name, value, status="done", show=600)
        except Exception as exc:
            error = {
                "error": f"{type(exc).__name__}: {str(exc)[:800]}",
                "traceback": traceback.format_exc()[-2500:],
                "wall_s": round(time.perf_counter() - started, 2),
            }
            results.save(name, error, status="error", show=600)
        if "torch" in sys.modules:
            with contextlib.suppress(Exception):
                free()  # the variant's engine and tensors are unreferenced by now (its frames and traceback gone)
        (out / "current.json").unlink(missing_ok=True)


# -- GPU helpers ------------------------------------------------------------------------------------


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if cuda():
        torch.cuda.synchronize()


def device_and_dtype() -> tuple[Any, Any]:
    """The GPU in bf16 where there is one, else the CPU in fp32 (--tiny)."""
    import torch

    return (torch.device("cuda"), torch.bfloat16) if cuda() else (torch.device("cpu"), torch.float32)


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of `fn()` between two device syncs."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def event_seconds(fn: Callable[[], Any], reps: int, inner: int = 1) -> float:
    """Median seconds of one `fn()`, by CUDA events around `inner` calls (the host clock on a CPU)."""
    import torch

    times = []
    for _ in range(reps):
        if cuda():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / inner)
        else:
            times.append(timed(fn))
    return statistics.median(times)


def reset_peak() -> None:
    import torch

    if cuda():
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict[str, float]:
    """Peak allocated and reserved since the last `reset_peak`, and allocated now (empty on a CPU)."""
    import torch

    if not cuda():
        return {}
    return {
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
        "allocated_now_gib": gib(torch.cuda.memory_allocated()),
    }


def free(*, dynamo: bool = True) -> None:
    """Memory back between variants (and compiled graphs forgotten, with `dynamo`)."""
    import torch

    gc.collect()
    if dynamo:
        torch._dynamo.reset()
    if cuda():
        torch.cuda.empty_cache()


H100_BYTES = 85_029_158_912
"""torch.cuda.get_device_properties(0).total_memory of an H100 80GB HBM3 (79.19 GiB)."""


def limit_bytes(budget_gb: int) -> int:
    return int(H100_BYTES * budget_gb / 80)


@contextlib.contextmanager
def held_to(budget_gb: int | None, *, now: bool = True) -> Iterator[None]:
    """The process held to `budget_gb / 80` of an H100 80GB's memory (79.19 GiB), on any card.
    `now=False`: the factory sets the limit once it has built and parked the weights; this only lifts it after."""
    import torch

    if budget_gb is None or not cuda():
        yield
        return
    if now:
        torch.cuda.set_per_process_memory_fraction(limit_bytes(budget_gb) / torch.cuda.get_device_properties(0).total_memory)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def matmul_rate(tiny: bool = False) -> dict[str, Any]:
    """The card's bf16 matmul rate: 8192^3 on random data, median of CUDA-event timings (512^3 fp32 on a CPU)."""
    import torch

    small = tiny or not cuda()
    n = 512 if small else 8192
    dtype = torch.float32 if small else torch.bfloat16
    a, b = (torch.randn(n, n, device="cuda" if cuda() else "cpu", dtype=dtype) for _ in range(2))
    for _ in range(5):
        a @ b
    sync()
    seconds = event_seconds(lambda: a @ b, reps=20, inner=10)
    return {"n": n, "dtype": str(dtype), "s": round(seconds, 6), "tflops": round(2 * n**3 / seconds / 1e12, 1)}


def flop_view(variant: str, spec: Any, seconds_per_forward: float | None, rate: float | None, tiny: bool) -> dict[str, Any]:
    """Seconds per transformer forward against the FLOP floor at the card's measured matmul rate (TFLOP/s)."""
    from benchmarks import gpu_models

    if not seconds_per_forward:
        return {}
    view: dict[str, Any] = {"s_per_forward": round(seconds_per_forward, 4)}
    if tiny:
        return view
    tokens = gpu_models.video_tokens(variant, spec.width, spec.height, spec.num_frames)
    flops = gpu_models.forward_flops(variant, tokens)
    view.update(
        tokens=tokens, tflop_per_forward=round(flops / 1e12, 1), achieved_tflops=round(flops / seconds_per_forward / 1e12, 1)
    )
    if rate:
        view["floor_s"] = round(flops / (rate * 1e12), 4)
        view["share_of_matmul_rate"] = round(flops / seconds_per_forward / (rate * 1e12), 3)
    return view


def rel_err(mine: Any, ref: Any) -> float:
    """Relative L2 error of a tensor against a reference (both moved to the CPU in fp32)."""
    mine, ref = mine.float().cpu(), ref.float().cpu()
    return float((mine - ref).norm() / ref.norm())


# -- the job, the engine and the plain pipeline -----------------------------------------------------


def spec_for(variant: str, size: tuple[int, int, int], steps: int, **overrides: Any) -> Any:
    """The benchmark's job: the model's own guidance, shift and fps, seed 7; `overrides` on top."""
    from shared.schemas import GenerationSpec

    width, height, frames = size
    a14b = variant != "ti2v-5b"
    fields: dict[str, Any] = dict(
        model=f"wan2.2-{variant}",
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=width,
        height=height,
        num_frames=frames,
        fps=16 if a14b else 24,
        num_inference_steps=steps,
        guidance_scale=4.0 if a14b else 5.0,
        guidance_scale_2=3.0 if a14b else None,
        flow_shift=12.0 if a14b else 5.0,
        seed=7,
    )
    fields.update(overrides)
    return GenerationSpec.model_validate(fields)


def engine_settings(options: dict[str, Any], *, tiny: bool, command_line: list[str] | None = None) -> Any:
    """EngineSettings from a variant's options and the command line's `--engine key=value` items (which win).
    --tiny: on the CPU, uncompiled (inductor on a CPU takes minutes; the option path is the same)."""
    from shared.settings import EngineSettings

    values: dict[str, Any] = {"device": "cpu" if tiny else "cuda", **options}
    for item in command_line or []:
        key, _, raw = item.partition("=")
        values[key] = raw
    if tiny:
        values["compile"] = False
    return EngineSettings.model_validate(values)


FA4_TILE_ENV = "WANQ_BENCH_FA4_TILE"
"""`MxN[,no-overlap][,THREADS]` (or `default`): FA4's sm90 forward configuration at head dim 128 for the engines a
benchmark makes, children included (a comparison; worker/fa4.py's SM90_TILES is what a worker runs)."""


def apply_fa4_tile(spelling: str) -> str | None:
    """Sets worker/fa4.py's sm90 configuration at head dim 128 from a $WANQ_BENCH_FA4_TILE spelling, in this
    process; the spelling applied, or None for an empty one (nothing changed)."""
    raw = spelling.strip().lower()
    if not raw:
        return None
    from worker import fa4

    if raw == "default":
        fa4.set_sm90_tile(128, None)
        return raw
    tile, *flags = raw.split(",")
    m, _, n = tile.partition("x")
    threads = next((int(f) for f in flags if f.isdigit()), 384)
    fa4.set_sm90_tile(128, (int(m), int(n)), overlap="no-overlap" not in flags, threads=threads)
    return raw


def fa4_tile_from_env() -> str | None:
    """Applies $WANQ_BENCH_FA4_TILE (see `apply_fa4_tile`)."""
    return apply_fa4_tile(os.environ.get(FA4_TILE_ENV, ""))


def make_engine(
    settings: Any, variant: str, *, tiny: bool, model_path: str = "", loras: Any = None, **factory_kwargs: Any
) -> Any:
    """The worker's engine (`worker.startup.start_engine`): from `model_path`, or on random weights of the real
    architecture (FACTORY; `factory_kwargs` such as `place` and `limit_bytes` go to it)."""
    from worker.startup import start_engine

    fa4_tile_from_env()

    model_id = f"wan2.2-{variant}"
    if model_path:
        return start_engine(model_path, settings, model_id=model_id, loras=loras)
    kwargs = {"variant": variant, "tiny": tiny, **factory_kwargs}
    return start_engine(None, settings, model_id=model_id, factory=FACTORY, factory_kwargs=kwargs, loras=loras)


def timed_job(engine: Any, spec: Any, image: Any = None) -> tuple[Any, float]:
    """One generate with a device sync after every step, so the step times are exact."""
    started = time.perf_counter()
    result = engine.generate(spec, image, on_step=lambda done, total: sync())
    return result, time.perf_counter() - started


def plain_steps(pipe: Any, spec: Any) -> tuple[Any, list[float]]:
    """Plain diffusers: `pipe` (a `WanPipeline`) with its defaults, to the latents; the seconds of every step."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    step_times: list[float] = []
    last = [0.0]

    def on_step(_pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        sync()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        return kwargs

    with torch.no_grad():
        sync()
        last[0] = time.perf_counter()
        latents = pipe(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            height=spec.height,
            width=spec.width,
            num_frames=spec.num_frames,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(spec.seed),
            output_type="latent",
            callback_on_step_end=on_step,
        ).frames
    return latents, step_times


def export_all(frames: Any, fps: int, folder: Path) -> dict[str, float]:
    """The worker's export of one video (MP4, then thumbnail and spritesheet), timed."""
    from worker import export

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export.write_mp4(frames, fps, folder / "video.mp4")
    t1 = time.perf_counter()
    export.write_thumbnail(frames, folder / "thumbnail.webp")
    export.write_spritesheet(frames, folder / "spritesheet.jpg")
    t2 = time.perf_counter()
    return {
        "mp4_s": round(t1 - t0, 3),
        "thumbnail_spritesheet_s": round(t2 - t1, 3),
        "mp4_bytes": (folder / "video.mp4").stat().st_size,
    }
