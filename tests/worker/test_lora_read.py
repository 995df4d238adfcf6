"""How a worker reads a LoRA file's per-module rank and alpha (worker/lora_slots.py `read_lora`): with wanq's literal
pattern matching (shared/lora_files.py `adapter_config`), never peft's regular expressions, so that a file which
reached the cache without the API's checks cannot freeze the worker (issue 23: heartbeat lost, job run twice)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from shared.catalog import PRESETS
from shared.lora_files import BLOCK_MODULES, architecture_of
from tests.lora_maker import save_raw
from worker.lora_slots import read_lora

ARCH = architecture_of(PRESETS["tiny-t2v-a14b"])
SHAPES = {f"blocks.{b}.{kind}": ARCH.shape(kind) for b in range(ARCH.layers) for kind in BLOCK_MODULES}
REDOS = "(?:.*)*(?:.*)*(?:.*)*(?:.*)*!"


def lora_file(path: Path, ranks: dict[str, int], **config: object) -> Path:
    tensors = {}
    for module, rank in ranks.items():
        in_, out = SHAPES[module]
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_)
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out, rank)
    base = {"r": 4, "lora_alpha": 4, "target_modules": sorted(ranks)}
    metadata = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in (base | config).items()})}
    return save_raw(tensors, path, metadata)


def test_ranks_and_alphas_come_from_literal_patterns(tmp_path: Path) -> None:
    ranks = {"blocks.0.attn1.to_q": 4, "blocks.1.attn1.to_q": 8, "blocks.1.ffn.net.2": 2}
    path = lora_file(
        tmp_path / "patterns.safetensors",
        ranks,
        rank_pattern={"^blocks.1.attn1.to_q": 8, "net.2": 2},
        alpha_pattern={"blocks.1.attn1.to_q": 2, "to_q": 16},
        use_rslora=True,
    )
    modules = read_lora(path, SHAPES, rank=8)
    assert {m: (x.r, x.alpha, x.rslora) for m, x in modules.items()} == {
        "blocks.0.attn1.to_q": (4, 16.0, True),
        "blocks.1.attn1.to_q": (8, 2.0, True),
        "blocks.1.ffn.net.2": (2, 4.0, True),
    }
    assert modules["blocks.0.attn1.to_q"].scale(0.5) == 0.5 * 16 / 2  # rsLoRA: alpha / sqrt(rank)


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_a_backtracking_pattern_is_refused_at_once(tmp_path: Path, field: str) -> None:
    path = lora_file(
        tmp_path / "redos.safetensors", {"blocks.0.attn1.to_q": 4, "blocks.0.ffn.net.0.proj": 4}, **{field: {REDOS: 4}}
    )
    started = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{field} key '\(\?:\.\*\)\*.*' is not a module name"):
        read_lora(path, SHAPES, rank=8)
    assert time.perf_counter() - started < 1.0
