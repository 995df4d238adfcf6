"""What a LoRA file holds, read from its safetensors header alone: the checks `POST /v1/loras` makes.

No torch here (the API image has none). A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON (`{tensor: {dtype, shape, data_offsets}, "__metadata__": {...}}`), then the tensors' bytes. `inspect` reads
the header (and the few scalar `.alpha` tensors) and says what diffusers' Wan LoRA loader
(`WanLoraLoaderMixin.lora_state_dict` and its format converters, diffusers 0.42) would load from the file, then
refuses, naming the problem, whatever that loader would reject or half-load and whatever the workers' adapter
slots cannot hold:

- the formats the loader reads: diffusers/peft (`transformer.<module>.lora_A.weight`, alpha in the
  `lora_adapter_metadata`), the original Wan / ComfyUI one (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`
  with `.alpha` tensors) and musubi-tuner's (`lora_unet_blocks_N_self_attn_q.lora_down.weight`);
- only the ten linear layers of every transformer block (attention q/k/v/out of both attentions, the two FFN
  linears): the slots cover those (worker/lora_slots.py). Norm `.diff` keys, which the loader drops, are dropped;
  bias (`diff_b`), full-weight diffs, DoRA and non-block modules are refused;
- the adapter config in `lora_adapter_metadata` (rank, alpha, rank and alpha patterns): its patterns are read as
  literal module names (`AdapterConfig`), never run as regular expressions, and every tensor name, pattern and the
  metadata itself have length caps (a crafted pattern froze peft's regex matching for minutes);
- every module's shapes against the named model's architecture (so a LoRA for another model family is refused),
  its rank against the slots' (`WANQ_LORAS_MAX_RANK`), and the file's own multiplier (alpha / rank) against
  `WANQ_LORAS_MAX_SCALE`.

The worker loads with diffusers' own converter (worker/lora_slots.py); where that disagrees with this reading, the
job fails with `invalid_request` and the worker stays healthy.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest

BLOCK_MODULES = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
"""The layers a LoRA may touch: what the workers' adapter slots cover, in diffusers' module names."""

# The original Wan / ComfyUI names of those layers, and musubi-tuner's (diffusers' converters map them the same way).
_ORIGINAL = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_MUSUBI = {k.replace(".", "_"): v for k, v in _ORIGINAL.items()}
MAX_KEY_CHARS = 256
"""Longest tensor name, metadata key or rank/alpha pattern a file may have (real ones are under 80 characters)."""
MAX_ADAPTER_METADATA_BYTES = 256 * 1024
"""Largest `lora_adapter_metadata` JSON (a 400-module LoRA that lists every module in its targets and both
patterns has about 40 KB)."""

# Input is parsed with ASCII classes only: `\d` would take '١' (Arabic-Indic one) as a digit, and a block index must
# be written as the module is named (no leading zeros either: `blocks.01` names no module).
_BLOCK = r"(0|[1-9][0-9]*)"
_DIFFUSERS_MODULE = re.compile(rf"blocks\.{_BLOCK}\.(.+)", re.ASCII)
_ORIGINAL_KEY = re.compile(rf"blocks\.{_BLOCK}\.((?:self_attn|cross_attn)\.(?:q|k|v|o)|ffn\.[02])\.(.+)", re.ASCII)
_MUSUBI_KEY = re.compile(
    rf"lora_unet_blocks_{_BLOCK}_(" + "|".join(_MUSUBI) + r")\.(lora_down\.weight|lora_up\.weight|alpha)", re.ASCII
)
_PATTERN = re.compile(r"\^?[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*", re.ASCII)
"""What wanq reads as a rank/alpha pattern: a module name or a '.'-separated suffix of one; '^' in front: whole names."""
_ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_WEIGHT_DTYPES = {"F32", "F16", "BF16"}


@dataclass(frozen=True)
class Architecture:
    """The transformer block shapes of one model family."""

    family: str
    hidden: int
    ffn: int
    layers: int

    def shape(self, kind: str) -> tuple[int, int]:
        """(in, out) features of a block module."""
        if kind == "ffn.net.0.proj":
            return self.hidden, self.ffn
        if kind == "ffn.net.2":
            return self.ffn, self.hidden
        return self.hidden, self.hidden


# The released configs (FACTS.md §1) and worker/tiny_model.py's tiny ones; T2V- and I2V-A14B blocks are identical.
_A14B = Architecture("wan2.2-a14b", hidden=5120, ffn=13824, layers=40)
_TI2V_5B = Architecture("wan2.2-ti2v-5b", hidden=3072, ffn=14336, layers=30)
_TINY_A14B = Architecture("tiny-a14b", hidden=24, ffn=32, layers=2)
_TINY_TI2V = Architecture("tiny-ti2v-5b", hidden=24, ffn=32, layers=2)
_KNOWN_WIDTHS = {
    5120: "the 14B models (Wan2.1-14B, Wan2.2 T2V-/I2V-A14B)",
    3072: "Wan2.2-TI2V-5B",
    1536: "Wan2.1-1.3B",
    24: "wanq's tiny test models",
}
"""Hidden width of the transformer blocks -> the models that have it."""


def architecture_of(model: ModelSpec) -> Architecture:
    if model.variant == "ti2v-5b":
        return _TINY_TI2V if model.tiny else _TI2V_5B
    return _TINY_A14B if model.tiny else _A14B


def family_of(model: ModelSpec) -> str:
    """The family id a LoRA may name instead of one model: its models share the transformer blocks."""
    return architecture_of(model).family


class LoraFileInfo(BaseModel):
    """What `inspect` found: kept in the LoRA's record."""

    format: str
    """diffusers, original (Wan / ComfyUI) or musubi."""
    rank: int
    """The highest rank of its modules."""
    modules: list[str]
    """The block module kinds it touches (e.g. attn1.to_q, ffn.net.2)."""
    blocks: list[int]
    """The transformer blocks it touches."""
    num_modules: int
    scale: float
    """Its largest alpha / rank: the multiplier the file applies on top of a job's strength."""
    dtype: str


