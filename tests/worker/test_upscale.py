"""Upscaling (worker/upscale.py): sizes x2/x4, tiles that give the whole frame's result, the compact Real-ESRGAN
layout loading from the published .pth form and from .safetensors (and detected by spandrel where it is installed),
and the refusals (wrong scale, another architecture without spandrel, an arbitrary pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worker import upscale as sr


def frames(count: int, height: int = 30, width: int = 46, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=[2, 4])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> sr.Upscaler:
    scale: int = request.param
    path = sr.write_tiny_upscaler(tmp_path_factory.mktemp("sr") / f"tiny-x{scale}.safetensors", scale=scale)
    return sr.load_upscaler(path, scale=scale)


def test_the_tiny_model_is_a_compact_realesrgan(tiny: sr.Upscaler) -> None:
    assert tiny.architecture == "RealESRGAN Compact" and tiny.dtype == torch.float32
    assert isinstance(tiny.net, sr.SRVGGNetCompact) and len(tiny.net.body) == 7


@pytest.mark.parametrize("count", [1, 5])
def test_sizes(tiny: sr.Upscaler, count: int) -> None:
    video = frames(count)
    out = sr.upscale(video, model=tiny, tile=None, batch_size=2)
    s = tiny.scale
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (count, 30 * s, 46 * s, 3)
    assert len({out[i].tobytes() for i in range(count)}) == count  # each frame its own, batches not mixed up


@pytest.mark.parametrize(("tile", "overlap"), [(16, 4), (7, 4), (13, 8)])
def test_tiles_give_the_whole_frames_result(tiny: sr.Upscaler, tile: int, overlap: int) -> None:
    """The tiny compact net sees 4 pixels around each output pixel (4 convolutions of 3x3): with at least that much
    overlap, tiles must equal the whole frame up to float32 summation order, stated as at most 1 level of 255."""
    video = frames(3, seed=1)
    whole = sr.upscale(video, model=tiny, tile=None, batch_size=3).astype(int)
    tiled = sr.upscale(video, model=tiny, tile=tile, overlap=overlap, batch_size=2).astype(int)
    assert np.abs(whole - tiled).max() <= 1


def test_too_little_overlap_shows(tiny: sr.Upscaler) -> None:
    """The test above can fail: without overlap the tiles' borders see zero padding instead of their neighbours."""
    video = frames(2, seed=2)
    whole = sr.upscale(video, model=tiny, tile=None).astype(int)
    tiled = sr.upscale(video, model=tiny, tile=8, overlap=0).astype(int)
    assert np.abs(whole - tiled).max() > 1


def test_tiles_cover_each_side_once() -> None:
    assert sr.tiles(30, None, 4) == [(0, 30, 0, 30)]
    assert sr.tiles(30, 64, 4) == [(0, 30, 0, 30)]
    spans = sr.tiles(30, 12, 4)
    assert spans == [(0, 16, 0, 12), (8, 28, 12, 24), (20, 30, 24, 30)]
    assert [k for _, _, k0, k1 in spans for k in range(k0, k1)] == list(range(30))


def test_a_tensor_comes_back_as_a_tensor(tiny: sr.Upscaler) -> None:
    out = sr.upscale(torch.from_numpy(frames(2)), model=tiny, tile=20)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 30 * tiny.scale, 46 * tiny.scale, 3)


def test_the_published_compact_layout_loads(tmp_path: Path) -> None:
    """realesr-general-x4v3's layout (64 features, 32 convolutions), saved as Real-ESRGAN publishes it: a .pth of
    {"params": state dict}."""
    torch.manual_seed(0)
    net = sr.SRVGGNetCompact(4, features=64, convs=32)
    state = net.state_dict()
    assert state["body.1.weight"].shape == (64,) and state["body.66.weight"].shape == (48, 64, 3, 3)
    path = tmp_path / "realesr-general-x4v3.pth"
    torch.save({"params": state}, path)
    model = sr.load_upscaler(path, scale=4)
    assert isinstance(model.net, sr.SRVGGNetCompact) and model.architecture == "RealESRGAN Compact"
    loaded = model.net.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert sr.upscale(frames(1, 8, 8), model=model).shape == (1, 32, 32, 3)


def test_spandrel_detects_the_tiny_model_as_the_same_network(tmp_path: Path) -> None:
    """Where spandrel is installed (a GPU image with a torchvision matching torch), it reads our file as its own
    SRVGGNetCompact and computes the same frames."""
    spandrel = pytest.importorskip("spandrel", exc_type=ImportError, reason="spandrel (the upscalers extra) is not installed")
    path = sr.write_tiny_upscaler(tmp_path / "tiny.safetensors", scale=2)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.name == "RealESRGAN Compact" and descriptor.scale == 2
    ours = sr.load_upscaler(path, scale=2)
    x = torch.rand(1, 3, 12, 10)
    assert torch.allclose(descriptor(x), ours.net(x).clamp(0, 1), atol=1e-6)


def test_the_wrong_scale_is_refused_in_one_sentence(tmp_path: Path) -> None:
    path = sr.write_tiny_upscaler(tmp_path / "x2.safetensors", scale=2)
    with pytest.raises(
        sr.UpscalerFileError, match=r"^upscaler weights .*x2\.safetensors \(RealESRGAN Compact\) enlarge x2, not x4 as asked$"
    ):
        sr.load_upscaler(path, scale=4)
    with pytest.raises(ValueError, match="scale must be 2 or 4, got 3"):
        sr.load_upscaler(path, scale=3)


def test_other_files_are_refused(tmp_path: Path) -> None:
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(sr.UpscalerFileError, match=r"not a compact Real-ESRGAN|could not be loaded by spandrel"):
        sr.load_upscaler(tmp_path / "other.safetensors", scale=2)
    with pytest.raises(sr.UpscalerFileError, match="do not exist"):
        sr.load_upscaler(tmp_path / "nope.pth", scale=2)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_a_pickle_of_arbitrary_objects_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state: dict[str, object] = dict(sr.SRVGGNetCompact(2, features=4, convs=2).state_dict())
    state["extra"] = _Payload(marker)
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(sr.UpscalerFileError, match="objects other than tensors and are refused"):
        sr.load_upscaler(tmp_path / "evil.pth", scale=2)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tile": 0}, "tile must be at least 1"), ({"overlap": -1}, "overlap must be"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments_are_named(tiny: sr.Upscaler, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sr.upscale(frames(1), model=tiny, **kwargs)  # type: ignore[arg-type]
