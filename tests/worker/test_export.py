"""What the worker writes and reads back: MP4s joined without re-encoding decode to exactly their parts' frames
(what an extension's MP4 is made of), a PNG keeps its frame exactly, and the previews' frame picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker import export


def moving(count: int, seed: int, size: int = 64) -> np.ndarray:
    """Frames with motion and noise, hard enough that H.264 at CRF 18 changes every one of them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) // 2 + rng.integers(0, 64, (size, size, 3), dtype=np.uint8) for i in range(count)])


def decoded(path: Path) -> np.ndarray:
    return np.stack(list(export.read_frames(path)))


@pytest.mark.parametrize(("fps", "first", "second"), [(8, 9, 4), (16, 81, 80), (24, 17, 120)])
def test_joined_mp4_decodes_to_exactly_its_parts(tmp_path: Path, fps: int, first: int, second: int) -> None:
    a = export.write_mp4(moving(first, 1), fps, tmp_path / "a.mp4")
    b = export.write_mp4(moving(second, 2), fps, tmp_path / "b.mp4")
    joined = export.concat_mp4([a, b], tmp_path / "joined.mp4")
    frames, part_a, part_b = decoded(joined), decoded(a), decoded(b)
    assert len(frames) == first + second
    assert np.array_equal(frames[:first], part_a) and np.array_equal(frames[first:], part_b)
    assert not np.array_equal(part_a, moving(first, 1))  # lossy: the equality above is the copy's, not the codec's
    info = export.probe_mp4(joined)
    assert info["frames"] == first + second and float(info["fps"]) == fps  # type: ignore[arg-type]
    data = joined.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart kept


def test_a_chain_of_joins_keeps_every_earlier_frame(tmp_path: Path) -> None:
    whole = export.write_mp4(moving(9, 1), 8, tmp_path / "0.mp4")
    for link in range(1, 4):
        before = decoded(whole)
        part = export.write_mp4(moving(8, link + 1), 8, tmp_path / f"part{link}.mp4")
        whole = export.concat_mp4([whole, part], tmp_path / f"{link}.mp4")
        after = decoded(whole)
        assert len(after) == len(before) + 8 and np.array_equal(after[: len(before)], before)
    assert len(decoded(whole)) == 9 + 3 * 8


