"""The previews an engine's job publishes, kept and decoded as they come, for the tests of previews beside other
engine features (tests/worker/test_preview_combinations.py, and its two-rank script).

`on_step` waits, at each step that is due a preview, until that preview is published, so that none is skipped
for being late (the Previewer drops a preview while the previous one is still in flight); steps that are due none
(the last one among them) do not wait."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.schemas import GenerationSpec
from worker.export import probe_mp4, read_frames
from worker.previews import is_preview_step

WAIT_S = 60


def preview_job(steps: int = 6, **overrides: Any) -> GenerationSpec:
    """The previews' tests' job on a tiny model: 64x64x9 (3 latent frames), guided, seed 5."""
    fields: dict[str, Any] = dict(
        model="tiny",
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=64,
        height=64,
        num_frames=9,
        fps=16,
        num_inference_steps=steps,
        guidance_scale=4.0,
        guidance_scale_2=None,
        flow_shift=5.0,
        seed=5,
    )
    return GenerationSpec.model_validate({**fields, **overrides})


class Previews:
    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every = folder, every
        self.folder.mkdir(parents=True, exist_ok=True)
        self.steps: list[int] = []
        self.probes: dict[int, dict[str, object]] = {}
        self.frames: dict[int, np.ndarray] = {}
        self._published = threading.Condition()

    def on_preview(self, done: int, path: Path) -> None:
        kept = Path(shutil.copy(path, self.folder / f"preview-{done}.mp4"))  # the engine deletes its file after this
        probe, frames = probe_mp4(kept), np.stack(list(read_frames(kept)))
        with self._published:
            self.steps.append(done)
            self.probes[done], self.frames[done] = probe, frames
            self._published.notify_all()

    def on_step(self, done: int, total: int) -> None:
        if is_preview_step(done, total, self.every):
            with self._published:
                self._published.wait_for(lambda: done in self.probes, timeout=WAIT_S)

    def shapes(self) -> list[tuple[int, int, tuple[int, int]]]:
        """(step, frames, (width, height)) of each preview, in the order they were published."""
        return [(d, self.probes[d]["frames"], self.probes[d]["size"]) for d in self.steps]  # type: ignore[misc]
