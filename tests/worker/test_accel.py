"""Engine options: validation messages, the CLI flags that set them, the model's head count."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import EngineSettings, Settings
from wanq.cli import build_parser, main
from wanq.config import settings_with_engine_flags
from worker import accel
from worker.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def tiny_ti2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "ti2v", "ti2v-5b")


@pytest.mark.parametrize(
    ("options", "context", "message"),
    [
        ({"num_gpus": 2}, {}, "= 1 must equal num_gpus (2)"),
        ({"num_gpus": 4, "ulysses_degree": 2}, {}, "x cfg (1) = 2 must equal num_gpus (4)"),
        ({"num_gpus": 4, "ulysses_degree": 4}, {"num_heads": 6}, "6 attention heads are not divisible by --ulysses-degree 4"),
        ({"compile": True, "offload": "sequential"}, {}, "--compile cannot be combined with --offload sequential"),
        ({"compile": True, "offload": "group"}, {}, "--compile cannot be combined with --offload group"),
        ({"compile": True, "cache": "fbcache"}, {}, "use --cache none with --compile"),
        ({"num_gpus": 2, "cfg_parallel": True, "offload": "model"}, {}, "--offload model is single-GPU only"),
        ({"num_gpus": 2, "cfg_parallel": True, "cache": "taylorseer"}, {}, "not used with several GPUs"),
        ({"offload": "model", "vae_cpu_offload": True}, {}, "already offloads the text encoder and the VAE"),
        ({"pin_cpu_memory": True}, {}, "--pin-cpu-memory applies to group offloading only"),
        ({"num_gpus": 2, "ulysses_degree": 2}, {"device": "cpu"}, "need CUDA GPUs"),
        ({"offload": "sequential"}, {"device": "cpu"}, "on CPU use --offload none"),
        ({"dtype": "fp16"}, {"device": "cpu"}, "--dtype fp16 is not supported on CPU"),
        ({"num_gpus": 2, "cfg_parallel": True, "device": "cuda:1"}, {}, "names one GPU but --num-gpus is 2"),
        ({"num_gpus": 4, "ulysses_degree": 2, "cfg_parallel": True}, {"device": "cuda", "gpu_count": 2}, "has 2 visible GPU(s)"),
        ({"num_gpus": 2, "ring_degree": 2, "attention_backend": "xformers"}, {}, "has no context-parallel support"),
        ({"attention_backend": "no-such-backend"}, {}, "unknown --attention-backend 'no-such-backend'"),
    ],
)
def test_impossible_configurations_are_refused_with_what_to_change(options: dict, context: dict, message: str) -> None:
    with pytest.raises(ValueError, match="impossible engine configuration") as excinfo:
        accel.validate(EngineSettings(**options), **context)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"compile": True, "offload": "model", "attention_backend": "_native_cudnn"},
        {"offload": "group", "pin_cpu_memory": True},
        {"text_encoder_cpu_offload": True, "vae_cpu_offload": True, "pin_cpu_memory": True, "vae_tiling": True},
        {"num_gpus": 2, "cfg_parallel": True},
        {"num_gpus": 4, "ulysses_degree": 2, "cfg_parallel": True, "compile": True},
        {"num_gpus": 8, "ulysses_degree": 2, "ring_degree": 2, "cfg_parallel": True},
        {"cache": "fbcache", "cache_threshold": 0.1},
    ],
)
def test_possible_configurations_pass(options: dict) -> None:
    accel.validate(EngineSettings(**options), num_heads=40, device="cuda", gpu_count=8)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ValueError) as excinfo:
        accel.validate(EngineSettings(num_gpus=3, compile=True, offload="sequential"))
    assert "must equal num_gpus (3)" in str(excinfo.value)
    assert "--compile cannot be combined" in str(excinfo.value)


def test_generate_flags_become_engine_settings() -> None:
    args = build_parser().parse_args(
        [
            "generate",
            "--model-path",
            "m",
            "--prompt",
            "p",
            "--dtype",
            "bf16",
            "--attention-backend",
            "_native_cudnn",
            "--compile",
            "--warmup",
            "--offload",
            "none",
            "--text-encoder-cpu-offload",
            "--vae-cpu-offload",
            "--pin-cpu-memory",
            "--vae-tiling",
            "--num-gpus",
            "4",
            "--ulysses-degree",
            "2",
            "--ring-degree",
            "1",
            "--cfg-parallel",
            "--cache",
            "none",
            "--cache-threshold",
            "0.12",
            "--cache-interval",
            "4",
        ]
    )
    engine = settings_with_engine_flags(Settings(), args).engine
    expected = dict(
        dtype="bf16",
        attention_backend="_native_cudnn",
        compile=True,
        warmup=True,
        offload="none",
        text_encoder_cpu_offload=True,
        vae_cpu_offload=True,
        pin_cpu_memory=True,
        vae_tiling=True,
        num_gpus=4,
        ulysses_degree=2,
        ring_degree=1,
        cfg_parallel=True,
        cache="none",
        cache_threshold=0.12,
        cache_interval=4,
    )
    assert {key: getattr(engine, key) for key in expected} == expected
    accel.validate(engine, num_heads=24, device="cuda", gpu_count=4)


def test_worker_refuses_an_impossible_configuration_before_starting(tiny_ti2v: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["worker", "--model", "tiny-ti2v-5b", "--model-path", str(tiny_ti2v), "--num-gpus", "3", "--ulysses-degree", "2"])
    assert "ulysses_degree (2) x ring_degree (1) x cfg (1) = 2 must equal num_gpus (3)" in str(excinfo.value)


def test_head_count_comes_from_the_model_directory(tiny_ti2v: Path) -> None:
    heads = accel.num_heads_of(tiny_ti2v)
    assert heads == 2  # the tiny transformer's
    with pytest.raises(ValueError, match="2 attention heads are not divisible by --ulysses-degree 4"):
        accel.validate(EngineSettings(num_gpus=4, ulysses_degree=4), num_heads=heads, device="cuda")
