"""The engine's LoRA adapter slots on tiny models of the real classes (CPU, eager), against plain diffusers with the
same LoRA files loaded the usual way (`load_lora_weights` into each expert, `set_adapters`) and the same seed.

Tolerance: a LoRA job's latents are within 1e-5 (absolute and relative, fp32) of plain diffusers'; they are
bit-identical when the LoRA's rank equals the slot rank, and differ by about 1e-6 otherwise (zero-padding a rank-2
LoRA to rank 8 changes the order of the additions inside the matmul, not its terms). A job without LoRAs, after
any LoRA jobs, is bit-identical (`torch.equal`) to plain diffusers without LoRA and to the no-LoRA job before them;
a repeated job is bit-identical to its first run, evictions between them or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

from shared.errors import InvalidRequest
from shared.fetch import sha256_of
from shared.schemas import GenerationSpec, JobLora
from shared.settings import EngineSettings, LoraSettings
from tests.lora_maker import make_lora, save_raw, to_original_format
from worker.engine import WanEngine
from worker.lora_cache import LoraCache
from worker.lora_slots import LoraSlots
from worker.tiny_model import write_tiny_model

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
SPEC = dict(
    model="tiny",
    prompt="a cat walks along the beach",
    negative_prompt="blurry",
    width=64,
    height=64,
    num_frames=5,
    fps=16,
    num_inference_steps=3,
    guidance_scale=4.0,
    seed=3,
)


class Library:
    """LoRA files in a worker's cache folder, and the JobLora a job names them with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}

    def add(self, name: str, path: Path) -> Path:
        shutil.copy(path, self.cache / f"{sha256_of(path)}.safetensors")
        self.files[name] = path
        return path

    def job(self, name: str, strength: float = 1.0, expert: str = "both") -> JobLora:
        path = self.files[name]
        return JobLora(
            name=name,
            sha256=sha256_of(path),
            storage_key=f"loras/t/{name}.safetensors",
            size_bytes=path.stat().st_size,
            strength=strength,
            expert=expert,  # type: ignore[arg-type]
        )

    def settings(self, slots: int = 2, rank: int = 8) -> LoraSettings:
        return LoraSettings(max_resident=slots, max_rank=rank, cache_dir=str(self.cache))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {v: write_tiny_model(root / v, v) for v in ("t2v-a14b", "ti2v-5b")}


@pytest.fixture(scope="module")
def library(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Library:
    lib = Library(tmp_path_factory.mktemp("loras"))
    t2v = WanPipeline.from_pretrained(models["t2v-a14b"]).transformer
    folder = lib.folder
    lib.add("a", make_lora(t2v, folder / "a.safetensors", rank=4, seed=1, alpha=8))  # alpha/rank 2, from its metadata
    lib.add("b", make_lora(t2v, folder / "b.safetensors", rank=8, seed=2, blocks=[0]))  # one block of two
    lib.add("c", make_lora(t2v, folder / "c.safetensors", rank=2, seed=3))
    lib.add(
        "orig", to_original_format(make_lora(t2v, folder / "o.safetensors", rank=4, seed=4), folder / "orig.safetensors", alpha=2)
    )
    ti2v = WanPipeline.from_pretrained(models["ti2v-5b"]).transformer
    lib.add("t", make_lora(ti2v, folder / "t.safetensors", rank=8, seed=5))
    return lib


@pytest.fixture(scope="module")
def engine(models: dict[str, Path], library: Library) -> WanEngine:
    return WanEngine(models["t2v-a14b"], EngineSettings(device="cpu"), loras=library.settings())


def spec(*loras: JobLora, **overrides: Any) -> GenerationSpec:
    return GenerationSpec(**{**SPEC, "guidance_scale_2": 3.0, "flow_shift": 12.0, **overrides, "loras": loras})  # type: ignore[arg-type]


def reference(
    model: Path, library: Library, loras: list[tuple[str, float, str]], job: GenerationSpec, image: Image.Image | None = None
) -> torch.Tensor:
    """Plain diffusers: a fresh pipeline, each LoRA loaded the documented way, `set_adapters` with the strengths."""
    pipe: Any = WanPipeline.from_pretrained(model)
    if image is not None:
        pipe = WanImageToVideoPipeline(
            **{k: v for k, v in pipe.components.items() if k != "transformer_2"}, expand_timesteps=True
        )
    pipe.set_progress_bar_config(disable=True)
    for name, _, expert in loras:
        path = str(library.files[name])
        if expert in ("both", "high_noise"):
            pipe.load_lora_weights(path, adapter_name=name)
        if expert in ("both", "low_noise") and getattr(pipe, "transformer_2", None) is not None:
            pipe.load_lora_weights(path, adapter_name=name, load_into_transformer_2=True)
    if loras:
        pipe.set_adapters([n for n, _, _ in loras], [s for _, s, _ in loras])
    kwargs: dict[str, Any] = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        height=job.height,
        width=job.width,
        num_frames=job.num_frames,
        num_inference_steps=job.num_inference_steps,
        guidance_scale=job.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(job.seed),
        output_type="latent",
        max_sequence_length=512,
    )
    if job.guidance_scale_2 is not None:
        kwargs["guidance_scale_2"] = job.guidance_scale_2
    if image is not None:
        kwargs["image"] = image
    with torch.no_grad():
        return pipe(**kwargs).frames  # type: ignore[no-any-return]


