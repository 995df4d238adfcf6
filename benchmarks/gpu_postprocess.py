#!/usr/bin/env python
"""GPU benchmark of issue 28's post-processing stages on one card (a script, not a test): RIFE interpolation x2
(and x4) of 81 frames at 1280x720, compact Real-ESRGAN x2 of 81 frames 1280x720 -> 2560x1440, and the MP4 encode of
each result. Random weights at the published widths (the time does not depend on the values). Prints a table and
writes results.json to --out. Frames start on the GPU (as the VAE decode leaves them) and come back to the CPU as
uint8 (what the MP4 encoder reads); both copies are inside the times."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from worker import interpolate as rife
from worker import upscale as sr


def timed(fn: Callable[[], Any], repeat: int = 2) -> tuple[float, float, Any]:
    """(best seconds of `repeat` runs after one warm-up, peak GiB allocated, last result)."""
    result = fn()
    torch.cuda.synchronize()
    best = float("inf")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() / 2**30, result


def _interpolate(video: torch.Tensor, k: int, model: rife.Interpolator, batch: int) -> torch.Tensor:
    return rife.interpolate(video, k, model=model, batch_size=batch).cpu()


def _upscale(video: torch.Tensor, model: sr.Upscaler, tile: int | None, batch: int) -> torch.Tensor:
    return sr.upscale(video, model=model, tile=tile, overlap=32, batch_size=batch).cpu()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp())
    gen = torch.Generator(device="cuda").manual_seed(0)
    # Smooth-ish frames: a moving gradient plus noise, on the GPU like a decode's output.
    base = torch.rand((1, 3, 90, 160), device="cuda", generator=gen)
    video = torch.nn.functional.interpolate(base, size=(720, 1280), mode="bilinear").repeat(args.frames, 1, 1, 1)
    video = (video * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    props = torch.cuda.get_device_properties(0)
    env = {"device": props.name, "torch": torch.__version__, "frames": args.frames}

    def record(name: str, seconds: float, peak: float, **extra: Any) -> None:
        rows.append({"stage": name, "s": round(seconds, 3), "peak_gib": round(peak, 2), **extra})
        print(f"{name:58s} {seconds:8.3f} s  {peak:6.2f} GiB  {extra}", flush=True)
        (args.out / "results.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))

    # 1. Interpolation: 4.25 (5 blocks) and 4.22-lite (4 blocks), fp16 and bf16, batch sizes.
    for label, widths in (("4.25", rife.RIFE_4_25), ("4.22-lite", rife.RIFE_4_22_LITE)):
        torch.manual_seed(0)
        state = {f"module.{k}": v for k, v in rife.IFNet(rife.IFNetConfig(widths)).state_dict().items()}
        path = work / f"rife-{label}.safetensors"
        save_file(state, str(path))
        for dtype in (torch.float16, torch.bfloat16):
            model = rife.load_interpolator(path, device="cuda", dtype=dtype)
            for batch in (8, 16, 32):
                s, peak, out = timed(partial(_interpolate, video, 2, model, batch))
                assert out.shape[0] == (args.frames - 1) * 2 + 1 and torch.equal(out[::2], video.cpu())
                record(f"interpolate x2 RIFE {label} {str(dtype)[6:]} batch {batch}", s, peak)
        model = rife.load_interpolator(path, device="cuda")
        s, peak, _ = timed(partial(_interpolate, video, 4, model, 16), repeat=1)
        record(f"interpolate x4 RIFE {label} float16 batch 16", s, peak)
        del model
        torch.cuda.empty_cache()

    # 2. Upscale x2 with the compact class: animevideov3's layout (16 convs) and general-x4v3's (32), at x2.
    for convs in (16, 32):
        torch.manual_seed(0)
        path = work / f"compact-{convs}.safetensors"
        save_file(sr.SRVGGNetCompact(2, features=64, convs=convs).state_dict(), str(path))
        for dtype in (torch.float16, torch.bfloat16):
            upscaler = sr.load_upscaler(path, scale=2, device="cuda", dtype=dtype)
            for tile, batch in ((None, 1), (None, 4), (512, 4), (256, 8)):
                s, peak, out = timed(partial(_upscale, video, upscaler, tile, batch), repeat=1)
                assert out.shape == (args.frames, 1440, 2560, 3)
                record(f"upscale x2 compact 64f/{convs}c {str(dtype)[6:]} tile {tile} batch {batch}", s, peak)
            del upscaler
            torch.cuda.empty_cache()

    # 3. spandrel reads our compact file as its own class and computes the same (where it imports).
    try:
        import spandrel

        path = sr.write_tiny_upscaler(work / "tiny.safetensors", scale=2)
        descriptor = spandrel.ModelLoader().load_from_file(path)
        ours = sr.load_upscaler(path, scale=2)
        x = torch.rand(2, 3, 24, 20)
        diff = (descriptor(x) - ours.net(x).clamp(0, 1)).abs().max().item()
        env["spandrel"] = {"architecture": descriptor.architecture.name, "max_abs_diff": diff}
        print("spandrel:", env["spandrel"], flush=True)
    except Exception as exc:  # recorded, not fatal: the timings above stand on their own
        env["spandrel"] = repr(exc)

    # 4. MP4 encode (libx264 veryfast CRF 18, what the export writes) at each result's size.
    from worker import export

    interpolated = (
        rife.interpolate(video, 2, model=rife.load_interpolator(work / "rife-4.25.safetensors", device="cuda")).cpu().numpy()
    )
    upscaled = (
        sr.upscale(video, model=sr.load_upscaler(work / "compact-16.safetensors", scale=2, device="cuda"), tile=None)
        .cpu()
        .numpy()
    )
    for name, frames, fps in (
        ("mp4 1280x720 x81 @16", video.cpu().numpy(), 16),
        ("mp4 1280x720 x161 @32 (interpolated)", interpolated, 32),
        ("mp4 2560x1440 x81 @16 (upscaled)", upscaled, 16),
    ):
        start = time.perf_counter()
        export.write_mp4(np.ascontiguousarray(frames), fps, work / "out.mp4")
        record(name, time.perf_counter() - start, 0.0)
    (args.out / "results.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
