"""The engine options' registry (worker/options/): one check of a configuration that reports every problem at once,
entries that agree with diffusers about context parallelism, the decode options applied in the registry's order,
docs/ENGINE.md's table generated from it, and a pipeline's variant read one way from a directory or a loaded pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.settings import EngineSettings
from worker import accel, pipeline_dir
from worker.options import attention, cache, registry
from worker.options.option import Environment
from worker.tiny_model import build_tiny_pipeline, write_tiny_model

ENGINE_DOC = Path(__file__).resolve().parents[2] / "docs" / "ENGINE.md"


def test_the_option_table_in_docs_engine_md_is_current() -> None:
    table = registry.option_table()
    assert table in ENGINE_DOC.read_text(), "docs/ENGINE.md's option table is stale: run `make readme`"
    assert table.count("\n") == len(registry.OPTIONS) + 1  # a row per entry under the header
    assert "`--attention-backend fa4`" in table and "sm90+" in table and "`pip install 'wanq[fa4]'`" in table


def test_validate_returns_every_problem_of_every_option_at_once() -> None:
    settings = EngineSettings(attention_backend="fa4", quantization="fp8", dtype="fp32", offload="group", compile=True)
    problems = registry.validate(settings, Environment(device="cpu"))
    assert problems.machine == []  # not asked for
    said = "\n".join(problems.configuration)
    for part in (
        "fa4 needs a CUDA GPU",
        "fa4 computes in bf16 or fp16",
        "fp8 needs a CUDA GPU",
        "use --dtype bf16, not fp32",
        "which --offload group splits into groups",
        "--compile cannot be combined with --offload group",
    ):
        assert part in said
    assert len(problems.configuration) == 6
    with pytest.raises(ValueError, match=r"^impossible engine configuration: "):
        problems.raise_if_any()


def test_an_option_nobody_asked_for_is_never_checked() -> None:
    assert registry.validate(EngineSettings(), Environment(device="cpu", num_heads=7, gpu_count=0, machine=True)).all() == []
    assert [o.flag for o in registry.chosen(EngineSettings())] == ["--attention-backend (empty)"]


def test_the_registrys_context_parallel_backends_are_diffusers_own() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from worker import fa3, fa4

    fa4.register()
    fa3.register()
    supports = {b.value for b in AttentionBackendName if _AttentionBackendRegistry._is_context_parallel_available(b)}
    assert set(registry.context_parallel_backends()) <= supports
    assert {"fa4", "fa3", "fa3-fp8"} <= set(registry.context_parallel_backends())
    problems = registry.validate(EngineSettings(num_gpus=2, ring_degree=2, attention_backend="xformers"), Environment())
    assert problems.configuration == [
        f"attention backend 'xformers' has no context-parallel support in diffusers; use one of {sorted((*attention.CONTEXT_PARALLEL, *attention.OWN))}"
    ]


def test_the_step_cache_and_split_tokens_are_one_rule_for_the_worker_and_its_jobs() -> None:
    split = EngineSettings(num_gpus=2, ulysses_degree=2)
    assert cache.refused_here(split) and not cache.refused_here(EngineSettings(num_gpus=2, cfg_parallel=True))
    problems = registry.validate(split.model_copy(update={"cache": "dbcache"}), Environment()).configuration
    assert [p for p in problems if p.startswith("--cache with --ulysses-degree")]


def test_checks_that_need_the_gpu_run_in_a_child_and_the_rest_here() -> None:
    assert registry.needs_gpu_check(EngineSettings(attention_backend="fa4"))
    assert registry.needs_gpu_check(EngineSettings(quantization="fp8"))
    assert registry.needs_gpu_check(EngineSettings(num_gpus=2, cfg_parallel=True))
    assert not registry.needs_gpu_check(EngineSettings(cache="dbcache", vae_tiling=True, compile=True))


def test_decode_options_apply_in_the_registrys_order() -> None:
    calls: list[str] = []

    class Vae:
        def enable_tiling(self) -> None:
            calls.append("tiling")

        def modules(self) -> list[Any]:
            calls.append("channels_last")
            return []

        class decoder:
            @staticmethod
            def compile() -> None:
                calls.append("compiled_decoder")

    settings = EngineSettings(vae_compile=True, vae_channels_last=True, vae_tiling=True)
    assert accel.prepare_vae(Vae(), settings) == ("tiling", "channels_last", "compiled_decoder")
    assert calls == ["tiling", "channels_last", "compiled_decoder"]


@pytest.mark.parametrize("variant", ["t2v-a14b", "i2v-a14b", "ti2v-5b"])
def test_a_variant_reads_the_same_from_a_directory_and_from_a_loaded_pipeline(variant: str, tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path / variant, variant)
    from_dir = pipeline_dir.variant_of(pipeline_dir.inspect(directory), directory)
    pipe = build_tiny_pipeline(variant)
    assert from_dir == pipeline_dir.variant_of(pipeline_dir.shape_of(pipe), "the tiny pipeline") == variant
    assert len(pipeline_dir.transformers_of(pipe)) == (1 if variant == "ti2v-5b" else 2)
    pipe.transformer_2 = None if variant != "ti2v-5b" else pipe.transformer_2
    if variant != "ti2v-5b":
        with pytest.raises(ValueError, match=r"holds no Wan2\.2 pipeline wanq knows"):
            pipeline_dir.variant_of(pipeline_dir.shape_of(pipe), "the tiny pipeline")
