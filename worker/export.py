"""Frames -> the files a job delivers: H.264 MP4 (libx264, yuv420p, +faststart), thumbnail, spritesheet."""

from __future__ import annotations

import math
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

SPRITE_TILES = 16
SPRITE_TILE_WIDTH = 160


def write_mp4(frames: np.ndarray, fps: int, path: Path, *, preset: str = "veryfast", crf: int = 18) -> Path:
    """Writes exactly len(frames) frames at `fps`. frames: uint8 [F, H, W, 3], H and W even."""
    _, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-preset", preset, "-crf", str(crf), "-movflags", "+faststart"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def write_thumbnail(frames: np.ndarray, path: Path) -> Path:
    """The middle frame as WebP: representative, and past the first frame's fade-in for I2V."""
    Image.fromarray(frames[len(frames) // 2]).save(path, format="WEBP", quality=85)
    return path


def write_spritesheet(frames: np.ndarray, path: Path, *, tiles: int = SPRITE_TILES) -> Path:
    """Up to `tiles` evenly spaced frames in a square-ish grid, as JPEG (for scrubbing previews)."""
    count = min(tiles, len(frames))
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    height, width = frames.shape[1:3]
    tile_w = min(SPRITE_TILE_WIDTH, width)
    tile_h = max(1, round(height * tile_w / width))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h))
    for n, index in enumerate(picks):
        tile = Image.fromarray(frames[index]).resize((tile_w, tile_h), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((n % cols) * tile_w, (n // cols) * tile_h))
    sheet.save(path, format="JPEG", quality=85)
    return path


def probe_mp4(path: Path) -> dict[str, object]:
    """Decodes the whole file: codec, size, fps and the number of frames actually in it."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    count = sum(1 for _ in reader)
    return {
        "codec": meta.get("codec"),
        "size": tuple(meta["size"]),
        "fps": meta["fps"],
        "frames": count,
        "pix_fmt": meta.get("pix_fmt"),
    }
