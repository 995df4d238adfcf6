"""RIFE interpolation (worker/interpolate.py): (F-1)*k+1 frames with the given ones kept bit for bit at i*k, the
published weights' key names and shapes loading from .safetensors and from a weights-only pickle with the
`module.` prefix, and files that are refused (arbitrary pickles, other architectures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worker import interpolate as rife


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> rife.Interpolator:
    path = rife.write_tiny_interpolator(tmp_path_factory.mktemp("rife") / "tiny.safetensors")
    return rife.load_interpolator(path)


def frames(count: int, height: int = 36, width: int = 44, seed: int = 0) -> np.ndarray:
    """Sides that are not multiples of the net's padding, so the pad-and-crop path runs."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_frame_count_and_the_generated_frames_kept_exactly(tiny: rife.Interpolator, k: int, count: int) -> None:
    video = frames(count)
    out = rife.interpolate(video, k, model=tiny, batch_size=3)  # 3: batches that straddle pairs
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == ((count - 1) * k + 1, 36, 44, 3)
    assert np.array_equal(out[::k], video)
    if k > 1 and count > 1:
        between = np.delete(out, np.arange(0, len(out), k), axis=0)
        assert len(between) == (count - 1) * (k - 1)
        # The network ran: what it made is neither of the neighbours.
        assert not any(np.array_equal(b, f) for b in between for f in video)


def test_batch_size_does_not_change_the_frames(tiny: rife.Interpolator) -> None:
    video = frames(4, seed=1)
    one = rife.interpolate(video, 4, model=tiny, batch_size=1)
    many = rife.interpolate(video, 4, model=tiny, batch_size=16)
    assert np.abs(one.astype(int) - many.astype(int)).max() <= 1  # float32 sums in another order: at most 1 level


def test_a_tensor_comes_back_as_a_tensor(tiny: rife.Interpolator) -> None:
    video = torch.from_numpy(frames(3, seed=2))
    out = rife.interpolate(video, 2, model=tiny)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 36, 44, 3) and torch.equal(out[::2], video)


@pytest.mark.parametrize(
    ("k", "shape", "match"),
    [(3, (2, 8, 8, 3), "k must be one of"), (2, (2, 8, 8), "uint8 \\[F, H, W, 3\\]"), (2, (0, 8, 8, 3), "F >= 1")],
)
def test_bad_arguments_are_named(tiny: rife.Interpolator, k: int, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rife.interpolate(np.zeros(shape, np.uint8), k, model=tiny)


def published(widths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A state dict with the published flownet.pkl's key names and shapes (random values), as it is saved:
    with the `module.` prefix of DataParallel."""
    torch.manual_seed(0)
    return {f"module.{k}": v for k, v in rife.IFNet(rife.IFNetConfig(widths)).state_dict().items()}


@pytest.mark.parametrize(("widths", "multiple"), [(rife.RIFE_4_25, 64), (rife.RIFE_4_22_LITE, 32)])
@pytest.mark.parametrize("suffix", [".pkl", ".safetensors"])
def test_published_layouts_load_by_key_name(tmp_path: Path, widths: tuple[int, ...], multiple: int, suffix: str) -> None:
    state = published(widths)
    assert "module.block0.convblock.7.beta" in state and state["module.block0.lastconv.0.weight"].shape == (192, 52, 4, 4)
    assert state["module.encode.cnn3.weight"].shape == (16, 4, 4, 4)
    path = tmp_path / f"flownet{suffix}"
    if suffix == ".pkl":
        torch.save(state, path)
    else:
        save_file({k.removeprefix("module."): v for k, v in state.items()}, str(path))
    model = rife.load_interpolator(path)
    assert model.net.config.block_widths == widths and model.net.config.pad_multiple == multiple
    assert model.dtype == torch.float32  # on CPU
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("module.")], v) for k, v in state.items())
    out = rife.interpolate(frames(2, 40, 24), 2, model=model)
    assert out.shape == (3, 40, 24, 3)


class _Payload:
    """What a malicious pickle carries: unpickling it would run `Path.touch` on the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_a_pickle_of_arbitrary_objects_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state: dict[str, object] = dict(published((16, 8)))
    state["module.extra"] = _Payload(marker)
    path = tmp_path / "flownet.pkl"
    torch.save(state, path)
    with pytest.raises(rife.InterpolatorFileError, match="objects other than tensors and are refused"):
        rife.load_interpolator(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"conv.weight": torch.zeros(4, 3, 3, 3)}, "not a RIFE v4.x IFNet"),
        (
            {
                "module.block0.conv0.1.0.weight": torch.zeros(8, 4, 3, 3),
                "encode.cnn0.weight": torch.zeros(4, 3, 3, 3),
                "encode.cnn3.weight": torch.zeros(4, 4, 4, 4),
            },
            "missing",
        ),
    ],
)
def test_other_state_dicts_are_refused(tmp_path: Path, state: dict[str, torch.Tensor], match: str) -> None:
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(rife.InterpolatorFileError, match=match):
        rife.load_interpolator(path)


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(rife.InterpolatorFileError, match="do not exist"):
        rife.load_interpolator(tmp_path / "nope.pkl")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(rife.InterpolatorFileError, match="not a readable safetensors file"):
        rife.load_interpolator(tmp_path / "junk.safetensors")


def test_half_precision_keeps_the_frames_and_stays_close(tmp_path: Path) -> None:
    """The GPU runs the net in fp16/bf16 with the warps in float32; bf16 convolutions also run on a CPU, so the
    casts are exercised here: the given frames still exact, the made ones within a few levels of float32's."""
    path = rife.write_tiny_interpolator(tmp_path / "tiny.safetensors")
    video = frames(3, seed=3)
    full = rife.interpolate(video, 2, model=rife.load_interpolator(path)).astype(int)
    half = rife.interpolate(video, 2, model=rife.load_interpolator(path, dtype=torch.bfloat16))
    assert np.array_equal(half[::2], video)
    difference = np.abs(full - half.astype(int))
    assert difference.mean() < 1 and difference.max() <= 4  # measured: mean 0.16, max 2 levels of 255
