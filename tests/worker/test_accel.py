"""Engine options: validation messages, the CLI flags that set them, the model's head count, and what a machine
without flash-attn-4 or a suitable GPU is told."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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
        ({"num_gpus": 2, "cfg_parallel": True, "offload": "model"}, {}, "--offload model is single-GPU only"),
        ({"num_gpus": 2, "ulysses_degree": 2, "cache": "dbcache"}, {}, "--cache with --ulysses-degree / --ring-degree"),
        ({"offload": "model", "vae_cpu_offload": True}, {}, "already offloads the text encoder and the VAE"),
        ({"pin_cpu_memory": True}, {}, "--pin-cpu-memory applies to group offloading only"),
        ({"num_gpus": 2, "ulysses_degree": 2}, {"device": "cpu"}, "need CUDA GPUs"),
        ({"offload": "sequential"}, {"device": "cpu"}, "on CPU use --offload none"),
        ({"dtype": "fp16"}, {"device": "cpu"}, "--dtype fp16 is not supported on CPU"),
        ({"num_gpus": 2, "cfg_parallel": True, "device": "cuda:1"}, {}, "names one GPU but --num-gpus is 2"),
        ({"num_gpus": 4, "ulysses_degree": 2, "cfg_parallel": True}, {"device": "cuda", "gpu_count": 2}, "has 2 visible GPU(s)"),
        ({"num_gpus": 2, "ring_degree": 2, "attention_backend": "xformers"}, {}, "has no context-parallel support"),
        ({"attention_backend": "no-such-backend"}, {}, "unknown --attention-backend 'no-such-backend'"),
        ({"attention_backend": "fa4"}, {"device": "cpu"}, "fa4 needs a CUDA GPU (Hopper or newer)"),
        ({"attention_backend": "fa4", "dtype": "fp32"}, {}, "fa4 computes in bf16 or fp16; use --dtype bf16"),
        ({"quantization": "fp8"}, {"device": "cpu"}, "fp8 needs a CUDA GPU with FP8 tensor cores"),
        ({"quantization": "fp8", "dtype": "fp16"}, {}, "use --dtype bf16, not fp16"),
        ({"quantization": "fp8", "offload": "group"}, {}, "which --offload group splits into groups; use --offload none"),
        ({"quantization": "fp8", "offload": "sequential"}, {}, "fp8 quantizes whole transformers, which --offload sequential"),
        ({"vae_compile": True, "vae_cpu_offload": True}, {}, "--vae-compile cannot be combined with offload hooks"),
        ({"vae_path": "/no/such/vae"}, {}, "--vae-path /no/such/vae does not exist"),
        ({"fused_ffn": True, "offload": "sequential"}, {}, "--fused-ffn cannot be combined with --offload sequential"),
        ({"fused_ffn": True, "quantization": "fp8"}, {}, "--fused-ffn does nothing with --quantization fp8"),
        ({"vae_fused": True, "vae_cpu_offload": True}, {}, "--vae-fused cannot be combined with offload hooks on the VAE"),
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
        {"cache": "dbcache", "cache_rdt": 0.1, "compile": True},
        {"num_gpus": 2, "cfg_parallel": True, "cache": "dbcache", "cache_taylorseer": True},
        {"attention_backend": "fa4", "quantization": "fp8", "compile": True, "dtype": "bf16"},
        {
            "attention_backend": "fa4",
            "quantization": "fp8",
            "compile": True,
            "num_gpus": 4,
            "ulysses_degree": 2,
            "cfg_parallel": True,
        },
        {"attention_backend": "fa4", "num_gpus": 2, "ring_degree": 2},
        {"vae_compile": True, "vae_channels_last": True, "cudnn_benchmark": True, "compile": True},
        {"fused_ffn": True, "vae_fused": True, "attention_backend": "fa4", "compile": True},
        {"vae_fused": True, "attention_backend": "fa4", "quantization": "fp8", "compile": True},
        {"fused_ffn": True, "offload": "group"},
    ],
)
def test_possible_configurations_pass(options: dict) -> None:
    accel.validate(EngineSettings(**options), num_heads=40, device="cuda", gpu_count=8)


def test_fp8_with_model_offload_is_possible() -> None:
    accel.validate(EngineSettings(quantization="fp8", offload="model", compile=True), device="cuda")


def test_fp8_places_each_transformer_quantized_and_leaves_the_rest_to_their_placement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import fp8
    from worker.options.quantization import FP8
    from worker.tiny_model import build_tiny_pipeline

    pipe = build_tiny_pipeline("t2v-a14b")
    placed: list[tuple[str, str | None]] = []
    names = {id(module): name for name, module in pipe.components.items()}

    def place_quantized(transformer: object, device: object, *, park: object = None) -> fp8.Fp8Report:
        placed.append((names[id(transformer)], str(park) if park is not None else None))
        return fp8.Fp8Report()

    monkeypatch.setattr(fp8, "place_quantized", place_quantized)
    moved: list[str] = []
    for name, module in pipe.components.items():
        if name.startswith("transformer"):
            monkeypatch.setattr(module, "to", lambda *a, _name=name, **k: moved.append(_name))
    import torch

    accel._place(pipe, EngineSettings(quantization="fp8"), torch.device("cpu"), quantize_as_placed=FP8)
    assert placed == [("transformer", None), ("transformer_2", None)]
    assert moved == []  # never moved whole in bf16

    placed.clear()
    monkeypatch.setattr(pipe, "enable_model_cpu_offload", lambda device: placed.append(("hooks", None)))
    accel._place(pipe, EngineSettings(quantization="fp8", offload="model"), torch.device("cpu"), quantize_as_placed=FP8)
    assert placed == [("transformer", "cpu"), ("transformer_2", "cpu"), ("hooks", None)]


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
            "--quantization",
            "fp8",
            "--vae-compile",
            "--vae-channels-last",
            "--cudnn-benchmark",
            "--cache",
            "dbcache",
            "--cache-fn",
            "2",
            "--cache-bn",
            "1",
            "--cache-warmup",
            "6",
            "--cache-rdt",
            "0.12",
            "--cache-mc",
            "-1",
            "--cache-taylorseer",
            "--cache-ts-order",
            "2",
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
        quantization="fp8",
        vae_compile=True,
        vae_channels_last=True,
        cudnn_benchmark=True,
        cache="dbcache",
        cache_fn=2,
        cache_bn=1,
        cache_warmup=6,
        cache_rdt=0.12,
        cache_mc=-1,
        cache_taylorseer=True,
        cache_ts_order=2,
    )
    assert {key: getattr(engine, key) for key in expected} == expected
    # Every flag at once is not a possible configuration: the cache under Ulysses, the compiled VAE with its offload
    with pytest.raises(ValueError, match="--cache with --ulysses-degree") as excinfo:
        accel.validate(engine, num_heads=24, device="cuda", gpu_count=4)
    assert "--vae-compile cannot be combined" in str(excinfo.value)
    accel.validate(engine.model_copy(update={"cache": "none", "vae_compile": False}), num_heads=24, device="cuda", gpu_count=4)


def test_worker_refuses_an_impossible_configuration_before_starting(tiny_ti2v: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["worker", "--model", "tiny-ti2v-5b", "--model-path", str(tiny_ti2v), "--num-gpus", "3", "--ulysses-degree", "2"])
    assert "ulysses_degree (2) x ring_degree (1) x cfg (1) = 2 must equal num_gpus (3)" in str(excinfo.value)


def test_head_count_comes_from_the_model_directory(tiny_ti2v: Path) -> None:
    heads = accel.num_heads_of(tiny_ti2v)
    assert heads == 2  # the tiny transformer's
    with pytest.raises(ValueError, match="2 attention heads are not divisible by --ulysses-degree 4"):
        accel.validate(EngineSettings(num_gpus=4, ulysses_degree=4), num_heads=heads, device="cuda")


def test_the_cache_defaults_are_sglang_diffusions_documented_ones() -> None:
    # SGLANG_CACHE_DIT_ENABLED=false, FN 1, BN 0, WARMUP 4, RDT 0.24, MC 3, TAYLORSEER false, TS_ORDER 1
    engine = EngineSettings()
    assert (engine.cache, engine.cache_fn, engine.cache_bn, engine.cache_warmup, engine.cache_rdt, engine.cache_mc) == (
        "none",
        1,
        0,
        4,
        0.24,
        3,
    )
    assert (engine.cache_taylorseer, engine.cache_ts_order) == (False, 1)
    # diffusers' presets are gone; a configuration naming them is told what replaces them
    with pytest.raises(ValidationError, match="fbcache is gone: use dbcache with cache_warmup 0, cache_mc -1"):
        EngineSettings(cache="fbcache")  # type: ignore[arg-type]


def test_a_machine_without_flash_attn_4_or_the_right_gpu_is_told_what_to_change() -> None:
    from worker import fa4, fp8

    problems = accel.environment_problems(EngineSettings(attention_backend="fa4"))
    assert problems == [fa4.missing_package()]  # this machine has no flash-attn-4
    assert "pip install 'wanq[fa4]'" in problems[0] and "flash-attn-4" in problems[0]
    assert accel.environment_problems(EngineSettings(quantization="fp8")) == []  # torchao is here; no CUDA device given
    assert fa4.gpu_problem("NVIDIA H200", (9, 0)) is None and fa4.gpu_problem("NVIDIA B200", (10, 0)) is None
    assert "needs a Hopper (sm90) or newer GPU; NVIDIA A100-SXM4-80GB is sm80" in str(
        fa4.gpu_problem("NVIDIA A100-SXM4-80GB", (8, 0))
    )
    assert fp8.gpu_problem("NVIDIA L40S", (8, 9)) is None
    assert "needs FP8 tensor cores (Ada sm89, Hopper sm90 or newer); NVIDIA A100 is sm80" in str(
        fp8.gpu_problem("NVIDIA A100", (8, 0))
    )


def test_worker_asked_for_fa4_and_fp8_here_refuses_to_start_saying_what_to_install(
    tiny_ti2v: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(
            [
                "worker",
                "--model",
                "tiny-ti2v-5b",
                "--model-path",
                str(tiny_ti2v),
                "--attention-backend",
                "fa4",
                "--quantization",
                "fp8",
            ]
        )
    message = str(excinfo.value)
    assert message.startswith("wanq worker: engine options this machine cannot run:")
    assert "fa4 needs a CUDA GPU" in message and "fp8 needs a CUDA GPU with FP8 tensor cores" in message  # no GPU here
    assert "pip install 'wanq[fa4]'" in message
