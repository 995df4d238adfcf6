"""When a running job will complete: from its own step times once a step has run, and before that from the finished
runs of the same model at the same size (video tokens); with neither, no estimate rather than a wrong one.

The worker keeps a `RunClock` per run and writes its answer into the record at each progress transition
(`estimated_completed_at`); the video object turns it into `eta_s`, so the page and the CLI show the same number.

Post-processing (`interpolate`, `upscale`) is part of a run's tail (after denoising): the earlier run's tail is scaled
by the pixel-frames each run handles after its denoise (`tail_pixel_frames`), so a job at the same size with
interpolate 4 and upscale 2 is expected to take longer than one without; a run with the same factors as the earlier
one goes by its tail as it was. The same measure, weighted, counts the post-processing in a job's size against the
tenant's quota (`job_pixel_frames`, shared/quotas.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from shared.schemas import GenerationSpec


def video_tokens(spec: GenerationSpec) -> int:
    """Latent tokens per transformer call at Wan2.2 A14B's compression (4x8x8 VAE, 2x2 patches); TI2V-5B's is 4x as
    coarse, a constant factor within a model, which is all the estimates compare."""
    return ((spec.num_frames - 1) // 4 + 1) * (spec.height // 16) * (spec.width // 16)


POST_PIXEL_FRAME_WEIGHT = 1 / 256
"""What one pixel-frame written by the interpolator or the upscaler counts in a job's size (a generated one counts 1).
From the GPU times: RIFE x2 and a compact x2 upscaler of 81 frames at 1280x720 take about 3 s and 10 s for 148 M and
299 M pixel-frames (issue 28's targets; benchmarks/gpu_postprocess.py measures them), about 3e-8 s each, where
Wan2.2 A14B generates that clip's 75 M pixel-frames in about 40 steps x 20 s (benchmarks/RESULTS.md), 1e-5 s each:
a ratio near 1/400, rounded up to a power of two so as not to undercount."""


def post_processing_pixel_frames(spec: GenerationSpec) -> int:
    """Pixel-frames the job's post-processing writes: the interpolator's frames at the generated size, then the
    upscaler's at the delivered size; 0 without post-processing (or for an image). An extension's are its new
    part's (its source's frames are copied, not processed again)."""
    if spec.kind != "video":
        return 0
    frames = (spec.num_frames - 1) * spec.interpolate + 1
    interpolated = spec.width * spec.height * frames if spec.interpolate != 1 else 0
    upscaled = spec.width * spec.height * spec.upscale**2 * frames if spec.upscale != 1 else 0
    return interpolated + upscaled


def job_pixel_frames(spec: GenerationSpec) -> int:
    """A job's size as a tenant's quota counts it (max_pixel_frames): the pixel-frames it generates, plus those its
    post-processing writes at POST_PIXEL_FRAME_WEIGHT each, rounded up."""
    generated = spec.width * spec.height * spec.num_frames
    return generated + math.ceil(post_processing_pixel_frames(spec) * POST_PIXEL_FRAME_WEIGHT)


def tail_pixel_frames(spec: GenerationSpec) -> int:
    """Pixel-frames a run handles after denoising, each counted once: the decode's, the post-processing's and the
    delivered part's (the MP4 encode and the upload): what a run's tail time is taken to scale with."""
    delivered = spec.width * spec.height * spec.upscale**2 * ((spec.num_frames - 1) * spec.interpolate + 1)
    return spec.width * spec.height * spec.num_frames + post_processing_pixel_frames(spec) + delivered


@dataclass(frozen=True)
class RunTimes:
    """How long a finished run took, in seconds: before its first step, per step, and after denoising (decode,
    post-processing, export, upload); and the pixel-frames of that tail (`tail_pixel_frames`; 0: not recorded, a
    run of an earlier release)."""

    head_s: float
    step_s: float
    tail_s: float
    tail_work: float = 0.0

    def dumps(self) -> str:
        return json.dumps({k: round(v, 4) for k, v in asdict(self).items()})

    @classmethod
    def loads(cls, raw: str | bytes) -> RunTimes:
        return cls(**json.loads(raw))


class RunClock:
    """One run's times (Unix seconds from the caller's clock) and its estimate of when it completes."""

    def __init__(self, total_steps: int, earlier: RunTimes | None, started: float, tail_work: float = 0.0) -> None:
        """`tail_work`: this run's `tail_pixel_frames` (0: the earlier run's tail as it was)."""
        self.total_steps = total_steps
        self.earlier = earlier
        self.tail_work = tail_work
        self.started = started
        self.denoising_from: float | None = None
        self.denoising_until: float | None = None
        self.finished_at: float | None = None

    def completes_at(self, now: float, step: int = 0) -> float | None:
        """After `step` steps (0: none yet): this run's mean step time for the steps left, else the earlier runs'.
        With no earlier run at this size, the steps left alone: the first 15-minute job at a size still shows how
        long its denoising has to go (the decode and export after it, seconds, are not in it)."""
        tail_s = self.tail_s()
        if step > 0 and self.denoising_from is not None and self.denoising_until is None:
            mean = (now - self.denoising_from) / step
            return now + (self.total_steps - step) * mean + tail_s
        if self.earlier is None:
            return None
        if self.denoising_until is not None:
            return self.denoising_until + tail_s
        head_left = max(0.0, self.started + self.earlier.head_s - now) if self.denoising_from is None else 0.0
        return now + head_left + self.total_steps * self.earlier.step_s + tail_s

    def tail_s(self) -> float:
        """The time expected after denoising: the earlier run's tail, scaled by the two runs' tail pixel-frames
        where both are known (post-processing of other factors); 0 with no earlier run."""
        if self.earlier is None:
            return 0.0
        if self.earlier.tail_work > 0 and self.tail_work > 0:
            return self.earlier.tail_s * self.tail_work / self.earlier.tail_work
        return self.earlier.tail_s

    def times(self) -> RunTimes | None:
        """What this run took (once it finished), for the runs after it."""
        if self.denoising_from is None or self.denoising_until is None or self.finished_at is None:
            return None
        return RunTimes(
            head_s=self.denoising_from - self.started,
            step_s=(self.denoising_until - self.denoising_from) / self.total_steps,
            tail_s=self.finished_at - self.denoising_until,
            tail_work=self.tail_work,
        )
