"""The time-left estimate (shared/estimate.py) on a scripted clock."""

from __future__ import annotations

from typing import Any

import pytest

from shared.estimate import (
    RunClock,
    RunTimes,
    job_pixel_frames,
    post_processing_pixel_frames,
    tail_pixel_frames,
    video_tokens,
)
from shared.schemas import GenerationSpec

EARLIER = RunTimes(head_s=2.0, step_s=3.0, tail_s=5.0)


def test_before_its_first_step_a_run_goes_by_the_earlier_run_at_its_size() -> None:
    clock = RunClock(10, EARLIER, started=100.0)
    assert clock.completes_at(100.0) == 100.0 + 2 + 10 * 3 + 5
    assert clock.completes_at(101.5) == 137.0  # loading goes on as the earlier run did: the estimate stays put
    clock.denoising_from = 103.0  # a slower start than before: the steps and the tail follow from now
    assert clock.completes_at(103.0) == 103.0 + 10 * 3 + 5


def test_once_a_step_ran_a_run_goes_by_its_own_steps() -> None:
    clock = RunClock(10, EARLIER, started=100.0)
    clock.denoising_from = 102.0
    # 4 steps of 1 s each, where the earlier run took 3 s a step (a smaller size, another GPU, the cache...).
    assert clock.completes_at(106.0, step=4) == 106.0 + 6 * 1.0 + 5
    assert clock.completes_at(110.0, step=6) == 110.0 + 4 * (8 / 6) + 5
    clock.denoising_until = 112.0  # decoding, exporting and uploading as long as the earlier run's
    assert clock.completes_at(115.0) == 117.0


def test_nothing_to_go_by_gives_no_estimate() -> None:
    clock = RunClock(10, None, started=100.0)
    clock.denoising_from = 101.0
    assert clock.completes_at(101.0) is None
    assert clock.times() is None  # not finished


def test_a_first_run_at_its_size_goes_by_its_own_steps_alone() -> None:
    clock = RunClock(10, None, started=100.0)
    clock.denoising_from = 101.0
    assert clock.completes_at(105.0, step=2) == 105.0 + 8 * 2.0  # the steps left; the tail after them is unknown
    clock.denoising_until = 121.0
    assert clock.completes_at(122.0, step=10) is None  # decoding: nothing to go by for what is left


def test_a_finished_run_leaves_its_times_for_the_next() -> None:
    clock = RunClock(4, None, started=100.0)
    clock.denoising_from, clock.denoising_until, clock.finished_at = 101.0, 109.0, 112.5
    times = clock.times()
    assert times == RunTimes(head_s=1.0, step_s=2.0, tail_s=3.5)
    assert RunTimes.loads(times.dumps()) == times


@pytest.mark.parametrize(
    ("size", "frames", "tokens"),
    [((1280, 720), 81, 21 * 45 * 80), ((832, 480), 81, 21 * 30 * 52), ((64, 64), 17, 5 * 4 * 4), ((64, 64), 5, 2 * 16)],
)
def test_video_tokens(size: tuple[int, int], frames: int, tokens: int) -> None:
    spec = GenerationSpec(
        model="m", prompt="p", negative_prompt="", width=size[0], height=size[1], num_frames=frames, fps=16,
        num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=None, flow_shift=5.0, seed=0,
    )  # fmt: skip
    assert video_tokens(spec) == tokens


def _spec(**fields: Any) -> GenerationSpec:
    base: dict[str, Any] = dict(
        model="m", prompt="p", negative_prompt="", width=1280, height=720, num_frames=81, fps=16,
        num_inference_steps=40, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=5.0, seed=0,
    )  # fmt: skip
    return GenerationSpec(**(base | fields))


def test_post_processing_counts_in_a_jobs_size() -> None:
    plain, smooth_large = _spec(), _spec(interpolate=4, upscale=2)
    assert post_processing_pixel_frames(plain) == 0 and job_pixel_frames(plain) == 1280 * 720 * 81
    # 321 frames written by RIFE at 1280x720, then 321 by the upscaler at 2560x1440, at 1/256 each
    written = 1280 * 720 * 321 + 2560 * 1440 * 321
    assert post_processing_pixel_frames(smooth_large) == written
    assert job_pixel_frames(smooth_large) == 1280 * 720 * 81 + written // 256 > job_pixel_frames(plain)
    assert job_pixel_frames(_spec(interpolate=2)) < job_pixel_frames(_spec(interpolate=4))
    assert job_pixel_frames(_spec(upscale=2)) < job_pixel_frames(_spec(upscale=4))
    # An extension post-processes its new part only; an image job has none
    ext = _spec(interpolate=2, upscale=2, extend_from="video_src", source_frames=81, num_frames=17)
    assert post_processing_pixel_frames(ext) == 1280 * 720 * 33 + 2560 * 1440 * 33
    assert post_processing_pixel_frames(_spec(kind="image", num_frames=1)) == 0


def test_the_tail_of_a_run_with_post_processing_is_expected_to_take_longer() -> None:
    plain, post = _spec(), _spec(interpolate=4, upscale=2)
    earlier = RunTimes(head_s=2.0, step_s=3.0, tail_s=5.0, tail_work=tail_pixel_frames(plain))
    ratio = tail_pixel_frames(post) / tail_pixel_frames(plain)
    assert ratio > 1
    slower = RunClock(40, earlier, started=100.0, tail_work=tail_pixel_frames(post))
    same = RunClock(40, earlier, started=100.0, tail_work=tail_pixel_frames(plain))
    assert same.completes_at(100.0) == 100.0 + 2 + 40 * 3 + 5
    assert slower.completes_at(100.0) == pytest.approx(100.0 + 2 + 40 * 3 + 5 * ratio)
    slower.denoising_from, slower.denoising_until = 102.0, 222.0
    assert slower.completes_at(223.0) == pytest.approx(222.0 + 5 * ratio)
    # A run recorded before tail_work existed: its tail as it was, and it still loads
    old = RunTimes.loads('{"head_s": 2.0, "step_s": 3.0, "tail_s": 5.0}')
    assert RunClock(40, old, started=100.0, tail_work=tail_pixel_frames(post)).completes_at(100.0) == 227.0
    # A finished run leaves its tail's pixel-frames for the next
    slower.finished_at = 240.0
    times = slower.times()
    assert times is not None and times.tail_work == tail_pixel_frames(post)
    assert RunTimes.loads(times.dumps()) == times
