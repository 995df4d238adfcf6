"""Generated safetensors headers against the LoRA header reader (shared/lora_files.py), property-based (hypothesis):
whatever the file holds, `inspect` either reads it or refuses it with an InvalidRequest naming 'file' (a 400), never
anything else (a 500), and never takes more than a second. The headers are built from the pieces that matter: real
module names of the three formats next to junk, consistent or broken dtypes, shapes and offsets, and adapter
metadata whose values, patterns (module names, regular expressions, non-ASCII digits) and types vary.

The fast suite tries 300 headers; `make test-slow` tries 10,000 and sends some of them to the live API too. Both
are derandomized, so a run is repeatable and CI does not find new inputs by chance."""

from __future__ import annotations

import json
import math
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.catalog import PRESETS
from shared.errors import InvalidRequest
from shared.lora_files import BLOCK_MODULES, inspect
from tests.reliability_report import record
from wanq.stack import Stack

TINY = PRESETS["tiny-t2v-a14b"]
LIMITS = dict(max_header_bytes=1 << 20, max_rank=16, max_scale=16.0)
ORIGINAL_NAMES = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                  "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                  "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
                  "ffn.2": "ffn.net.2"}  # fmt: skip
ITEM = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "BOOL": 1}
ONE_F32 = struct.pack("<f", 1.0)
PATTERN_KEYS = ["to_q", "attn1.to_q", "^blocks.0.attn1.to_q", "blocks.1.ffn.net.2", "net.0.proj", "(?:.*)*(?:.*)*!",
                "(a+)+$", "to_(q", "blocks.\u0661", ".*", "", "x" * 300]  # fmt: skip
SHAPES = [[4, 24], [24, 4], [8, 24], [24, 8], [4, 32], [32, 4], [1], [], [4, 5120]]
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8", "f32"]

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12), st.sampled_from(PATTERN_KEYS)
)
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8
)
numbers = st.one_of(st.integers(-2, 40), st.floats(), st.booleans(), st.text(max_size=4), st.none())


JUNK_NAMES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["transformer.proj_out.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_B.bias",
                     "transformer.blocks.0.attn1.to_q.lora_magnitude_vector", "diffusion_model.blocks.0.norm3.diff",
                     "transformer.blocks.0." + "x" * 300, "lora_unet_blocks_0_self_attn_q.alpha"]),
)  # fmt: skip


def module_tensors(fmt: str, block: str, kind: str, rank: int) -> list[tuple[str, list[int]]]:
    """The (name, shape) of one module's LoRA tensors in a format, on the tiny models' blocks (24 wide, FFN 32)."""
    in_, out = {"ffn.net.0.proj": (24, 32), "ffn.net.2": (32, 24)}.get(kind, (24, 24))
    original = {v: k for k, v in ORIGINAL_NAMES.items()}[kind]
    if fmt == "diffusers":
        stem = f"transformer.blocks.{block}.{kind}"
        return [(f"{stem}.lora_A.weight", [rank, in_]), (f"{stem}.lora_B.weight", [out, rank])]
    stem = (
        f"diffusion_model.blocks.{block}.{original}"
        if fmt == "original"
        else f"lora_unet_blocks_{block}_{original.replace('.', '_')}"
    )
    return [(f"{stem}.lora_down.weight", [rank, in_]), (f"{stem}.lora_up.weight", [out, rank]), (f"{stem}.alpha", [])]


