"""The header-only reading of LoRA files (shared/lora_files.py) against what diffusers' own Wan loader does with the
same files: every file it accepts loads in diffusers with the same modules and ranks; every refusal names why."""

from __future__ import annotations

import copy
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.catalog import PRESETS
from shared.errors import InvalidRequest
from shared.lora_files import BLOCK_MODULES, LoraFileInfo, adapter_config, inspect
from tests.lora_maker import make_lora, save_raw, to_original_format
from tests.reliability_report import record
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


# -- the adapter config's patterns, crafted headers, non-ASCII digits ------------------------------------------


def raw_file(path: Path, header: dict[str, Any], data: bytes) -> Path:
    """A safetensors file written byte by byte: headers safetensors' own writer would refuse to write."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def pair(module: str = "transformer.blocks.0.attn1.to_q", rank: int = 4) -> tuple[dict[str, Any], bytes]:
    """The header entries and bytes of one module's lora_A / lora_B (zeros, F32) on the tiny models' 24-wide blocks."""
    size = rank * 24 * 4
    header = {
        f"{module}.lora_A.weight": {"dtype": "F32", "shape": [rank, 24], "data_offsets": [0, size]},
        f"{module}.lora_B.weight": {"dtype": "F32", "shape": [24, rank], "data_offsets": [size, 2 * size]},
    }
    return header, bytes(2 * size)


def adapter_metadata(**config: object) -> dict[str, str]:
    base = {"r": 4, "lora_alpha": 4, "target_modules": ["to_q"]}
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in (base | config).items()})}


def test_rank_and_alpha_patterns_are_read_as_module_names_as_diffusers_loads_them(
    transformer: torch.nn.Module, tmp_path: Path
) -> None:
    """Patterns that are module names (a suffix, or '^' and a whole name) give each module the rank and alpha that
    diffusers' loader gives it with peft's regex matching; the first pattern in the file's order wins."""
    from diffusers import WanPipeline

    modules = {"blocks.0.attn1.to_q": 4, "blocks.1.attn1.to_q": 8, "blocks.1.ffn.net.2": 2, "blocks.0.attn2.to_k": 4}
    tensors = {}
    for module, rank in modules.items():
        in_, out = (32, 24) if module.endswith("ffn.net.2") else (24, 24)
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_)
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out, rank)
    config = {
        "target_modules": sorted(modules),
        "rank_pattern": {"^blocks.1.attn1.to_q": 8, "net.2": 2},
        "alpha_pattern": {"blocks.1.attn1.to_q": 2, "to_q": 16, "^blocks.1.ffn.net.2": 3},
    }
    path = save_raw(tensors, tmp_path / "patterns.safetensors", adapter_metadata(**config))
    info = check(path)
    assert (info.rank, info.num_modules, info.scale) == (8, 4, 4.0)  # blocks.0.attn1.to_q: alpha 16 / rank 4

    state, metadata = WanPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    model = copy.deepcopy(transformer)
    model.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="x")
    ours = adapter_config({k.removeprefix("transformer."): v for k, v in metadata.items()})
    for module in modules:
        layer = model.get_submodule(module)
        assert (ours.rank(module), ours.scale(module)) == (layer.r["x"], layer.scaling["x"]), module
    assert [ours.alpha(m) for m in modules] == [16, 2, 3, 4]


HOSTILE_PATTERNS = [
    "(?:.*)*(?:.*)*(?:.*)*(?:.*)*!",  # the report's: 56 s in peft's matching; one group more never ends
    "(?:.*)*(?:.*)*!",
    "(?:(?:.*)*)*x",
    "(a+)+$",
    "(a|a)*b",
    "(.*a){25}",
    "([a-z_.0-9]+)*!",
    "(.*\\.)*(.*\\.)*(.*\\.)*z",
    "blocks.0.(attn1|attn2).to_q",  # a valid expression peft would match: not a module name either
    "to_[qk]",
    ".*",
    "(",
    "[",
    "a{99999999}",
    "\\d+",
    "blocks.\u0661.attn1.to_q",  # Arabic-Indic one
    "to_q$",
    "^",
    ".to_q",
    "to_q.",
    "a..b",
    "",
    "to q",
    "x" * 300,
]


def test_hostile_patterns_are_refused_at_once_naming_the_key(tmp_path: Path) -> None:
    """No rank or alpha pattern runs as a regular expression: anything but a module name is refused, fast."""
    header, data = pair()
    slowest, tried = 0.0, 0
    for field in ("rank_pattern", "alpha_pattern"):
        for n, pattern in enumerate(HOSTILE_PATTERNS):
            meta = adapter_metadata(**{field: {pattern: 4}})
            path = raw_file(tmp_path / f"{field}-{n}.safetensors", {**header, "__metadata__": meta}, data)
            started = time.perf_counter()
            with pytest.raises(InvalidRequest) as refused:
                check(path)
            slowest = max(slowest, time.perf_counter() - started)
            tried += 1
            message = refused.value.message
            assert f"{field} key {pattern[:80]!r} is not a module name" in message and refused.value.param == "file", message
    assert slowest < 1.0
    record("hostile_input", {"regex_patterns_tried": tried, "regex_pattern_max_s": round(slowest, 4)})


