"""Previews and the draft decoder inside the engine, on tiny models of the real classes (CPU): a preview after
every `preview_every` steps, each a decodable MP4 of one frame per latent frame at half the size; a canceled
job keeps the preview made before the cancel; `decoder: "tiny"` gives the job's frames and size; the tiny
decoder beside a tiny model is used without a flag; a checkpoint of other latent channels is refused at start
in one sentence. (Random weights: the pictures mean nothing; shapes, counts and order are what is asserted.)"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from shared.errors import InvalidRequest, JobCanceled
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from tests.preview_steps import preview_job
from worker.engine import WanEngine
from worker.export import probe_mp4
from worker.previews import is_preview_step
from worker.taehv import TINY_FILE
from worker.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {variant: write_tiny_model(root / variant, variant) for variant in ("ti2v-5b", "t2v-a14b")}


@pytest.fixture(scope="module")
def engine(models: dict[str, Path]) -> WanEngine:
    return WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", attention_backend="native"))


def spec(steps: int = 6, **overrides: Any) -> GenerationSpec:
    return preview_job(steps, **overrides)


class Collected:
    """The previews a job published, probed as they come; `on_step` waits for the one a step started, so that
    none is skipped for being late (the Previewer drops a preview while the previous one is in flight)."""

    def __init__(self, tmp: Path, every: int) -> None:
        self.tmp, self.every = tmp, every
        self.previews: list[tuple[int, dict[str, object]]] = []
        self.folders: set[Path] = set()
        self.published = threading.Condition()

    def on_preview(self, done: int, path: Path) -> None:
        self.folders.add(path.parent)
        kept = shutil.copy(path, self.tmp / f"kept-{done}.mp4")  # the engine deletes its file after this call
        with self.published:
            self.previews.append((done, probe_mp4(Path(kept))))
            self.published.notify_all()

    def on_step(self, done: int, total: int) -> None:
        if is_preview_step(done, total, self.every):  # none after the last step: nothing to wait for there
            with self.published:
                self.published.wait_for(lambda: any(d == done for d, _ in self.previews), timeout=30)


def test_previews_every_two_of_six_steps_are_half_size_mp4s_of_the_latent_frames(engine: WanEngine, tmp_path: Path) -> None:
    assert engine.preview_decoder is not None  # the tiny model's own TAEHV (taehv.safetensors), without a flag
    seen = Collected(tmp_path, every=2)
    result = engine.generate(spec(preview_every=2), on_step=seen.on_step, on_preview=seen.on_preview)
    # After steps 2 and 4; none after the last (the video itself follows at once): 2 previews, in step order.
    assert [done for done, _ in seen.previews] == [2, 4]
    for _, probe in seen.previews:
        # 9 frames are 3 latent frames: one preview frame each; TI2V-5B's 64x64 previews at 32x32, at fps / 4.
        assert probe["frames"] == 3 and probe["size"] == (32, 32) and probe["fps"] == 4.0, probe
    assert result.frames.shape == (9, 64, 64, 3)
    assert seen.folders and not any(folder.exists() for folder in seen.folders)  # the engine's files are gone


def test_no_previews_unless_asked_and_the_worker_default_applies(models: dict[str, Path], tmp_path: Path) -> None:
    seen = Collected(tmp_path, every=3)
    quiet = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", preview_every=3))
    quiet.generate(spec(preview_every=0, guidance_scale_2=3.0), on_preview=seen.on_preview)
    assert seen.previews == []  # the job's 0 wins over the worker's 3
    quiet.generate(spec(guidance_scale_2=3.0), on_step=seen.on_step, on_preview=seen.on_preview)
    # The worker's default: after step 3 of 6. A14B's Wan2.1 latents: 8x spatial, so 64x64 previews at 32x32.
    assert [(d, p["frames"], p["size"]) for d, p in seen.previews] == [(3, 3, (32, 32))]


def test_a_canceled_job_keeps_its_last_preview(engine: WanEngine, tmp_path: Path) -> None:
    seen = Collected(tmp_path, every=2)

    def cancel_at_three(done: int, total: int) -> None:
        seen.on_step(done, total)
        if done == 3:
            raise JobCanceled("canceled")

    with pytest.raises(JobCanceled):
        engine.generate(spec(steps=20, preview_every=2), on_step=cancel_at_three, on_preview=seen.on_preview)
    assert [done for done, _ in seen.previews] == [2]
    assert seen.previews[0][1]["frames"] == 3


def test_the_tiny_decoder_makes_the_jobs_frames_and_size(engine: WanEngine) -> None:
    full = engine.generate(spec(steps=2))
    draft = engine.generate(spec(steps=2, decoder="tiny"))
    assert draft.frames.shape == full.frames.shape == (9, 64, 64, 3)
    assert draft.frames.dtype == full.frames.dtype
    assert not (draft.frames == full.frames).all()  # another decoder made it


def test_without_a_tiny_decoder_draft_jobs_are_refused_and_previews_skipped(models: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(models["ti2v-5b"], bare)
    (bare / TINY_FILE).unlink()
    plain = WanEngine(bare, EngineSettings(device="cpu"))
    assert plain.preview_decoder is None
    with pytest.raises(InvalidRequest, match="no tiny decoder") as refused:
        plain.generate(spec(steps=2, decoder="tiny"))
    assert refused.value.param == "decoder"
    seen = Collected(tmp_path, every=1)
    plain.generate(spec(steps=2, preview_every=1), on_preview=seen.on_preview)
    assert seen.previews == []


def test_a_preview_vae_of_other_latent_channels_is_refused_at_start_in_one_sentence(models: dict[str, Path]) -> None:
    wrong = models["t2v-a14b"] / TINY_FILE  # 16 latent channels; TI2V-5B's latents have 48
    with pytest.raises(ValueError) as refused:
        WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", preview_vae_path=str(wrong)))
    message = str(refused.value)
    assert message == (
        f"preview VAE {wrong} has 16 latent channels but the model's latents have 48: "
        "TI2V-5B needs taew2_2 (48), the A14B models taew2_1 (16)"
    )
    assert "\n" not in message and message.count(". ") == 0
    # The right one by flag loads (the A14B model's own file, given explicitly)
    flagged = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", preview_vae_path=str(wrong)))
    assert flagged.preview_decoder is not None and flagged.preview_decoder.latent_channels == 16


def test_wanq_generate_refuses_a_wrong_preview_vae_in_one_line(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wanq.cli import main
    from wanq.config import UsageError

    base = ["generate", "--model-path", str(models["ti2v-5b"]), "--tiny", "--prompt", "a cat", "--device", "cpu"]
    wrong = models["t2v-a14b"] / TINY_FILE
    with pytest.raises(UsageError) as refused:
        main([*base, "--preview-vae-path", str(wrong), "-o", str(tmp_path / "a.mp4")])
    assert refused.value.message == (
        f"wanq generate: preview VAE {wrong} has 16 latent channels but the model's latents have 48: "
        "TI2V-5B needs taew2_2 (48), the A14B models taew2_1 (16)"
    )
    # A file that is not there: refused by the option's check, before anything loads
    with pytest.raises(UsageError) as missing:
        main([*base, "--preview-vae-path", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "b.mp4")])
    assert f"--preview-vae-path {tmp_path / 'nope.pth'} is not a file" in missing.value.message
    assert "\n" not in missing.value.message
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()
