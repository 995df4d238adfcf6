"""Per-job LoRA in a resident pipeline: fixed adapter slots, filled in place, strengths as tensors.

Each transformer (A14B's two experts, TI2V-5B's one) gets `max_resident` adapter slots of rank `max_rank` at
start, before placement, parallelism and compile: peft LoRA layers (diffusers' own, through `add_adapter`) on the
ten linear layers of every block, all active for the life of the process. A job's LoRAs are read with diffusers'
own loader code (`WanPipeline.lora_state_dict`: its format converters and alpha handling), given the per-module
rank and alpha the loader's LoraConfig would give (shared/lora_files.py's `adapter_config`, which matches the
file's rank and alpha patterns as literal module names: peft's `get_pattern_key` would run them as regular
expressions), and copied into slots in place, zero-padded to the slot rank; a slot that already holds the file
is left alone (the resident set: least recently used goes first).
Each module's `scaling[slot]` is a 0-dim tensor holding strength x alpha / rank, set with `fill_`; slots the job
does not use are at 0. A transformer that none of the job's LoRAs touches, and every transformer of a job without
LoRAs, runs with its LoRA layers disabled: the base layers alone, the same numbers as a pipeline without LoRA.

Why not diffusers' `set_adapters` and `load_lora_weights(hotswap=True)` per job (measured on diffusers 0.42.1 and
peft 0.21 with `compile_repeated_blocks(fullgraph=True)`): `set_adapters` writes each strength as a Python float,
which dynamo guards by value, so every new strength compiles another graph until the recompile limit fails the
job; after a hotswap it computes the scale from the first adapter's alpha, so it applies the wrong strength; and
`enable_lora_hotswap` prepares only the first adapter of a model, so a second resident adapter recompiles when
swapped. Loading and deleting adapters per job also re-applies offload hooks and walks every module in Python
(about 1.2 s per expert at 40 blocks). Here nothing a guard looks at ever changes: the modules, shapes, the
active-adapter list and `requires_grad` are fixed at start; only tensor values change, in place, and the
enabled/disabled flag takes one of two values (one compiled graph each per video size, both made at warmup).
Eager, the numbers are those of `load_lora_weights` + `set_adapters` (tests/worker/test_lora_slots.py).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import InvalidRequest
from shared.lora_files import BLOCK_MODULES, adapter_config
from shared.schemas import JobLora
from shared.settings import EngineSettings, LoraSettings
from worker.parallel.messages import Adapters, AdapterSlot

log = logging.getLogger("wanq.engine")

EXPERTS = ("transformer", "transformer_2")
TARGETS = r"blocks\.\d+\.(" + "|".join(re.escape(m) for m in BLOCK_MODULES) + r")"
SLOT_PREFIX = "wanq_slot"


def check_settings(engine: EngineSettings, loras: LoraSettings | None) -> None:
    """Refuses, saying what to change, an engine configuration the adapter slots cannot work with."""
    if loras is not None and loras.max_resident > 0 and engine.offload == "sequential":
        raise ValueError(
            "--offload sequential keeps the weights on the meta device between uses, so LoRA adapter slots cannot "
            "be filled: use --offload model or group, or set WANQ_LORAS_MAX_RESIDENT=0 to serve no LoRA"
        )


@dataclass(frozen=True)
class ModuleLora:
    a: torch.Tensor
    """[rank, in]"""
    b: torch.Tensor
    """[out, rank]"""
    alpha: float
    r: int
    rslora: bool

    def scale(self, strength: float) -> float:
        """peft's `set_scale`, in its order of operations, so that the value is the same float."""
        if self.rslora:
            return strength * self.alpha / math.sqrt(self.r)
        return strength * self.alpha / self.r


