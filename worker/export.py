"""Frames -> the files a job delivers: H.264 MP4 (libx264, yuv420p, +faststart), thumbnail, spritesheet, PNG (an
image job); and back: an MP4's frames, and several MP4s of the same settings joined into one without re-encoding."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

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


class Frames(Protocol):
    """What the previews read: a frame by index, and how many there are (an array of frames, or a stitched video's
    frames of which only the previews' ones are held, worker/extension.py)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> np.ndarray: ...


def write_thumbnail(frames: Frames, path: Path) -> Path:
    """The middle frame as WebP: representative, and past the first frame's fade-in for I2V."""
    Image.fromarray(frames[thumbnail_index(len(frames))]).save(path, format="WEBP", quality=85)
    return path


def thumbnail_index(count: int) -> int:
    """The frame write_thumbnail shows, of a video of `count` frames."""
    return count // 2


def sprite_picks(count: int, tiles: int = SPRITE_TILES) -> list[int]:
    """The frames write_spritesheet shows, of a video of `count` frames: up to `tiles`, evenly spaced."""
    return [int(i) for i in np.linspace(0, count - 1, min(tiles, count)).round().astype(int)]


def write_spritesheet(frames: Frames, path: Path, *, tiles: int = SPRITE_TILES) -> Path:
    """Up to `tiles` evenly spaced frames in a square-ish grid, as JPEG (for scrubbing previews)."""
    picks = sprite_picks(len(frames), tiles)
    count = len(picks)
    height, width = frames[0].shape[:2]
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


def write_png(frame: np.ndarray, path: Path) -> Path:
    """One frame, losslessly (an image job's output)."""
    Image.fromarray(frame).save(path, format="PNG")
    return path


def concat_mp4(parts: Iterable[Path], path: Path) -> Path:
    """Joins MP4s written by write_mp4 with the same size and fps into one, copying their H.264 streams (ffmpeg's
    concat demuxer, no re-encoding): the result decodes to exactly the parts' decoded frames, one after another.
    Each part begins with a keyframe (every write_mp4 file does), so the streams join at a clean cut."""
    listing = path.with_name(f"{path.stem}.parts.txt")
    # The concat demuxer's own quoting: a path in single quotes, a quote inside it written as '\''.
    listing.write_text("".join("file '" + str(p.resolve()).replace("'", "'\\''") + "'\n" for p in parts))
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-f", "concat", "-safe", "0"]
    command += ["-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    listing.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"joining MP4s failed: {done.stderr.strip()[-500:]}")
    return path


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """An MP4's frames as decoded, one at a time: uint8 [H, W, 3] each."""
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = reader.__next__()["size"]
    for data in reader:
        yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


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