@dataclass
class _Module:
    a: list[int] | None = None
    b: list[int] | None = None
    alpha: float | None = None


def read_header(fh: BinaryIO, size: int, max_header_bytes: int) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensors, metadata, offset of the data) of an open safetensors file of `size` bytes."""
    raw = fh.read(8)
    if len(raw) < 8:
        raise _refuse("not a safetensors file: shorter than 8 bytes")
    (length,) = struct.unpack("<Q", raw)
    if length > size - 8 or length < 2:
        raise _refuse("not a safetensors file: its first 8 bytes are not the length of a header inside the file")
    if length > max_header_bytes:
        raise _refuse(f"safetensors header of {length} bytes is larger than WANQ_LORAS_MAX_HEADER_BYTES ({max_header_bytes})")
    text = fh.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse("not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _refuse("malformed safetensors header: __metadata__ is not an object")
    for key, value in metadata.items():
        _check_key_length("__metadata__ key", key)
        if not isinstance(value, str):
            # safetensors itself reads the metadata as strings only: the workers could not open the file
            raise _refuse(f"malformed safetensors header: __metadata__ entry {key!r} is a JSON {_json_type(value)}, not a string")
    data_size = size - 8 - length
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        _check_key_length("tensor name", name)
        span = _span(entry)
        if span is None:
            raise _refuse(f"malformed safetensors header: tensor {name!r} has a bad dtype, shape or data range")
        if span[1] > data_size:
            raise _refuse(f"truncated safetensors file: tensor {name!r} ends past the end of the file")
        spans.append(span)
    covered = sum(end - start for start, end in spans)
    if covered != data_size or (spans and max(end for _, end in spans) != data_size):
        raise _refuse(f"malformed or truncated safetensors file: tensors cover {covered} of its {data_size} data bytes")
    return header, metadata, 8 + length


def _span(entry: Any) -> tuple[int, int] | None:
    """(start, end) of a tensor's bytes if its header entry is well formed: a known dtype, a shape of whole numbers
    (not 4.5, not true) and a data range of exactly shape x item size bytes."""
    if not isinstance(entry, dict):
        return None
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEM_SIZE or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    if len(shape) > 8 or len(offsets) != 2 or not all(_is_count(n) for n in (*shape, *offsets)):
        return None
    start, end = offsets
    if start > end or end - start != math.prod(shape) * _ITEM_SIZE[dtype]:
        return None
    return start, end


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def inspect(
    path: Path,
    model: ModelSpec,
    *,
    max_header_bytes: int,
    max_rank: int,
    max_scale: float,
) -> LoraFileInfo:
    """What diffusers' Wan loader would load from the file, checked against `model`; raises InvalidRequest naming
    the first problem (param `file`)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        header, metadata, data_start = read_header(fh, size, max_header_bytes)
        config = adapter_metadata(metadata)
        if not header:
            raise _refuse("the file holds no tensors")
        keys = list(header)
        # The loader's own choice of format (lora_state_dict): any original-format key makes it convert them all.
        if any(k.startswith("diffusion_model.") for k in keys):
            fmt, modules = "original", _original(header, fh, data_start)
        elif any(k.startswith("lora_unet_") for k in keys):
            fmt, modules = "musubi", _musubi(header, fh, data_start)
        else:
            fmt, modules = "diffusers", _diffusers(header)
    if not modules:
        raise _refuse("the file holds no LoRA matrices, only norm diffs, which the loader drops")
    arch = architecture_of(model)
    ranks: dict[str, int] = {}
    for name, m in sorted(modules.items()):
        if m.a is None or m.b is None:
            raise _refuse(f"{name} has only one of its two LoRA matrices (lora_A / lora_B)")
        if len(m.a) != 2 or len(m.b) != 2 or m.a[0] != m.b[1]:
            raise _refuse(f"{name}: lora_A {m.a} and lora_B {m.b} are not [rank, in] and [out, rank] of one rank")
        block, kind = _split(name)
        want_in, want_out = arch.shape(kind)
        if (m.a[1], m.b[0]) != (want_in, want_out):
            raise _refuse(
                f"{name} is {m.a[1]} -> {m.b[0]} in this file but {want_in} -> {want_out} in {model.id}: "
                f"it is a LoRA for another model family{_looks_like(modules)}, not {arch.family}"
            )
        if block >= arch.layers:
            raise _refuse(f"{name}: {model.id} has {arch.layers} transformer blocks (0-{arch.layers - 1})")
        ranks[name] = m.a[0]
    rank = max(ranks.values())
    if rank > max_rank:
        raise _refuse(f"rank {rank} is higher than the workers' adapter slots take (WANQ_LORAS_MAX_RANK, {max_rank})")
    if min(ranks.values()) < 1:
        raise _refuse("a module has rank 0")
    scales = _scales(fmt, modules, ranks, config)
    worst = max(scales, key=abs)
    if not all(0 < s <= max_scale for s in scales):
        raise _refuse(
            f"the file's own multiplier alpha/rank is {worst:g}; wanq takes files whose alpha/rank is in (0, {max_scale:g}] "
            "(WANQ_LORAS_MAX_SCALE)"
        )
    dtypes = Counter(header[k]["dtype"] for k in keys if not k.endswith(".alpha"))
    blocks = sorted({_split(n)[0] for n in modules})
    return LoraFileInfo(
        format=fmt,
        rank=rank,
        modules=[k for k in BLOCK_MODULES if any(_split(n)[1] == k for n in modules)],
        blocks=blocks,
        num_modules=len(modules),
        scale=round(worst, 6),
        dtype=dtypes.most_common(1)[0][0],
    )