def latents(engine: WanEngine, job: GenerationSpec, image: Image.Image | None = None) -> torch.Tensor:
    result = engine.generate(job, image).latents
    assert result is not None
    return result


def test_lora_jobs_equal_plain_diffusers_and_a_job_without_loras_equals_the_base(
    engine: WanEngine, models: dict[str, Path], library: Library
) -> None:
    model = models["t2v-a14b"]
    base = latents(engine, spec())
    assert torch.equal(base, reference(model, library, [], spec()))
    cases = [
        [("a", 1.0, "both")],
        [("a", 0.5, "both")],
        [("a", 1.0, "both"), ("b", 0.7, "both")],  # two adapters of different ranks at once
        [("orig", 1.3, "both")],  # original Wan format with alpha tensors (diffusers' converter folds them)
        [("a", 1.0, "high_noise"), ("c", -0.5, "low_noise")],  # one per expert
    ]
    outputs = []
    for case in cases:
        job = spec(*(library.job(n, s, e) for n, s, e in case))
        out = latents(engine, job)
        torch.testing.assert_close(out, reference(model, library, case, job), **TOLERANCE)
        assert (out - base).abs().max() > 0.1, case
        outputs.append(out)
    assert torch.equal(outputs[0], reference(model, library, cases[0], spec(library.job("a"))))  # rank 8 of 8: exact
    assert (outputs[0] - outputs[1]).abs().max() > 0.1  # two strengths, two videos
    assert torch.equal(latents(engine, spec()), base)  # no LoRA after LoRAs: the base, bit for bit
    assert torch.equal(latents(engine, spec(library.job("a"))), outputs[0])  # resident again: the same


def test_high_noise_changes_only_what_the_high_noise_expert_computes(engine: WanEngine, library: Library) -> None:
    torch.manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 2, 8, 8),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 7, 32),
        return_dict=False,
    )
    assert engine.adapters is not None and engine.lora_cache is not None

    def forwards(*loras: JobLora) -> tuple[torch.Tensor, torch.Tensor]:
        engine.adapters.apply(engine.adapters.plan(loras), engine.lora_cache.path)  # type: ignore[union-attr]
        with torch.no_grad():
            return engine.pipe.transformer(**inputs)[0], engine.pipe.transformer_2(**inputs)[0]

    high, low = forwards()
    high_lora, low_lora = forwards(library.job("a", expert="high_noise"))
    assert not torch.equal(high_lora, high) and torch.equal(low_lora, low)
    high_both, low_both = forwards(library.job("a"))
    assert torch.equal(high_both, high_lora) and not torch.equal(low_both, low)
    forwards()


def test_a_worker_that_evicts_adapters_still_computes_each_one_right(
    models: dict[str, Path], library: Library, engine: WanEngine
) -> None:
    one_slot = WanEngine(models["t2v-a14b"], EngineSettings(device="cpu"), loras=library.settings(slots=1))
    jobs = [spec(library.job(n)) for n in ("a", "b", "c", "a", "a")]
    results = [one_slot.generate(job) for job in jobs]
    for job, result in zip(jobs, results, strict=True):
        assert torch.equal(result.latents, latents(engine, job)), job.loras[0].name  # type: ignore[arg-type]
    # Each new LoRA evicts the one before it from the single slot; the repeat of a resident one loads nothing.
    assert ["loading_loras" in r.timings for r in results] == [True, True, True, True, False]
    with pytest.raises(InvalidRequest, match="2 LoRAs for the transformer but this worker has 1 adapter slots"):
        one_slot.generate(spec(library.job("a"), library.job("b")))