def rarely(draw: st.DrawFn, n: int) -> bool:
    """True about once in n draws (hypothesis favours small and boundary integers: a coin it cannot skew)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


@st.composite
def adapter_configs(draw: st.DrawFn) -> Any:
    config: dict[str, Any] = {"target_modules": draw(st.one_of(st.just(["to_q"]), json_values))}
    for key, values in (
        ("r", st.one_of(st.sampled_from([4, 4, 8]), numbers)),
        ("lora_alpha", st.one_of(st.sampled_from([4, 8, 16]), numbers)),
        ("use_rslora", st.one_of(st.booleans(), json_leaves)),
        ("use_dora", st.booleans()),
        ("rank_pattern", st.one_of(st.dictionaries(st.sampled_from(PATTERN_KEYS) | st.text(max_size=20), numbers, max_size=4), json_values)),
        ("alpha_pattern", st.one_of(st.dictionaries(st.sampled_from(PATTERN_KEYS) | st.text(max_size=20), numbers, max_size=4), json_values)),
    ):  # fmt: skip
        if draw(st.booleans()):
            config[key] = draw(values)
    prefixed = {f"transformer.{k}": v for k, v in config.items()}
    return draw(st.one_of(st.just(prefixed), st.just(config), json_values))


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    if rarely(draw, 20):
        return draw(st.binary(max_size=300))  # not even the shape of a safetensors file
    fmt = draw(st.sampled_from(["original", "musubi"])) if rarely(draw, 4) else "diffusers"
    tensors: list[tuple[str, Any]] = []
    rank = draw(st.sampled_from([4, 8, 2, 32, 0])) if rarely(draw, 4) else 4
    for _ in range(0 if rarely(draw, 20) else draw(st.integers(1, 4))):
        block = draw(st.sampled_from(["2", "\u0661", "01"])) if rarely(draw, 10) else draw(st.sampled_from(["0", "1"]))
        kind = draw(st.sampled_from(BLOCK_MODULES))
        tensors += module_tensors(fmt, block, kind, draw(st.sampled_from([4, 8])) if rarely(draw, 10) else rank)
    if rarely(draw, 5):
        tensors.append((draw(JUNK_NAMES), draw(st.sampled_from(SHAPES))))
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in tensors:
        dtype: Any = "F32" if not rarely(draw, 40) else draw(st.one_of(st.sampled_from(DTYPES), json_leaves))
        if rarely(draw, 40):
            shape = draw(st.one_of(st.lists(numbers, max_size=3), json_values))
        size = 0
        if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and dtype in ITEM:
            size = ITEM[dtype] * math.prod(shape)
        offsets: Any = [offset, offset + size]
        offset += size
        if rarely(draw, 40):
            offsets = draw(st.one_of(st.lists(numbers, max_size=3), json_values))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if rarely(draw, 60):
            header[name] = draw(json_values)
    if draw(st.booleans()):
        metadata = json.dumps(draw(adapter_configs())) if not rarely(draw, 5) else draw(json_values)
        header["__metadata__"] = (
            {"lora_adapter_metadata": metadata}
            if not rarely(draw, 5)
            else draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2))
        )
    text = json.dumps(header).encode()
    length = len(text) + (draw(st.sampled_from([1, -1, 1 << 40])) if rarely(draw, 10) else 0)
    size = max(0, min(offset, 1 << 16) + (draw(st.sampled_from([1, -4])) if rarely(draw, 10) else 0))
    return struct.pack("<Q", max(length, 0)) + text + (ONE_F32 * (size // 4 + 1))[:size]  # alphas read as 1.0


def fuzz(examples: int) -> tuple[int, float]:
    """(headers read, the slowest in seconds); fails on anything but a read or an InvalidRequest for 'file'."""
    seen, slowest = 0, 0.0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.safetensors"

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(safetensors_files())
        def read(data: bytes) -> None:
            nonlocal seen, slowest
            path.write_bytes(data)
            started = time.perf_counter()
            try:
                inspect(path, TINY, **LIMITS)  # type: ignore[arg-type]
            except InvalidRequest as refused:
                assert refused.param == "file" and refused.message.startswith("invalid 'file': "), refused.message
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, f"{elapsed:.2f} s for {data[:200]!r}"
            seen += 1
            slowest = max(slowest, elapsed)

        read()
    return seen, slowest


def test_generated_headers_are_read_or_refused_never_crash() -> None:
    seen, slowest = fuzz(300)
    assert seen >= 300 and slowest < 1.0


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 70 s alone; several times that on a loaded machine
def test_ten_thousand_generated_headers_and_some_through_the_api(stack: Stack) -> None:
    seen, slowest = fuzz(10_000)
    assert seen >= 10_000 and slowest < 1.0

    statuses: list[int] = []
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=stack.admin_headers()) as api:

        @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(safetensors_files())
        def upload(data: bytes) -> None:
            response = api.post(
                "/v1/loras",
                data={"name": f"fuzzed-{len(statuses)}", "model": TINY.id},
                files={"file": ("fuzzed.safetensors", data, "application/octet-stream")},
            )
            statuses.append(response.status_code)
            assert response.status_code in (201, 400), response.text
            if response.status_code == 400:
                assert response.json()["error"]["param"] == "file", response.text
            else:
                assert api.delete(f"/v1/loras/{response.json()['name']}").status_code == 200

        upload()
    fivexx = sum(s >= 500 for s in statuses)
    record(
        "hostile_input",
        {"lora_headers_fuzzed": seen + len(statuses), "lora_fuzz_5xx": fivexx, "lora_fuzz_max_s_per_file": round(slowest, 4)},
    )
    assert fivexx == 0
