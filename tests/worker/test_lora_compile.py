"""`--compile` with LoRA: switching adapters (ranks 4 and 8, all blocks or one, one or two at once, any strength,
none) compiles nothing after warmup. Counted with dynamo's own graph counter, on the CPU with inductor (the
backend the engine compiles with), on the tiny TI2V-5B model of the real classes.

Tolerance against the eager engine: 1e-4 (inductor's fused fp32 kernels round differently); the compiled engine
against itself: bit-identical (a no-LoRA job after LoRA jobs, a repeated LoRA job).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import WanPipeline
from torch._dynamo.utils import counters

from shared.fetch import sha256_of
from shared.schemas import GenerationSpec, JobLora
from shared.settings import EngineSettings, LoraSettings
from tests.lora_maker import make_lora
from worker.engine import WanEngine
from worker.tiny_model import write_tiny_model


def test_switching_adapters_of_different_ranks_compiles_nothing(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "ti2v", "ti2v-5b")
    cache = tmp_path / "cache"
    cache.mkdir()
    transformer = WanPipeline.from_pretrained(model).transformer
    loras: dict[str, JobLora] = {}
    for name, rank, blocks in (("r4", 4, None), ("r8-block0", 8, [0])):
        path = make_lora(transformer, tmp_path / f"{name}.safetensors", rank=rank, seed=rank, blocks=blocks)
        sha = sha256_of(path)
        shutil.copy(path, cache / f"{sha}.safetensors")
        loras[name] = JobLora(
            name=name, sha256=sha, storage_key=name, size_bytes=path.stat().st_size, strength=1.0, expert="both"
        )
    settings = LoraSettings(max_resident=2, max_rank=8, cache_dir=str(cache))
    compiled = WanEngine(model, EngineSettings(device="cpu", compile=True), loras=settings)
    eager = WanEngine(model, EngineSettings(device="cpu"), loras=settings)

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    before = graphs()
    compiled.warmup()  # 128x128x5, 2 steps: the no-LoRA graph and the LoRA graph
    assert graphs() - before == 2
    job = GenerationSpec(
        model="tiny",
        prompt="a cat walks",
        negative_prompt="blurry",
        width=128,
        height=128,
        num_frames=5,
        fps=16,
        num_inference_steps=2,
        guidance_scale=2.0,
        guidance_scale_2=None,
        flow_shift=5.0,
        seed=1,
    )
    r4, r8 = loras["r4"], loras["r8-block0"]
    stream = [
        (),
        (r4,),
        (r8,),
        (r4.model_copy(update={"strength": 0.5}),),
        (r4, r8.model_copy(update={"strength": -0.7})),
        (),
        (r8.model_copy(update={"strength": 1.3}),),
        (r4,),
    ]
    after_warmup = graphs()
    outputs = []
    for loras_of_job in stream:
        result = compiled.generate(job.model_copy(update={"loras": loras_of_job}))
        reference = eager.generate(job.model_copy(update={"loras": loras_of_job}))
        torch.testing.assert_close(result.latents, reference.latents, rtol=1e-4, atol=1e-4)
        outputs.append(result.latents)
    assert graphs() == after_warmup, f"{graphs() - after_warmup} graphs compiled while switching adapters"
    assert torch.equal(outputs[5], outputs[0]) and torch.equal(outputs[7], outputs[1])
    assert (outputs[1] - outputs[0]).abs().max() > 0.1 and (outputs[3] - outputs[1]).abs().max() > 0.05