def test_a_file_that_does_not_load_fails_its_job_and_the_next_job_runs(engine: WanEngine, library: Library) -> None:
    from safetensors.torch import load_file

    # Original format, one module without its lora_up: diffusers' converter fails on it.
    tensors = load_file(str(library.files["orig"]))
    del tensors["diffusion_model.blocks.1.ffn.2.lora_up.weight"]
    library.add("broken", save_raw(tensors, library.folder / "broken.safetensors"))
    base = latents(engine, spec())
    with pytest.raises(InvalidRequest, match=r"LoRA 'broken' \(sha256 [0-9a-f]{12}\.\.\.\) could not be loaded: KeyError"):
        engine.generate(spec(library.job("broken")))
    assert torch.equal(latents(engine, spec()), base)
    assert torch.equal(latents(engine, spec(library.job("a"))), latents(engine, spec(library.job("a"))))


@pytest.mark.parametrize("offload", ["model", "group"])
def test_offload_modes_run_loras_the_same(offload: str, models: dict[str, Path], library: Library, engine: WanEngine) -> None:
    offloaded = WanEngine(
        models["t2v-a14b"],
        EngineSettings(device="cpu", offload=offload),  # type: ignore[arg-type]
        loras=library.settings(),
    )
    for job in (spec(library.job("a")), spec(library.job("b"), library.job("c", 0.4)), spec()):
        torch.testing.assert_close(latents(offloaded, job), latents(engine, job), rtol=1e-5, atol=1e-5)


def test_sequential_offload_with_slots_fails_at_start_saying_what_to_change(models: dict[str, Path], library: Library) -> None:
    with pytest.raises(ValueError, match="use --offload model or group, or set WANQ_LORAS_MAX_RESIDENT=0"):
        WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", offload="sequential"), loras=library.settings())


def test_ti2v_text_and_image_mode_share_the_slots(models: dict[str, Path], library: Library) -> None:
    model = models["ti2v-5b"]
    engine = WanEngine(model, EngineSettings(device="cpu"), loras=library.settings())
    job = GenerationSpec(**{**SPEC, "guidance_scale_2": None, "flow_shift": 5.0, "loras": (library.job("t", 0.8),)})  # type: ignore[arg-type]
    torch.testing.assert_close(latents(engine, job), reference(model, library, [("t", 0.8, "both")], job), **TOLERANCE)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    torch.testing.assert_close(
        latents(engine, job, image), reference(model, library, [("t", 0.8, "both")], job, image), **TOLERANCE
    )
    with pytest.raises(InvalidRequest, match="no LoRA adapter slots"):
        WanEngine(model, EngineSettings(device="cpu")).generate(job)


def test_guidance_1_runs_one_forward_per_step(engine: WanEngine, library: Library) -> None:
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    hooks = [m.register_forward_hook(count) for m in (engine.pipe.transformer, engine.pipe.transformer_2)]
    try:
        for guidance, expected in ((4.0, 8), (1.0, 4)):
            calls[0] = 0
            engine.generate(spec(library.job("a"), num_inference_steps=4, guidance_scale=guidance, guidance_scale_2=guidance))
            assert calls[0] == expected, guidance
    finally:
        for hook in hooks:
            hook.remove()


def test_the_file_cache_verifies_and_evicts_least_recently_used(library: Library, tmp_path: Path) -> None:
    import os

    stored = {f"loras/t/{n}.safetensors": p for n, p in library.files.items()}
    fetched: list[str] = []

    def download(key: str, dest: Path) -> None:  # the bucket's objects, as the runner's S3 download gives them
        if key not in stored:
            raise KeyError(key)
        fetched.append(key)
        shutil.copy(stored[key], dest)

    a, b, c = (library.job(n) for n in ("a", "b", "c"))
    cache = LoraCache(tmp_path / "c", max_bytes=a.size_bytes + b.size_bytes, download=download, grace_s=0)
    cache.ensure([a])
    cache.ensure([a, b])
    assert len(fetched) == 2 and cache.path(a.sha256).exists()
    os.utime(cache.path(a.sha256), (1, 1))  # a is the least recently used
    cache.ensure([c])
    assert not cache.file(a.sha256).exists() and cache.path(b.sha256).exists() and cache.path(c.sha256).exists()
    tampered = a.model_copy(update={"storage_key": "loras/t/c.safetensors"})  # another file under a's sha256
    with pytest.raises(InvalidRequest, match="the stored file's sha256 is"):
        cache.ensure([tampered])
    with pytest.raises(InvalidRequest, match="is no longer stored"):
        cache.ensure([a.model_copy(update={"storage_key": "loras/t/gone.safetensors"})])
    assert not list((tmp_path / "c").glob(".*.part"))


