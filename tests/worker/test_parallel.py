"""Two ranks in one gloo process group on the CPU: CFG-parallel output (with a LoRA on every rank, and with
guidance 1, where CFG-parallel has nothing to split), cancel across ranks, and a dead rank taking the worker
down promptly. (Ulysses / ring need CUDA: diffusers' context
parallelism is verified on the lent GPUs, benchmarks/RESULTS.md.)

Rank 0 runs in a child process because a dead follower makes it `os._exit`, as it must in a worker.
The messages on the rank pipes are checked on their own, over a plain pipe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.schemas import GenerationSpec
from worker.cache import DBCacheSetting
from worker.exits import ExitStatus
from worker.parallel.messages import Failed, Job, Stop, receive, send
from worker.tiny_model import write_tiny_model

RANK0 = r"""
import sys, time
import torch
from shared.errors import JobCanceled
from shared.schemas import GenerationSpec, JobLora
from shared.settings import EngineSettings, LoraSettings
from worker.engine import WanEngine
from worker.startup import start_engine

path, cache, sha, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
loras = LoraSettings(max_resident=2, max_rank=8, cache_dir=cache)
spec = GenerationSpec(model="tiny", prompt="a cat walks", negative_prompt="blurry", width=64, height=64, num_frames=9,
                      fps=16, num_inference_steps=3, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=5.0, seed=5)
lora = JobLora(name="x", sha256=sha, storage_key="x", size_bytes=size, strength=0.8, expert="both")
with_lora = spec.model_copy(update={"loras": (lora,)})
no_cfg = spec.model_copy(update={"guidance_scale": 1.0, "guidance_scale_2": 1.0, "loras": (lora,)})
one = WanEngine(path, EngineSettings(device="cpu"), loras=loras)
reference, reference_lora, reference_no_cfg = (one.generate(s).latents for s in (spec, with_lora, no_cfg))
cached_reference = one.generate(
    GenerationSpec.model_validate({**spec.model_dump(), "num_inference_steps": 8, "cache": {"rdt": 1.0, "warmup": 1}})
).latents
del one
engine = start_engine(path, EngineSettings(device="cpu", num_gpus=2, cfg_parallel=True), loras=loras)
print("PLAN", engine.plan.num_gpus, engine.plan.cfg_parallel, flush=True)
result = engine.generate(spec)
print("REL", float((result.latents - reference).norm() / reference.norm()), flush=True)
lora_result = engine.generate(with_lora).latents
print("REL_LORA", float((lora_result - reference_lora).norm() / reference_lora.norm()), flush=True)
no_cfg_result = engine.generate(no_cfg).latents
print("REL_NO_CFG", float((no_cfg_result - reference_no_cfg).norm() / reference_no_cfg.norm()), flush=True)

seen = []
def cancel_at_two(done, total):
    seen.append(done)
    if done == 2:
        raise JobCanceled("canceled")
try:
    engine.generate(spec.model_copy(update={"num_inference_steps": 6}), on_step=cancel_at_two)
except JobCanceled:
    print("CANCELED", seen, flush=True)
again = engine.generate(spec)
print("AGAIN", bool(torch.equal(again.latents, result.latents)), flush=True)

# The step cache per job on both ranks. A fixed schedule (rdt 1: W computed steps, then MC cached, 1 computed...)
# skips the same steps of each branch as one process does, so the two ranks give one process' cached output only if
# the follower got rank 0's resolved setting in its Job message. rdt 0 is the uncached output exactly; rdt 0.5 runs
# cache-dit's residual test, whose all_reduce over both ranks makes them skip the same steps.
def with_cache(cache):
    return GenerationSpec.model_validate({**spec.model_dump(), "num_inference_steps": 8, "cache": cache})
uncached = engine.generate(with_cache(False))
exact = engine.generate(with_cache({"rdt": 0.0}))
cached = engine.generate(with_cache({"rdt": 1.0, "warmup": 1}))
dynamic = engine.generate(with_cache({"rdt": 0.5, "warmup": 1}))
print("CACHE", bool(torch.equal(exact.latents, uncached.latents)), bool(torch.equal(cached.latents, uncached.latents)),
      cached.cache["blocks_skipped_share"] > 0, dynamic.cache["experts"][0]["transformer_calls"], flush=True)
print("CACHED_REL", float((cached.latents - cached_reference).norm() / cached_reference.norm()), flush=True)

