"""The engine's single-process paths on tiny models of the real classes (CPU): options applied
through diffusers' mechanisms, cancel at a step, the prompt cache, the decode options and another
VAE (`--vae-path`), and `wanq generate` flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.errors import InvalidRequest, JobCanceled
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from wanq.cli import main
from worker.engine import WanEngine, gpu_defaults, is_out_of_memory
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
    assert (engine.plan.attention_backend, engine.pipe.vae.use_tiling, engine.plan.decode) == ("native", True, ("tiling",))
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
            "dbcache",
            "--cache-rdt",
            "1.0",
            "--cache-warmup",
            "1",
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


def test_decode_options_give_the_stock_frames(models: dict[str, Path], plain: WanEngine) -> None:
    """cuDNN autotuning, channels-last weights and the compiled decoder change how the VAE runs, not what it makes
    (on the GPU: within bf16 noise, which benchmarks/gpu_engine.py measures)."""
    job = spec(steps=2)
    stock = plain.generate(job)
    engine = WanEngine(
        models["ti2v-5b"],
        EngineSettings(device="cpu", attention_backend="native", vae_tiling=True, vae_channels_last=True, cudnn_benchmark=True),
    )
    assert engine.plan.decode == ("tiling", "cudnn_benchmark", "channels_last")
    conv = next(m for m in engine.pipe.vae.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    result = engine.generate(job)
    torch.testing.assert_close(result.latents, stock.latents, rtol=0, atol=0)
    assert abs(result.frames.astype(int) - stock.frames.astype(int)).max() <= 1  # one 8-bit level: fp32 summation order
    torch.backends.cudnn.benchmark = False  # process-wide; leave it as found


def test_the_fused_kernels_give_the_stock_latents_and_frames(models: dict[str, Path], plain: WanEngine) -> None:
    """--fused-ffn and --vae-fused replace modules (same weights); on a CPU both run the stock arithmetic, so the
    numbers are the stock ones exactly (on the GPU: rounding, which benchmarks/gpu_fusions.py measures)."""
    from worker.fused_ffn import FusedGELU
    from worker.vae_fused import NormSiLU, PaddedInConv

    job = spec(steps=2)
    stock = plain.generate(job)
    settings = EngineSettings(device="cpu", attention_backend="native", vae_tiling=True, fused_ffn=True, vae_fused=True)
    engine = WanEngine(models["ti2v-5b"], settings)
    assert engine.plan.kernels == ("fused_ffn",) and engine.plan.decode == ("tiling", "fused")
    assert all(isinstance(block.ffn.net[0], FusedGELU) for block in engine.pipe.transformer.blocks)
    assert any(isinstance(m, NormSiLU) for m in engine.pipe.vae.decoder.modules())
    assert any(isinstance(m, PaddedInConv) for m in engine.pipe.vae.decoder.modules())
    result = engine.generate(job)
    assert torch.equal(result.latents, stock.latents)
    assert (result.frames == stock.frames).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("given", "device", "expected"),
    [
        ({}, "cpu", (False, False, False)),
        ({}, "cuda", (True, True, True)),
        ({"quantization": "fp8"}, "cuda", (True, False, True)),
        ({"offload": "sequential"}, "cuda", (True, False, False)),
        ({"offload": "group"}, "cuda", (True, True, False)),
        ({"vae_cpu_offload": True}, "cuda", (True, True, False)),
        ({"offload": "model"}, "cuda", (True, True, True)),
        ({"fused_ffn": False, "vae_fused": False, "vae_channels_last": False}, "cuda", (False, False, False)),
        ({"fused_ffn": True, "vae_fused": True}, "cpu", (False, True, True)),
    ],
)
def test_unset_gpu_options_are_on_where_a_gpu_can_run_them(
    given: dict[str, object], device: str, expected: tuple[bool, ...]
) -> None:
    settings = gpu_defaults(EngineSettings(**given), torch.device(device))  # type: ignore[arg-type]
    assert (settings.vae_channels_last, settings.fused_ffn, settings.vae_fused) == expected


def test_the_compiled_decoder_gives_the_stock_frames(models: dict[str, Path]) -> None:
    """Inductor on the CPU takes minutes for the decoder's graphs (first, second and later latent frames)."""
    job = spec(steps=2)
    reference = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu")).generate(job)
    compiled = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", vae_compile=True))
    assert compiled.plan.decode == ("compiled_decoder",)
    result = compiled.generate(job)
    assert abs(result.frames.astype(int) - reference.frames.astype(int)).max() <= 1


