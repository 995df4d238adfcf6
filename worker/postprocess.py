"""A job's post-processing between the decode and the MP4: interpolate (RIFE, worker/interpolate.py), then upscale
(worker/upscale.py). The worker loads both at start (a bad file refuses the start in one sentence); its heartbeat
advertises the factors it can run (`capabilities`), which the API checks a job against."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import InvalidRequest
from shared.schemas import GenerationSpec, Stage
from shared.settings import EngineSettings
from worker.interpolate import FACTORS, Interpolator, InterpolatorFileError, interpolate, load_interpolator
from worker.upscale import Upscaler, UpscalerFileError, load_upscaler, upscale

TINY_INTERPOLATOR = "rife.safetensors"
"""Beside a tiny model's pipeline (`wanq tiny-model`): its tiny RIFE, used without --interpolator-path."""
TINY_UPSCALER = "upscaler_x2.safetensors"
"""Beside a tiny model's pipeline: its tiny compact x2 upscaler, used without --upscaler-path."""


@dataclass(frozen=True)
class PostProcessors:
    interpolator: Interpolator | None = None
    upscaler: Upscaler | None = None

    def capabilities(self) -> dict[str, list[int]]:
        """The factors of each stage this worker runs, as its heartbeat advertises them."""
        return {
            "interpolate": list(FACTORS) if self.interpolator is not None else [1],
            "upscale": [1, self.upscaler.scale] if self.upscaler is not None else [1],
        }

    def check(self, spec: GenerationSpec) -> None:
        """Raises InvalidRequest (one sentence, naming the field) if `spec` asks for a factor this worker lacks."""
        can = self.capabilities()
        for field in ("interpolate", "upscale"):
            factor = getattr(spec, field)
            if factor not in can[field]:
                raise InvalidRequest(f"invalid '{field}' {factor}: this worker can {field} by {can[field]} only", param=field)

    @staticmethod
    def stages(spec: GenerationSpec) -> list[Stage]:
        """The post-processing stages `spec` runs, in order (none for a job without it, or an image)."""
        if spec.kind != "video":
            return []
        return [
            stage for stage, factor in ((Stage.interpolating, spec.interpolate), (Stage.upscaling, spec.upscale)) if factor != 1
        ]

    def apply(
        self,
        frames: np.ndarray,
        spec: GenerationSpec,
        timings: dict[str, float],
        on_stage: Callable[[Stage], None] | None = None,
    ) -> np.ndarray:
        """frames [F, H, W, 3] -> the delivered ones: interpolated, then upscaled, each stage timed in `timings`
        (`interpolating`, `upscaling`) and announced to `on_stage` as it begins. A factor this worker cannot run
        fails the job in one sentence."""
        self.check(spec)
        for stage in self.stages(spec):
            if on_stage is not None:
                on_stage(stage)
            t0 = time.perf_counter()
            if stage is Stage.interpolating:
                assert self.interpolator is not None  # check() saw to it
                frames = interpolate(frames, spec.interpolate, model=self.interpolator)
            else:
                assert self.upscaler is not None
                frames = upscale(frames, model=self.upscaler)
            timings[stage.value] = time.perf_counter() - t0
        return frames


def paths(settings: EngineSettings, model_path: Path | None) -> tuple[Path | None, Path | None]:
    """(interpolator, upscaler) files: the settings', else a tiny model's own beside its pipeline, else None."""

    def pick(configured: str, tiny: str) -> Path | None:
        if configured:
            return Path(configured)
        beside = model_path / tiny if model_path is not None else None
        return beside if beside is not None and beside.is_file() else None

    return pick(settings.interpolator_path, TINY_INTERPOLATOR), pick(settings.upscaler_path, TINY_UPSCALER)


def load_post_processors(settings: EngineSettings, model_path: Path | None, device: Any = "cpu") -> PostProcessors:
    """The worker's post-processors on `device`; a file that cannot be used raises ValueError in one sentence."""
    interpolator_path, upscaler_path = paths(settings, model_path)
    interpolator = upscaler = None
    if interpolator_path is not None:
        if not interpolator_path.is_file():
            raise InterpolatorFileError(f"--interpolator-path {interpolator_path} does not exist or is not a file")
        interpolator = load_interpolator(interpolator_path, device=device)
    if upscaler_path is not None:
        upscaler = _load_upscaler_any_scale(upscaler_path, device)
    return PostProcessors(interpolator, upscaler)


def _load_upscaler_any_scale(path: Path, device: Any) -> Upscaler:
    """The upscaler in `path` at the scale the file has (x2 or x4)."""
    last: UpscalerFileError | None = None
    for scale in (2, 4):
        try:
            return load_upscaler(path, scale=scale, device=device)
        except UpscalerFileError as exc:
            if "enlarge x" not in str(exc):
                raise
            last = exc
    assert last is not None
    raise UpscalerFileError(f"--upscaler-path {path}: {last} (wanq runs x2 and x4 upscalers)")