print("PIDS", *engine.followers.pids, flush=True)
def slow(done, total):
    print("STEP", done, flush=True)
    time.sleep(0.3)
engine.generate(spec.model_copy(update={"num_inference_steps": 500}), on_step=slow)
print("NOT REACHED", flush=True)
"""


@pytest.fixture(scope="module")
def tiny_a14b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "t2v", "t2v-a14b")


def test_cfg_parallel_cancel_and_a_dead_rank(tiny_a14b: Path, tmp_path: Path) -> None:
    from diffusers import WanPipeline

    from shared.fetch import sha256_of
    from tests.lora_maker import make_lora

    script = tmp_path / "rank0.py"
    script.write_text(RANK0)
    lora = make_lora(WanPipeline.from_pretrained(tiny_a14b).transformer, tmp_path / "x.safetensors", rank=4, seed=2)
    sha = sha256_of(lora)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{sha}.safetensors").write_bytes(lora.read_bytes())  # the host's LoRA cache, which every rank reads
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    rank0 = subprocess.Popen(
        [sys.executable, str(script), str(tiny_a14b), str(cache), sha, str(lora.stat().st_size)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(root),
    )
    assert rank0.stdout is not None
    lines: dict[str, list[str]] = {}
    follower = 0
    killed_at = 0.0
    try:
        for line in rank0.stdout:
            key, *values = line.split(maxsplit=1)
            lines[key] = values
            if key == "PIDS":
                follower = int(values[0].split()[0])
            if key == "STEP" and not killed_at:
                os.kill(follower, signal.SIGKILL)  # a rank dies mid-job
                killed_at = time.monotonic()
        code = rank0.wait(timeout=60)
    finally:
        if rank0.poll() is None:
            rank0.kill()
    # Two-expert model, both branches on two ranks: the same latents as one process
    assert lines["PLAN"] == ["2 True\n"]
    assert float(lines["REL"][0]) < 1e-5
    # Every rank holds the job's LoRA in the same slot: the same latents as one process with it
    assert float(lines["REL_LORA"][0]) < 1e-5
    # Guidance 1: no unconditional branch, the CFG split off; both rank groups compute the conditional one
    assert float(lines["REL_NO_CFG"][0]) < 1e-5
    # Cancel: rank 0's decision stops both ranks at step 2, and the group serves the next job
    assert lines["CANCELED"] == ["[1, 2]\n"]
    assert lines["AGAIN"] == ["True\n"]
    assert lines["CACHE"][0].split()[:3] == ["True", "False", "True"]
    assert float(lines["CACHED_REL"][0]) < 1e-5
    # A dead follower takes rank 0 down promptly (its job would be redelivered), never a hang
    assert "NOT" not in lines
    assert code == ExitStatus.RANK_DIED
    assert time.monotonic() - killed_at < 20


def test_messages_cross_a_pipe_typed_and_only_ours_are_accepted() -> None:
    import pickle

    import torch
    from PIL import Image

    spec = GenerationSpec(
        model="tiny",
        prompt="a cat",
        negative_prompt="",
        width=64,
        height=48,
        num_frames=5,
        fps=16,
        num_inference_steps=2,
        guidance_scale=4.0,
        guidance_scale_2=None,
        flow_shift=5.0,
        seed=1,
    )
    image = Image.new("RGB", (64, 48), (200, 10, 30))
    cache = DBCacheSetting(rdt=0.3, taylorseer=True)
    job = Job.of(
        spec, image, [torch.zeros(1, 7, 16, dtype=torch.bfloat16), torch.zeros(1, 3, 16, dtype=torch.bfloat16)], cache=cache
    )
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        for message in (job, Failed("OutOfMemoryError: no"), Stop()):
            send(writer, message)
        writer.write(len(pickle.dumps({"op": "stop"})).to_bytes(8, "little") + pickle.dumps({"op": "stop"}))
        writer.close()
        received = receive(reader)
        assert isinstance(received, Job)
        assert (received.spec, received.embed_shapes, received.embed_dtype) == (spec, ((1, 7, 16), (1, 3, 16)), "bfloat16")
        assert received.cache == cache
        decoded = received.image()
        assert decoded is not None and decoded.tobytes() == image.tobytes()  # a lossless PNG on the way
        assert receive(reader) == Failed("OutOfMemoryError: no")
        assert receive(reader) == Stop()
        with pytest.raises(TypeError, match="unexpected message on a rank pipe: dict"):
            receive(reader)
        assert receive(reader) is None  # the other side is gone