def test_vae_path_replaces_the_models_own_vae(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    # Another VAE of the same architecture (other random weights), as a diffusers directory and as one file
    other = write_tiny_model(tmp_path / "other", "ti2v-5b", seed=11)
    own = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu"))
    swapped = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", vae_path=str(other)))  # finds other/vae/
    weights = {k: v.contiguous() for k, v in swapped.pipe.vae.state_dict().items()}
    assert swapped.plan.vae == str(other)
    assert not torch.equal(own.pipe.vae.decoder.conv_out.weight, swapped.pipe.vae.decoder.conv_out.weight)
    assert swapped.image_pipe.vae is swapped.pipe.vae  # TI2V-5B's image mode decodes with it too
    job = spec(steps=1)
    a, b = own.generate(job), swapped.generate(job)
    torch.testing.assert_close(a.latents, b.latents)  # the same denoising ...
    assert not (a.frames == b.frames).all()  # ... decoded by another VAE

    single = tmp_path / "vae.safetensors"
    save_file(weights, str(single))
    from_file = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", vae_path=str(single)))
    assert torch.equal(from_file.pipe.vae.decoder.conv_out.weight, swapped.pipe.vae.decoder.conv_out.weight)

    # A VAE whose latents are not the transformer's is refused at start, saying which one fits
    with pytest.raises(ValueError, match=r"has 16 latent channels but the transformer makes 48: TI2V-5B needs a Wan2\.2 VAE"):
        WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", vae_path=str(models["t2v-a14b"] / "vae")))


@pytest.mark.parametrize("variant", ["ti2v-5b", "t2v-a14b"])
def test_both_cfg_branches_as_one_batch_compute_the_same_video(models: dict[str, Path], variant: str) -> None:
    """--cfg-batch: the "cond" call runs the prompt and the negative prompt as one batch-2 forward and the "uncond"
    call is answered from it; the latents are those of the two separate forwards. A job without guidance, or with
    the step cache, runs unbatched."""
    from worker import cfg_batch
    from worker.pipeline_dir import transformers_of

    job = spec(steps=3, guidance_scale_2=3.0 if variant == "t2v-a14b" else None)
    reference = WanEngine(models[variant], EngineSettings(device="cpu")).generate(job)
    engine = WanEngine(models[variant], EngineSettings(device="cpu", cfg_batch=True))
    hooks = cfg_batch.hooks(transformers_of(engine.pipe))
    assert len(hooks) == (2 if variant == "t2v-a14b" else 1)
    seen: list[int] = []

    def on_step(done: int, total: int) -> None:
        seen.append(sum(h.batched for h in hooks))

    result = engine.generate(job, on_step=on_step)
    assert seen == [1, 2, 3]  # one batched forward per step, across the experts
    torch.testing.assert_close(result.latents, reference.latents, rtol=1e-4, atol=1e-4)
    assert all(h.negative is None for h in hooks)  # off between jobs
    unguided = engine.generate(spec(steps=2, guidance_scale=1.0), on_step=on_step)
    assert seen[-2:] == [0, 0] and unguided.frames.shape == (5, 64, 64, 3)
    cached = engine.generate(job.model_copy(update={"cache": {"rdt": 0.5}}), on_step=on_step)
    assert seen[-3:] == [0, 0, 0] and cached.frames.shape == (5, 64, 64, 3)


def test_cfg_batch_is_refused_with_several_gpus_in_one_sentence() -> None:
    from worker.options import registry
    from worker.options.option import Environment

    problems = registry.validate(EngineSettings(device="cpu", cfg_batch=True, cfg_parallel=True, num_gpus=2), Environment("cpu"))
    assert any(p.startswith("--cfg-batch is for one GPU") for p in problems.configuration)
    problems = registry.validate(EngineSettings(device="cpu", cfg_batch=True, offload="model"), Environment("cpu"))
    assert any(p.startswith("--cfg-batch cannot be combined with --offload model") for p in problems.configuration)


def test_ti2v_text_jobs_run_with_one_timestep_and_compute_the_same_video(models: dict[str, Path]) -> None:
    """worker/uniform_timestep.py: a TI2V-5B job without an image hands the transformer one timestep instead of one
    per token (the same value in every row); its latents are those of the per-token path. An image job keeps the
    per-token timesteps (its first frame is held at t = 0)."""
    from PIL import Image

    from worker import uniform_timestep

    engine = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu"))
    hook = uniform_timestep.hook_of(engine.pipe.transformer)
    assert hook is not None
    seen: list[int] = []
    job = spec(steps=3)
    uniform = engine.generate(job, on_step=lambda done, total: seen.append(hook.applied))
    assert seen == [2, 4, 6]  # both CFG branches of every step
    uniform_timestep.uninstall(engine.pipe.transformer)  # the per-token path again
    per_token = engine.generate(job)
    torch.testing.assert_close(uniform.latents, per_token.latents, rtol=1e-5, atol=1e-5)
    uniform_timestep.install(engine.pipe.transformer)
    again = uniform_timestep.hook_of(engine.pipe.transformer)
    assert again is not None
    image_job = engine.generate(job, Image.new("RGB", (64, 64), (200, 40, 40)), on_step=lambda d, t: seen.append(again.applied))
    assert seen[-3:] == [0, 0, 0] and image_job.frames.shape == (5, 64, 64, 3)
    # --offload model re-installs the transformer's forward after every job: the pre-hook stays in force
    offloaded = WanEngine(models["ti2v-5b"], EngineSettings(device="cpu", offload="model"))
    kept = uniform_timestep.hook_of(offloaded.pipe.transformer)
    assert kept is not None
    for _ in range(2):
        offloaded.generate(spec(steps=2), on_step=lambda d, t: seen.append(kept.applied))
    assert seen[-2:] == [2, 4]
