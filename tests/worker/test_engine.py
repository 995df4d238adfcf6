"""The engine's single-process paths on tiny models of the real classes (CPU): options applied
through diffusers' mechanisms, cancel at a step, the prompt cache, and `wanq generate` flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.errors import InvalidRequest, JobCanceled
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from wanq.cli import main
from worker.engine import WanEngine, is_out_of_memory
from worker.export import probe_mp4
from worker.startup import start_engine
from worker.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {variant: write_tiny_model(root / variant, variant) for variant in ("ti2v-5b", "t2v-a14b")}


@pytest.fixture(scope="module")
def plain(models: dict[str, Path]) -> WanEngine:
    """One engine shared by several tests: no offload, no cache, an explicit backend and VAE tiling."""
    return WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", attention_backend="native", vae_tiling=True))


def spec(steps: int = 3, **overrides: object) -> GenerationSpec:
    fields: dict[str, object] = dict(
        model="tiny",
        prompt="a cat walks along the beach",
        negative_prompt="blurry",
        width=64,
        height=64,
        num_frames=5,
        fps=16,
        num_inference_steps=steps,
        guidance_scale=4.0,
        guidance_scale_2=None,
        flow_shift=5.0,
        seed=3,
    )
    fields.update(overrides)
    return GenerationSpec(**fields)  # type: ignore[arg-type]


def block_calls(engine: WanEngine, job: GenerationSpec) -> tuple[int, torch.Tensor]:
    """How often the second block's FFN ran (skipped blocks do not run it), and the latents."""
    calls = [0]
    handle = engine.pipe.transformer.blocks[1].ffn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        latents = engine.generate(job).latents
    finally:
        handle.remove()
    assert latents is not None
    return calls[0], latents


def test_cache_presets_skip_block_computation(models: dict[str, Path], plain: WanEngine) -> None:
    job = spec(steps=6)
    plain_calls, reference = block_calls(plain, job)
    assert plain_calls == 12  # 6 steps x (cond + uncond)
    assert (plain.plan.attention_backend, plain.pipe.vae.use_tiling) == ("native", True)

    taylor = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", cache="taylorseer", cache_interval=2))
    taylor_calls, taylor_latents = block_calls(taylor, job)
    assert taylor.plan.cache == "taylorseer"
    assert taylor_calls < plain_calls
    assert not torch.equal(taylor_latents, reference)  # predicted steps are approximations

    # FirstBlockCache skips the remaining blocks whenever the first block's residual barely moves;
    # a huge threshold makes every step after the first a cache hit.
    fb_calls, _ = block_calls(
        WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", cache="fbcache", cache_threshold=1e9)), job
    )
    assert fb_calls < taylor_calls


def test_offload_modes_compute_the_same_video(models: dict[str, Path]) -> None:
    job = spec(steps=2)
    reference = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu")).generate(job)
    for offload in ("model", "group"):
        engine = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", offload=offload))  # type: ignore[arg-type]
        result = engine.generate(job)
        assert engine.plan.offload == offload
        torch.testing.assert_close(result.latents, reference.latents, rtol=1e-5, atol=1e-5)
        assert result.frames.shape == reference.frames.shape == (5, 64, 64, 3)


def test_cancel_stops_at_the_step_and_the_next_job_runs(plain: WanEngine) -> None:
    engine = plain
    seen: list[int] = []

    def on_step(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise JobCanceled("canceled")

    with pytest.raises(JobCanceled):
        engine.generate(spec(steps=6), on_step=on_step)
    assert seen == [1, 2]
    result = engine.generate(spec(steps=2))
    assert len(result.step_times) == 2
    assert set(result.timings) == {"encoding_prompt", "denoising", "decoding"}


def test_prompt_embeddings_are_cached_per_text(plain: WanEngine) -> None:
    cache = plain.prompt_cache
    misses, hits = cache.misses, cache.hits
    texts = {"prompt": "a dog runs through a green park", "negative_prompt": "static, overexposed"}
    plain.generate(spec(steps=1, **texts))
    plain.generate(spec(steps=1, seed=4, **texts))
    assert (cache.misses - misses, cache.hits - hits) == (2, 2)  # both texts encoded once, then both hit


def test_inputs_the_model_cannot_take_are_invalid_requests(models: dict[str, Path]) -> None:
    from PIL import Image

    engine = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu"))
    with pytest.raises(InvalidRequest, match="takes no input image"):
        engine.generate(spec(steps=1), Image.new("RGB", (64, 64)))


def test_allocation_failures_count_as_out_of_memory() -> None:
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_generate_cli_runs_the_engine_with_its_flags(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cat.mp4"
    main(
        [
            "generate",
            "--model-path",
            str(models["ti2v-5b"]),
            "--tiny",
            "--prompt",
            "a cat",
            "--num-inference-steps",
            "2",
            "--num-frames",
            "5",
            "--device",
            "cpu",
            "--attention-backend",
            "native",
            "--cache",
            "taylorseer",
            "--cache-interval",
            "2",
            "-o",
            str(out),
        ]
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["output"] == str(out)
    assert probe_mp4(out)["frames"] == report["spec"]["num_frames"]


def test_an_impossible_configuration_fails_before_loading(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="2 attention heads are not divisible by --ulysses-degree 4"):
        start_engine(models["ti2v-5b"], EngineSettings(device="cpu", num_gpus=4, ulysses_degree=4))