def read_lora(path: Path, shapes: Mapping[str, tuple[int, int]], rank: int) -> dict[str, ModuleLora]:
    """A LoRA file as diffusers' Wan loader reads it, per block module; raises ValueError naming what does not fit."""
    from diffusers import WanPipeline

    # 1. diffusers' reading: format conversion (original Wan / musubi), alpha folded where those formats carry it
    state, metadata = WanPipeline.lora_state_dict(str(path), return_lora_metadata=True, use_safetensors=True)
    state = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    if metadata:
        metadata = {k.removeprefix("transformer."): v for k, v in metadata.items() if k.startswith("transformer.")} or None
    if not state:
        raise ValueError("no transformer LoRA tensors in the file")
    extra = sorted(k for k in state if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if extra:
        raise ValueError(f"{extra[0]}: only lora_A / lora_B weights of the blocks' linear layers are supported")

    # 2. The per-module rank and alpha the loader's LoraConfig would give (rank_pattern / alpha_pattern, rsLoRA), read
    # by wanq's own literal pattern matching, not peft's regular expressions; without metadata alpha = rank.
    try:
        config = adapter_config(metadata) if metadata else None
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None
    modules: dict[str, ModuleLora] = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        b = state.get(f"{module}.lora_B.weight")
        if b is None:
            raise ValueError(f"{module} has lora_A but no lora_B")
        if module not in shapes:
            raise ValueError(f"{module} is not a layer the adapter slots cover")
        in_features, out_features = shapes[module]
        r = a.shape[0]
        if a.shape != (r, in_features) or b.shape != (out_features, r):
            raise ValueError(
                f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit {in_features} -> {out_features}"
            )
        if r > rank:
            raise ValueError(f"{module} has rank {r}, more than the slots' {rank}")
        if config is None:
            modules[module] = ModuleLora(a=a, b=b, alpha=float(r), r=r, rslora=False)
            continue
        if config.rank(module) != r:
            raise ValueError(f"{module}: its metadata says rank {config.rank(module)} but its tensors have rank {r}")
        modules[module] = ModuleLora(a=a, b=b, alpha=config.alpha(module), r=r, rslora=config.use_rslora)
    return modules


class LoraSlots:
    """The adapter slots of a pipeline's transformers; `plan` on rank 0, `apply` on every rank, before denoising."""

    def __init__(self, pipe: Any, *, slots: int, rank: int, device: torch.device) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        started = time.perf_counter()
        self.rank = rank
        self.names = [f"{SLOT_PREFIX}{i}" for i in range(slots)]
        self.experts = {e: m for e in EXPERTS if (m := getattr(pipe, e, None)) is not None}
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, lora_dropout=0.0)
        self.layers: dict[str, dict[str, Any]] = {}
        for expert, model in self.experts.items():
            for name in self.names:
                model.add_adapter(config, adapter_name=name)
            self.layers[expert] = {}
            for module_name, module in model.named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                layer: Any = module
                self.layers[expert][module_name] = layer
                layer.set_adapter(self.names)  # every slot active, for ever
                for name in self.names:
                    for matrix in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                        matrix.requires_grad_(False)
                        matrix.data.zero_()
                    layer.scaling[name] = torch.zeros((), dtype=torch.float32, device=device)
                layer._disable_adapters = True
        first = next(iter(self.layers.values()))
        self.shapes = {n: (layer.in_features, layer.out_features) for n, layer in first.items()}
        self.held: dict[tuple[str, int], str | None] = {(e, s): None for e in self.experts for s in range(slots)}
        self.modules: dict[tuple[str, int], dict[str, ModuleLora]] = {}
        self.strengths: dict[tuple[str, int], float] = {key: 0.0 for key in self.held}
        self.enabled: dict[str, bool] = {e: False for e in self.experts}
        self._last_used: dict[tuple[str, int], int] = {key: 0 for key in self.held}
        self._clock = 0
        log.info(
            "LoRA adapter slots ready",
            extra={
                "slots": slots,
                "rank": rank,
                "experts": list(self.experts),
                "bytes": self.nbytes(),
                "s": round(time.perf_counter() - started, 2),
            },
        )

    @property
    def num_slots(self) -> int:
        return len(self.names)

    def nbytes(self) -> int:
        return sum(
            layer.lora_A[n].weight.nbytes + layer.lora_B[n].weight.nbytes
            for layers in self.layers.values()
            for layer in layers.values()
            for n in self.names
        )

    # -- rank 0: which slot each of the job's LoRAs goes into --------------------------------------
    def plan(self, loras: Sequence[JobLora]) -> Adapters:
        """A slot for each LoRA on each transformer it goes into: the slot that holds it already, else a free one,
        else the least recently used one the job does not need (evicted). Raises InvalidRequest if a transformer
        gets more LoRAs than it has slots."""
        self._clock += 1
        uses: list[AdapterSlot] = []
        for expert in self.experts:
            wanted = [lora for lora in loras if expert in self.transformers_for(lora)]
            if len(wanted) > self.num_slots:
                raise InvalidRequest(
                    f"{len(wanted)} LoRAs for the {expert} but this worker has {self.num_slots} adapter slots per "
                    "transformer (WANQ_LORAS_MAX_RESIDENT)",
                    param="loras",
                )
            taken: dict[str, int] = {}
            for lora in wanted:  # already resident
                slot = next(
                    (s for s in range(self.num_slots) if self.held[(expert, s)] == lora.sha256 and s not in taken.values()),
                    None,
                )
                if slot is not None and lora.sha256 not in taken:
                    taken[lora.sha256] = slot
            for lora in wanted:  # the others, into free or least recently used slots
                if lora.sha256 in taken:
                    continue
                free = [s for s in range(self.num_slots) if s not in taken.values()]
                slot = min(free, key=lambda s: (self.held[(expert, s)] is not None, self._last_used[(expert, s)]))
                taken[lora.sha256] = slot
            for lora in wanted:
                slot = taken[lora.sha256]
                self._last_used[(expert, slot)] = self._clock
                uses.append(AdapterSlot(expert=expert, slot=slot, sha256=lora.sha256, name=lora.name, strength=lora.strength))
        return Adapters(slots=tuple(uses), enabled=tuple(dict.fromkeys(u.expert for u in uses)))

    def transformers_for(self, lora: JobLora) -> tuple[str, ...]:
        if "transformer_2" not in self.experts:
            return ("transformer",)
        return {"both": EXPERTS, "high_noise": ("transformer",), "low_noise": ("transformer_2",)}[lora.expert]

    def warm(self) -> Adapters:
        """Every transformer's LoRA layers on, every strength 0: compiles the graph LoRA jobs use."""
        return Adapters(slots=(), enabled=tuple(self.experts))

    # -- every rank: make the slots hold what the plan says ----------------------------------------
    @torch.no_grad()
    def apply(self, adapters: Adapters, path_of: Callable[[str], Path]) -> float:
        """Fills the slots the plan needs (reading each file once), sets every strength and turns each transformer's
        LoRA layers on or off. Returns the seconds spent reading and copying files (0 when every LoRA was resident).
        A file that does not load raises InvalidRequest; its slot is left empty."""
        started = time.perf_counter()
        loaded = 0
        files: dict[str, dict[str, ModuleLora]] = {}
        for use in adapters.slots:
            key = (use.expert, use.slot)
            if self.held[key] == use.sha256:
                continue
            if use.sha256 not in files:
                try:
                    files[use.sha256] = read_lora(path_of(use.sha256), self.shapes, self.rank)
                except InvalidRequest:
                    raise
                except Exception as exc:
                    raise InvalidRequest(
                        f"LoRA {use.name!r} (sha256 {use.sha256[:12]}...) could not be loaded: {type(exc).__name__}: "
                        f"{str(exc)[:300]}",
                        param="loras",
                    ) from None
            self._fill(key, files[use.sha256])
            self.held[key] = use.sha256
            loaded += 1
        strengths = {(u.expert, u.slot): u.strength for u in adapters.slots}
        for key in self.held:
            self._set_strength(key, strengths.get(key, 0.0))
        for expert in self.experts:
            self._enable(expert, expert in adapters.enabled)
        return time.perf_counter() - started if loaded else 0.0

    def _fill(self, key: tuple[str, int], lora: Mapping[str, ModuleLora]) -> None:
        expert, slot = key
        name = self.names[slot]
        self.held[key] = None  # until it is complete
        for module_name, layer in self.layers[expert].items():
            a_slot, b_slot = layer.lora_A[name].weight, layer.lora_B[name].weight
            entry = lora.get(module_name)
            if entry is None:
                a_slot.zero_()
                b_slot.zero_()
                continue
            r = entry.r
            a_slot[:r].copy_(entry.a)
            b_slot[:, :r].copy_(entry.b)
            if r < self.rank:
                a_slot[r:].zero_()
                b_slot[:, r:].zero_()
        self.modules[key] = dict(lora)
        self.strengths[key] = math.nan  # its scalings are set afresh

    def _set_strength(self, key: tuple[str, int], strength: float) -> None:
        if self.strengths[key] == strength:
            return
        expert, slot = key
        name = self.names[slot]
        modules = self.modules.get(key, {})
        for module_name, layer in self.layers[expert].items():
            entry = modules.get(module_name)
            layer.scaling[name].fill_(entry.scale(strength) if entry is not None else 0.0)
        self.strengths[key] = strength

    def _enable(self, expert: str, on: bool) -> None:
        if self.enabled[expert] == on:
            return
        # The flag itself, not peft's enable_adapters(True): that would also set requires_grad, which dynamo guards.
        for layer in self.layers[expert].values():
            layer._disable_adapters = not on
        self.enabled[expert] = on
