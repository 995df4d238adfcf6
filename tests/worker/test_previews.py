"""The preview pieces (worker/previews.py): the clean-latent estimate by hand and from the real schedulers' state
after a step, the steps that get a preview, and a preview decoded by the tiny decoder and written as an MP4 that
decodes back to the asserted frames, size and fps, also from inside a real tiny pipeline's denoising loop."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from worker.export import probe_mp4, read_frames
from worker.previews import (
    Previewer,
    clean_after_step,
    clean_from_velocity,
    decode_preview,
    is_preview_step,
    preview_fps,
    velocity_from_euler_step,
    write_preview,
)
from worker.taehv import tiny_taehv_for
from worker.tiny_model import build_tiny_pipeline


@functools.cache
def tiny_pipeline(variant: str) -> Any:
    """Built once per module: the tests only read it."""
    return build_tiny_pipeline(variant)


def test_the_clean_estimate_by_hand() -> None:
    sample = torch.tensor([1.0, 2.0, -0.5])
    velocity = torch.tensor([0.5, -1.0, 2.0])
    # x0 = x_t - sigma v with sigma 0.4: 1 - 0.2, 2 + 0.4, -0.5 - 0.8
    torch.testing.assert_close(clean_from_velocity(sample, velocity, 0.4), torch.tensor([0.8, 2.4, -1.3]))
    # Euler from sigma 0.4 to 0.3: x_next = x_t - 0.1 v
    after = sample - 0.1 * velocity
    torch.testing.assert_close(velocity_from_euler_step(sample, after, 0.4, 0.3), velocity)


def straight_flow(scheduler: Any, steps: int) -> None:
    """Latents on the straight path from noise to a known x0 with the exact velocity: every step's estimate is x0."""
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 3, 3, generator=generator), torch.randn(1, 4, 2, 3, 3, generator=generator)
    scheduler.set_timesteps(steps)
    latents = noise.clone()
    for index, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[index])
        before = (1 - sigma) * x0 + sigma * noise
        torch.testing.assert_close(latents, before, rtol=1e-4, atol=1e-4)
        velocity = noise - x0
        latents = scheduler.step(velocity, t, before, return_dict=False)[0]
        estimate = clean_after_step(scheduler, before, latents)
        torch.testing.assert_close(estimate, clean_from_velocity(before, velocity, sigma), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(estimate, x0, rtol=1e-4, atol=1e-4)


def test_unipc_keeps_the_estimate_of_the_step_it_took() -> None:
    """The scheduler of the Wan2.2 checkpoints (and of the tiny models): its own x0, no recomputation."""
    straight_flow(UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0), steps=6)


def test_the_euler_estimate_comes_from_the_latents_before_and_after() -> None:
    straight_flow(FlowMatchEulerDiscreteScheduler(shift=5.0), steps=6)


@pytest.mark.parametrize(
    ("total", "every", "steps"), [(10, 3, [3, 6, 9]), (10, 5, [5]), (4, 1, [1, 2, 3]), (8, 0, []), (3, 5, [])]
)
def test_previews_come_every_n_steps_but_not_after_the_last(total: int, every: int, steps: list[int]) -> None:
    assert [done for done in range(1, total + 1) if is_preview_step(done, total, every)] == steps


@pytest.mark.parametrize(("variant", "fps"), [("ti2v-5b", 24), ("t2v-a14b", 16)])
def test_a_preview_is_a_short_mp4_of_one_frame_per_latent_frame_at_half_size(variant: str, fps: int, tmp_path: Path) -> None:
    vae = tiny_pipeline(variant).vae
    scale = vae.config.scale_factor_spatial
    clean = torch.randn(1, vae.config.z_dim, 6, 64 // scale, 96 // scale, generator=torch.Generator().manual_seed(1))
    frames = decode_preview(tiny_taehv_for(vae), clean)
    assert frames.shape == (6, 32, 48, 3)  # a 64x96 video of 21 frames
    probe = probe_mp4(write_preview(frames, fps, tmp_path / "preview.mp4"))
    assert (probe["frames"], probe["size"], probe["fps"]) == (6, (48, 32), fps / 4)
    assert preview_fps(fps) == fps // 4


def test_previews_from_inside_a_real_denoising_loop(tmp_path: Path) -> None:
    """The tiny TI2V-5B pipeline with the engine's kind of step callback: 5 steps, a preview every 2 -> 2 previews
    (after steps 2 and 4), each 2 frames (the job's 5 frames are 2 latent frames) of 32x32 (the job's 64x64)."""
    pipe = tiny_pipeline("ti2v-5b")
    decoder = tiny_taehv_for(pipe.vae)
    previews: list[tuple[int, Path]] = []
    before: list[torch.Tensor] = []

    def on_step_end(pipeline: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done = index + 1
        if is_preview_step(done, 5, every=2):
            clean = clean_after_step(pipeline.scheduler, before[-1] if before else kwargs["latents"], kwargs["latents"])
            previews.append((done, write_preview(decode_preview(decoder, clean), 16, tmp_path / f"preview-{done}.mp4")))
        before[:] = [kwargs["latents"]]
        return kwargs

    pipe(
        prompt="a cat walks along the beach",
        height=64,
        width=64,
        num_frames=5,
        num_inference_steps=5,
        guidance_scale=1.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=on_step_end,
    )
    assert [done for done, _ in previews] == [2, 4]
    for _, path in previews:
        decoded = list(read_frames(path))
        assert len(decoded) == 2 and decoded[0].shape == (32, 32, 3)


def test_the_previewer_skips_while_busy_publishes_in_order_and_close_waits(tmp_path: Path) -> None:
    """Previews every 2 of 9 steps: the first is held in its upload, so the ones due after steps 4 and 6 are
    skipped (never queued); after step 8 the next is made; close() waits for it, as a canceled job would."""
    decoder = tiny_taehv_for(tiny_pipeline("t2v-a14b").vae)
    x0 = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    scheduler = SimpleNamespace(model_outputs=[x0], predict_x0=True, config=SimpleNamespace(prediction_type="flow_prediction"))
    release = threading.Event()
    published: list[tuple[int, dict[str, object]]] = []

    def publish(done: int, path: Path) -> None:
        if not published:
            assert release.wait(timeout=120)
        published.append((done, probe_mp4(path)))

    previewer = Previewer(decoder, every=2, total=9, fps=16, folder=tmp_path, publish=publish)
    assert not previewer.after_step(scheduler, x0, x0, 1)
    assert previewer.after_step(scheduler, x0, x0, 2)
    assert not previewer.after_step(scheduler, x0, x0, 4)
    assert not previewer.after_step(scheduler, x0, x0, 6)
    release.set()
    deadline = time.monotonic() + 120
    while previewer.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [done for done, _ in published] == [2]
    assert previewer.after_step(scheduler, x0, x0, 8)
    previewer.close()
    assert previewer.skipped == [4, 6]
    assert [done for done, _ in published] == [2, 8]
    for _, probe in published:
        assert (probe["frames"], probe["size"], probe["fps"]) == (2, (32, 32), 4.0)
