"""The worker's post-processors (worker/postprocess.py) on the tiny models' files: found beside a tiny pipeline
without flags, refused at start in one sentence when unusable, advertised as capabilities, and applied in order
with the generated frames kept bit for bit at i x k; and the spec side (shared/specs.py): the output limit, old
records, remix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import InvalidRequest
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings, JobSettings
from shared.specs import post_processed, remix_spec
from worker.interpolate import write_tiny_interpolator
from worker.postprocess import TINY_INTERPOLATOR, TINY_UPSCALER, PostProcessors, load_post_processors
from worker.upscale import write_tiny_upscaler

SPEC = GenerationSpec(
    model="tiny-t2v-a14b",
    prompt="p",
    negative_prompt="",
    width=32,
    height=16,
    num_frames=5,
    fps=8,
    num_inference_steps=2,
    guidance_scale=3.0,
    guidance_scale_2=3.0,
    flow_shift=5.0,
    seed=1,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_interpolator(folder / TINY_INTERPOLATOR)
    write_tiny_upscaler(folder / TINY_UPSCALER, scale=2)
    return folder


def test_a_tiny_models_files_are_used_without_flags(tiny_dir: Path, tmp_path: Path) -> None:
    post = load_post_processors(EngineSettings(), tiny_dir)
    assert post.capabilities() == {"interpolate": [1, 2, 4], "upscale": [1, 2]}
    assert load_post_processors(EngineSettings(), tmp_path).capabilities() == {"interpolate": [1], "upscale": [1]}
    x4 = write_tiny_upscaler(tmp_path / "x4.safetensors", scale=4)
    flagged = load_post_processors(EngineSettings(upscaler_path=str(x4)), tiny_dir)
    assert flagged.capabilities()["upscale"] == [1, 4]  # the scale read from the file


def test_unusable_files_are_refused_at_start_in_one_sentence(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    for settings in (
        EngineSettings(interpolator_path=str(junk)),
        EngineSettings(upscaler_path=str(junk)),
        EngineSettings(interpolator_path=str(tmp_path / "missing.safetensors")),
    ):
        with pytest.raises(ValueError) as caught:
            load_post_processors(settings, None)
        message = str(caught.value)
        assert str(tmp_path) in message and "\n" not in message, message


def test_apply_interpolates_then_upscales_and_keeps_the_generated_frames(tiny_dir: Path) -> None:
    post = load_post_processors(EngineSettings(), tiny_dir)
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    timings: dict[str, float] = {}
    smooth = post.apply(frames, SPEC.model_copy(update={"interpolate": 4}), timings)
    assert smooth.shape == (17, 16, 32, 3) and set(timings) == {"interpolating"}
    assert np.array_equal(smooth[::4], frames)  # bit for bit, before any encode
    both = post.apply(frames, SPEC.model_copy(update={"interpolate": 2, "upscale": 2}), timings)
    assert both.shape == (9, 32, 64, 3) and set(timings) == {"interpolating", "upscaling"}
    with pytest.raises(InvalidRequest, match="this worker can upscale by \\[1, 2\\] only"):
        post.apply(frames, SPEC.model_copy(update={"upscale": 4}), {})
    with pytest.raises(InvalidRequest, match="interpolate"):
        PostProcessors().apply(frames, SPEC.model_copy(update={"interpolate": 2}), {})


def test_output_limit_names_the_field() -> None:
    limits = JobSettings(max_output_pixel_frames=32 * 16 * 9)
    assert post_processed(SPEC, 2, None, limits).output_frames == 9
    with pytest.raises(InvalidRequest) as caught:
        post_processed(SPEC, 4, None, limits)
    assert caught.value.param == "interpolate" and "64x32" not in caught.value.message
    with pytest.raises(InvalidRequest) as big:
        post_processed(SPEC, 2, 2, limits)
    assert big.value.param == "upscale" and "64x32 x 9 frames" in big.value.message


def test_old_records_read_and_new_ones_stay_as_before_without_post_processing() -> None:
    assert "interpolate" not in SPEC.model_dump() and "upscale" not in SPEC.model_dump()
    done = SPEC.model_copy(update={"interpolate": 2, "upscale": 2})
    again = GenerationSpec.model_validate(done.model_dump())
    assert (again.interpolate, again.upscale, again.output_size, again.output_fps, again.seconds) == (2, 2, "64x32", 16, "0.5625")


def test_remix_keeps_the_factors_unless_given() -> None:
    from shared.catalog import PRESETS

    catalog = {"tiny-t2v-a14b": PRESETS["tiny-t2v-a14b"]}
    parent = SPEC.model_copy(update={"interpolate": 2, "upscale": 2})
    kept = remix_spec(parent, "q", catalog, JobSettings(), image_key=None)
    assert (kept.interpolate, kept.upscale) == (2, 2)
    changed = remix_spec(parent, "q", catalog, JobSettings(), image_key=None, upscale=1)
    assert (changed.interpolate, changed.upscale) == (2, 1)


def test_the_registry_refuses_a_missing_file_before_anything_loads(tmp_path: Path) -> None:
    from worker.options import registry
    from worker.options.option import Environment

    missing = tmp_path / "none.safetensors"
    problems = registry.validate(EngineSettings(interpolator_path=str(missing), upscaler_path=str(missing)), Environment())
    assert problems.configuration == [
        f"--interpolator-path {missing} does not exist or is not a file",
        f"--upscaler-path {missing} does not exist or is not a file",
    ]
    write_tiny_interpolator(missing)
    assert not registry.validate(EngineSettings(interpolator_path=str(missing)), Environment())