def test_crafted_headers_are_refused_naming_the_key(tmp_path: Path) -> None:
    header, data = pair()
    name = "transformer.blocks.0.attn1.to_q.lora_A.weight"
    cases: list[tuple[dict[str, Any], bytes, str]] = [
        # A float dimension, a boolean one, a float offset, a dtype that is a list, an entry that is a number
        ({**header, name: {**header[name], "shape": [4.5, 24]}}, data, f"tensor {name!r} has a bad dtype, shape"),
        ({**header, name: {**header[name], "shape": [True, 24]}}, data, f"tensor {name!r} has a bad dtype, shape"),
        ({**header, name: {**header[name], "data_offsets": [0.0, 384]}}, data, f"tensor {name!r} has a bad dtype"),
        ({**header, name: {**header[name], "dtype": ["F32"]}}, data, f"tensor {name!r} has a bad dtype"),
        ({**header, name: 7}, data, f"tensor {name!r} has a bad dtype"),
        # lora_adapter_metadata as a JSON object (safetensors takes strings only), a list, a number
        ({**header, "__metadata__": {"lora_adapter_metadata": {"transformer.r": 4}}}, data,
         "__metadata__ entry 'lora_adapter_metadata' is a JSON object, not a string"),
        ({**header, "__metadata__": {"lora_adapter_metadata": json.dumps([1, 2])}}, data,
         "its lora_adapter_metadata is a JSON array, not an object"),
        ({**header, "__metadata__": {"lora_adapter_metadata": "[" * 300_000}}, data,
         "its lora_adapter_metadata has 300000 bytes; wanq takes at most 262144"),
        ({**header, "__metadata__": {"lora_adapter_metadata": "[" * 100_000}}, data, "its lora_adapter_metadata is not JSON"),
        ({**header, "__metadata__": {"lora_adapter_metadata": "{"}}, data, "its lora_adapter_metadata is not JSON"),
        ({**header, "__metadata__": adapter_metadata(r=4.5)}, data, "gives r 4.5: not a whole number"),
        ({**header, "__metadata__": adapter_metadata(r=True)}, data, "gives r True: not a whole number"),
        ({**header, "__metadata__": adapter_metadata(lora_alpha="NaN")}, data, "gives lora_alpha 'NaN': not a finite"),
        ({**header, "__metadata__": adapter_metadata(lora_alpha=10**400)}, data, "not a finite number"),
        ({**header, "__metadata__": adapter_metadata(use_rslora="yes")}, data, "gives use_rslora 'yes'"),
        ({**header, "__metadata__": adapter_metadata(rank_pattern=["to_q"])}, data, "rank_pattern is a JSON array"),
        ({**header, "__metadata__": adapter_metadata(rank_pattern={"to_q": 4.5})}, data,
         "rank_pattern gives 'to_q' 4.5: not a whole number"),
        ({**header, "__metadata__": adapter_metadata(alpha_pattern={"to_q": "8"})}, data,
         "alpha_pattern gives 'to_q' '8': not a finite number"),
        # Length caps: a tensor name, a metadata key
        ({**pair("transformer.blocks.0." + "x" * 300)[0]}, pair()[1], "has 335 characters; wanq takes at most 256"),
        ({**header, "__metadata__": {"k" * 300: "v"}}, data, "__metadata__ key 'kkk"),
        # Nothing the loader keeps (found by the fuzzing: it was a 500)
        ({"diffusion_model.blocks.0.norm3.diff": {"dtype": "F32", "shape": [24], "data_offsets": [0, 96]}}, bytes(96),
         "holds no LoRA matrices, only norm diffs"),
        # Deeply nested JSON in the header itself
        ({**header, "__metadata__": {"notes": "x"}, "deep": json.loads("[" * 500 + "]" * 500)}, data, "bad dtype"),
    ]  # fmt: skip
    for n, (crafted, payload, says) in enumerate(cases):
        path = raw_file(tmp_path / f"crafted-{n}.safetensors", crafted, payload)
        with pytest.raises(InvalidRequest) as refused:
            check(path)
        assert says in refused.value.message and refused.value.param == "file", (n, refused.value.message)
    nested = tmp_path / "nested.safetensors"
    text = b"[" * 200_000 + b"]" * 200_000
    nested.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(InvalidRequest, match="its header is not JSON"):
        check(nested)


@pytest.mark.parametrize(
    "key",
    [
        "transformer.blocks.\u0661.attn1.to_q.lora_A.weight",  # Arabic-Indic one: passes \d, names no module
        "transformer.blocks.\uff10.attn1.to_q.lora_A.weight",  # fullwidth zero
        "transformer.blocks.01.attn1.to_q.lora_A.weight",  # a leading zero names no module either
        "diffusion_model.blocks.\u0661.self_attn.q.lora_down.weight",
        "lora_unet_blocks_\u0661_self_attn_q.lora_down.weight",
    ],
)
def test_block_indexes_are_ascii_decimal(key: str, tmp_path: Path) -> None:
    (a, b), data = pair()[0].values(), pair()[1]
    up = key.replace("lora_A", "lora_B").replace("lora_down", "lora_up")
    path = raw_file(tmp_path / "digits.safetensors", {key: a, up: b}, data)
    with pytest.raises(InvalidRequest) as refused:
        check(path)
    assert key in refused.value.message and refused.value.param == "file", refused.value.message
