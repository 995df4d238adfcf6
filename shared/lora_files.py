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
    except (UnicodeDecodeError, ValueError):
        raise _refuse("not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _refuse("malformed safetensors header: __metadata__ is not an object")
    data_size = size - 8 - length
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(int(d) for d in shape)
            ok = isinstance(start, int) and isinstance(end, int) and 0 <= start <= end
            ok = ok and dtype in _ITEM_SIZE and end - start == count * _ITEM_SIZE[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _refuse(f"malformed safetensors header: tensor {name[:120]!r} has a bad dtype, shape or data range")
        if end > data_size:
            raise _refuse(f"truncated safetensors file: tensor {name[:120]!r} ends past the end of the file")
        spans.append((start, end))
    covered = sum(end - start for start, end in spans)
    if covered != data_size or (spans and max(end for _, end in spans) != data_size):
        raise _refuse(f"malformed or truncated safetensors file: tensors cover {covered} of its {data_size} data bytes")
    return header, metadata, 8 + length


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
    scales = _scales(fmt, modules, ranks, metadata)
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
    pattern = re.compile(r"blocks\.(\d+)\.((?:self_attn|cross_attn)\.(?:q|k|v|o)|ffn\.[02])\.(.+)")
    modules: dict[str, _Module] = {}
    for name, key in names.items():
        if (name.endswith(".diff") or name.endswith(".diff_b")) and "norm" in name:
            continue  # the loader drops norm diffs (they are zeros in the files that have them)
        match = pattern.fullmatch(name)
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
    pattern = re.compile(r"lora_unet_blocks_(\d+)_(" + "|".join(_MUSUBI) + r")\.(lora_down\.weight|lora_up\.weight|alpha)")
    modules: dict[str, _Module] = {}
    for key in header:
        match = pattern.fullmatch(key)
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


def _scales(fmt: str, modules: dict[str, _Module], ranks: dict[str, int], metadata: dict[str, str]) -> list[float]:
    """alpha / rank of each module as the loader would apply it."""
    if fmt != "diffusers":
        # The converters fold alpha / rank into the weights; no alpha means 1.
        return [m.alpha / ranks[n] if m.alpha is not None else 1.0 for n, m in modules.items()]
    raw = metadata.get("lora_adapter_metadata")
    if raw is None:
        return [1.0]  # no metadata: the loader takes alpha = rank for every module
    try:
        config = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items() if k.startswith("transformer.")}
    except (ValueError, AttributeError):
        raise _refuse("its lora_adapter_metadata is not a JSON object") from None
    if not config:
        return [1.0]
    if "target_modules" not in config:
        raise _refuse("its lora_adapter_metadata has no target_modules (diffusers' loader fails on it)")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise _refuse(f"its lora_adapter_metadata sets {flag}: not supported by wanq's adapter slots")
    try:
        r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
        rank_pattern = dict(config.get("rank_pattern") or {})
        alpha_pattern = dict(config.get("alpha_pattern") or {})
    except (TypeError, ValueError):
        raise _refuse("its lora_adapter_metadata has a non-numeric r or lora_alpha") from None
    rslora = bool(config.get("use_rslora"))
    scales = []
    for name in modules:
        module_r = int(rank_pattern.get(pattern_key(rank_pattern, name), r))
        if module_r != ranks[name]:
            raise _refuse(f"its metadata gives {name} rank {module_r} but its tensors have rank {ranks[name]}")
        module_alpha = float(alpha_pattern.get(pattern_key(alpha_pattern, name), alpha))
        scales.append(module_alpha / math.sqrt(module_r) if rslora else module_alpha / module_r)
    return scales


def pattern_key(patterns: dict[str, Any], name: str) -> str:
    """peft's `get_pattern_key`: the first rank/alpha pattern that matches a module name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name


# -- helpers ----------------------------------------------------------------------------------------


def _split(module: str) -> tuple[int, str]:
    _, block, kind = module.split(".", 2)
    return int(block), kind


def _block_module(module: str, key: str) -> None:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
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


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid 'file': {message}", param="file")
