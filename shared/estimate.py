"""When a running job will complete: from its own step times once a step has run, and before that from the finished
runs of the same model at the same size (video tokens); with neither, no estimate rather than a wrong one.

The worker keeps a `RunClock` per run and writes its answer into the record at each progress transition
(`estimated_completed_at`); the video object turns it into `eta_s`, so the page and the CLI show the same number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from shared.schemas import GenerationSpec


def video_tokens(spec: GenerationSpec) -> int:
    """Latent tokens per transformer call at Wan2.2 A14B's compression (4x8x8 VAE, 2x2 patches); TI2V-5B's is 4x as
    coarse, a constant factor within a model, which is all the estimates compare."""
    return ((spec.num_frames - 1) // 4 + 1) * (spec.height // 16) * (spec.width // 16)


@dataclass(frozen=True)
class RunTimes:
    """How long a finished run took, in seconds: before its first step, per step, and after denoising (decode,
    export, upload)."""

    head_s: float
    step_s: float
    tail_s: float

    def dumps(self) -> str:
        return json.dumps({k: round(v, 4) for k, v in asdict(self).items()})

    @classmethod
    def loads(cls, raw: str | bytes) -> RunTimes:
        return cls(**json.loads(raw))


class RunClock:
    """One run's times (Unix seconds from the caller's clock) and its estimate of when it completes."""

    def __init__(self, total_steps: int, earlier: RunTimes | None, started: float) -> None:
        self.total_steps = total_steps
        self.earlier = earlier
        self.started = started
        self.denoising_from: float | None = None
        self.denoising_until: float | None = None
        self.finished_at: float | None = None

    def completes_at(self, now: float, step: int = 0) -> float | None:
        """After `step` steps (0: none yet): this run's mean step time for the steps left, else the earlier runs'.
        With no earlier run at this size, the steps left alone: the first 15-minute job at a size still shows how
        long its denoising has to go (the decode and export after it, seconds, are not in it)."""
        tail_s = self.earlier.tail_s if self.earlier is not None else 0.0
        if step > 0 and self.denoising_from is not None and self.denoising_until is None:
            mean = (now - self.denoising_from) / step
            return now + (self.total_steps - step) * mean + tail_s
        if self.earlier is None:
            return None
        if self.denoising_until is not None:
            return self.denoising_until + self.earlier.tail_s
        head_left = max(0.0, self.started + self.earlier.head_s - now) if self.denoising_from is None else 0.0
        return now + head_left + self.total_steps * self.earlier.step_s + self.earlier.tail_s

    def times(self) -> RunTimes | None:
        """What this run took (once it finished), for the runs after it."""
        if self.denoising_from is None or self.denoising_until is None or self.finished_at is None:
            return None
        return RunTimes(
            head_s=self.denoising_from - self.started,
            step_s=(self.denoising_until - self.denoising_from) / self.total_steps,
            tail_s=self.finished_at - self.denoising_until,
        )
