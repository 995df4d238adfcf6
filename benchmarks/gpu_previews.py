#!/usr/bin/env python
"""GPU benchmark of issue 27's tiny decoder (worker/taehv.py) against the full Wan VAE. A script, not a test.

For each model's latents (TI2V-5B: Wan2.2 VAE, 48 channels, 1280x704x81; A14B: Wan2.1 VAE, 16 channels,
1280x720x81), on random latents of the real shape:
  1. the full VAE decode through the engine's own function (worker.engine.decode_latents), stock and channels-last
  2. the tiny decoder at the published widths (random weights, the layout of taew2_2 / taew2_1), fp16 and bf16,
     the whole video (4T-3 frames)
  3. the preview decode (worker.previews.decode_preview: one frame per latent frame at half size), and the
     preview's other costs: the clean-latent snapshot on the GPU and the MP4 encode on the CPU
Each: the first call (cuDNN's algorithm search) and the median of the next ones, peak GiB. The preview's share of
a denoising step is computed against the step times measured on the same card class (given with --step-s).

    python benchmarks/gpu_previews.py --out /tmp/gp --mirror $OUT
    python benchmarks/gpu_previews.py --tiny --out /tmp/gpt        # the script's logic on the CPU, tiny models

Random weights: times and memory mean something, pictures do not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

MODELS = {
    # model: (width, height, frames, fps, measured s/step of the fastest lossless variant on an H100, source)
    "ti2v-5b": (1280, 704, 81, 24, 0.980, "fa4, issue 26 (H100)"),
    "t2v-a14b": (1280, 720, 81, 16, 19.71, "fa4, benchmarks/RESULTS.md 2026-12-06 (H100)"),
}


def full_vae(model: str, tiny: bool) -> Any:
    from benchmarks import gpu_models

    return gpu_models.full_vae(model, tiny=tiny)


def tiny_decoder(vae: Any, tiny: bool, dtype: Any, device: Any) -> Any:
    from worker import taehv

    if tiny:
        return taehv.tiny_taehv_for(vae).to(device=device, dtype=dtype)
    published = taehv.PUBLISHED["taew2_2" if int(vae.config.z_dim) == 48 else "taew2_1"]
    return taehv.Taehv(published).eval().to(device=device, dtype=dtype)


def timings(fn: Any, reps: int) -> dict[str, Any]:
    harness.reset_peak()
    first = harness.timed(fn)
    times = [harness.timed(fn) for _ in range(reps)]
    return {"first_s": round(first, 4), "median_s": harness.median(times), **harness.memory()}


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers.video_processor import VideoProcessor

    from worker import accel
    from worker.engine import decode_latents

    width, height, frames, fps, step_s, step_source = MODELS[model]
    if args.tiny:
        width, height, frames = 64, 64, 9
    device, dtype = harness.device_and_dtype()
    vae = full_vae(model, args.tiny)
    spatial = vae.config.scale_factor_spatial
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, vae.config.z_dim, (frames - 1) // 4 + 1, height // spatial, width // spatial, generator=g)
    record: dict[str, Any] = {"size": f"{width}x{height}x{frames}", "latents": list(latents.shape)}
    processor = VideoProcessor(vae_scale_factor=spatial)
    reps = 1 if args.tiny else 2

    # 1. The full VAE, as the engine decodes (stock, then channels-last)
    full = decode_latents(vae, processor, latents)
    record["full_vae"] = timings(partial(decode_latents, vae, processor, latents), reps)
    record["full_vae"]["frames"] = list(full.shape)
    if not args.tiny:
        accel.prepare_vae(vae, harness.engine_settings({"vae_channels_last": True}, tiny=args.tiny))
        record["full_vae_channels_last"] = timings(partial(decode_latents, vae, processor, latents), reps)
    vae = full_vae(model, True) if args.tiny else _config_only(model)  # the full one's memory goes back
    harness.free()

    # 2. The tiny decoder, the whole video, in each dtype; 3. the preview with the first dtype
    dtypes = [("fp32", torch.float32)] if args.tiny else [("fp16", torch.float16), ("bf16", torch.bfloat16)]
    for label, tdtype in dtypes:
        decoder = tiny_decoder(vae, args.tiny, tdtype, device)
        entry = timings(partial(decoder.decode_frames, latents), reps + 1)
        frames = decoder.decode_frames(latents)
        entry["frames"] = list(frames.shape)
        entry["same_shape_as_full"] = tuple(frames.shape) == tuple(full.shape)
        entry["speedup_vs_full"] = round(record["full_vae"]["median_s"] / entry["median_s"], 2)
        record[f"tiny_{label}"] = entry
        if label == dtypes[0][0]:
            record.update(preview(decoder, latents.to(device=device, dtype=dtype), fps, step_s, step_source, reps))
        del decoder
        harness.free()
    return record


def preview(decoder: Any, sample: Any, fps: int, step_s: float, step_source: str, reps: int) -> dict[str, Any]:
    """The preview's costs: the clean-latent snapshot and the reduced decode on the GPU, the MP4 on the CPU."""
    import torch

    from worker import previews

    velocity = torch.randn_like(sample)
    record: dict[str, Any] = {"preview_snapshot": timings(partial(previews.clean_from_velocity, sample, velocity, 0.5), reps + 2)}
    clean = previews.clean_from_velocity(sample, velocity, 0.5)
    record["preview_decode"] = timings(partial(previews.decode_preview, decoder, clean), reps + 2)
    frames = previews.decode_preview(decoder, clean)
    record["preview_decode"]["frames"] = list(frames.shape)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        path = previews.write_preview(frames, fps, Path(folder) / "preview.mp4")
        record["preview_mp4"] = {"encode_s_cpu": round(time.perf_counter() - t0, 4), "bytes": path.stat().st_size}
    gpu_s = record["preview_snapshot"]["median_s"] + record["preview_decode"]["median_s"]
    record["preview_share_of_step"] = {
        "step_s": step_s,
        "step_source": step_source,
        "gpu_s_per_preview": round(gpu_s, 4),
        "every_5_steps_share": round(gpu_s / (5 * step_s), 4),
        "note": "a sum of measured stages: the snapshot and decode serialized on the GPU, the MP4 off it",
    }
    return record


def _config_only(model: str) -> Any:
    """A stand-in with the full VAE's config alone (tiny_decoder reads z_dim), so the full VAE can be freed first."""

    class Config:
        def __init__(self, z_dim: int) -> None:
            self.config = type("C", (), {"z_dim": z_dim})()

    return Config(48 if model == "ti2v-5b" else 16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu-previews"))
    parser.add_argument("--mirror", type=Path, action="append", default=[])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script's logic")
    parser.add_argument("--models", default="ti2v-5b,t2v-a14b")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = harness.Results(args.out, args.mirror)
    results.write({})
    results.save("env", harness.environment())
    results.save("matmul", harness.matmul_rate(args.tiny))
    for model in args.models.split(","):
        try:
            results.save(model, measure(model, args), show=3000)
        except Exception as exc:
            results.save(model, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]})
        harness.free()


if __name__ == "__main__":
    main()
