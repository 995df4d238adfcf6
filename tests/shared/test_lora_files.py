"""The header-only reading of LoRA files (shared/lora_files.py) against what diffusers' own Wan loader does with the
same files: every file it accepts loads in diffusers with the same modules and ranks; every refusal names why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.catalog import PRESETS
from shared.errors import InvalidRequest
from shared.lora_files import BLOCK_MODULES, LoraFileInfo, inspect
from tests.lora_maker import make_lora, save_raw, to_original_format
from worker.tiny_model import build_tiny_pipeline

TINY = PRESETS["tiny-t2v-a14b"]
LIMITS = dict(max_header_bytes=1 << 20, max_rank=16, max_scale=16.0)


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    return build_tiny_pipeline("t2v-a14b").transformer


def check(path: Path, model: object = TINY, **limits: object) -> LoraFileInfo:
    return inspect(path, model, **{**LIMITS, **limits})  # type: ignore[arg-type]


def diffusers_modules(path: Path) -> dict[str, int]:
    """module -> rank, as diffusers' Wan loader converts the file."""
    from diffusers import WanPipeline

    state = WanPipeline.lora_state_dict(str(path))
    return {
        k.removeprefix("transformer.").removesuffix(".lora_A.weight"): v.shape[0]
        for k, v in state.items()
        if k.endswith(".lora_A.weight")
    }


def musubi(source: Path, out: Path) -> Path:
    from safetensors.torch import load_file

    names = {"self_attn": "self_attn", "cross_attn": "cross_attn"}
    tensors = {}
    for key, value in load_file(str(source)).items():
        _, rest = key.split("blocks.", 1)
        block, module, part = rest.split(".", 2)
        head, _, tail = f"{module}.{part}".partition(".")
        kind, _, lora = tail.partition(".")
        stem = f"lora_unet_blocks_{block}_{names.get(head, head)}_{kind}"
        tensors[f"{stem}.{lora}"] = value
    return save_raw(tensors, out)


def test_the_formats_diffusers_loads_are_read_the_same_way(transformer: torch.nn.Module, tmp_path: Path) -> None:
    full = make_lora(transformer, tmp_path / "full.safetensors", rank=4, seed=1)
    block0 = make_lora(transformer, tmp_path / "b0.safetensors", rank=8, seed=2, blocks=[0], modules=BLOCK_MODULES[:4])
    alpha = make_lora(transformer, tmp_path / "alpha.safetensors", rank=4, seed=3, alpha=8)
    original = to_original_format(full, tmp_path / "original.safetensors", alpha=2)
    kohya = musubi(original, tmp_path / "musubi.safetensors")
    for path, fmt, rank, blocks, scale in (
        (full, "diffusers", 4, [0, 1], 1.0),
        (block0, "diffusers", 8, [0], 1.0),
        (alpha, "diffusers", 4, [0, 1], 2.0),
        (original, "original", 4, [0, 1], 0.5),
        (kohya, "musubi", 4, [0, 1], 0.5),
    ):
        info = check(path)
        assert (info.format, info.rank, info.blocks, info.scale) == (fmt, rank, blocks, scale), path.name
        converted = diffusers_modules(path)
        assert info.num_modules == len(converted) and set(converted.values()) == {rank}, path.name
        assert set(info.modules) == {m.split(".", 2)[2] for m in converted}
    assert check(block0).modules == list(BLOCK_MODULES[:4])


