#!/usr/bin/env python
"""GPU benchmark of issue 28's post-processing on one card (a script, not a test). Measures:
  1. RIFE (IFNet 4.22-lite layout, fp16) x2 and x4 of 81 frames at 1280x720;
  2. the compact SRVGG upscaler (animevideov3's layout: 64 features, 16 convs; fp16) x2 of those 81 frames to
     2560x1440, and the same file run by spandrel's own model class where spandrel imports (skipped, with the
     reason, where it does not);
  3. the MP4 encode (libx264 veryfast CRF 18, what the export writes) at 1280x720 (x81 and x161) and 2560x1440;
  4. what post-processing adds to a Wan2.2 A14B 720p job (its measured s/step x 40 steps).
Each: the first call and the median of the next ones, and peak GiB. Random weights at the published widths (the
time does not depend on the values). Frames start on the GPU as the VAE decode leaves them and come back as uint8
(what the encoder reads): both copies are inside the times.

    python benchmarks/gpu_postprocess.py --out /tmp/gpp             # one H100 or H200
    python benchmarks/gpu_postprocess.py --tiny --out /tmp/gpp      # the script's logic on the CPU in seconds

results.json's keys (stable): env, matmul, interpolate_x2, interpolate_x4, upscale_x2, spandrel_x2, encode, share.
"""

from __future__ import annotations

import argparse
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

FULL = (1280, 720, 81, 16)
TINY = (64, 32, 5, 16)
"""(width, height, frames, fps) of the clip post-processed."""
A14B_STEP_S, A14B_STEPS = 19.71, 40
"""Wan2.2 T2V-A14B 1280x720x81, lossless, one H100 (benchmarks/RESULTS.md), and its default steps."""
KEYS = ("interpolate_x2", "interpolate_x4", "upscale_x2", "spandrel_x2", "encode", "share")


