"""The tiny decoder (worker/taehv.py): on each tiny model it makes what the full VAE makes (frames, size, dtype)
for the same latents; a state dict of the published layout (built here at full widths, with the key names and
shapes of madebyollin/taehv's taew2_1 / taew2_2, written out below) loads from .safetensors and from a plain
torch.save file; a file of other latent channels is refused in one sentence, and a pickle is never run.
Weights are random: the pictures are meaningless, only the layout and the frame arithmetic are checked."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from worker.engine import decode_latents
from worker.taehv import (
    PUBLISHED,
    TINY_FILE,
    Taehv,
    infer_config,
    load_taehv,
    read_state_dict,
    save_taehv,
    tiny_taehv_for,
)
from worker.tiny_model import VARIANTS, build_tiny_pipeline, write_tiny_model


@functools.cache
def tiny_pipeline(variant: str) -> Any:
    """Built once per module: the tests only read it."""
    return build_tiny_pipeline(variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("latent_frames", [1, 3])
def test_tiny_decoder_makes_the_full_vaes_frames_and_size(variant: str, latent_frames: int) -> None:
    pipe = tiny_pipeline(variant)
    vae = pipe.vae
    scale = vae.config.scale_factor_spatial
    latents = torch.randn(
        1, vae.config.z_dim, latent_frames, 64 // scale, 96 // scale, generator=torch.Generator().manual_seed(1)
    )
    full = decode_latents(vae, pipe.video_processor, latents)
    tiny = tiny_taehv_for(vae).decode_frames(latents)
    assert full.shape == (4 * latent_frames - 3, 64, 96, 3)
    assert tiny.shape == full.shape and tiny.dtype == full.dtype == np.uint8
    assert tiny.std() > 0  # random weights, but not a constant picture


def test_chunked_decode_equals_the_whole_video_at_once() -> None:
    """A MemBlock's memory is the previous frame's input: carried across chunks, chunking changes nothing."""
    model = tiny_taehv_for(tiny_pipeline("t2v-a14b").vae)
    latents = torch.randn(1, 16, 5, 4, 6, generator=torch.Generator().manual_seed(2))
    whole = model.decode_frames(latents)
    one_frame_chunks = model.decode_frames(latents, chunk_bytes=1)
    assert whole.shape == (17, 32, 48, 3)
    np.testing.assert_array_equal(one_frame_chunks, whole)


# The published checkpoints' tensors (madebyollin/taehv taehv.py: nn.Sequential indices), C latent channels, p patch.
def published_shapes(c: int, p: int) -> dict[str, tuple[int, ...]]:
    return {
        "encoder.0.weight": (64, 3 * p * p, 3, 3),
        "encoder.2.conv.weight": (64, 128, 1, 1),  # TPool, stride 2
        "encoder.3.weight": (64, 64, 3, 3),  # stride-2 conv, no bias
        "encoder.4.conv.0.weight": (64, 128, 3, 3),  # MemBlock: [x, past] -> 64
        "encoder.12.conv.weight": (64, 64, 1, 1),  # TPool, stride 1
        "encoder.17.weight": (c, 64, 3, 3),
        "decoder.1.weight": (256, c, 3, 3),
        "decoder.3.conv.0.weight": (256, 512, 3, 3),
        "decoder.5.conv.4.bias": (256,),
        "decoder.7.conv.weight": (256, 256, 1, 1),  # TGrow, stride 1
        "decoder.8.weight": (128, 256, 3, 3),
        "decoder.13.conv.weight": (256, 128, 1, 1),  # TGrow, stride 2
        "decoder.14.weight": (64, 128, 3, 3),
        "decoder.19.conv.weight": (128, 64, 1, 1),
        "decoder.20.weight": (64, 64, 3, 3),
        "decoder.22.weight": (3 * p * p, 64, 3, 3),
        "decoder.22.bias": (3 * p * p,),
    }


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_state_dict_of_the_published_layout_loads(name: str, tmp_path: Path) -> None:
    config = PUBLISHED[name]
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in Taehv(config).state_dict().items()}
    assert len(state) == 128  # 64 encoder and 64 decoder tensors, as in the published files
    for key, shape in published_shapes(config.latent_channels, config.patch_size).items():
        assert tuple(state[key].shape) == shape, key
    assert infer_config(state) == config

    # Some checkpoints carry the first TGrow at stride 2 (trained with that upsampling on): its last sub-frame is used.
    doubled = dict(state)
    doubled["decoder.7.conv.weight"] = torch.cat(
        [torch.zeros_like(state["decoder.7.conv.weight"]), state["decoder.7.conv.weight"]]
    )
    torch.save(doubled, tmp_path / f"{name}.pth")
    save_taehv(Taehv.from_state_dict(state), tmp_path / f"{name}.safetensors")

    latents = torch.randn(1, config.latent_channels, 2, 2, 3, generator=torch.Generator().manual_seed(3))
    decoded = []
    for file in (tmp_path / f"{name}.pth", tmp_path / f"{name}.safetensors"):
        model = load_taehv(file, latent_channels=config.latent_channels)
        for key, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, state[key], rtol=0, atol=0)
        decoded.append(model.decode_frames(latents))
    scale = 8 * config.patch_size
    assert decoded[0].shape == (5, 2 * scale, 3 * scale, 3)
    np.testing.assert_array_equal(decoded[0], decoded[1])


def test_other_latent_channels_are_refused_in_one_sentence(tmp_path: Path) -> None:
    file = save_taehv(tiny_taehv_for(tiny_pipeline("t2v-a14b").vae), tmp_path / "taew2_1.safetensors")
    with pytest.raises(ValueError) as refused:
        load_taehv(file, latent_channels=48)
    message = str(refused.value)
    assert message == (
        f"preview VAE {file} has 16 latent channels but the model's latents have 48: "
        "TI2V-5B needs taew2_2 (48), the A14B models taew2_1 (16)"
    )
    assert ". " not in message.replace(str(file), "")  # one sentence


class Payload:
    ran = False

    def __reduce__(self) -> tuple[object, ...]:
        return (Payload._run, ())

    @staticmethod
    def _run() -> None:
        Payload.ran = True


def test_a_pickle_is_never_run_and_other_files_are_refused(tmp_path: Path) -> None:
    torch.save({"decoder.1.weight": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="hold objects other than tensors and are refused"):
        read_state_dict(tmp_path / "evil.pth")
    assert not Payload.ran

    torch.save({"decoder.0.weight": torch.zeros(4, 48, 1, 1)}, tmp_path / "super.pth")
    with pytest.raises(ValueError, match=r"TAEHV 'super' decoder \(taew2_2_super\), which wanq does not implement"):
        load_taehv(tmp_path / "super.pth", latent_channels=48)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a TAEHV state dict"):
        load_taehv(tmp_path / "other.pth", latent_channels=16)


def test_the_tiny_decoder_saves_and_loads_with_its_narrow_widths(tmp_path: Path) -> None:
    vae = tiny_pipeline("ti2v-5b").vae
    model = tiny_taehv_for(vae, seed=5)
    file = save_taehv(model, tmp_path / "tiny" / "taew2_2.safetensors")
    assert file.stat().st_size < 1_000_000  # about 0.4 MB beside a tiny pipeline (the published ones: about 22 MB)
    loaded = load_taehv(file, latent_channels=48)
    assert loaded.config == model.config and loaded.config.patch_size == 2
    latents = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(loaded.decode_frames(latents), model.decode_frames(latents))
    assert not np.array_equal(tiny_taehv_for(vae, seed=6).decode_frames(latents), model.decode_frames(latents))

    encoded = model.encode(torch.rand(5, 3, 32, 32))  # 5 frames, padded to 8: 2 latent frames
    assert encoded.shape == (48, 2, 2, 2)


@pytest.mark.parametrize(("variant", "channels"), [("ti2v-5b", 48), ("i2v-a14b", 16)])
def test_wanq_tiny_model_writes_a_tiny_decoder_beside_the_pipeline(variant: str, channels: int, tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / variant, variant)
    decoder = load_taehv(path / TINY_FILE, latent_channels=channels)
    pipe = DiffusionPipeline.from_pretrained(path)  # the extra file does not disturb diffusers
    assert pipe.vae.config.z_dim == decoder.latent_channels
    torch.testing.assert_close(decoder.state_dict(), tiny_taehv_for(pipe.vae).state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_full_decode_hands_its_frames_over_as_it_makes_them(variant: str) -> None:
    """decode_latents(on_frames=...) (what feeds the MP4 encoder beside the decode): one chunk per latent frame,
    1 frame then 4 at a time, and together the same bytes as the decode without it."""
    pipe = tiny_pipeline(variant)
    vae = pipe.vae
    scale = vae.config.scale_factor_spatial
    latents = torch.randn(1, vae.config.z_dim, 4, 64 // scale, 96 // scale, generator=torch.Generator().manual_seed(5))
    chunks: list[np.ndarray] = []
    streamed = decode_latents(vae, pipe.video_processor, latents, chunks.append)
    whole = decode_latents(vae, pipe.video_processor, latents)
    assert [len(c) for c in chunks] == [1, 4, 4, 4]
    assert np.array_equal(np.concatenate(chunks), whole) and np.array_equal(streamed, whole)
    vae.enable_tiling(
        tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16
    )
    try:
        tiled: list[np.ndarray] = []
        frames = decode_latents(vae, pipe.video_processor, latents, tiled.append)
    finally:
        vae.disable_tiling()
    assert [len(c) for c in tiled] == [13] and np.array_equal(tiled[0], frames)  # tiles: all at the end