# -- the three formats ------------------------------------------------------------------------------


def _diffusers(header: dict[str, Any]) -> dict[str, _Module]:
    keys = [k for k in header if k.startswith("transformer.")]
    if not keys:
        raise _refuse(
            "no tensor diffusers' Wan LoRA loader would accept: keys must start with 'transformer.' (diffusers), "
            "'diffusion_model.' (original Wan / ComfyUI) or 'lora_unet_' (musubi-tuner)"
        )
    modules: dict[str, _Module] = {}
    for key in keys:
        name = key.removeprefix("transformer.")
        for suffix, part in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
            if name.endswith(suffix):
                module = name.removesuffix(suffix)
                _block_module(module, key)
                _check_dtype(header, key)
                setattr(modules.setdefault(module, _Module()), part, list(header[key]["shape"]))
                break
        else:
            raise _refuse(_unsupported(key))
    return modules


def _original(header: dict[str, Any], fh: BinaryIO, data_start: int) -> dict[str, _Module]:
    names = {k.removeprefix("diffusion_model."): k for k in header}
    if len(names) != len(header):
        raise _refuse("mixes original-format ('diffusion_model.') keys with keys of another format")
    down = "lora_A" if any("lora_A" in k for k in names) else "lora_down"
    up = "lora_B" if any("lora_B" in k for k in names) else "lora_up"
    modules: dict[str, _Module] = {}
    for name, key in names.items():
        if (name.endswith(".diff") or name.endswith(".diff_b")) and "norm" in name:
            continue  # the loader drops norm diffs (they are zeros in the files that have them)
        match = _ORIGINAL_KEY.fullmatch(name)
        if match is None:
            raise _refuse(_unsupported(key))
        module = f"blocks.{match.group(1)}.{_ORIGINAL[match.group(2)]}"
        part = match.group(3)
        entry = modules.setdefault(module, _Module())
        if part == f"{down}.weight":
            entry.a = list(header[key]["shape"])
        elif part == f"{up}.weight":
            entry.b = list(header[key]["shape"])
        elif part == "alpha":
            entry.alpha = _scalar(header, key, fh, data_start)
            continue
        else:
            raise _refuse(_unsupported(key))
        _check_dtype(header, key)
    return modules


