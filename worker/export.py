"""Frames -> the files a job delivers: H.264 MP4 (libx264, yuv420p, +faststart), thumbnail, spritesheet, PNG (an
image job); and back: an MP4's frames, and several MP4s of the same settings joined into one without re-encoding."""

from __future__ import annotations

import logging
import math
import queue
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import imageio_ffmpeg
import numpy as np
from PIL import Image

log = logging.getLogger("wanq.export")

SPRITE_TILES = 16
SPRITE_TILE_WIDTH = 160


def write_mp4(frames: np.ndarray, fps: int, path: Path, *, preset: str = "veryfast", crf: int = 18) -> Path:
    """Writes exactly len(frames) frames at `fps`. frames: uint8 [F, H, W, 3], H and W even."""
    _, height, width, _ = frames.shape
    writer = _x264(path, (width, height), fps, preset, crf)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def _x264(path: Path, size: tuple[int, int], fps: int, preset: str, crf: int) -> Any:
    """An ffmpeg process writing H.264 (libx264, yuv420p, +faststart) at `path`, fed rgb24 frames by `.send`."""
    writer = imageio_ffmpeg.write_frames(
        str(path),
        size,
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
    return writer


class Mp4Stream:
    """write_mp4 fed while the frames are still being made: `send` hands a chunk of frames [n, H, W, 3] to a thread
    that pipes them to x264 (a separate process), so the encode runs beside the VAE's decode and only its tail is
    left when the decode ends. The same encoder settings as write_mp4, so the file is the one write_mp4 would write.
    `close()` waits for the tail and returns the path; `abort()` stops and deletes it. Both are idempotent.

    With `expected` (the video's frame count), the same thread also makes the stills as their frames go by (the
    thumbnail's middle frame, the spritesheet's tiles), beside the MP4: `stills()` then gives the files
    write_thumbnail and write_spritesheet would write, if the stream got exactly `expected` frames. `skip` leaves the
    first frames sent out of the MP4 (an extension's first, which repeats its source's last); `frames` counts them.
    The two are not combined (the stills would be of the MP4's frames, `expected` of those sent)."""

    _END = None

    def __init__(
        self, path: Path, fps: int, *, preset: str = "veryfast", crf: int = 18, expected: int | None = None, skip: int = 0
    ) -> None:
        self.path = path
        self.fps = fps
        self.preset = preset
        self.crf = crf
        self.frames = 0
        if expected and skip:
            raise ValueError("Mp4Stream: the stills (expected) and skipped frames are not combined")
        self.expected = expected
        self.skip = skip
        self._to_skip = skip
        self._stills = StreamedStills(path.parent, expected) if expected else None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._encode, name="wanq-mp4", daemon=True)
        self._thread.start()

    def send(self, frames: np.ndarray) -> None:
        """Queues uint8 [n, H, W, 3] frames (the array is not copied: the caller must not reuse it). Never raises: an
        encoder that failed drops what it is sent, and `close()` says so (the caller then encodes the frames again)."""
        self.frames += len(frames)
        if self._error is None:
            self._queue.put(frames)

    def close(self) -> Path:
        self._queue.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the MP4 encoder failed: {self._error}") from self._error
        if self.frames == 0:
            raise RuntimeError("no frames were sent to the MP4 encoder")
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise RuntimeError(f"the MP4 encoder wrote nothing to {self.path.name}")
        return self.path

    def _still(self, frame: np.ndarray) -> None:
        """The stills' share of a frame; a failure there drops the stills (the caller writes them from the frames),
        never the MP4."""
        if self._stills is None:
            return
        try:
            self._stills.add(frame)
        except Exception:
            log.exception("the stills made beside the MP4 failed: they are written from the frames instead")
            self._stills = None

    def stills(self) -> dict[str, Path] | None:
        """After `close()`: the thumbnail and spritesheet made from the streamed frames, or None (not asked for, or
        the stream did not get exactly the expected frames: the caller writes them from the frames)."""
        if self._stills is None or self.frames != self.expected or self._error is not None:
            return None
        try:
            return self._stills.finish()
        except Exception:
            log.exception("the spritesheet made beside the MP4 failed: the stills are written from the frames instead")
            return None

    def abort(self) -> None:
        self._aborted = True
        self._queue.put(self._END)
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _encode(self) -> None:
        writer = None
        try:
            while (chunk := self._queue.get()) is not None:
                if self._to_skip:
                    dropped = min(self._to_skip, len(chunk))
                    self._to_skip -= dropped
                    chunk = chunk[dropped:]
                if self._aborted or len(chunk) == 0:
                    continue
                if writer is None:
                    height, width = chunk.shape[1:3]
                    writer = _x264(self.path, (width, height), self.fps, self.preset, self.crf)
                for frame in chunk:
                    writer.send(np.ascontiguousarray(frame))
                    self._still(frame)
        except BaseException as exc:  # kept for close(); the rest of the queue is drained by the loop's end
            self._error = exc
            while self._queue.get() is not None:
                pass
        finally:
            if writer is not None:
                try:
                    writer.close()
                except BaseException as exc:
                    self._error = self._error or exc


class StreamedStills:
    """write_thumbnail and write_spritesheet for a video of `count` frames seen one at a time, in order."""

    def __init__(self, folder: Path, count: int, *, tiles: int = SPRITE_TILES) -> None:
        self.folder = folder
        self.count = count
        self.seen = 0
        self.thumbnail_at = thumbnail_index(count)
        self.picks = sprite_picks(count, tiles)
        self.tiles: dict[int, Image.Image] = {}
        self.thumbnail: Path | None = None
        self.size: tuple[int, int] | None = None

    def add(self, frame: np.ndarray) -> None:
        index, self.seen = self.seen, self.seen + 1
        if index >= self.count:
            return
        if self.size is None:
            self.size = (frame.shape[1], frame.shape[0])
        if index == self.thumbnail_at:
            self.thumbnail = write_thumbnail(frame[None], self.folder / "thumbnail.webp")
        if index in self.picks:
            self.tiles[index] = sprite_tile(frame)

    def finish(self) -> dict[str, Path] | None:
        if self.seen != self.count or self.thumbnail is None or len(self.tiles) != len(self.picks) or self.size is None:
            return None
        sheet = self.folder / "spritesheet.jpg"
        spritesheet_of([self.tiles[i] for i in self.picks], self.size, sheet)
        return {"thumbnail": self.thumbnail, "spritesheet": sheet}


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
    height, width = frames[0].shape[:2]
    return spritesheet_of([sprite_tile(frames[index]) for index in picks], (width, height), path)


def _tile_size(width: int, height: int) -> tuple[int, int]:
    tile_w = min(SPRITE_TILE_WIDTH, width)
    return tile_w, max(1, round(height * tile_w / width))


def sprite_tile(frame: np.ndarray) -> Image.Image:
    """One frame as a spritesheet tile."""
    height, width = frame.shape[:2]
    return Image.fromarray(frame).resize(_tile_size(width, height), Image.Resampling.BILINEAR)


def spritesheet_of(tiles: list[Image.Image], size: tuple[int, int], path: Path) -> Path:
    """The tiles of frames of `size` (width, height), in order, in a square-ish grid, as JPEG."""
    tile_w, tile_h = _tile_size(*size)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h))
    for n, tile in enumerate(tiles):
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