def test_png_keeps_its_frame_exactly(tmp_path: Path) -> None:
    frame = moving(1, 5)[0]
    path = export.write_png(frame, tmp_path / "image.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), frame)


def test_preview_picks_are_the_frames_the_previews_show(tmp_path: Path) -> None:
    assert export.sprite_picks(1) == [0] and export.sprite_picks(9) == list(range(9))
    picks = export.sprite_picks(361)
    assert len(picks) == export.SPRITE_TILES and picks[0] == 0 and picks[-1] == 360 and picks == sorted(set(picks))
    assert export.thumbnail_index(361) == 180
    frames = moving(40, 3)
    # Only the picked frames are ever read: a stand-in holding just those gives the same spritesheet.
    held = {i: frames[i] for i in export.sprite_picks(40)}

    class Held:
        def __len__(self) -> int:
            return 40

        def __getitem__(self, index: int) -> np.ndarray:
            return held[index]

    export.write_spritesheet(frames, tmp_path / "all.jpg")
    export.write_spritesheet(Held(), tmp_path / "held.jpg")
    assert (tmp_path / "all.jpg").read_bytes() == (tmp_path / "held.jpg").read_bytes()


def test_an_mp4_fed_chunk_by_chunk_is_the_file_write_mp4_writes(tmp_path: Path) -> None:
    """export.Mp4Stream (the encoder that runs beside the decode) gets the frames in uneven chunks, as the VAE's
    temporal loop makes them (1, then 4 at a time); it must decode to what write_mp4 makes of the same frames."""
    frames = moving(13, seed=3)
    whole = export.write_mp4(frames, 16, tmp_path / "whole.mp4")
    stream = export.Mp4Stream(tmp_path / "streamed.mp4", 16)
    for chunk in (frames[:1], frames[1:5], frames[5:9], frames[9:]):
        stream.send(chunk)
    streamed = stream.close()
    assert stream.frames == 13
    assert export.probe_mp4(streamed)["frames"] == 13 and export.probe_mp4(streamed)["fps"] == 16
    assert np.array_equal(decoded(streamed), decoded(whole))


@pytest.mark.parametrize("chunks", [(1, 4, 4), (5, 4), (9,)])
def test_a_stream_that_skips_the_first_frame_is_the_mp4_of_the_rest(tmp_path: Path, chunks: tuple[int, ...]) -> None:
    """An extension's new part, streamed: its first frame repeats the source's last and stays out of the MP4."""
    frames = moving(9, seed=8)
    stream = export.Mp4Stream(tmp_path / "part.mp4", 16, skip=1)
    start = 0
    for count in chunks:
        stream.send(frames[start : start + count])
        start += count
    part = stream.close()
    assert stream.frames == 9  # every frame sent is counted: the runner checks it against the decode's
    assert np.array_equal(decoded(part), decoded(export.write_mp4(frames[1:], 16, tmp_path / "rest.mp4")))


@pytest.mark.parametrize("count", [81, 13, 1])
def test_the_stills_made_beside_the_stream_are_the_files_written_from_the_frames(tmp_path: Path, count: int) -> None:
    frames = moving(count, seed=5, size=48)
    (tmp_path / "streamed").mkdir()
    stream = export.Mp4Stream(tmp_path / "streamed" / "video.mp4", 16, expected=count)
    for start in range(0, count, 4):
        stream.send(frames[start : start + 4])
    stream.close()
    stills = stream.stills()
    assert stills is not None and set(stills) == {"thumbnail", "spritesheet"}
    thumbnail = export.write_thumbnail(frames, tmp_path / "thumbnail.webp")
    sheet = export.write_spritesheet(frames, tmp_path / "spritesheet.jpg")
    assert stills["thumbnail"].read_bytes() == thumbnail.read_bytes()
    assert stills["spritesheet"].read_bytes() == sheet.read_bytes()


def test_stills_that_fail_beside_the_stream_leave_the_mp4_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(frames: object, path: Path) -> Path:
        raise OSError("no room for the thumbnail")

    monkeypatch.setattr(export, "write_thumbnail", broken)
    frames = moving(9, seed=7)
    stream = export.Mp4Stream(tmp_path / "video.mp4", 16, expected=9)
    stream.send(frames)
    assert stream.close() == tmp_path / "video.mp4"  # the MP4 is kept: only the stills are left to the caller
    assert stream.stills() is None
    assert export.probe_mp4(tmp_path / "video.mp4")["frames"] == 9


def test_a_stream_that_got_other_than_the_expected_frames_leaves_the_stills_to_the_caller(tmp_path: Path) -> None:
    short = export.Mp4Stream(tmp_path / "short.mp4", 16, expected=9)
    short.send(moving(8, seed=6))
    short.close()
    assert short.stills() is None
    long = export.Mp4Stream(tmp_path / "long.mp4", 16, expected=9)
    long.send(moving(10, seed=6))
    long.close()
    assert long.stills() is None
    unasked = export.Mp4Stream(tmp_path / "unasked.mp4", 16)
    unasked.send(moving(9, seed=6))
    unasked.close()
    assert unasked.stills() is None


def test_an_aborted_mp4_stream_leaves_no_file_and_a_failed_one_says_so(tmp_path: Path) -> None:
    stream = export.Mp4Stream(tmp_path / "dropped.mp4", 16)
    stream.send(moving(5, seed=4))
    stream.abort()
    assert not (tmp_path / "dropped.mp4").exists()
    broken = export.Mp4Stream(tmp_path / "odd.mp4", 16)
    broken.send(np.zeros((2, 7, 9, 3), dtype=np.uint8))  # odd sizes: yuv420p cannot hold them
    broken.send(np.zeros((2, 7, 9, 3), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="MP4 encoder"):
        broken.close()
    empty = export.Mp4Stream(tmp_path / "empty.mp4", 16)
    with pytest.raises(RuntimeError, match="no frames"):
        empty.close()