def test_slots_cover_every_block_linear_and_start_disabled(models: dict[str, Path]) -> None:
    pipe = WanPipeline.from_pretrained(models["t2v-a14b"])
    slots = LoraSlots(pipe, slots=2, rank=4, device=torch.device("cpu"))
    assert set(slots.layers) == {"transformer", "transformer_2"}
    assert len(slots.shapes) == 2 * 10 and slots.enabled == {"transformer": False, "transformer_2": False}
    layer = slots.layers["transformer"]["blocks.1.ffn.net.0.proj"]
    assert layer.active_adapters == slots.names and layer.disable_adapters
    assert not any(p.requires_grad for n, p in pipe.transformer.named_parameters() if "lora_" in n)
    floats_per_block = 8 * 4 * (24 + 24) + 4 * (24 + 32) + 4 * (32 + 24)  # 8 attention linears, 2 FFN ones, rank 4
    assert slots.nbytes() == 2 * 2 * 2 * floats_per_block * 4  # experts x slots x blocks, fp32


def test_a_fused_lora_computes_what_the_same_lora_computes_in_a_slot(
    models: dict[str, Path], library: Library, engine: WanEngine
) -> None:
    """--fuse-lora (worker/fused_lora.py): the LoRA summed into the weights at start gives the latents the same LoRA
    gives through an adapter slot; --fuse-lora-2 gives the low-noise expert its own file; a fused worker still runs
    a job's own LoRA on top of it."""
    slotted = engine.generate(spec(library.job("orig", strength=0.7)))
    fused = WanEngine(
        models["t2v-a14b"], EngineSettings(device="cpu", fuse_lora=str(library.files["orig"]), fuse_lora_strength=0.7)
    )
    assert fused.fused_loras == {"transformer": 20, "transformer_2": 20}  # 2 blocks x 10 linears, each expert
    torch.testing.assert_close(fused.generate(spec()).latents, slotted.latents, **TOLERANCE)
    per_expert = engine.generate(spec(library.job("a", expert="high_noise"), library.job("c", expert="low_noise")))
    both = WanEngine(
        models["t2v-a14b"],
        EngineSettings(device="cpu", fuse_lora=str(library.files["a"]), fuse_lora_2=str(library.files["c"])),
        loras=library.settings(),
    )
    torch.testing.assert_close(both.generate(spec()).latents, per_expert.latents, **TOLERANCE)
    on_top = engine.generate(spec(library.job("a", expert="high_noise"), library.job("c", expert="low_noise"), library.job("b")))
    torch.testing.assert_close(both.generate(spec(library.job("b"))).latents, on_top.latents, **TOLERANCE)


def test_a_fused_lora_that_does_not_fit_is_refused_at_start_in_one_sentence(
    models: dict[str, Path], library: Library, tmp_path: Path
) -> None:
    from worker.options import registry
    from worker.options.option import Environment

    odd = save_raw(
        {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 7),
            "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(5, 4),
        },
        tmp_path / "odd.safetensors",
    )
    with pytest.raises(ValueError, match=r"^--fuse-lora .*odd\.safetensors: blocks\.0\.attn1\.to_q: .* do not fit"):
        WanEngine(models["t2v-a14b"], EngineSettings(device="cpu", fuse_lora=str(odd)))
    with pytest.raises(ValueError, match="this model has one transformer: drop it"):
        WanEngine(
            models["ti2v-5b"],
            EngineSettings(device="cpu", fuse_lora=str(library.files["t"]), fuse_lora_2=str(library.files["t"])),
        )
    problems = registry.validate(EngineSettings(device="cpu", fuse_lora_2="/nope.safetensors"), Environment("cpu"))
    assert problems.configuration == [
        "--fuse-lora-2 /nope.safetensors is not a file: give a LoRA .safetensors (diffusers, original Wan, ComfyUI or musubi keys)",
        "--fuse-lora-2 is the low-noise expert's file: give the high-noise expert's with --fuse-lora too",
    ]