def _musubi(header: dict[str, Any], fh: BinaryIO, data_start: int) -> dict[str, _Module]:
    modules: dict[str, _Module] = {}
    for key in header:
        match = _MUSUBI_KEY.fullmatch(key)
        if match is None:
            raise _refuse(_unsupported(key))
        entry = modules.setdefault(f"blocks.{match.group(1)}.{_MUSUBI[match.group(2)]}", _Module())
        part = match.group(3)
        if part == "alpha":
            entry.alpha = _scalar(header, key, fh, data_start)
            continue
        _check_dtype(header, key)
        if part == "lora_down.weight":
            entry.a = list(header[key]["shape"])
        else:
            entry.b = list(header[key]["shape"])
    # diffusers' musubi converter reads every module of blocks 0..N-1, each with its alpha, or fails.
    blocks = {_split(n)[0] for n in modules}
    for block in range(len(blocks)):
        for kind in BLOCK_MODULES:
            found = modules.get(f"blocks.{block}.{kind}")
            if found is None or found.alpha is None:
                raise _refuse(
                    f"musubi-format file without blocks.{block}.{kind} (or its alpha): diffusers' converter needs all "
                    "ten block layers with their alphas in every block from 0"
                )
    return modules


def _scales(fmt: str, modules: dict[str, _Module], ranks: dict[str, int], config: AdapterConfig | None) -> list[float]:
    """alpha / rank of each module as the loader would apply it."""
    # The converters of the other formats fold each module's alpha / rank (1 without an alpha) into its weights.
    folded = {n: m.alpha / ranks[n] if fmt != "diffusers" and m.alpha is not None else 1.0 for n, m in modules.items()}
    if config is None:
        return list(folded.values())  # no adapter config: the loader takes alpha = rank for every module
    scales = []
    for name in modules:
        if config.rank(name) != ranks[name]:
            raise _refuse(f"its metadata gives {name} rank {config.rank(name)} but its tensors have rank {ranks[name]}")
        scales.append(folded[name] * config.scale(name))
    return scales


# -- the adapter config in the metadata -------------------------------------------------------------


