"""Previews beside the engine's other features, on tiny models of the real classes (CPU): a job that runs the step
cache, a job that names a LoRA, and CFG-parallel on two ranks (rank 0 alone decodes and publishes) each publish a
preview after every `preview_every` steps, a decodable MP4 of one frame per latent frame at half the size; the
previews leave the job's latents unchanged. (Extensions: tests/e2e/test_preview_extensions.py. Ulysses needs CUDA
GPUs and is not tested here.) Random weights: the pictures mean nothing; counts, steps, shapes and equalities are
what is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.fetch import sha256_of
from shared.schemas import GenerationSpec, JobLora
from shared.settings import EngineSettings, LoraSettings
from tests.preview_steps import Previews, preview_job
from worker.engine import WanEngine
from worker.tiny_model import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def spec(steps: int = 6, **overrides: Any) -> GenerationSpec:
    return preview_job(steps, **{"guidance_scale_2": 3.0, **overrides})


@pytest.fixture(scope="module")
def a14b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "t2v", "t2v-a14b")


@pytest.fixture(scope="module")
def lora(a14b: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JobLora]:
    """A LoRA in a worker's file cache (named by its sha256, as the runner leaves it) and the JobLora naming it."""
    from diffusers import WanPipeline

    from tests.lora_maker import make_lora

    folder = tmp_path_factory.mktemp("loras")
    made = make_lora(WanPipeline.from_pretrained(a14b).transformer, folder / "made.safetensors", rank=4, seed=2)
    cache = folder / "cache"
    cache.mkdir()
    sha = sha256_of(made)
    (cache / f"{sha}.safetensors").write_bytes(made.read_bytes())
    job = JobLora(
        name="made",
        sha256=sha,
        storage_key="loras/t/made.safetensors",
        size_bytes=made.stat().st_size,
        strength=1.0,
        expert="both",
    )
    return cache, job


@pytest.fixture(scope="module")
def engine(a14b: Path, lora: tuple[Path, JobLora]) -> WanEngine:
    """A14B (two experts, so the previews span the switch from one to the other), no cache by default, a LoRA slot."""
    assert (a14b / "taehv.safetensors").is_file()  # the tiny model's own tiny decoder, used without a flag
    return WanEngine(a14b, EngineSettings(device="cpu"), loras=LoraSettings(max_resident=1, max_rank=8, cache_dir=str(lora[0])))


def test_a_job_on_the_step_cache_previews_every_two_of_eight_steps(engine: WanEngine, tmp_path: Path) -> None:
    cached = spec(steps=8, cache={"rdt": 1.0, "warmup": 1}, preview_every=2)
    seen = Previews(tmp_path, every=2)
    result = engine.generate(cached, on_step=seen.on_step, on_preview=seen.on_preview)
    assert result.cache is not None and result.cache["blocks_skipped_share"] > 0  # the cache skipped steps' blocks
    # After steps 2, 4 and 6 of 8 (none after the last): 3 previews, in step order. 9 frames are 3 latent frames,
    # one preview frame each; A14B's 64x64 at half the size.
    assert seen.shapes() == [(2, 3, (32, 32)), (4, 3, (32, 32)), (6, 3, (32, 32))]
    # Previews read the scheduler's state, never change it: the same latents as the job without previews.
    plain = engine.generate(spec(steps=8, cache={"rdt": 1.0, "warmup": 1}))
    assert torch.equal(result.latents, plain.latents)
    assert result.cache == plain.cache


def test_a_job_with_a_lora_previews_what_the_lora_makes(engine: WanEngine, lora: tuple[Path, JobLora], tmp_path: Path) -> None:
    with_lora = Previews(tmp_path / "lora", every=2)
    result = engine.generate(spec(preview_every=2, loras=[lora[1]]), on_step=with_lora.on_step, on_preview=with_lora.on_preview)
    assert with_lora.shapes() == [(2, 3, (32, 32)), (4, 3, (32, 32))]  # after steps 2 and 4 of 6
    assert torch.equal(result.latents, engine.generate(spec(loras=[lora[1]])).latents)
    # The previews show the LoRA's denoising: the same job without it previews other pictures at the same steps.
    without = Previews(tmp_path / "base", every=2)
    base = engine.generate(spec(preview_every=2), on_step=without.on_step, on_preview=without.on_preview)
    assert not torch.equal(base.latents, result.latents)
    assert without.steps == [2, 4]
    assert all((with_lora.frames[d] != without.frames[d]).any() for d in (2, 4))


RANK0 = r"""
import json, sys
from pathlib import Path
import numpy as np
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from tests.preview_steps import Previews
from worker.engine import WanEngine
from worker.startup import start_engine

path, out = sys.argv[1], Path(sys.argv[2])
spec = GenerationSpec(model="tiny", prompt="a cat walks", negative_prompt="blurry", width=64, height=64, num_frames=9,
                      fps=16, num_inference_steps=6, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=5.0, seed=5,
                      preview_every=2)

def run(engine, name):
    seen = Previews(out / name, every=2)
    result = engine.generate(spec, on_step=seen.on_step, on_preview=seen.on_preview)
    return result, seen

one = WanEngine(path, EngineSettings(device="cpu"))
reference, reference_seen = run(one, "one")
del one
engine = start_engine(path, EngineSettings(device="cpu", num_gpus=2, cfg_parallel=True))
result, seen = run(engine, "group")
print("RESULT", json.dumps({
    "plan": [engine.plan.num_gpus, engine.plan.cfg_parallel],
    "shapes": seen.shapes(),
    "rel": float((result.latents - reference.latents).norm() / reference.latents.norm()),
    "reference_steps": reference_seen.steps,
    "diff": {d: float(np.abs(seen.frames[d].astype(float) - reference_seen.frames[d].astype(float)).mean()) for d in seen.steps},
}), flush=True)
engine.close()
"""


def test_cfg_parallel_on_two_ranks_previews_from_rank_0(a14b: Path, tmp_path: Path) -> None:
    script = tmp_path / "rank0.py"
    script.write_text(RANK0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script), str(a14b), str(tmp_path / "previews")],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=240,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    found = json.loads(lines[0].removeprefix("RESULT "))
    assert found["plan"] == [2, True]
    # Rank 0 publishes each preview once, after steps 2 and 4 of 6, as one process does (a follower rank has no
    # tiny decoder and no publisher).
    assert found["shapes"] == [[2, 3, [32, 32]], [4, 3, [32, 32]]]
    assert found["reference_steps"] == [2, 4]
    # The two ranks denoise as one process does, and the previews show it: the same pictures up to float rounding
    # and the encode (mean absolute difference in 8-bit levels).
    assert found["rel"] < 1e-5
    assert all(diff < 1.0 for diff in found["diff"].values()), found["diff"]
