"""Every engine option, in the order they are applied; the one check of a configuration (`validate`), run before
anything loads; and the docs' option table (docs/ENGINE.md, `make readme`).

A new attention backend, quantization or decode option is one module with its `Option` and one line in `OPTIONS`."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.settings import EngineSettings
from worker.options import attention, cache, decode, kernels, lora, parallel, placement, postprocess, quantization
from worker.options.option import Environment, Kind, Option, context_parallel

OPTIONS: tuple[Option, ...] = (
    # 1. Attention backend (before parallelism, which checks it, and before compile, which bakes it in)
    attention.DEFAULT,
    attention.DIFFUSERS,
    attention.FA4,
    attention.FA3,
    attention.FA3_FP8,
    attention.OTHER,
    # 2. A LoRA fused into the weights (at load, before everything below)
    lora.FUSED,
    # 3. Placement and precision
    placement.FP16,
    placement.MODEL,
    placement.GROUP,
    placement.SEQUENTIAL,
    placement.COMPONENT_OFFLOAD,
    placement.PIN_CPU_MEMORY,
    # 4. Several GPUs
    parallel.SEVERAL_GPUS,
    parallel.CFG_BATCH,
    # 5. Quantization (after placement on one GPU, after the weights sync on several)
    quantization.FP8,
    # 6. Fused kernels in the blocks (after quantization, which decides what they run on)
    kernels.FUSED_FFN,
    # 7. The VAE and its decode, in this order
    decode.VAE_PATH,
    decode.PREVIEW_VAE_PATH,
    decode.TILING,
    decode.CUDNN_BENCHMARK,
    decode.CHANNELS_LAST,
    decode.FUSED,
    decode.COMPILE_DECODER,
    # 8. Compile, last; the step cache is set per job
    placement.COMPILE,
    cache.DBCACHE,
    # 9. Post-processing after the decode, loaded by the worker beside the engine (worker/postprocess.py)
    postprocess.INTERPOLATOR,
    postprocess.UPSCALER,
)


@dataclass
class Problems:
    configuration: list[str] = field(default_factory=list)
    """Options that cannot be combined, or that this device or model cannot take."""
    machine: list[str] = field(default_factory=list)
    """Packages or GPU features this machine lacks (checked when the environment asks: `Environment.machine`)."""

    def __bool__(self) -> bool:
        return bool(self.configuration or self.machine)

    def all(self) -> list[str]:
        return [*self.configuration, *self.machine]

    def raise_if_any(self) -> None:
        if self.configuration:
            raise ValueError("impossible engine configuration: " + "; ".join(self.configuration))
        if self.machine:
            raise ValueError("engine options this machine cannot run: " + "; ".join(self.machine))


def chosen(settings: EngineSettings, kind: Kind | None = None) -> list[Option]:
    """The options the settings ask for, in the order they are applied; the attention backend no entry names
    falls to the entry without names (a diffusers backend wanq has no entry for)."""
    named = any(o.is_chosen(settings) for o in OPTIONS if o.kind == "attention")
    return [
        o
        for o in OPTIONS
        if (o.is_chosen(settings) or (o.kind == "attention" and not o.names and not named)) and (kind is None or o.kind == kind)
    ]


def one(settings: EngineSettings, kind: Kind) -> Option | None:
    """The option of a kind that allows one (the attention backend, the quantization), if any."""
    return next(iter(chosen(settings, kind)), None)


def context_parallel_backends() -> list[str]:
    return sorted(n for o in OPTIONS if o.kind == "attention" and o.context_parallel for n in o.names if n)


def validate(settings: EngineSettings, env: Environment) -> Problems:
    """Every problem of this configuration in `env`, each a sentence saying what to change."""
    problems = Problems()
    for option in chosen(settings):
        problems.configuration += option.problems(settings, env)
        if option.kind == "attention" and not option.context_parallel and context_parallel(settings):
            problems.configuration.append(
                f"attention backend {settings.attention_backend!r} has no context-parallel support in diffusers; "
                f"use one of {context_parallel_backends()}"
            )
        if env.machine:
            problems.machine += option.machine_problems(env)
    return problems


def needs_gpu_check(settings: EngineSettings) -> bool:
    """Whether checking needs torch and the GPU (a capability, a torch package, the GPU count): `wanq worker` then
    checks in a child interpreter (worker/probe.py)."""
    return any(o.min_capability is not None or o.kind == "parallel" for o in chosen(settings))


def option_table() -> str:
    """The docs' table of engine options, one row per entry."""
    rows = ["| option | kind | what it does | needs | cannot be combined with | applied by |", "|---|---|---|---|---|---|"]
    for o in OPTIONS:
        needs = [r.doc for r in o.needs]
        if o.package_doc:
            needs.append(o.package_doc)
        if o.capability_doc:
            needs.append(o.capability_doc)
        elif o.min_capability is not None:
            needs.append(f"sm{o.min_capability[0]}{o.min_capability[1]}+")
        conflicts = [r.doc for r in o.conflicts]
        if o.kind == "attention" and not o.context_parallel:
            conflicts.append("--ulysses-degree / --ring-degree")
        cells = [f"`{o.flag}`", o.kind, o.summary, ", ".join(needs), ", ".join(conflicts), o.applied]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
