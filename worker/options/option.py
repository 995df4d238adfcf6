"""One engine option: what it needs (package, GPU capability, dtype, offload mode, device), what it cannot be
combined with, and how it is applied. Nothing here imports torch: `wanq worker` checks options before it does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.settings import EngineSettings

Kind = Literal[
    "attention",
    "quantization",
    "kernels",
    "decode",
    "offload",
    "parallel",
    "compile",
    "cache",
    "precision",
    "vae",
    "postprocess",
    "lora",
]
Applies = Literal["pipe", "vae", "transformers", ""]


@dataclass(frozen=True)
class Environment:
    """What is known where the options are checked: the resolved device, the model's head count, how many GPUs this
    machine shows and which one this rank uses; `machine`: also check packages and GPU features."""

    device: str | None = None
    num_heads: int | None = None
    gpu_count: int | None = None
    gpu: tuple[str, tuple[int, int]] | None = None
    """(name, compute capability) of the CUDA device this rank uses."""
    machine: bool = False

    @property
    def on_cpu(self) -> bool:
        return self.device is not None and self.device.startswith("cpu")


Check = Callable[[EngineSettings, Environment], bool]
Apply = Callable[[Any, EngineSettings, Any], None]
"""(the pipeline, its VAE or its transformers, per the option's `applies_to`; the settings; the torch device)."""
Say = Callable[[EngineSettings, Environment], str]


@dataclass(frozen=True)
class Rule:
    """One requirement or incompatibility of an option: `broken` says when it fails, `say` what to change."""

    doc: str
    """Short, for the docs table ("a CUDA GPU", "--dtype bf16")."""
    broken: Check
    say: Say


def rule(doc: str, broken: Check, say: str | Say) -> Rule:
    if isinstance(say, str):
        text = say

        def said(_s: EngineSettings, _e: Environment) -> str:
            return text

        return Rule(doc, broken, said)
    return Rule(doc, broken, say)


def cuda(say: str, doc: str = "a CUDA GPU") -> Rule:
    return rule(doc, lambda _s, env: env.on_cpu, say)


def dtype(allowed: Sequence[str], say: str | Say) -> Rule:
    return rule("--dtype " + "/".join(d for d in allowed if d != "auto"), lambda s, _e: s.dtype not in allowed, say)


def offload(allowed: Sequence[str], say: str | Say) -> Rule:
    return rule("--offload " + "/".join(allowed), lambda s, _e: s.offload not in allowed, say)


def context_parallel(settings: EngineSettings) -> bool:
    """Whether the video tokens are split over ranks (Ulysses and/or ring attention)."""
    return settings.ulysses_degree * settings.ring_degree > 1


def uses_group_offload(settings: EngineSettings) -> bool:
    return settings.offload == "group" or settings.text_encoder_cpu_offload or settings.vae_cpu_offload


@dataclass(frozen=True)
class Option:
    """One entry of the registry (worker/options/registry.py)."""

    flag: str
    """How it is asked for: "--attention-backend fa4", "--vae-tiling"."""
    kind: Kind
    summary: str
    chosen: Callable[[EngineSettings], bool] | None = None
    """Whether the settings ask for it; attention backends are chosen by `names` instead."""
    needs: tuple[Rule, ...] = ()
    conflicts: tuple[Rule, ...] = ()
    package: Callable[[], str | None] | None = None
    """What is missing, with the command that installs it; None when it imports."""
    package_doc: str = ""
    min_capability: tuple[int, int] | None = None
    capability_doc: str = ""
    """The docs' words for the GPUs it runs on, where "smXY+" (from `min_capability`) is not the whole story."""
    gpu: Callable[[str, tuple[int, int]], str | None] | None = None
    """The GPU's problem (name, capability), with what to use instead."""
    context_parallel: bool = True
    """Attention backends: whether diffusers' Ulysses / ring attention runs on it."""
    applies_to: Applies = ""
    apply: Apply | None = None
    applied: str = ""
    """Where it takes effect, for the docs table."""
    place_transformer: Callable[[Any, Any, Any], Any] | None = None
    """Quantization: places one transformer on the device quantized block by block (transformer, device, park)."""
    names: tuple[str, ...] = field(default=())
    """Attention backends: the --attention-backend names it answers to; none: every name no other backend takes."""
    name: str = ""
    """Its name in the engine's plan (decode options: "tiling", ...)."""

    def is_chosen(self, settings: EngineSettings) -> bool:
        if self.names:
            return settings.attention_backend in self.names
        return self.chosen is not None and self.chosen(settings)

    def problems(self, settings: EngineSettings, env: Environment) -> list[str]:
        """The needs and conflicts this configuration breaks, as sentences saying what to change."""
        return [r.say(settings, env) for r in (*self.needs, *self.conflicts) if r.broken(settings, env)]

    def machine_problems(self, env: Environment) -> list[str]:
        """The package or GPU feature this machine lacks for the option."""
        problems: list[str] = []
        if self.package is not None and (missing := self.package()):
            problems.append(missing)
        if self.gpu is not None and env.gpu is not None and (problem := self.gpu(*env.gpu)):
            problems.append(problem)
        return problems
