"""Preview frames while a job denoises: the clean latents a step implies, their reduced tiny decode, and the file.

1. The estimate. Wan's schedulers are flow matching: x_t = (1 - sigma_t) x0 + sigma_t noise, and the transformer
   predicts the velocity v = noise - x0, so x0 = x_t - sigma_t v (`clean_from_velocity`). After a step the engine's
   callback has the new latents but not v. UniPC (the scheduler every Wan2.2 checkpoint ships) has just computed x0
   itself, `convert_model_output` with `prediction_type="flow_prediction"`, and keeps it as `model_outputs[-1]`;
   for FlowMatchEulerDiscreteScheduler, whose step is x_next = x_t + (sigma_next - sigma_t) v, v follows from the
   latents before and after (`velocity_from_euler_step`). `clean_after_step` picks the right one; no extra
   transformer call either way.
2. The reduced decode (`decode_preview`): the tiny decoder with its temporal upsampling off (one frame per latent
   frame: 21 frames for an 81-frame job, a quarter of the decoder's later-stage work and of the frames to encode)
   and its last spatial upsampling off (half the width and height: the last stage, the widest, at a quarter of the
   pixels). 1280x704x81 previews as 640x352x21.
3. The file (`write_preview`): a short H.264 MP4 at fps / 4, so it lasts as long as the video will. Chosen over
   an animated WebP or GIF because it is the encoder the worker already runs (worker/export.py; no new
   dependency), it is several times smaller at the same look (a preview is uploaded every few steps), it is
   faster to encode than Pillow's WebP, every browser plays it muted and looping in a <video> element, and it
   is the content type a video's other variants already have. GIF's 256 colours band the gradients diffusion
   makes; animated WebP would only save the page a <video> tag.
4. Off the denoising thread (`Previewer`): the estimate is snapshotted on the GPU thread (one elementwise copy),
   then a single background thread decodes it on its own CUDA stream (so the decode's kernels overlap the next
   step's instead of queueing in front of them), copies the frames to the CPU, encodes and publishes. At most one
   preview is in flight: a preview step that finds the previous one unfinished is skipped, never queued, so the
   previews cannot fall behind or hold the GPU thread. `close()` waits for the one in flight (a canceled job keeps
   its last preview).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from worker.export import write_mp4
from worker.taehv import TEMPORAL_UPSCALE, Taehv

__all__ = [
    "PREVIEW_SPACE_UPSCALE",
    "Previewer",
    "clean_after_step",
    "clean_from_velocity",
    "decode_preview",
    "is_preview_step",
    "preview_fps",
    "velocity_from_euler_step",
    "write_preview",
]

PREVIEW_SPACE_UPSCALE: Final = (True, True, False)
"""The tiny decoder's last 2x upsampling is skipped: previews are half the video's width and height."""
PREVIEW_CRF: Final = 28

log = logging.getLogger("wanq.previews")


def is_preview_step(done: int, total: int, every: int) -> bool:
    """After `done` of `total` steps, with a preview every `every` steps (0: never). None after the last step: the
    video itself follows at once."""
    return every > 0 and done % every == 0 and 0 < done < total


def clean_from_velocity(sample: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x0 = x_t - sigma_t v: the clean latents a flow-matching velocity implies at noise level sigma_t."""
    return sample - sigma * velocity


def velocity_from_euler_step(
    before: torch.Tensor, after: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """v from one Euler flow-matching step, x_next = x_t + (sigma_next - sigma_t) v."""
    return (after - before) / (sigma_next - sigma)


def clean_after_step(scheduler: Any, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The clean latents the step just taken implies, from the scheduler's state after `scheduler.step` and the
    latents before (`before`, x_t) and after it (`after`). A new float32 tensor: a snapshot that later steps do not
    touch, so it can be decoded on another CUDA stream while the next step runs."""
    outputs = getattr(scheduler, "model_outputs", None)
    if outputs and outputs[-1] is not None and getattr(scheduler, "predict_x0", False):
        if scheduler.config.prediction_type != "flow_prediction":
            raise ValueError(f"previews need a flow-matching scheduler, not prediction_type={scheduler.config.prediction_type!r}")
        return outputs[-1].to(torch.float32, copy=True)  # type: ignore[no-any-return]  # UniPC's x0 = x_t - sigma_t v
    index = scheduler.step_index  # already advanced past the step taken
    sigma, sigma_next = scheduler.sigmas[index - 1], scheduler.sigmas[index]
    velocity = velocity_from_euler_step(before.float(), after.float(), float(sigma), float(sigma_next))
    return clean_from_velocity(before.float(), velocity, float(sigma))


def decode_preview(decoder: Taehv, clean: torch.Tensor) -> np.ndarray:
    """Clean latents [1, C, T, H, W] -> uint8 [T, H * s / 2, W * s / 2, 3] (s: the VAE's spatial factor)."""
    return decoder.decode_frames(clean, time_upscale=False, space_upscale=PREVIEW_SPACE_UPSCALE)


def preview_fps(fps: int) -> int:
    """One preview frame stands for TEMPORAL_UPSCALE video frames."""
    return max(1, round(fps / TEMPORAL_UPSCALE))


def write_preview(frames: np.ndarray, fps: int, path: Path) -> Path:
    """The preview MP4 of `frames` (uint8 [T, H, W, 3], H and W even) for a video of `fps`."""
    return write_mp4(frames, preview_fps(fps), path, preset="veryfast", crf=PREVIEW_CRF)


Publish = Callable[[int, Path], None]
"""Called on the preview thread with (steps done, the preview MP4): upload it, announce it."""


class Previewer:
    """One job's previews: `after_step` from the step callback, `close` when the denoising ends (or is stopped)."""

    def __init__(self, decoder: Taehv, *, every: int, total: int, fps: int, folder: Path, publish: Publish) -> None:
        self.decoder, self.every, self.total, self.fps = decoder, every, total, fps
        self.folder, self.publish = folder, publish
        device = next(decoder.parameters()).device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanq-preview")
        self._pending: Future[None] | None = None
        self.skipped: list[int] = []
        """Preview steps dropped because the previous preview was still being made."""

    @property
    def busy(self) -> bool:
        """A preview is being made."""
        return self._pending is not None and not self._pending.done()

    def after_step(self, scheduler: Any, before: torch.Tensor, after: torch.Tensor, done: int) -> bool:
        """After step `done`: start a preview if one is due and none is in flight. True if one was started."""
        if not is_preview_step(done, self.total, self.every):
            return False
        if self.busy:
            self.skipped.append(done)
            return False
        clean = clean_after_step(scheduler, before, after)
        ready = None
        if self._stream is not None:
            ready = torch.cuda.Event()
            ready.record()  # on the denoising stream, after the snapshot
        self._pending = self._thread.submit(self._make, done, clean, ready)
        return True

    def _make(self, done: int, clean: torch.Tensor, ready: torch.cuda.Event | None) -> None:
        try:
            if self._stream is not None and ready is not None:
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(ready)
                    clean.record_stream(self._stream)  # the allocator must not reuse it before this stream is done
                    frames = decode_preview(self.decoder, clean)  # ends with the copy to the CPU (waits for this stream only)
            else:
                frames = decode_preview(self.decoder, clean)
            self.publish(done, write_preview(frames, self.fps, self.folder / f"preview-{done}.mp4"))
        except Exception:  # a preview must never fail the job
            log.exception("the preview after step %d failed", done)

    def close(self) -> None:
        """Waits for the preview in flight, then stops the thread."""
        self._thread.shutdown(wait=True)
