"""The step cache (cache-dit DBCache) on tiny models of the real classes (CPU): a threshold of 0 is the uncached
output exactly, a high one skips blocks; per-job settings over the worker's; one context per A14B expert; a new
step count starts from a fresh context; regional compile keeps working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from shared.errors import InvalidRequest
from shared.schemas import GenerationSpec
from shared.settings import EngineSettings
from worker.cache import DBCacheSetting, resolve
from worker.engine import Generation, WanEngine
from worker.tiny_model import write_tiny_model

HIGH = {"rdt": 1.0, "warmup": 1}
"""rdt >= 1 skips every step DBCache may (after warmup, at most `mc` in a row): a known share with random weights."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {variant: write_tiny_model(root / variant, variant) for variant in ("ti2v-5b", "t2v-a14b")}


@pytest.fixture(scope="module")
def engines(models: dict[str, Path]) -> dict[str, WanEngine]:
    """One engine per variant whose worker default is no cache."""
    return {variant: WanEngine(path, EngineSettings(device="cpu")) for variant, path in models.items()}


def spec(steps: int = 8, **overrides: Any) -> GenerationSpec:
    fields: dict[str, Any] = dict(
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
    return GenerationSpec(**fields)


def run(engine: WanEngine, job: GenerationSpec) -> tuple[Generation, int]:
    """The generation, and how often a transformer block actually ran (hooks on every block of every expert)."""
    calls = [0]
    experts = [m for m in (engine.pipe.transformer, getattr(engine.pipe, "transformer_2", None)) if m is not None]
    handles = [b.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in experts for b in m.blocks]
    try:
        result = engine.generate(job)
    finally:
        for handle in handles:
            handle.remove()
    return result, calls[0]


@pytest.mark.parametrize("variant", ["ti2v-5b", "t2v-a14b"])
def test_threshold_zero_is_the_uncached_output_and_a_high_one_skips_blocks(engines: dict[str, WanEngine], variant: str) -> None:
    engine = engines[variant]
    plain, plain_calls = run(engine, spec())
    assert plain_calls == 8 * 2 * 2  # steps x (cond + uncond) x 2 blocks (A14B: the steps are split between the experts)

    exact, exact_calls = run(engine, spec(cache={"rdt": 0.0}))
    assert exact.cache is not None and exact.cache["setting"]["rdt"] == 0.0
    assert torch.equal(exact.latents, plain.latents) and exact_calls == plain_calls
    assert exact.cache["blocks_skipped_share"] == 0.0

    cached, cached_calls = run(engine, spec(cache=HIGH))
    assert cached_calls < plain_calls
    assert not torch.equal(cached.latents, plain.latents)  # lossy
    assert cached.cache is not None
    skipped = sum(e["blocks_skipped"] for e in cached.cache["experts"])
    assert plain_calls - cached_calls == skipped  # the statistics count what really ran
    assert cached.cache["blocks_skipped_share"] == pytest.approx(skipped / plain_calls, abs=1e-4)

    again, _ = run(engine, spec())  # the next job without a cache is the plain output again
    assert torch.equal(again.latents, plain.latents)


def test_each_a14b_expert_has_its_own_context(engines: dict[str, WanEngine]) -> None:
    engine = engines["t2v-a14b"]
    result, _ = run(engine, spec(steps=10, cache={"rdt": 1.0, "warmup": 2, "mc": 2}))
    assert result.cache is not None
    high, low = result.cache["experts"]
    assert (high["expert"], low["expert"]) == ("transformer", "transformer_2")
    assert high["steps"] + low["steps"] == 10 and high["steps"] > 0 and low["steps"] > 0
    assert high["cached_calls"] > 0 and low["cached_calls"] > 0
    contexts = []
    for model in (engine.pipe.transformer, engine.pipe.transformer_2):
        (name,) = model._context_names
        contexts.append(model._context_manager.get_context(name))
    assert contexts[0] is not contexts[1]
    # Each counts its own steps: the low-noise expert's warmup is its own first 2 steps, not the job's.
    for context, expert in zip(contexts, (high, low), strict=True):
        assert context.executed_steps == expert["steps"]
        assert min(context.cached_steps) >= 2


def test_the_worker_default_and_each_jobs_own_setting(models: dict[str, Path], engines: dict[str, WanEngine]) -> None:
    worker = EngineSettings(device="cpu", cache="dbcache", cache_rdt=1.0, cache_warmup=1)
    assert resolve(worker, None) == DBCacheSetting(rdt=1.0, warmup=1)
    assert resolve(worker, False) is None
    assert resolve(EngineSettings(), None) is None
    plain = engines["ti2v-5b"].generate(spec()).latents

    engine = WanEngine(models["ti2v-5b"], worker)
    default, _ = run(engine, spec())  # no `cache` in the job: the worker's
    assert default.cache is not None and default.cache["setting"] == {**DBCacheSetting(rdt=1.0, warmup=1).__dict__}
    assert default.cache["blocks_skipped_share"] > 0
    off, _ = run(engine, spec(cache=False))
    assert torch.equal(off.latents, plain) and off.cache is not None and off.cache["setting"] is None
    own, _ = run(engine, spec(cache={"rdt": 0.0, "mc": 1}))  # the job's fields over the worker's
    assert own.cache is not None and own.cache["setting"] == {**DBCacheSetting(rdt=0.0, warmup=1, mc=1).__dict__}
    assert torch.equal(own.latents, plain)
    with pytest.raises(InvalidRequest, match="invalid 'cache' fn 2 \\+ bn 1: the model has 2 blocks") as excinfo:
        engine.generate(spec(cache={"fn": 2, "bn": 1}))
    assert excinfo.value.param == "cache"


def test_a_new_step_count_starts_from_a_fresh_context(models: dict[str, Path], engines: dict[str, WanEngine]) -> None:
    engine = engines["t2v-a14b"]
    run(engine, spec(steps=12, cache=HIGH))
    after_other_jobs, _ = run(engine, spec(steps=6, cache=HIGH))
    fresh, _ = run(WanEngine(models["t2v-a14b"], EngineSettings(device="cpu")), spec(steps=6, cache=HIGH))
    assert torch.equal(after_other_jobs.latents, fresh.latents)
    assert after_other_jobs.cache == fresh.cache


def test_regional_compile_keeps_the_cache_working(models: dict[str, Path], engines: dict[str, WanEngine]) -> None:
    eager = engines["ti2v-5b"].generate(spec(steps=6, cache=HIGH))
    engine = WanEngine(
        models["ti2v-5b"], EngineSettings(device="cpu", compile=True, cache="dbcache", cache_rdt=1.0, cache_warmup=1)
    )
    compiled = engine.generate(spec(steps=6))
    assert compiled.cache == eager.cache and compiled.cache is not None and compiled.cache["blocks_skipped_share"] > 0
    torch.testing.assert_close(compiled.latents, eager.latents, rtol=1e-4, atol=1e-4)  # inductor's fp32 rounding only
    uncached = engine.generate(spec(steps=6, cache=False))
    torch.testing.assert_close(uncached.latents, engines["ti2v-5b"].generate(spec(steps=6)).latents, rtol=1e-4, atol=1e-4)
