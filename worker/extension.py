"""Extensions: a new clip that continues a completed video from its last frame, and the whole video it makes.

The source's frames are never re-encoded. The extension's MP4 is the source's own H.264 stream followed by the new
clip's, joined by copying (export.concat_mp4), so its first frames decode to exactly the source's decoded frames and
a chain of extensions loses nothing link by link. The new clip's own first frame (the model's rendering of the frame
it starts from) is left out, so no frame repeats: the whole video has source frames + new frames - 1.

The frame the new clip starts from is the source's last *generated* frame, at the generated size. Without upscaling
it is the source's last frame as its MP4 decodes (exactly what a viewer sees at the seam; an interpolated MP4 ends
on a generated frame too, at (F-1) x k). An upscaled MP4 holds it only enlarged, and shrinking that back is not the
generated frame, so an upscaled video keeps the frame itself beside its MP4 (the `last_frame` output, a PNG) and an
extension of it starts from that. The new clip is generated at the generated size, post-processed with the source's
factors (which the extension keeps: shared/specs.py) and joined at the source's size and fps.

The worker reads the source when the job runs, not when it is created: a source deleted or expired in between
fails the extension with `invalid_request` and a message saying so.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.errors import InvalidRequest, WanqError
from shared.images import to_png
from shared.schemas import LAST_FRAME, GenerationSpec, JobRecord
from shared.specs import check_source
from shared.storage import CONTENT_TYPES, Storage
from shared.store import JobStore
from worker import export


@dataclass
class Source:
    """What an extension takes from its source: its MP4 (in a folder of its own until `close`), its frame count, its
    last frame, and those of its frames that the whole video's thumbnail and spritesheet show."""

    folder: Path
    path: Path
    frames: int
    last: np.ndarray
    held: dict[int, np.ndarray]

    def whole(self, new: np.ndarray) -> Stitched:
        """The whole video's frames as the previews read them: the source's held ones, then `new`."""
        return Stitched(self, new)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Stitched:
    """The frames of source + new, by index (export.Frames); of the source's, only the held ones can be read."""

    def __init__(self, source: Source, new: np.ndarray) -> None:
        self.source = source
        self.new = new

    def __len__(self) -> int:
        return self.source.frames + len(self.new)

    def __getitem__(self, index: int) -> np.ndarray:
        if index < self.source.frames:
            return self.source.held[index]
        return self.new[index - self.source.frames]  # type: ignore[no-any-return]


def fetch_source(store: JobStore, storage: Storage, record: JobRecord) -> Source:
    """Downloads and decodes the source of the extension `record`; stores the frame it continues from at the
    extension's `image_key`. Raises InvalidRequest if the source can no longer be continued."""
    spec = record.spec
    assert spec.extend_from is not None
    source_id = spec.extend_from
    try:
        source = check_source(store.get(source_id), source_id, record.tenant, time.time())
    except WanqError as exc:
        raise InvalidRequest(f"the source video is gone since this extension was created: {exc.message}", param="video") from None
    folder = Path(tempfile.mkdtemp(prefix="wanq-source-"))
    try:
        path = folder / "source.mp4"
        try:
            storage.download(source.outputs["video"], path)
        except KeyError:
            raise InvalidRequest(
                f"the source video {source_id} was deleted (or expired) since this extension was created", param="video"
            ) from None
        # 1. Decode it, holding only the frames the whole video's previews show, and the last.
        # The MP4s' frame counts and size: after the post-processing, which source and extension share (shared/specs.py).
        total, source_frames = spec.output_frames, (spec.source_frames - 1) * spec.interpolate + 1
        wanted = {export.thumbnail_index(total), *export.sprite_picks(total), source_frames - 1}
        held: dict[int, np.ndarray] = {}
        count = 0
        shape = (spec.height * spec.upscale, spec.width * spec.upscale, 3)
        for index, frame in enumerate(export.read_frames(path)):
            if frame.shape != shape:
                raise InvalidRequest(f"the source video {source_id} is {frame.shape[1]}x{frame.shape[0]}, not {spec.output_size}")
            if index in wanted:
                held[index] = frame
            count += 1
        if count != source_frames:
            raise InvalidRequest(
                f"the source video {source_id} has {count} frames, not the {source_frames} this extension was made for"
            )
        # 2. The frame to continue from, the last generated one: kept beside the job as the image it was conditioned on.
        last = held[count - 1] if spec.upscale == 1 else _generated_last_frame(storage, source, spec, folder)
        if spec.image_key is not None:
            storage.put_bytes(to_png(Image.fromarray(last)), spec.image_key, CONTENT_TYPES["image"])
        return Source(folder=folder, path=path, frames=count, last=last, held=held)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _generated_last_frame(storage: Storage, source: JobRecord, spec: GenerationSpec, folder: Path) -> np.ndarray:
    """The last generated frame an upscaled source kept beside its MP4 (the runner's `last_frame` output)."""
    path = folder / "last_frame.png"
    try:
        storage.download(source.outputs[LAST_FRAME], path)
    except KeyError:
        raise InvalidRequest(
            f"the source video {source.id} has no last generated frame stored (upscaled before wanq kept it, or "
            "deleted since), which an extension of it continues from",
            param="video",
        ) from None
    frame = np.asarray(Image.open(path).convert("RGB"))
    if frame.shape != (spec.height, spec.width, 3):
        raise InvalidRequest(
            f"the last generated frame of video {source.id} is {frame.shape[1]}x{frame.shape[0]}, not {spec.size}"
        )
    return frame


NEW_PART_SKIPS = 1
"""The generated frames the joined video leaves out: the first repeats the source's last frame."""


def write_video(
    source: Source, generated: np.ndarray, fps: int, folder: Path, *, part: Path | None = None
) -> tuple[Path, Stitched]:
    """The whole video's MP4 (the source's stream, then the new frames but the first) and its frames for the
    previews. `part`: the new frames' MP4 already encoded beside the decode (export.Mp4Stream with
    `skip=NEW_PART_SKIPS`), else it is encoded here."""
    new = generated[NEW_PART_SKIPS:]
    if part is None:
        part = export.write_mp4(new, fps, folder / "part.mp4")
    video = export.concat_mp4([source.path, part], folder / "video.mp4")
    part.unlink()
    return video, source.whole(new)