def test_norm_diffs_are_dropped_like_diffusers_does(transformer: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    original = to_original_format(make_lora(transformer, tmp_path / "a.safetensors", rank=4, seed=1), tmp_path / "o.safetensors")
    tensors = load_file(str(original)) | {"diffusion_model.blocks.0.norm3.diff": torch.zeros(24)}
    path = save_raw(tensors, tmp_path / "with-norm.safetensors")
    assert check(path).num_modules == len(diffusers_modules(path)) == 20


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-safetensors", "not a safetensors file"),
        ("pickle", "not a safetensors file"),
        ("header-too-large", "larger than WANQ_LORAS_MAX_HEADER_BYTES"),
        ("truncated", "truncated"),
        ("unprefixed", "no tensor diffusers' Wan LoRA loader would accept"),
        ("bias", "LoRA biases (diff_b) are not supported"),
        ("dora", "DoRA"),
        ("non-block", "cover only the transformer blocks' linear layers"),
        ("rank", "rank 32 is higher than the workers' adapter slots take (WANQ_LORAS_MAX_RANK, 16)"),
        ("unpaired", "has only one of its two LoRA matrices"),
        ("no-target-modules", "no target_modules"),
        ("metadata-rank", "its metadata gives blocks.0.attn1.to_q rank 8 but its tensors have rank 4"),
        ("scale", "alpha/rank is 32"),
        ("another-family", "5120 -> 5120 in this file but 24 -> 24 in tiny-t2v-a14b: it is a LoRA for another model family "
         "(the 14B models (Wan2.1-14B, Wan2.2 T2V-/I2V-A14B)), not tiny-a14b"),
        ("block-out-of-range", "tiny-t2v-a14b has 2 transformer blocks"),
        ("int8", "LoRA weights must be F32, F16 or BF16"),
    ],
)  # fmt: skip
def test_refusals_name_the_problem(case: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.safetensors"
    a, b = torch.randn(4, 24), torch.randn(24, 4)
    pair = {"transformer.blocks.0.attn1.to_q.lora_A.weight": a, "transformer.blocks.0.attn1.to_q.lora_B.weight": b}
    meta = {"r": 4, "lora_alpha": 4, "target_modules": ["blocks.0.attn1.to_q"]}
    limits: dict[str, object] = {}
    if case == "not-safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00hello")
    elif case == "pickle":
        torch.save(pair, path)
    elif case == "header-too-large":
        save_raw(pair, path)
        limits["max_header_bytes"] = 64
    elif case == "truncated":
        save_raw(pair, path)
        path.write_bytes(path.read_bytes()[:-10])
    elif case == "unprefixed":
        save_raw({k.removeprefix("transformer."): v for k, v in pair.items()}, path)
    elif case == "bias":
        save_raw(pair | {"transformer.blocks.0.attn1.to_q.lora_B.bias": torch.zeros(24)}, path)
    elif case == "dora":
        save_raw(pair | {"transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(24)}, path)
    elif case == "non-block":
        save_raw(
            pair | {"transformer.proj_out.lora_A.weight": a.clone(), "transformer.proj_out.lora_B.weight": torch.randn(64, 4)},
            path,
        )
    elif case == "rank":
        save_raw({k: torch.randn(32, 24) if "lora_A" in k else torch.randn(24, 32) for k in pair}, path)
    elif case == "unpaired":
        save_raw({"transformer.blocks.0.attn1.to_q.lora_A.weight": a}, path)
    elif case == "no-target-modules":
        save_raw(pair, path, {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 4})})
    elif case == "metadata-rank":
        save_raw(pair, path, {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in (meta | {"r": 8}).items()})})
    elif case == "scale":
        save_raw(
            pair,
            path,
            {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in (meta | {"lora_alpha": 128}).items()})},
        )
    elif case == "another-family":
        save_raw(
            {
                "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 5120, dtype=torch.bfloat16),
                "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(5120, 4, dtype=torch.bfloat16),
                "transformer.blocks.0.ffn.net.0.proj.lora_A.weight": torch.randn(4, 5120, dtype=torch.bfloat16),
                "transformer.blocks.0.ffn.net.0.proj.lora_B.weight": torch.randn(13824, 4, dtype=torch.bfloat16),
            },
            path,
        )
    elif case == "block-out-of-range":
        save_raw({k.replace("blocks.0", "blocks.7"): v for k, v in pair.items()}, path)
    elif case == "int8":
        save_raw({k: v.to(torch.int8) for k, v in pair.items()}, path)
    with pytest.raises(InvalidRequest) as refused:
        check(path, **limits)
    assert message in refused.value.message and refused.value.param == "file", refused.value.message