@dataclass(frozen=True)
class AdapterConfig:
    """The per-module rank and alpha that a LoRA's `lora_adapter_metadata` (peft's LoraConfig) gives, read by wanq.

    peft documents a rank/alpha pattern as a module name or a suffix of one, and matches it as a regular expression
    (`get_pattern_key`). wanq matches it literally, so that no text from a file ever runs as a regular expression: a
    pattern is a module name or a '.'-separated suffix of one ('to_q', 'attn1.to_q', 'blocks.0.attn1.to_q'), or,
    with '^' in front, a whole name (as diffusers writes them); the first in the file's order that names a module
    wins, as in peft. `adapter_config` refuses any other pattern. The API checks uploads with it, and the workers
    read the ranks and alphas they fill the adapter slots with from it (worker/lora_slots.py)."""

    r: int
    lora_alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool

    def rank(self, module: str) -> int:
        return int(_lookup(self.rank_pattern, module, self.r))

    def alpha(self, module: str) -> float:
        return float(_lookup(self.alpha_pattern, module, self.lora_alpha))

    def scale(self, module: str) -> float:
        """alpha / rank of the module (alpha / sqrt(rank) with rsLoRA), as peft computes its scaling."""
        rank = self.rank(module)
        return self.alpha(module) / (math.sqrt(rank) if self.use_rslora else rank)


def adapter_metadata(metadata: dict[str, str]) -> AdapterConfig | None:
    """The adapter config of a file's `__metadata__` (diffusers' `lora_adapter_metadata` JSON), None without one."""
    raw = metadata.get("lora_adapter_metadata")
    if raw is None:
        return None
    if len(raw.encode()) > MAX_ADAPTER_METADATA_BYTES:
        raise _refuse(f"its lora_adapter_metadata has {len(raw.encode())} bytes; wanq takes at most {MAX_ADAPTER_METADATA_BYTES}")
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        raise _refuse("its lora_adapter_metadata is not JSON") from None
    if not isinstance(parsed, dict):
        raise _refuse(f"its lora_adapter_metadata is a JSON {_json_type(parsed)}, not an object")
    config = {k.removeprefix("transformer."): v for k, v in parsed.items() if k.startswith("transformer.")}
    return adapter_config(config) if config else None


def adapter_config(config: dict[str, Any]) -> AdapterConfig:
    """A LoRA's adapter config (its `lora_adapter_metadata` without the 'transformer.' prefixes) as wanq reads it;
    raises InvalidRequest naming the key that diffusers' loader or wanq's adapter slots cannot take."""
    if "target_modules" not in config:
        raise _refuse("its lora_adapter_metadata has no target_modules (diffusers' loader fails on it)")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise _refuse(f"its lora_adapter_metadata sets {flag}: not supported by wanq's adapter slots")
    # peft's LoraConfig defaults
    r, alpha, rslora = config.get("r", 8), config.get("lora_alpha", 8), config.get("use_rslora", False)
    if not _is_rank(r):
        raise _refuse(f"its lora_adapter_metadata gives r {r!r:.40}: not a whole number of at least 1")
    if not _is_number(alpha):
        raise _refuse(f"its lora_adapter_metadata gives lora_alpha {alpha!r:.40}: not a finite number")
    if not isinstance(rslora, bool):
        raise _refuse(f"its lora_adapter_metadata gives use_rslora {rslora!r:.40}: not true or false")
    return AdapterConfig(
        r=r,
        lora_alpha=float(alpha),
        rank_pattern=_patterns(config, "rank_pattern", _is_rank, "a whole number of at least 1"),
        alpha_pattern={k: float(v) for k, v in _patterns(config, "alpha_pattern", _is_number, "a finite number").items()},
        use_rslora=rslora,
    )


