"""Crafted LoRA files at `POST /v1/loras` of the live API (issue 23): a rank pattern that would backtrack for ever
as a regular expression, a float dimension, metadata that is not a string, a pattern that is no expression at all, a
block index in Arabic-Indic digits. Each is a 400 in the OpenAI error shape naming the key, at once, with the API
answering others meanwhile and nothing stored; sizes written with non-ASCII digits are a 400 too."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from wanq.stack import Stack

MODEL = "tiny-t2v-a14b"
REDOS = "(?:.*)*(?:.*)*(?:.*)*(?:.*)*!"  # the report's file: 56 s of a frozen API, then a frozen worker


def crafted(path: Path, *, module: str = "blocks.0.attn1.to_q", shape_a: list[Any] | None = None, **metadata: Any) -> Path:
    """A one-module LoRA for the tiny models, its header written byte by byte."""
    header: dict[str, Any] = {
        f"transformer.{module}.lora_A.weight": {"dtype": "F32", "shape": shape_a or [4, 24], "data_offsets": [0, 384]},
        f"transformer.{module}.lora_B.weight": {"dtype": "F32", "shape": [24, 4], "data_offsets": [384, 768]},
    }
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(768))
    return path


def config(**fields: Any) -> str:
    base = {"r": 4, "lora_alpha": 4, "target_modules": ["to_q"]}
    return json.dumps({f"transformer.{k}": v for k, v in (base | fields).items()})


CASES = [
    ("redos-rank-pattern", dict(lora_adapter_metadata=config(rank_pattern={REDOS: 4})), f"rank_pattern key {REDOS!r}"),
    ("redos-alpha-pattern", dict(lora_adapter_metadata=config(alpha_pattern={REDOS: 4})), f"alpha_pattern key {REDOS!r}"),
    ("not-an-expression", dict(lora_adapter_metadata=config(rank_pattern={"to_(q": 4})), "rank_pattern key 'to_(q'"),
    ("metadata-object", dict(lora_adapter_metadata={"transformer.r": 4}), "entry 'lora_adapter_metadata' is a JSON object"),
    ("float-dimension", dict(shape_a=[4.5, 24]), "tensor 'transformer.blocks.0.attn1.to_q.lora_A.weight' has a bad"),
    ("arabic-indic-block", dict(module="blocks.\u0661.attn1.to_q"), "transformer.blocks.\u0661.attn1.to_q.lora_A.weight"),
]


@pytest.mark.parametrize(("case", "fields", "says"), CASES, ids=[c[0] for c in CASES])
def test_crafted_lora_files_are_a_400_naming_the_key(
    stack: Stack, api: httpx.Client, storage: Any, tmp_path: Path, case: str, fields: dict[str, Any], says: str
) -> None:
    shape_a, module = fields.pop("shape_a", None), fields.pop("module", "blocks.0.attn1.to_q")
    path = crafted(tmp_path / f"{case}.safetensors", module=module, shape_a=shape_a, **fields)
    before = storage.list_keys("loras/admin/")
    health: list[float] = []

    def probe() -> None:  # the API answers others while it reads the file
        with httpx.Client(base_url=stack.api_url, timeout=10) as other:
            started = time.perf_counter()
            other.get("/healthz").raise_for_status()
            health.append(time.perf_counter() - started)

    started = time.perf_counter()
    prober = threading.Thread(target=probe)
    prober.start()
    with path.open("rb") as fh:
        response = api.post(
            "/v1/loras",
            data={"name": f"crafted-{case}", "model": MODEL},
            files={"file": (path.name, fh, "application/octet-stream")},
        )
    elapsed = time.perf_counter() - started
    prober.join()
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert error["param"] == "file" and says in error["message"], error
    assert elapsed < 5 and health and health[0] < 5, (elapsed, health)
    assert api.get(f"/v1/loras/crafted-{case}").status_code == 404
    assert storage.list_keys("loras/admin/") == before


@pytest.mark.parametrize("size", ["\u00b2x64", "\u0666\u0664x\u0666\u0664", "\uff16\uff14x64"])
def test_sizes_in_non_ascii_digits_are_a_400(api: httpx.Client, size: str) -> None:
    """'²' and '٦٤' pass str.isdigit; '²' then failed int() (a 500) and '٦٤x٦٤' was taken as 64x64."""
    response = api.post("/v1/videos", json={"prompt": "x", "model": MODEL, "size": size, "num_frames": 5})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "size" and 'expected "WIDTHxHEIGHT"' in error["message"], error