def clip(width: int, height: int, frames: int, device: Any) -> Any:
    """Smooth-ish uint8 frames [F, H, W, 3] on `device`: a coarse random image, enlarged, drifting frame by frame."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    base = torch.rand((1, 3, max(2, height // 8), max(2, width // 8)), generator=gen)
    still = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear")[0]
    video = torch.stack([torch.roll(still, shifts=i, dims=2) for i in range(frames)])
    return (video * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().to(device)


def measure(fn: Callable[[], Any], reps: int) -> tuple[dict[str, Any], Any]:
    """(first call's and median seconds, peak memory; the last result)."""
    harness.reset_peak()
    result: Any = None

    def call() -> None:
        nonlocal result
        result = fn()

    first = harness.timed(call)
    times = [harness.timed(call) for _ in range(reps)]
    return {"first_s": round(first, 4), "median_s": harness.median(times), **harness.memory()}, result


def interpolation(video: Any, k: int, model: Any, reps: int) -> tuple[dict[str, Any], Any]:
    from worker import interpolate as rife

    entry, out = measure(lambda: rife.interpolate(video, k, model=model).cpu(), reps)
    frames = video.shape[0]
    assert out.shape[0] == (frames - 1) * k + 1 and bool((out[::k] == video.cpu()).all()), "generated frames moved"
    return {**entry, "frames_in": frames, "frames_out": int(out.shape[0])}, out


def upscaling(video: Any, model: Any, reps: int) -> tuple[dict[str, Any], Any]:
    from worker import upscale as sr

    entry, out = measure(lambda: sr.upscale(video, model=model).cpu(), reps)
    frames, height, width = video.shape[:3]
    assert tuple(out.shape) == (frames, height * 2, width * 2, 3), tuple(out.shape)
    return {**entry, "size_out": f"{width * 2}x{height * 2}"}, out


def spandrel_upscaling(path: Path, video: Any, device: Any, dtype: Any, reps: int) -> dict[str, Any]:
    """Our compact file through spandrel's own class (what ComfyUI runs), in batches of 4 frames, untiled."""
    try:
        import spandrel
    except Exception as exc:  # not installed (the [upscalers] extra), or torchvision fails to import beside torch
        return {"skipped": f"spandrel does not import here ({type(exc).__name__}: {exc}); pip install 'wanq[upscalers]'"}
    import torch

    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    net = descriptor.model.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def run() -> Any:
        outs = []
        for start in range(0, video.shape[0], 4):
            batch = video[start : start + 4].permute(0, 3, 1, 2).to(dtype) / 255
            outs.append((net(batch).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(outs)

    entry, out = measure(run, reps)
    return {**entry, "architecture": descriptor.architecture.name, "size_out": f"{out.shape[2]}x{out.shape[1]}"}


def encodes(named: dict[str, tuple[Any, int]], folder: Path) -> dict[str, Any]:
    """Seconds of write_mp4 for each named clip (uint8 frames on the CPU, fps)."""
    import numpy as np

    from worker import export

    done: dict[str, Any] = {}
    for name, (frames, fps) in named.items():
        array = np.ascontiguousarray(frames.numpy())
        t0 = time.perf_counter()
        export.write_mp4(array, fps, folder / f"{name}.mp4")
        done[name] = {"s": round(time.perf_counter() - t0, 4), "frames": len(array), "fps": fps}
    return done


def share(results: dict[str, Any]) -> dict[str, Any]:
    """What interpolation x2 plus upscale x2 (and the larger encode) add to an A14B 720p job's GPU time."""
    job_s = A14B_STEP_S * A14B_STEPS
    parts = {
        "interpolate_x2_s": (results.get("interpolate_x2") or {}).get("median_s"),
        "upscale_x2_s": (results.get("upscale_x2") or {}).get("median_s"),
    }
    if None in parts.values():
        return {"job_s": job_s, **parts, "share": None}
    added = sum(v for v in parts.values() if v is not None)
    return {"job_s": job_s, **parts, "added_s": round(added, 3), "share": round(added / job_s, 6)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu-postprocess"))
    parser.add_argument("--mirror", type=Path, action="append", default=[])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script's logic")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = harness.Results(args.out, args.mirror)
    results.write({})
    results.save("env", harness.environment("spandrel", "imageio-ffmpeg"))
    results.save("matmul", harness.matmul_rate(args.tiny))

    import torch
    from safetensors.torch import save_file

    from worker import interpolate as rife
    from worker import upscale as sr

    tiny = args.tiny or not harness.cuda()
    device = torch.device("cpu") if tiny else torch.device("cuda")
    dtype = torch.float32 if tiny else torch.float16
    width, height, frames, fps = TINY if tiny else FULL
    reps = 1 if tiny else 3
    work = Path(tempfile.mkdtemp(prefix="wanq-gpp-"))
    video = clip(width, height, frames, device)
    made: dict[str, Any] = {}

    def section(key: str, run: Callable[[], dict[str, Any]]) -> None:
        try:
            value = run()
        except Exception as exc:  # recorded, not fatal: the other sections stand on their own
            value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        results.save(key, value)
        harness.free(dynamo=False)

    # 1. RIFE x2 and x4
    if tiny:
        rife_path = rife.write_tiny_interpolator(work / "rife.safetensors")
    else:
        torch.manual_seed(0)
        ifnet = rife.IFNet(rife.IFNetConfig(rife.RIFE_4_22_LITE))
        rife_path = work / "rife-4.22-lite.safetensors"
        save_file({f"module.{k}": v for k, v in ifnet.state_dict().items()}, str(rife_path))
    interpolator = rife.load_interpolator(rife_path, device=device, dtype=dtype)

    def interpolate(k: int) -> dict[str, Any]:
        entry, out = interpolation(video, k, interpolator, reps)
        made[f"interpolated_x{k}"] = out
        return {**entry, "model": "tiny" if tiny else "IFNet 4.22-lite", "dtype": str(dtype)}

    section("interpolate_x2", lambda: interpolate(2))
    section("interpolate_x4", lambda: interpolate(4))

    # 2. The compact upscaler x2, ours and spandrel's
    if tiny:
        sr_path = sr.write_tiny_upscaler(work / "compact.safetensors", scale=2)
    else:
        torch.manual_seed(0)
        sr_path = work / "compact-64f16c.safetensors"
        save_file(sr.SRVGGNetCompact(2, features=64, convs=16).state_dict(), str(sr_path))
    upscaler = sr.load_upscaler(sr_path, scale=2, device=device, dtype=dtype)

    def upscale() -> dict[str, Any]:
        entry, out = upscaling(video, upscaler, reps)
        made["upscaled_x2"] = out
        return {**entry, "model": "tiny compact" if tiny else "SRVGGNetCompact 64 features, 16 convs", "dtype": str(dtype)}

    section("upscale_x2", upscale)
    section("spandrel_x2", lambda: spandrel_upscaling(sr_path, video, device, dtype, reps))

    # 3. The MP4 encode at each size; 4. the share of an A14B 720p job
    def encode() -> dict[str, Any]:
        clips = {f"{width}x{height}x{frames}": (video.cpu(), fps)}
        if "interpolated_x2" in made:
            clips[f"{width}x{height}x{(frames - 1) * 2 + 1}"] = (made["interpolated_x2"], fps * 2)
        if "upscaled_x2" in made:
            clips[f"{width * 2}x{height * 2}x{frames}"] = (made["upscaled_x2"], fps)
        return encodes(clips, work)

    section("encode", encode)
    section("share", lambda: share(results.load()))


if __name__ == "__main__":
    main()