def _patterns(config: dict[str, Any], field: str, valid: Callable[[Any], bool], what: str) -> dict[str, Any]:
    patterns = config.get(field) or {}
    if not isinstance(patterns, dict):
        raise _refuse(f"its lora_adapter_metadata {field} is a JSON {_json_type(patterns)}, not an object")
    for key, value in patterns.items():
        if len(key) > MAX_KEY_CHARS or _PATTERN.fullmatch(key) is None:
            raise _refuse(
                f"its lora_adapter_metadata {field} key {key[:80]!r} is not a module name: wanq reads a pattern as a "
                "module name or a '.'-separated suffix of one ('to_q', 'blocks.0.attn1.to_q'; with '^' in front, a "
                "whole name), never as a regular expression"
            )
        if not valid(value):
            raise _refuse(f"its lora_adapter_metadata {field} gives {key!r} {value!r:.40}: not {what}")
    return patterns


def _lookup(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """The value of the first pattern, in the file's order, that names `module`; `default` if none does."""
    parts = module.split(".")
    names = [f"^{module}", *(".".join(parts[i:]) for i in range(len(parts)))]
    hits = [name for name in names if name in patterns]
    if not hits:
        return default
    order = list(patterns)
    return patterns[min(hits, key=order.index)] if len(hits) > 1 else patterns[hits[0]]


def _is_rank(value: Any) -> bool:
    return type(value) is int and value >= 1


def _is_number(value: Any) -> bool:
    if type(value) not in (int, float):
        return False  # not true / false either
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past float's range
        return False


# -- helpers ----------------------------------------------------------------------------------------


def _split(module: str) -> tuple[int, str]:
    _, block, kind = module.split(".", 2)
    return int(block), kind


def _block_module(module: str, key: str) -> None:
    match = _DIFFUSERS_MODULE.fullmatch(module)
    if match is None or match.group(2) not in BLOCK_MODULES:
        raise _refuse(_unsupported(key))


def _unsupported(key: str) -> str:
    short = key[:160]
    if "dora" in key or "magnitude" in key:
        return f"{short}: DoRA LoRAs are not supported"
    if key.endswith((".diff_b", ".lora_B.bias")):
        return f"{short}: LoRA biases (diff_b) are not supported by wanq's adapter slots"
    if key.endswith(".diff"):
        return f"{short}: full-weight diffs are not supported by wanq's adapter slots"
    if "blocks." in key or "blocks_" in key:
        return f"{short}: wanq's adapter slots cover only the blocks' attention and feed-forward linears ({', '.join(BLOCK_MODULES)})"
    return f"{short}: wanq's adapter slots cover only the transformer blocks' linear layers, not this module"


def _check_dtype(header: dict[str, Any], key: str) -> None:
    dtype = header[key]["dtype"]
    if dtype not in _WEIGHT_DTYPES:
        raise _refuse(f"{key[:160]} is {dtype}; LoRA weights must be F32, F16 or BF16")


def _scalar(header: dict[str, Any], key: str, fh: BinaryIO, data_start: int) -> float:
    entry = header[key]
    if math.prod(entry["shape"]) != 1 or entry["dtype"] not in ("F64", "F32", "F16", "BF16"):
        raise _refuse(f"{key[:160]} is not one float")
    start, end = entry["data_offsets"]
    fh.seek(data_start + start)
    raw = fh.read(end - start)
    dtype = entry["dtype"]
    if dtype == "BF16":
        value = struct.unpack("<f", b"\x00\x00" + raw)[0]
    else:
        value = struct.unpack({"F64": "<d", "F32": "<f", "F16": "<e"}[dtype], raw)[0]
    if not math.isfinite(value):
        raise _refuse(f"{key[:160]} is {value}")
    return float(value)


def _looks_like(modules: dict[str, _Module]) -> str:
    """The models whose block width the file has, as far as it tells."""
    widths = {m.a[1] for n, m in modules.items() if not n.endswith("ffn.net.2") and m.a and len(m.a) == 2}
    known = _KNOWN_WIDTHS.get(widths.pop()) if len(widths) == 1 else None
    return f" ({known})" if known else ""


def _check_key_length(what: str, key: str) -> None:
    if len(key) > MAX_KEY_CHARS:
        raise _refuse(f"{what} {key[:60]!r}... has {len(key)} characters; wanq takes at most {MAX_KEY_CHARS}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid 'file': {message}", param="file")
